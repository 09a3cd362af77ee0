"""The analytic FLOP count (rin_diffusion/flops.py) against arithmetic done by hand and against
XLA's own count of the compiled programs."""

import jax
import jax.numpy as jnp
import pytest

from rin_diffusion import config_lib, flops, networks, train


def _config(**model):
  config = config_lib.base_config()
  config.model.update(dict(image_size=16, channels=3, patch_size=4, tape_dim=64, latent_slots=8,
                           latent_dim=96, blocks=(1,), latent_heads=4, rw_heads=4,
                           num_classes=0))
  config.model.update(model)
  return config


def test_one_block_by_hand():
  """16 tokens x 64, 8 latents x 96, inner = 64, MLP ratio 4, one block with one latent layer."""
  t, d, n, big_d, inner = 16, 64, 8, 96, 64
  stem = 2 * t * (4 * 4 * 3) * d
  embeddings = 2 * (96 // 4) * big_d + 2 * big_d * big_d  # Time only: no class, no extras.
  self_cond = 2 * 2 * n * big_d * 4 * big_d
  read = (2 * n * big_d * inner + 2 * 2 * t * d * inner + 2 * 2 * n * t * inner
          + 2 * n * inner * big_d + 2 * 2 * n * big_d * 4 * big_d)
  layer = (4 * 2 * n * big_d * big_d + 2 * 2 * n * n * big_d + 2 * 2 * n * big_d * 4 * big_d)
  write = (2 * t * d * inner + 2 * 2 * n * big_d * inner + 2 * 2 * t * n * inner
           + 2 * t * inner * d + 2 * 2 * t * d * 4 * d)
  output = 2 * t * d * (4 * 4 * 3)
  forward = stem + embeddings + self_cond + read + layer + write + output
  config = _config()
  assert flops.forward_flops_per_image(config.model) == forward
  no_input_gradient = stem + 2 * (96 // 4) * big_d
  # Its prediction is unused, so XLA drops write and output; the stem and time embedding are
  # pass 2's (same noisy image, same gamma), computed once.
  first_pass = forward - write - output - stem - embeddings
  assert flops.train_flops_per_image(config) == first_pass + 3 * forward - no_input_gradient
  config.diffusion.self_cond_rate = 0.0
  assert flops.train_flops_per_image(config) == 3 * forward - no_input_gradient
  # The interface's own mixing, before each read: a depthwise 3x3 conv and a t x t attention.
  conv = 2 * t * 9 * d
  tape_attention = 4 * 2 * t * d * d + 2 * 2 * t * t * d
  mixed = _config(tape_conv=True, tape_self_attn=True)
  assert flops.forward_parts(mixed.model)["read"] == read + conv + tape_attention
  assert flops.forward_flops_per_image(mixed.model) == forward + conv + tape_attention
  config.sampling.guidance = 3.0  # Unconditional: guidance has nothing to drop, one pass.
  assert flops.sample_step_flops_per_image(config) == forward
  config.model.num_classes = 10
  assert flops.sample_step_flops_per_image(config) == 2 * flops.forward_flops_per_image(
      config.model)


def _xla_flops(fn, *args) -> float:
  return flops.xla_flops(jax.jit(fn).lower(*args).compile())


def test_agrees_with_xla():
  """XLA counts every product the analytic count has, plus norms, softmax, activations and the
  optimizer: at these widths those add a few per cent, never less than zero."""
  config = _config(image_size=32, tape_dim=256, latent_slots=32, latent_dim=512,
                   blocks=(2, 1), latent_heads=8, rw_heads=8, num_classes=10)
  config.batch_size = batch = 32  # Large enough that the optimizer's per-parameter work is small.
  mesh = jax.make_mesh((1, 1), ("data", "fsdp"), devices=jax.devices()[:1])
  model, tx, _, abstract_state, _ = train.build(config, mesh)
  images = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)
  batch_spec = {"image": images, "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
  strip = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)  # noqa: E731
  train_xla = _xla_flops(train.make_train_step(model, tx, config), strip(abstract_state),
                         batch_spec) / batch
  train_ratio = train_xla / flops.train_flops_per_image(config)
  assert 1.0 <= train_ratio < 1.06, train_ratio
  net = networks.from_config(config)

  def forward(params, x):
    return net.apply({"params": params}, x, jnp.ones((batch,)), None, None, None, train=False)[0]

  forward_xla = _xla_flops(forward, strip(abstract_state["params"]), images) / batch
  forward_ratio = forward_xla / flops.forward_flops_per_image(config.model)
  assert 1.0 <= forward_ratio < 1.05, forward_ratio


def test_unet_is_not_counted():
  config = _config()
  config.model.architecture = "unet"
  with pytest.raises(NotImplementedError, match="architecture='unet'"):
    flops.train_flops_per_image(config)


def test_overlapping_stem_and_output_kernel():
  """Only the taps that land on the image count: 4 tokens per side, each stem window 8 wide with
  2 pixels hanging over the border at both ends (4 x 8 - 2 - 2 = 28 taps per axis), and a 3x3
  kernel on the 4x4 token grid (4 x 3 - 1 - 1 = 10 per axis)."""
  plain, local = _config(), _config(stem_overlap=2, out_kernel=3)
  d = 64
  stem = 2 * 28 * 28 * 3 * d
  output = 2 * 10 * 10 * d * (4 * 4 * 3)
  parts, plain_parts = flops.forward_parts(local.model), flops.forward_parts(plain.model)
  assert parts["stem"] == stem and parts["output"] == output
  assert plain_parts["stem"] == 2 * 16 * 16 * 3 * d  # Every pixel once.
  # XLA's count moves by exactly the same amount.
  net, plain_net = networks.from_config(local), networks.from_config(plain)
  images = jnp.zeros((1, 16, 16, 3))

  def xla_forward(model):
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), images, jnp.ones((1,)),
                                               train=False))["params"]
    return _xla_flops(lambda p, x: model.apply({"params": p}, x, jnp.ones((1,)), train=False)[0],
                      params, images)

  assert xla_forward(net) - xla_forward(plain_net) == (stem + output) - (
      plain_parts["stem"] + plain_parts["output"])
