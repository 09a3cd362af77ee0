"""CDM U-Net: parameter counts (closed form), a float64 NumPy reference forward pass, call
contract, conditioning, dropout, logical axis names and validation."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rin_diffusion import config_lib
from rin_diffusion import unet as unet_lib

BATCH = 2
MODEL_KEYS = ("image_size", "channels", "extra_in_channels", "num_extra_tokens", "num_classes",
              "dtype", "remat", "remat_policy")

# Tiny configs (model fields, unet fields). DDPM: every conditioning input, attention at 4x4 and
# in the middle, 2 heads, learned variance, dropout (inactive unless train=True). SR3: BigGAN
# up/down blocks, head_dim mode, attention at the full 8x8 resolution, logSNR noise embedding.
DDPM = dict(image_size=8, channels=2, extra_in_channels=1, num_extra_tokens=1, num_classes=5,
            base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
            num_heads=2, head_dim=0, norm_groups=4, style="ddpm", noise_embedding="gamma",
            learned_variance=True, dropout=0.3, time_scaling=1000.0)
SR3 = dict(image_size=8, channels=1, extra_in_channels=0, num_extra_tokens=0, num_classes=0,
           base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
           num_heads=0, head_dim=4, norm_groups=4, style="sr3", noise_embedding="logsnr",
           learned_variance=False, dropout=0.0, time_scaling=1000.0)

# Cascaded Diffusion Models, Appendix B (ImageNet B.1 class-conditional throughout; LSUN B.2
# unconditional). Super-resolution stages take the upsampled low-resolution image as 3 extra
# channels; the Gaussian-augmented ones (32->64, LSUN 64->128) also its level as an extra gamma.
APPENDIX_B = {
    "imagenet_32": dict(image_size=32, num_classes=1000, base_channels=256,
                        channel_mult=(1, 2, 3, 4), num_res_blocks=6, attention_resolutions=(8, 16),
                        num_heads=4, learned_variance=True),
    "imagenet_32_64": dict(image_size=64, num_classes=1000, extra_in_channels=3,
                           num_extra_tokens=1, base_channels=256, channel_mult=(1, 2, 3, 4),
                           num_res_blocks=5, attention_resolutions=(8, 16), num_heads=4,
                           learned_variance=True),
    "imagenet_64_128": dict(image_size=128, num_classes=1000, extra_in_channels=3,
                            base_channels=128, channel_mult=(1, 2, 4, 8, 8), num_res_blocks=3,
                            attention_resolutions=(16,), num_heads=1, style="sr3"),
    "imagenet_64_256": dict(image_size=256, num_classes=1000, extra_in_channels=3,
                            base_channels=128, channel_mult=(1, 2, 4, 4, 8, 8), num_res_blocks=3,
                            attention_resolutions=(16,), num_heads=1, style="sr3"),
    "lsun_64": dict(image_size=64, num_classes=0, base_channels=128, channel_mult=(1, 2, 3, 4),
                    num_res_blocks=3, attention_resolutions=(8, 16, 32), num_heads=0,
                    head_dim=64),
    "lsun_64_128": dict(image_size=128, num_classes=0, extra_in_channels=3, num_extra_tokens=1,
                        base_channels=64, channel_mult=(1, 2, 4, 6, 8), num_res_blocks=3,
                        attention_resolutions=(8, 16, 32), num_heads=0, head_dim=64),
}


def split(fields):
  model = {k: v for k, v in fields.items() if k in MODEL_KEYS}
  return model, {k: v for k, v in fields.items() if k not in MODEL_KEYS}


def build(fields, **overrides):
  model, unet = split({**fields, **overrides})
  defaults = dict(image_size=32, channels=3, extra_in_channels=0, num_extra_tokens=0,
                  num_classes=1000, dtype="float32", remat=False, remat_policy="full")
  return unet_lib.unet_from_config({**defaults, **model}, unet)


def inputs(net, seed=0, batch=BATCH):
  keys = jax.random.split(jax.random.key(seed), 4)
  size, in_ch = net.image_size, net.channels + net.extra_in_channels
  args = dict(x=jax.random.normal(keys[0], (batch, size, size, in_ch)),
              gamma=jax.random.uniform(keys[1], (batch,)))
  if net.num_classes:
    labels = jax.random.randint(keys[2], (batch,), 0, net.num_classes)
    args["class_onehot"] = jax.nn.one_hot(labels, net.num_classes)
  if net.num_extra_tokens:
    args["extra_gammas"] = jax.random.uniform(keys[3], (batch, net.num_extra_tokens))
  return args


def abstract_variables(net):
  args = inputs(net, batch=1)
  return jax.eval_shape(lambda: net.init(jax.random.key(0), **args, train=False))


# ---------------------------------------------------------------------------------------------
# Closed-form parameter count, from the architecture as the brief states it.


def closed_form_count(image_size, channels, extra_in_channels=0, num_extra_tokens=0,
                      num_classes=1000, base_channels=128, channel_mult=(1, 2, 3, 4),
                      num_res_blocks=3, attention_resolutions=(8, 16), style="ddpm",
                      learned_variance=False, **_):
  c, e = base_channels, 4 * base_channels

  def norm(ch):
    return 2 * ch

  def conv(a, b, k):
    return k * k * a * b + b

  def dense(a, b):
    return a * b + b

  def res(a, b):
    n = norm(a) + conv(a, b, 3) + dense(e, 2 * b) + norm(b) + conv(b, b, 3)
    return n + (conv(a, b, 1) if a != b else 0)

  def attn(ch):
    return norm(ch) + dense(ch, 3 * ch) + dense(ch, ch)

  def resample(ch):
    return res(ch, ch) if style == "sr3" else conv(ch, ch, 3)

  total = (dense(c, e) + dense(e, e)) * (1 + num_extra_tokens) + num_classes * e
  ch = c * channel_mult[0]
  total += conv(channels + extra_in_channels, ch, 3)
  skips, size = [ch], image_size
  for level, mult in enumerate(channel_mult):
    for _ in range(num_res_blocks):
      total += res(ch, c * mult) + (attn(c * mult) if size in attention_resolutions else 0)
      ch = c * mult
      skips.append(ch)
    if level < len(channel_mult) - 1:
      total += resample(ch)
      skips.append(ch)
      size //= 2
  total += 2 * res(ch, ch) + attn(ch)
  for level in reversed(range(len(channel_mult))):
    for _ in range(num_res_blocks + 1):
      out = c * channel_mult[level]
      total += res(ch + skips.pop(), out) + (attn(out) if size in attention_resolutions else 0)
      ch = out
    if level > 0:
      total += resample(ch)
      size *= 2
  assert not skips
  return total + norm(ch) + conv(ch, channels * (2 if learned_variance else 1), 3)


def count(variables):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables))


@pytest.mark.parametrize("fields", [
    DDPM, SR3,
    dict(DDPM, style="sr3", learned_variance=False, num_extra_tokens=2, extra_in_channels=3),
    dict(SR3, style="ddpm", num_classes=7, channel_mult=(1, 2, 3), num_res_blocks=2,
         attention_resolutions=(2, 8), image_size=8),
    dict(image_size=16, channels=3, num_classes=0, base_channels=16, channel_mult=(1, 1, 2),
         num_res_blocks=2, attention_resolutions=(), norm_groups=8),
], ids=["ddpm", "sr3", "sr3_extras", "ddpm_3_levels", "no_attention"])
def test_param_count_matches_closed_form(fields):
  net = build(fields)
  assert count(abstract_variables(net)["params"]) == closed_form_count(**fields)


def test_appendix_b_param_counts():
  counts = {}
  for name, fields in APPENDIX_B.items():
    fields = dict(dict(channels=3, extra_in_channels=0, num_extra_tokens=0), **fields)
    counts[name] = count(abstract_variables(build(fields))["params"])
    assert counts[name] == closed_form_count(**fields), name
  print("\nAppendix-B U-Net parameter counts:")
  for name, n in counts.items():
    print(f"  {name:16s} {n:>13,d}  ({n / 1e6:.1f} M)")
  # Sanity: the stages are hundreds of millions (ImageNet) / ~120 M (LSUN) of parameters.
  assert 5e8 < counts["imagenet_32"] < 1e9
  assert 1e8 < counts["lsun_64"] < 2e8


# ---------------------------------------------------------------------------------------------
# An independent float64 NumPy forward pass written from the architecture description.


def np_sinusoid(s, dim):
  half = dim // 2
  freqs = 10000.0 ** (-np.arange(half) / half)
  angles = s[:, None] * freqs[None]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)


def np_noise_input(gamma, mode, scaling):
  if mode == "gamma":
    return scaling * gamma
  g = np.clip(gamma, 1e-9, 1 - 1e-7)
  return scaling * (np.clip(np.log(g / (1 - g)), -20, 20) + 20) / 40


def silu(x):
  return x / (1 + np.exp(-x))


def np_dense(p, x):
  return x @ p["kernel"] + p.get("bias", 0.0)


def np_conv(p, x, stride=1):
  kernel = p["kernel"]
  k = kernel.shape[0]
  pad = k // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  h_out = (x.shape[1] + 2 * pad - k) // stride + 1
  w_out = (x.shape[2] + 2 * pad - k) // stride + 1
  out = np.zeros(x.shape[:1] + (h_out, w_out, kernel.shape[-1]))
  for i in range(k):
    for j in range(k):
      patch = xp[:, i:i + stride * h_out:stride, j:j + stride * w_out:stride]
      out += patch @ kernel[i, j]
  return out + p["bias"]


def np_group_norm(p, x, groups):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
  g = (g - mean) / np.sqrt(var + 1e-5)
  return g.reshape(b, h, w, c) * p["scale"] + p["bias"]


def np_up(x):
  return x.repeat(2, axis=1).repeat(2, axis=2)


def np_down(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def np_res_block(p, x, emb, f, resample=None):
  g = f["norm_groups"]
  h = silu(np_group_norm(p["norm0"], x, g))
  if resample is not None:
    h, x = resample(h), resample(x)
  h = np_conv(p["conv0"], h)
  scale, shift = np.split(np_dense(p["emb_proj"], silu(emb))[:, None, None], 2, axis=-1)
  h = silu(np_group_norm(p["norm1"], h, g) * (1 + scale) + shift)
  h = np_conv(p["conv1"], h)
  skip = np_conv(p["skip"], x) if "skip" in p else x
  return (skip + h) / math.sqrt(2) if f["style"] == "sr3" else skip + h


def np_attention(p, x, f):
  b, hh, ww, c = x.shape
  heads = f["num_heads"] or c // f["head_dim"]
  d = c // heads
  qkv = np_dense(p["qkv"], np_group_norm(p["norm"], x, f["norm_groups"]))
  qkv = qkv.reshape(b, hh * ww, 3, heads, d)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, hh, ww, c)
  return x + np_dense(p["out"], out)


def np_unet(params, f, x, gamma, class_onehot=None, extra_gammas=None):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x, gamma = np.asarray(x, np.float64), np.asarray(gamma, np.float64)

  def scalar_mlp(q, g):
    s = np_sinusoid(np_noise_input(g, f["noise_embedding"], f["time_scaling"]),
                    f["base_channels"])
    return np_dense(q["dense1"], silu(np_dense(q["dense0"], s)))

  emb = scalar_mlp(p["noise_mlp"], gamma)
  if f["num_classes"] and class_onehot is not None:
    emb = emb + np.asarray(class_onehot, np.float64) @ p["class_embedding"]["kernel"]
  for k in range(f["num_extra_tokens"]):
    emb = emb + scalar_mlp(p[f"extra_mlp_{k}"], np.asarray(extra_gammas, np.float64)[:, k])

  def maybe_attn(h, name, size):
    return np_attention(p[name], h, f) if size in f["attention_resolutions"] else h

  sr3 = f["style"] == "sr3"
  mult, nrb, c = f["channel_mult"], f["num_res_blocks"], f["base_channels"]
  h = np_conv(p["input_conv"], x)
  skips, size = [h], f["image_size"]
  for level in range(len(mult)):
    for i in range(nrb):
      h = np_res_block(p[f"down_{level}_{i}_res"], h, emb, f)
      h = maybe_attn(h, f"down_{level}_{i}_attn", size)
      skips.append(h)
    if level < len(mult) - 1:
      name = f"down_{level}_downsample"
      h = np_res_block(p[name], h, emb, f, np_down) if sr3 else np_conv(p[name], h, stride=2)
      skips.append(h)
      size //= 2
  h = np_res_block(p["middle_res_0"], h, emb, f)
  h = np_attention(p["middle_attn"], h, f)
  h = np_res_block(p["middle_res_1"], h, emb, f)
  for level in reversed(range(len(mult))):
    for i in range(nrb + 1):
      h = np_res_block(p[f"up_{level}_{i}_res"], np.concatenate([h, skips.pop()], -1), emb, f)
      h = maybe_attn(h, f"up_{level}_{i}_attn", size)
    if level > 0:
      name = f"up_{level}_upsample"
      h = np_res_block(p[name], h, emb, f, np_up) if sr3 else np_conv(p[name], np_up(h))
      size *= 2
  assert h.shape[-1] == c * mult[0]
  return np_conv(p["out_conv"], silu(np_group_norm(p["out_norm"], h, f["norm_groups"])))


# ---------------------------------------------------------------------------------------------
# Fixtures: one jitted apply per tiny config, with random (not zero-init) parameters.


def random_params(net, seed=1):
  """Parameters away from the zero init, drawn in NumPy from the abstract shapes (no init compile)."""
  rng = np.random.default_rng(seed)
  abstract = nn.meta.unbox(abstract_variables(net))["params"]

  def draw(path, leaf):
    noise = rng.standard_normal(leaf.shape)
    if leaf.ndim > 1:
      return (noise * 0.5 / math.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
    is_scale = jax.tree_util.keystr(path).endswith("['scale']")
    return ((1.0 if is_scale else 0.0) + 0.2 * noise).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)


class Setup:

  def __init__(self, fields):
    self.fields = fields
    self.net = build(fields)
    self.apply = jax.jit(self.net.apply, static_argnames=("train",))
    self.args = inputs(self.net)
    self.params = random_params(self.net)

  def __call__(self, params=None, **overrides):
    args = {**self.args, **overrides}
    return self.apply({"params": self.params if params is None else params}, **args,
                      train=False)[0]


@pytest.fixture(scope="module")
def ddpm():
  return Setup(DDPM)


@pytest.fixture(scope="module")
def sr3():
  return Setup(SR3)


@pytest.mark.parametrize("which", ["ddpm", "sr3"])
def test_matches_numpy_reference(which, request):
  setup = request.getfixturevalue(which)
  pred = np.asarray(setup())
  want = np_unet(setup.params, setup.fields, **setup.args)
  assert pred.shape == want.shape
  assert np.abs(want).max() > 1e-1  # The random-parameter network computes something non-trivial.
  np.testing.assert_allclose(pred, want, atol=2e-4 * np.abs(want).max(), rtol=1e-4)


def test_zero_init_output_and_residual_branches(ddpm):
  # 'rbg' keys compile the parameter initialisers much faster than threefry on CPU.
  variables = jax.jit(ddpm.net.init, static_argnames=("train",))(
      jax.random.key(0, impl="rbg"), **ddpm.args, train=False)
  params = nn.meta.unbox(variables)["params"]
  pred, hidden = ddpm.apply({"params": params}, **ddpm.args, train=False)
  assert pred.shape == (BATCH, 8, 8, 4) and pred.dtype == jnp.float32  # 2 channels x (mean, v).
  assert hidden is None
  np.testing.assert_array_equal(pred, 0.0)
  flat = {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  zero = [k for k in flat if k.endswith("['conv1']['kernel']") or k.endswith("['out']['kernel']")]
  # 8 res blocks (2 down, 2 middle, 4 up) and 4 attention blocks (1 down, 1 middle, 2 up).
  assert len(zero) == 8 + 4
  for k in zero:
    np.testing.assert_array_equal(flat[k], 0.0, err_msg=k)
  assert np.abs(flat["['input_conv']['kernel']"]).max() > 0


def test_hidden_returned_unchanged_and_scalar_gamma(sr3):
  hidden_in = jnp.arange(6.0).reshape(2, 3)
  pred, hidden = sr3.apply({"params": sr3.params}, **{**sr3.args, "gamma": jnp.float32(0.3)},
                           hidden=hidden_in, train=False)
  np.testing.assert_array_equal(hidden, hidden_in)
  assert pred.shape == (BATCH, 8, 8, 1) and pred.dtype == jnp.float32
  want = np_unet(sr3.params, sr3.fields, **{**sr3.args, "gamma": np.full((BATCH,), 0.3)})
  np.testing.assert_allclose(pred, want, atol=2e-4 * np.abs(want).max(), rtol=1e-4)


def test_conditioning_changes_output(ddpm):
  args = ddpm.args
  base = np.asarray(ddpm())

  def changed(**overrides):
    return np.abs(np.asarray(ddpm(**overrides)) - base).max() > 1e-3

  assert changed(gamma=args["gamma"] * 0.5)
  assert changed(class_onehot=jnp.roll(args["class_onehot"], 1, axis=-1))
  assert changed(extra_gammas=1.0 - args["extra_gammas"])
  assert changed(x=args["x"].at[..., -1].add(1.0))  # Only the extra (low-res) channel moves.
  null = jnp.zeros_like(args["class_onehot"])
  np.testing.assert_array_equal(ddpm(class_onehot=null), ddpm(class_onehot=None))
  assert changed(class_onehot=null)


def test_dropout_only_when_training(ddpm):
  variables = {"params": ddpm.params}
  eval_pred = ddpm()
  train = [ddpm.apply(variables, **ddpm.args, train=True,
                      rngs={"dropout": jax.random.key(s)})[0] for s in (0, 1)]
  assert np.abs(np.asarray(train[0] - train[1])).max() > 1e-3
  assert np.abs(np.asarray(train[0] - eval_pred)).max() > 1e-3
  np.testing.assert_array_equal(
      ddpm.apply(variables, **ddpm.args, train=False, rngs={"dropout": jax.random.key(0)})[0],
      eval_pred)


def test_noise_level_input_math():
  gamma = jnp.array([0.5, 0.0, 1.0, 1.0 / (1.0 + math.exp(10.0))])
  np.testing.assert_allclose(unet_lib.noise_level_input(gamma, "gamma", 1000.0),
                             1000.0 * np.asarray(gamma), rtol=1e-6)
  got = np.asarray(unet_lib.noise_level_input(gamma, "logsnr", 1000.0))
  # logSNR 0 -> the middle; gamma = 0 clips to 1e-9 (logSNR -20.7 -> -20) -> 0; gamma = 1 clips to
  # 1 - 1e-7 in float32 (logSNR ~ 15.9); logSNR -10 -> a quarter.
  g_max = float(np.float32(1 - 1e-7))
  top = 1000.0 * (math.log(g_max / (1 - g_max)) + 20) / 40
  np.testing.assert_allclose(got, [500.0, 0.0, top, 250.0], rtol=1e-3, atol=1e-3)


def test_bfloat16_compute_keeps_float32_params_and_output():
  net = build(SR3, dtype="bfloat16")
  variables = abstract_variables(net)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  pred, _ = jax.eval_shape(lambda v: net.apply(v, **inputs(net), train=False),
                           nn.meta.unbox(variables))
  assert pred.dtype == jnp.float32 and pred.shape == (BATCH, 8, 8, 1)


def test_remat_changes_neither_parameters_nor_values_nor_gradients(ddpm):
  remat = build(DDPM, remat=True)
  assert jax.tree.structure(abstract_variables(remat)) == jax.tree.structure(
      abstract_variables(ddpm.net))

  def loss(net, params):
    pred, _ = net.apply({"params": params}, **ddpm.args, train=False)
    return jnp.mean(jnp.square(pred - 0.1))

  plain = jax.jit(jax.value_and_grad(lambda p: loss(ddpm.net, p)))(ddpm.params)
  checkpointed = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(ddpm.params)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(checkpointed)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_every_parameter_has_logical_names():
  for fields in (DDPM, SR3):
    boxed = abstract_variables(build(fields))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(leaf, nn.Partitioned) for leaf in leaves)
    for leaf in leaves:
      names = leaf.names
      assert len(names) == leaf.value.ndim
      assert any(n is not None for n in names), names
      if leaf.value.ndim >= 2:  # Kernels can be sharded over 'embed' -> fsdp.
        assert "embed" in names, names
    specs = jax.tree.leaves(nn.get_partition_spec(boxed))
    assert len(specs) == len(leaves)


# ---------------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize("overrides, field", [
    (dict(norm_groups=3), "config.unet.norm_groups"),
    (dict(style="vit"), "config.unet.style"),
    (dict(noise_embedding="t"), "config.unet.noise_embedding"),
    (dict(attention_resolutions=(16,)), "config.unet.attention_resolutions"),
    (dict(num_heads=2, head_dim=4), "config.unet.num_heads"),
    (dict(num_heads=0, head_dim=0), "config.unet.num_heads"),
    (dict(num_heads=3), "config.unet.num_heads"),
    (dict(num_heads=0, head_dim=3), "config.unet.head_dim"),
    (dict(image_size=6), "config.model.image_size"),
    (dict(channel_mult=()), "config.unet.channel_mult"),
    (dict(dropout=1.0), "config.unet.dropout"),
    (dict(learned_variance=1), "config.unet.learned_variance"),
    (dict(time_scaling=0.0), "config.unet.time_scaling"),
    (dict(dtype="float16"), "config.model.dtype"),
    (dict(num_classes=-1), "config.model.num_classes"),
    (dict(channel_mult="1,x"), "config.unet.channel_mult"),
])
def test_bad_fields_name_the_field(overrides, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    build(DDPM, **overrides)


def test_from_config_sections():
  model = config_lib.base_config().model  # RIN-only fields in config.model are ignored.
  model.update(dict(image_size=8, channels=2, extra_in_channels=1, num_extra_tokens=1,
                    num_classes=5))
  unet = split(DDPM)[1]
  net = unet_lib.unet_from_config(model, dict(unet, channel_mult="1,2",
                                               attention_resolutions="4"))
  assert net.channel_mult == (1, 2) and net.attention_resolutions == (4,)
  assert net.time_scaling == 1000.0 and net.image_size == 8
  assert unet_lib.unet_from_config(model, dict(unet, attention_resolutions="")
                                   ).attention_resolutions == ()
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['patch_size'\]"):
    unet_lib.unet_from_config(model, dict(unet, patch_size=4))


def test_bad_inputs_raise(ddpm):
  net, args = ddpm.net, ddpm.args
  variables = {"params": ddpm.params}
  cases = [
      (dict(x=args["x"][..., :2]), r"expected \(2, 8, 8, 3\)"),
      (dict(extra_gammas=None), "num_extra_tokens"),
      (dict(class_onehot=args["class_onehot"][:, :4]), r"expected \(2, 5\)"),
      (dict(gamma=jnp.zeros((3,))), r"expected \(2,\)"),
  ]
  for overrides, message in cases:
    with pytest.raises(ValueError, match=message):
      jax.eval_shape(lambda o=overrides: net.apply(variables, **{**args, **o}, train=False))
