"""RIN model: shapes, initialisation, self-conditioning, dropout, validation, sharding, overfitting."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rin_diffusion import config_lib, diffusion, flops
from rin_diffusion import model as model_lib

BATCH = 8  # Divisible by the 8 simulated devices of the sharding test.


def small_config(**overrides):
  cfg = config_lib.base_config().model
  cfg.update(dict(image_size=16, patch_size=4, tape_dim=32, latent_slots=8, latent_dim=48,
                  blocks=(1, 1), latent_heads=4, rw_heads=4, num_classes=10))
  cfg.update(overrides)
  return cfg


def inputs(cfg, batch=BATCH, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  in_channels = cfg.channels + cfg.extra_in_channels
  x = jax.random.normal(keys[0], (batch, cfg.image_size, cfg.image_size, in_channels))
  gamma = jax.random.uniform(keys[1], (batch,))
  args = dict(x=x, gamma=gamma)
  if cfg.num_classes:
    labels = jax.random.randint(keys[2], (batch,), 0, cfg.num_classes)
    args["class_onehot"] = jax.nn.one_hot(labels, cfg.num_classes)
  if cfg.num_extra_tokens:
    args["extra_gammas"] = jax.random.uniform(keys[3], (batch, cfg.num_extra_tokens))
  return args


class Jitted:
  """A RIN with jitted init/apply (eager Flax calls dispatch op by op, which is slow on CPU)."""

  def __init__(self, net):
    self.net = net
    self.init = jax.jit(net.init, static_argnames=("train",))
    self.apply = jax.jit(net.apply, static_argnames=("train",))


def init_key(seed=0):
  # 'rbg' keys compile the ~100 parameter initialisers several times faster than threefry on CPU.
  return jax.random.key(seed, impl="rbg")


def _num_params(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def init(cfg, seed=0, batch=BATCH):
  net = Jitted(model_lib.rin_from_config(cfg))
  args = inputs(cfg, batch)
  variables = net.init(init_key(seed), **args, train=False)
  return net, nn.meta.unbox(variables)["params"], args


@pytest.fixture(scope="module")
def small():
  return init(small_config())


def test_output_shapes_and_dtypes(small):
  net, params, args = small
  pred, hidden = net.apply({"params": params}, **args, train=False)
  assert pred.shape == (BATCH, 16, 16, 3) and pred.dtype == jnp.float32
  assert hidden.shape == (BATCH, 8, 48) and hidden.dtype == jnp.float32
  assert np.all(np.isfinite(pred))
  assert params["latent_pos_emb"].shape == (6, 48)  # L - 2 learned rows (time and class tokens).
  assert params["tape_pos_emb"].shape == (16, 32)
  assert params["stem_conv"]["kernel"].shape == (4, 4, 3, 32)
  assert params["out_dense"]["kernel"].shape == (32, 4 * 4 * 3)
  # Weights are not shared across blocks; blocks[i] latent layers each.
  assert {k for k in params if k.startswith("block_")} == {
      "block_0_read", "block_0_layer_0", "block_0_write",
      "block_1_read", "block_1_layer_0", "block_1_write"}
  assert params["block_0_read"]["mha"]["query"]["kernel"].shape == (48, 4, 8)  # a = min(d, D).
  assert params["block_0_read"]["mha"]["out"]["kernel"].shape == (4, 8, 48)
  assert params["block_0_write"]["mha"]["out"]["kernel"].shape == (4, 8, 32)


def test_zero_hidden_matches_hidden_out(small):
  net, params, args = small
  hidden = model_lib.zero_hidden(small_config(), BATCH)
  assert hidden.shape == (BATCH, 8, 48) and hidden.dtype == jnp.float32
  assert not np.any(hidden)
  pred_none, _ = net.apply({"params": params}, **args, train=False)
  pred_zero, _ = net.apply({"params": params}, **args, hidden=hidden, train=False)
  np.testing.assert_array_equal(pred_none, pred_zero)


def test_initialisation(small):
  _, params, _ = small
  np.testing.assert_array_equal(params["self_cond_ln"]["scale"], 0.0)  # LN0.
  np.testing.assert_array_equal(params["self_cond_ln"]["bias"], 0.0)
  np.testing.assert_array_equal(params["stem_ln"]["scale"], 1.0)
  np.testing.assert_array_equal(params["block_0_read"]["mha"]["query"]["bias"], 0.0)
  for name in ("latent_pos_emb", "tape_pos_emb"):
    emb = np.asarray(params[name])
    assert np.abs(emb).max() <= 0.04 + 1e-6  # Truncated at 2 std.
    assert 0.01 < emb.std() < 0.02
  head = np.asarray(params["out_dense"]["kernel"])
  assert np.abs(head).max() > 0  # Glorot, not zero.
  assert np.abs(head).max() <= np.sqrt(6 / (32 + 48)) + 1e-6


def _uniform_mismatch(w, limit):
  """Why `w` is not a sample of U(-limit, limit) (None if it is), within 5 sampling std errors."""
  w = np.ravel(np.asarray(w, np.float64))
  n = w.size
  if np.abs(w).max() > limit * (1 + 1e-6):
    return f"max |w| {np.abs(w).max():.5f} > limit {limit:.5f}"
  if np.abs(w).max() < limit * (1 - 20 / n):  # P(all n below) = (1 - 20/n)^n ~ e^-20.
    return f"max |w| {np.abs(w).max():.5f} well below limit {limit:.5f}"
  # std of U(-L, L) is L / sqrt(3); the relative std error of the sample std is sqrt(0.8 / n) / 2
  # (Var(w^2) / E[w^2]^2 = (1/5) / (1/9) - 1 = 0.8 for a uniform).
  expected_std = limit / np.sqrt(3)
  if abs(w.std() / expected_std - 1) > 5 * np.sqrt(0.8 / n) / 2:
    return f"std {w.std():.5f} != limit / sqrt(3) = {expected_std:.5f}"
  if abs(w.mean()) > 5 * expected_std / np.sqrt(n):
    return f"mean {w.mean():.5f} != 0"
  return None


def test_every_attention_kernel_has_keras_multihead_attention_init(small):
  """q/k/v/out kernels follow Keras' glorot_uniform on the 3-D kernel (its MultiHeadAttention).

  Keras computes the fans of an N-D kernel with every axis but the last two as receptive field:
  (D, heads, head_dim) -> fan_in = heads * D, fan_out = head_dim * D;
  (heads, head_dim, D_out) -> fan_in = head_dim * heads, fan_out = D_out * heads.
  Glorot over the flattened 2-D matrix (fan_in = D, fan_out = heads * head_dim) is ~2-6x wider.
  """
  _, params, _ = small
  cfg = small_config()
  tape, latent = cfg.tape_dim, cfg.latent_dim
  inner = min(tape, latent)
  # (module, query width, key/value width, heads, head_dim, output width) for each attention.
  expected = {}
  for i in range(len(cfg.blocks)):
    expected[f"block_{i}_read"] = (latent, tape, cfg.rw_heads, inner // cfg.rw_heads, latent)
    expected[f"block_{i}_write"] = (tape, latent, cfg.rw_heads, inner // cfg.rw_heads, tape)
    for j in range(cfg.blocks[i]):
      expected[f"block_{i}_layer_{j}"] = (
          latent, latent, cfg.latent_heads, latent // cfg.latent_heads, latent)
  found = {name for name, sub in params.items() if isinstance(sub, dict) and "mha" in sub}
  assert found == set(expected)
  checked = 0
  for name, (q_dim, kv_dim, heads, head_dim, out_dim) in expected.items():
    mha = params[name]["mha"]
    for proj, in_dim in (("query", q_dim), ("key", kv_dim), ("value", kv_dim)):
      kernel = mha[proj]["kernel"]
      assert kernel.shape == (in_dim, heads, head_dim)
      keras_limit = np.sqrt(6.0 / (heads * in_dim + head_dim * in_dim))
      flat_limit = np.sqrt(6.0 / (in_dim + heads * head_dim))
      assert _uniform_mismatch(kernel, keras_limit) is None, (name, proj, _uniform_mismatch(
          kernel, keras_limit))
      assert _uniform_mismatch(kernel, flat_limit) is not None, (name, proj)  # Discriminates.
      checked += 1
    kernel = mha["out"]["kernel"]
    assert kernel.shape == (heads, head_dim, out_dim)
    keras_limit = np.sqrt(6.0 / (head_dim * heads + out_dim * heads))
    flat_limit = np.sqrt(6.0 / (heads * head_dim + out_dim))
    assert _uniform_mismatch(kernel, keras_limit) is None, (name, "out", _uniform_mismatch(
        kernel, keras_limit))
    assert _uniform_mismatch(kernel, flat_limit) is not None, (name, "out")
    checked += 1
  assert checked == 4 * 6


def test_other_kernels_keep_glorot_uniform(small):
  """Dense kernels: Glorot over (fan_in, fan_out); the patch conv: Keras' (p*p*C, p*p*d)."""
  _, params, _ = small
  kernels = {}

  def collect(path, leaf):
    names = [getattr(k, "key", str(k)) for k in path]
    if names[-1] == "kernel" and "mha" not in names:
      kernels["/".join(names)] = np.asarray(leaf)

  jax.tree_util.tree_map_with_path(collect, params)
  assert "stem_conv/kernel" in kernels and "out_dense/kernel" in kernels
  assert "time_emb/dense0/kernel" in kernels and "class_proj/kernel" in kernels
  assert len(kernels) > 10
  for name, kernel in kernels.items():
    if kernel.ndim == 2:
      fan_in, fan_out = kernel.shape
    else:
      kh, kw, c_in, c_out = kernel.shape
      fan_in, fan_out = kh * kw * c_in, kh * kw * c_out
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    assert _uniform_mismatch(kernel, limit) is None, (name, _uniform_mismatch(kernel, limit))


def test_self_conditioning_adds_zero_at_init(small):
  net, params, args = small
  random_hidden = jax.random.normal(jax.random.key(3), (BATCH, 8, 48))
  pred_zero, _ = net.apply({"params": params}, **args, train=False)
  pred_rand, _ = net.apply({"params": params}, **args, hidden=random_hidden, train=False)
  np.testing.assert_array_equal(pred_zero, pred_rand)
  perturbed = jax.tree_util.tree_map(lambda a: a, params)
  perturbed["self_cond_ln"] = dict(params["self_cond_ln"], scale=jnp.ones_like(
      params["self_cond_ln"]["scale"]))
  pred_zero, _ = net.apply({"params": perturbed}, **args, train=False)
  pred_rand, _ = net.apply({"params": perturbed}, **args, hidden=random_hidden, train=False)
  assert np.abs(pred_zero - pred_rand).max() > 1e-3


def test_depth_to_space_pixel_mapping():
  p, c, h, w = 2, 3, 2, 3
  x = jnp.arange(1 * h * w * p * p * c, dtype=jnp.float32).reshape(1, h, w, p * p * c)
  y = np.asarray(model_lib.depth_to_space(x, p))
  assert y.shape == (1, h * p, w * p, c)
  for hh in range(h):
    for ww in range(w):
      for i in range(p):
        for j in range(p):
          for cc in range(c):
            assert y[0, hh * p + i, ww * p + j, cc] == x[0, hh, ww, (i * p + j) * c + cc]


def test_sinusoid_first_half_sin_then_cos():
  emb = np.asarray(model_lib.sinusoid_encoding(jnp.array([0.0, 3.0]), 8))
  freqs = 10000.0 ** (-2 * np.arange(4) / 8)
  np.testing.assert_allclose(emb[1], np.concatenate([np.sin(3 * freqs), np.cos(3 * freqs)]),
                             rtol=1e-6)
  np.testing.assert_allclose(emb[0], [0, 0, 0, 0, 1, 1, 1, 1])


def test_time_and_class_tokens_matter(small):
  net, params, args = small
  pred, hidden = net.apply({"params": params}, **args, train=False)
  other_gamma, _ = net.apply({"params": params}, **dict(args, gamma=args["gamma"] * 0.5),
                             train=False)
  assert np.abs(pred - other_gamma).max() > 1e-4
  uncond, _ = net.apply({"params": params}, **dict(args, class_onehot=None), train=False)
  zeros, _ = net.apply({"params": params}, **dict(args, class_onehot=jnp.zeros((BATCH, 10))),
                       train=False)
  np.testing.assert_array_equal(uncond, zeros)
  assert np.abs(pred - uncond).max() > 1e-4


def test_dropout_only_in_train_mode(small):
  net0, params, args = small  # Dropout rates do not change the parameters.
  net = Jitted(model_lib.rin_from_config(small_config(drop_units=0.3, drop_path=0.3,
                                                      drop_att=0.3)))
  eval_a, _ = net.apply({"params": params}, **args, train=False)
  eval_b, _ = net.apply({"params": params}, **args, train=False)  # Needs no 'dropout' rng.
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a, _ = net.apply({"params": params}, **args, train=True,
                         rngs={"dropout": jax.random.key(1)})
  train_a2, _ = net.apply({"params": params}, **args, train=True,
                          rngs={"dropout": jax.random.key(1)})
  train_b, _ = net.apply({"params": params}, **args, train=True,
                         rngs={"dropout": jax.random.key(2)})
  np.testing.assert_array_equal(train_a, train_a2)
  assert np.abs(train_a - train_b).max() > 1e-4
  assert np.abs(train_a - eval_a).max() > 1e-4
  np.testing.assert_array_equal(eval_a, net0.apply({"params": params}, **args, train=False)[0])


def test_extra_channels_and_tokens():
  cfg = small_config(extra_in_channels=3, num_extra_tokens=2)
  net, params, args = init(cfg)
  assert args["x"].shape[-1] == 6
  pred, hidden = net.apply({"params": params}, **args, train=False)
  assert pred.shape == (BATCH, 16, 16, 3)  # Only `channels` come out.
  assert hidden.shape == (BATCH, 8 + 2, 48)  # L_total = latent_slots + num_extra_tokens.
  assert model_lib.zero_hidden(cfg, BATCH).shape == (BATCH, 10, 48)
  assert params["stem_conv"]["kernel"].shape == (4, 4, 6, 32)
  assert params["latent_pos_emb"].shape == (6, 48)
  assert "extra_emb_0" in params and "extra_emb_1" in params
  other, _ = net.apply({"params": params}, **dict(args, extra_gammas=args["extra_gammas"] * 0.3),
                       train=False)
  assert np.abs(pred - other).max() > 1e-4
  low_res_changed = args["x"].at[..., 3:].add(1.0)
  other, _ = net.apply({"params": params}, **dict(args, x=low_res_changed), train=False)
  assert np.abs(pred - other).max() > 1e-4
  with pytest.raises(ValueError, match="extra_gammas"):
    net.apply({"params": params}, **dict(args, extra_gammas=None), train=False)
  with pytest.raises(ValueError, match="expected"):
    net.apply({"params": params}, **dict(args, x=args["x"][..., :3]), train=False)


def test_unconditional_sincos_kv_ln_and_read_only_block():
  cfg = small_config(num_classes=0, tape_pos="sincos", blocks=(0, 1), xattn_kv_ln=True,
                     tape_mlp_ratio=0)
  net, params, args = init(cfg)
  assert "class_proj" not in params
  assert params["latent_pos_emb"].shape == (7, 48)  # No class token: L - 1 learned rows.
  assert "tape_pos_emb" not in params
  assert "block_0_write" not in params and "block_0_layer_0" not in params
  assert "kv_ln" in params["block_1_read"] and "mlp" not in params["block_1_write"]
  pred, hidden = net.apply({"params": params}, **args, train=False)
  assert np.all(np.isfinite(pred)) and hidden.shape == (BATCH, 8, 48)
  emb = np.asarray(model_lib.sincos_2d_pos_emb(4, 4, 32, 1000.0))
  assert emb.shape == (16, 32)
  np.testing.assert_allclose(emb[0], [0.0] * 8 + [1.0] * 8 + [0.0] * 8 + [1.0] * 8)
  np.testing.assert_allclose(emb[1, :16], emb[0, :16])  # Same row: same y code.


def test_bfloat16_activations_keep_float32_params(small):
  ref_net, params, args = small
  net = model_lib.rin_from_config(small_config(dtype="bfloat16"))
  abstract = jax.eval_shape(lambda k: net.init(k, **args, train=False), init_key())
  dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(nn.meta.unbox(abstract))}
  assert dtypes == {jnp.dtype(jnp.float32)}
  pred, hidden = Jitted(net).apply({"params": params}, **args, train=False)
  assert pred.dtype == jnp.float32 and hidden.dtype == jnp.float32
  ref, _ = ref_net.apply({"params": params}, **args, train=False)
  assert np.abs(pred - ref).max() < 0.1 * np.abs(ref).max()


@pytest.mark.parametrize("policy", ["full", "dots_no_batch"])
def test_remat_matches_plain(small, policy):
  _, params, args = small
  # One block keeps the two gradient compilations short; its parameters are the fixture's minus
  # block 1 (blocks are not shared, so nothing else changes).
  params = {k: v for k, v in params.items() if not k.startswith("block_1_")}
  net = model_lib.rin_from_config(small_config(drop_path=0.2, blocks=(1,)))
  remat_net = model_lib.rin_from_config(
      small_config(drop_path=0.2, blocks=(1,), remat=True, remat_policy=policy))
  remat_abstract = jax.eval_shape(lambda k: remat_net.init(k, **args, train=False), init_key())
  assert (jax.tree_util.tree_structure(nn.meta.unbox(remat_abstract)["params"])
          == jax.tree_util.tree_structure(params))  # Same parameter names with and without remat.

  def loss(module, p):
    pred, _ = module.apply({"params": p}, **args, train=True, rngs={"dropout": jax.random.key(4)})
    return jnp.sum(pred ** 2)

  l0, g0 = jax.jit(jax.value_and_grad(lambda p: loss(net, p)))(params)
  l1, g1 = jax.jit(jax.value_and_grad(lambda p: loss(remat_net, p)))(params)
  np.testing.assert_allclose(l0, l1, rtol=1e-5)
  scale = max(float(np.abs(g).max()) for g in jax.tree_util.tree_leaves(g0))
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale), g0, g1)


def test_remat_policies_recompute():
  """Each policy recomputes more than the last: 'dots' the elementwise work, 'dots_no_batch' also
  attention's products, 'full' everything (XLA's FLOP count of the gradient; the memory they save
  is the TPU compiler's to show, tests/test_plan.py, XLA:CPU does not free it)."""
  cfg = small_config(image_size=32, patch_size=2, tape_dim=64, latent_slots=16, latent_dim=64,
                     blocks=(2,))
  args = inputs(cfg, batch=16)
  abstract = jax.eval_shape(
      lambda k: model_lib.rin_from_config(cfg).init(k, **args, train=False), init_key())
  params = nn.meta.unbox(abstract)["params"]

  def gradient_flops(**overrides):
    net = model_lib.rin_from_config(small_config(**{**cfg, **overrides}))
    grad = jax.grad(lambda p: jnp.sum(net.apply({"params": p}, **args, train=True)[0] ** 2))
    return flops.xla_flops(jax.jit(grad).lower(params).compile())

  plain = gradient_flops()
  dots = gradient_flops(remat=True, remat_policy="dots")
  dots_no_batch = gradient_flops(remat=True, remat_policy="dots_no_batch")
  full = gradient_flops(remat=True, remat_policy="full")
  assert plain < dots < dots_no_batch < full, (plain, dots, dots_no_batch, full)
  assert full > 1.2 * plain  # The forward pass of every block runs twice.


def test_remat_policy_is_validated():
  with pytest.raises(ValueError, match=r"config.model.remat_policy='some' is not one of \('full'"):
    model_lib.rin_from_config(small_config(remat=True, remat_policy="some"))


@pytest.mark.parametrize("overrides, message", [
    (dict(patch_size=5, image_size=32),
     "config.model.patch_size=5 does not divide config.model.image_size=32"),
    (dict(latent_slots=2), "config.model.latent_slots=2"),
    (dict(latent_slots=1, num_classes=0), "config.model.latent_slots=1"),
    (dict(tape_pos="rope"), "config.model.tape_pos='rope'"),
    (dict(dtype="float16"), "config.model.dtype='float16'"),
    (dict(latent_heads=5), "config.model.latent_heads=5 does not divide"),
    (dict(rw_heads=3), "config.model.rw_heads=3 does not divide"),
    (dict(blocks=()), "config.model.blocks"),
    (dict(blocks="6,x"), "config.model.blocks"),
    (dict(drop_path=1.0), "config.model.drop_path"),
    (dict(latent_dim=42, latent_heads=2, rw_heads=2), "config.model.latent_dim=42"),
    (dict(tape_dim=0), "config.model.tape_dim=0"),
])
def test_validation_errors(overrides, message):
  cfg = dict(small_config())  # A plain dict: ConfigDict would refuse a str for `blocks`.
  cfg.update(overrides)
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    model_lib.rin_from_config(cfg)


def test_validation_also_on_direct_construction():
  with pytest.raises(ValueError, match="config.model.patch_size=3"):
    model_lib.RIN(image_size=16, patch_size=3).init(
        init_key(), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,)), train=False)


def test_blocks_from_string_and_list():
  cfg = dict(small_config())
  cfg["blocks"] = "1,2"  # A command-line style override.
  assert model_lib.rin_from_config(cfg).blocks == (1, 2)
  cfg["blocks"] = [1, 2]
  assert model_lib.rin_from_config(cfg).blocks == (1, 2)
  cfg["bogus"] = 1
  with pytest.raises(ValueError, match="bogus"):
    model_lib.rin_from_config(cfg)


def test_logical_axis_names_and_mesh_shardings(small):
  ref_net, params, args = small
  net = ref_net.net
  abstract = jax.eval_shape(lambda key: net.init(key, **args, train=False), init_key())
  specs = nn.get_partition_spec(abstract)["params"]
  leaves = jax.tree_util.tree_leaves(specs, is_leaf=lambda s: isinstance(s, PartitionSpec))
  shapes = jax.tree_util.tree_leaves(nn.meta.unbox(abstract)["params"])
  assert len(leaves) == len(shapes)
  for spec, shape in zip(leaves, shapes):  # Every parameter is annotated, rank by rank.
    assert isinstance(spec, PartitionSpec) and len(spec) == len(shape.shape)
  block = specs["block_1_layer_0"]
  assert block["mha"]["query"]["kernel"] == PartitionSpec("embed", "heads", "kv")
  assert block["mha"]["query"]["bias"] == PartitionSpec("heads", "kv")
  assert block["mha"]["out"]["kernel"] == PartitionSpec("heads", "kv", "embed")
  assert block["mlp"]["dense1"]["kernel"] == PartitionSpec("embed", "mlp")
  assert block["mlp"]["dense2"]["kernel"] == PartitionSpec("mlp", "embed")
  assert block["mlp"]["ln"]["scale"] == PartitionSpec("embed")
  assert specs["latent_pos_emb"] == PartitionSpec("tokens", "embed")
  assert specs["tape_pos_emb"] == PartitionSpec("tokens", "embed")
  assert specs["class_proj"]["kernel"] == PartitionSpec("vocab", "embed")
  assert specs["stem_conv"]["kernel"] == PartitionSpec(None, None, "vocab", "embed")
  assert specs["out_dense"]["kernel"] == PartitionSpec("embed", "vocab")

  rules = config_lib.base_config().sharding_rules
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
  for s in jax.tree_util.tree_leaves(shardings):
    assert isinstance(s, NamedSharding)
  dense1 = shardings["params"]["block_1_layer_0"]["mlp"]["dense1"]["kernel"]
  assert dense1.spec == PartitionSpec("fsdp", None)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    # Initialising under the mesh applies the logical constraints of every parameter.
    variables = jax.jit(lambda key: net.init(key, **args, train=False),
                        out_shardings=shardings)(init_key())
    kernel = variables["params"]["block_1_layer_0"]["mlp"]["dense1"]["kernel"]
    assert isinstance(kernel.value.sharding, NamedSharding)
    assert kernel.value.sharding.spec == PartitionSpec("fsdp", None)
    sharded_params = jax.device_put(params, nn.meta.unbox(shardings)["params"])
    sharded_args = jax.device_put(args, NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
    pred, hidden = jax.jit(lambda p, a: net.apply({"params": p}, **a, train=False))(
        sharded_params, sharded_args)
  assert pred.sharding.spec[0] == ("data", "fsdp")
  ref_pred, ref_hidden = ref_net.apply({"params": params}, **args, train=False)
  np.testing.assert_allclose(pred, ref_pred, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(hidden, ref_hidden, rtol=1e-4, atol=1e-5)


def test_tiny_rin_overfits_a_batch_of_eight():
  """Acceptance: a tiny RIN memorises eps for 8 fixed (image, t, noise) triples; loss falls 10x."""
  cfg = small_config(num_classes=0, tape_dim=64, latent_slots=16, latent_dim=64)
  net = model_lib.rin_from_config(cfg)
  keys = jax.random.split(jax.random.key(0), 3)
  x0 = jax.random.uniform(keys[0], (8, 16, 16, 3), minval=-1.0, maxval=1.0)
  noise = jax.random.normal(keys[1], x0.shape)
  gamma = 1.0 - jnp.linspace(0.05, 0.95, 8)  # Linear schedule at 8 fixed times.
  x_t = diffusion.add_noise(x0, gamma, noise, 1.0)
  params = jax.jit(net.init, static_argnames="train")(init_key(1), x_t, gamma, train=False)["params"]
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)

  def loss_fn(p):
    pred, _ = net.apply({"params": p}, x_t, gamma, train=False)
    return jnp.mean((pred - noise) ** 2)

  @jax.jit
  def step(p, s):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, s = optimizer.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  losses = []
  for _ in range(150):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_tape_conv_is_a_residual_depthwise_conv_per_block():
  cfg = small_config(tape_conv=True, blocks=(1, 1))
  net, params, args = init(cfg)
  d = cfg.tape_dim
  for i in (0, 1):
    conv = params[f"block_{i}_tape_conv"]
    assert conv["kernel"].shape == (3, 3, 1, d) and conv["bias"].shape == (d,)
  plain_net, plain_params, _ = init(small_config(blocks=(1, 1)))
  assert _num_params(params) - _num_params(plain_params) == 2 * (9 * d + d)
  # With zero convolutions the network is exactly the plain one (a residual branch).
  zeroed = {k: v for k, v in params.items() if "tape_conv" not in k}
  with_zero = dict(zeroed, **{f"block_{i}_tape_conv": jax.tree.map(
      jnp.zeros_like, params[f"block_{i}_tape_conv"]) for i in (0, 1)})
  np.testing.assert_allclose(net.apply({"params": with_zero}, **args, train=False)[0],
                             plain_net.apply({"params": zeroed}, **args, train=False)[0],
                             rtol=1e-6, atol=1e-6)
  assert not np.allclose(net.apply({"params": params}, **args, train=False)[0],
                         plain_net.apply({"params": zeroed}, **args, train=False)[0], atol=1e-4)
  fields = dict(small_config().items(), tape_conv=1)
  with pytest.raises(ValueError, match="config.model.tape_conv=1 must be True or False"):
    model_lib.rin_from_config(fields)


def test_tape_self_attn_is_the_only_route_between_patches_of_a_read_only_block():
  """With one read-only block (blocks=(0,)) the latents never reach the interface, so each
  patch's output is a function of its own pixels alone; tape_self_attn adds exactly one residual
  self-attention over the tokens, which lets a change in one patch move every other patch."""
  def outputs(cfg):
    net, params, args = init(cfg, batch=1)
    x = args["x"]
    moved = x.at[:, :4, :4].add(1.0)  # Patch (0, 0) only.
    plain = net.apply({"params": params}, **args, train=False)[0]
    other = net.apply({"params": params}, **dict(args, x=moved), train=False)[0]
    return params, np.asarray(jnp.abs(other - plain))

  _, change = outputs(small_config(blocks=(0,)))
  assert change[:, :4, :4].max() > 1e-3
  np.testing.assert_array_equal(change[:, 4:], 0.0)
  np.testing.assert_array_equal(change[:, :, 4:], 0.0)

  params, change = outputs(small_config(blocks=(0,), tape_self_attn=True))
  assert change[:, 4:].min() > 0.0 and change[:, :, 4:].min() > 0.0
  d = small_config().tape_dim
  attention = params["block_0_tape_attn"]
  assert _num_params(attention) == 4 * (d * d + d)  # q, k, v and out projections with biases.
  assert _num_params(params["block_0_tape_attn_ln"]) == 2 * d
  fields = dict(small_config().items(), tape_self_attn="yes")
  with pytest.raises(ValueError, match="config.model.tape_self_attn='yes' must be True or False"):
    model_lib.rin_from_config(fields)


def _changed_patches(cfg, row, col):
  """Which output patches move when one input pixel changes (a 0/1 map on the token grid)."""
  net, params, args = init(cfg, batch=1)
  moved = args["x"].at[:, row, col].add(1.0)
  plain = net.apply({"params": params}, **args, train=False)[0]
  other = net.apply({"params": params}, **dict(args, x=moved), train=False)[0]
  p, side = cfg.patch_size, cfg.image_size // cfg.patch_size
  change = np.abs(np.asarray(other - plain))[0].sum(-1)
  return change.reshape(side, p, side, p).sum((1, 3)) > 0


def test_stem_overlap_and_out_kernel_reach_exactly_their_neighbours():
  """With one read-only block (no route through the latents) each output patch is a function of
  the pixels its stem window covers, then of the tokens its output kernel covers."""
  expected = np.zeros((4, 4), bool)
  expected[1, 1] = True
  # Pixel (4, 4) is the first pixel of patch (1, 1) of the 4x4 patch grid.
  np.testing.assert_array_equal(_changed_patches(small_config(blocks=(0,)), 4, 4), expected)
  # Two pixels of overlap: patch (0, 0)'s window, rows and columns -2..5, also covers it.
  expected[:2, :2] = True
  np.testing.assert_array_equal(
      _changed_patches(small_config(blocks=(0,), stem_overlap=2), 4, 4), expected)
  # A 3x3 output kernel on the token grid: every patch within one token of (1, 1).
  expected = np.zeros((4, 4), bool)
  expected[:3, :3] = True
  np.testing.assert_array_equal(
      _changed_patches(small_config(blocks=(0,), out_kernel=3), 4, 4), expected)

  _, params, _ = init(small_config(stem_overlap=2, out_kernel=3))
  d, out = small_config().tape_dim, 4 * 4 * 3
  assert params["stem_conv"]["kernel"].shape == (8, 8, 3, d)
  assert params["out_conv"]["kernel"].shape == (3, 3, d, out)
  assert "out_dense" not in params


@pytest.mark.parametrize("field,value,allowed", [
    ("stem_overlap", 5, r"in \[0, patch_size=4\]"),
    ("stem_overlap", -1, r"in \[0, patch_size=4\]"),
    ("out_kernel", 2, "positive odd integer"),
    ("out_kernel", 9, "at most 7"),
])
def test_stem_overlap_and_out_kernel_are_validated(field, value, allowed):
  fields = dict(small_config().items(), **{field: value})
  with pytest.raises(ValueError, match=rf"config.model.{field}={value} must .*{allowed}"):
    model_lib.rin_from_config(fields)
