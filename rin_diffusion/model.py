"""RIN: the Recurrent Interface Network denoiser (pix2seq's "tape" model) in Flax Linen.

Follows the official TF2 implementation (pix2seq `architectures/tape.py`, `transformers.py`) with time
and class tokens on the latents and latent self-conditioning, as used by every RIN config:

  interface = LN(patch conv(x)) + pos-emb                                   (B, N, d)
  latents   = [learned latents, time token, class token, extra tokens]     (B, L_total, D)
  latents  += LN0(MLPres(hidden))                                          (zero at init)
  per block: latents <- READ(latents, interface); latents <- K x self-attention layers;
             interface <- WRITE(interface, latents)
  pred      = depth_to_space(Dense(LN(interface)))                         (B, H, W, channels)

Every parameter carries logical axis names ('embed', 'mlp', 'heads', 'kv', 'tokens', 'vocab');
`config.sharding_rules` maps them to mesh axes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LN_EPSILON = 1e-6
TAPE_POS_OPTIONS = ("learned", "sincos")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# What a rematerialised block keeps for the backward pass (config.model.remat_policy): 'full' keeps
# only its inputs and recomputes the whole block; 'dots' keeps every matmul output and recomputes
# the cheap elementwise work (norms, GELU, softmax); 'dots_no_batch' keeps the weight matmuls but
# recomputes attention's score and weighted-sum products, whose size grows with tokens squared.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

_KERNEL_INIT = nn.initializers.xavier_uniform()  # Keras' default glorot_uniform.
_ZEROS = nn.initializers.zeros_init()
_ONES = nn.initializers.ones_init()
_POS_EMB_INIT = nn.initializers.truncated_normal(0.02)  # Truncated at 2 std, like Keras'.


def _named(init, names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(init, names)


def maybe_remat(module_cls: type[nn.Module], remat: bool, policy: str,
                static_argnums: tuple[int, ...] = ()) -> type[nn.Module]:
  """`module_cls`, rematerialised with REMAT_POLICIES[policy] when `remat` (same parameters)."""
  if not remat:
    return module_cls
  return nn.remat(module_cls, static_argnums=static_argnums, policy=REMAT_POLICIES[policy])


def _layer_norm(name: str, dtype: Any, scale_init=_ONES) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=LN_EPSILON, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False,
      scale_init=_named(scale_init, ("embed",)), bias_init=_named(_ZEROS, ("embed",)), name=name)


def _dense(features: int, names: tuple[str | None, str | None], name: str, dtype: Any,
           kernel_init=_KERNEL_INIT) -> nn.Dense:
  return nn.Dense(
      features, dtype=dtype, param_dtype=jnp.float32, kernel_init=_named(kernel_init, names),
      bias_init=_named(_ZEROS, (names[1],)), name=name)


class _Projection(nn.Module):
  """Dense over the last `num_in_axes` axes into `features`: Keras' EinsumDense, as in its MHA.

  The kernel is created at its full shape (*in, *features) (Flax's DenseGeneral initialises a
  flattened kernel and reshapes it, which breaks logically partitioned initialisers under a mesh).
  Its Glorot-uniform fans are the ones Keras computes for that N-D kernel, not those of the
  flattened matrix: every axis but the last two is "receptive field", so fan_in = shape[-2] * rf
  and fan_out = shape[-1] * rf. For q/k/v kernels (D, heads, head_dim) the limit is
  sqrt(6 / (D * (heads + head_dim))); for the output kernel (heads, head_dim, D_out) it is
  sqrt(6 / (heads * (head_dim + D_out))). Flax's xavier_uniform with its default axes
  (in -2, out -1, the rest receptive field) is exactly that rule.
  """
  features: tuple[int, ...]
  names: tuple[str | None, ...]
  num_in_axes: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n_in = self.num_in_axes
    kernel = self.param("kernel", _named(_KERNEL_INIT, self.names),
                        tuple(x.shape[-n_in:]) + tuple(self.features), jnp.float32)
    bias = self.param("bias", _named(_ZEROS, self.names[n_in:]), tuple(self.features),
                      jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return jax.lax.dot_general(x, kernel, (contract, ((), ()))) + bias


class Attention(nn.Module):
  """Keras-style multi-head attention: key_dim = value_dim = inner / heads, q/k/v/out biases."""
  num_heads: int
  inner_dim: int
  out_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array,
               deterministic: bool) -> jax.Array:
    heads = (self.num_heads, self.inner_dim // self.num_heads)
    names = ("embed", "heads", "kv")
    q = _Projection(heads, names, dtype=self.dtype, name="query")(inputs_q)
    k = _Projection(heads, names, dtype=self.dtype, name="key")(inputs_kv)
    v = _Projection(heads, names, dtype=self.dtype, name="value")(inputs_kv)
    deterministic = deterministic or self.dropout_rate == 0.0
    y = nn.dot_product_attention(
        q, k, v, dropout_rng=None if deterministic else self.make_rng("dropout"),
        dropout_rate=self.dropout_rate, deterministic=deterministic,
        broadcast_dropout=False,  # Keras drops attention weights independently per example.
        dtype=self.dtype, force_fp32_for_softmax=True)
    return _Projection((self.out_dim,), ("heads", "kv", "embed"), num_in_axes=2, dtype=self.dtype,
                       name="out")(y)


def _drop_path(module: nn.Module, x: jax.Array, rate: float, deterministic: bool) -> jax.Array:
  """Stochastic depth: drops the whole residual branch per example, rescales the kept ones."""
  if deterministic or rate == 0.0:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(
      module.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


def sinusoid_encoding(positions: jax.Array, dim: int) -> jax.Array:
  """pix2seq `positional_encoding`: [sin(p w_k), cos(p w_k)] with w_k = 10000^(-2k/dim)."""
  i = np.arange(dim)
  rates = 1.0 / np.power(10000.0, (2 * (i // 2)).astype(np.float64) / dim)
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(rates, jnp.float32)
  return jnp.concatenate([jnp.sin(angles[..., 0::2]), jnp.cos(angles[..., 1::2])], axis=-1)


def sincos_2d_pos_emb(n_rows: int, n_cols: int, dim: int, normalization_max: float) -> jax.Array:
  """pix2seq `add_vis_pos_emb(..., 'sin_cos')`: (n_rows * n_cols, dim), coordinates in [0, max]."""

  def coords(n):
    c = np.arange(n, dtype=np.float32)
    return c / (n - 1) * normalization_max if n > 1 else c

  if n_rows == 1 or n_cols == 1:
    return sinusoid_encoding(jnp.asarray(coords(n_rows * n_cols)), dim)
  half = dim // 2
  y = sinusoid_encoding(jnp.asarray(coords(n_rows)), half)  # (n_rows, half)
  x = sinusoid_encoding(jnp.asarray(coords(n_cols)), half)  # (n_cols, half)
  y = jnp.broadcast_to(y[:, None, :], (n_rows, n_cols, half))
  x = jnp.broadcast_to(x[None, :, :], (n_rows, n_cols, half))
  emb = jnp.concatenate([y, x], axis=-1)
  if emb.shape[-1] < dim:  # Odd dim: pix2seq's code would not build; pad with zeros.
    emb = jnp.pad(emb, ((0, 0), (0, 0), (0, dim - emb.shape[-1])))
  return emb.reshape(n_rows * n_cols, dim)


def depth_to_space(x: jax.Array, block_size: int) -> jax.Array:
  """(B, h, w, p*p*C) -> (B, h*p, w*p, C); channel (i*p + j)*C + c goes to pixel (h*p+i, w*p+j, c)."""
  b, h, w, depth = x.shape
  p = block_size
  c = depth // (p * p)
  x = x.reshape(b, h, w, p, p, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c)


class ScalarEmbedding(nn.Module):
  """pix2seq ScalarEmbedding with normalize=True, last_swish=False: (B,) -> (B, 4 * dim)."""
  dim: int
  scaling: float
  expansion: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, s: jax.Array) -> jax.Array:
    emb = sinusoid_encoding(s.astype(jnp.float32) * self.scaling, self.dim)
    mean = jnp.mean(emb, axis=-1, keepdims=True)
    std = jnp.std(emb, axis=-1, keepdims=True)
    emb = (emb - mean) / std
    width = self.dim * self.expansion
    emb = _dense(width, (None, "mlp"), "dense0", self.dtype)(emb)
    emb = nn.silu(emb)
    return _dense(width, ("mlp", "embed"), "dense1", self.dtype)(emb)


class MLPRes(nn.Module):
  """x + DropPath(Dense(dim * ratio) -> GELU -> Dropout -> Dense(dim))(LN(x)); pix2seq MLP(1)."""
  ratio: int
  drop_units: float = 0.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    dim = x.shape[-1]
    h = _layer_norm("ln", self.dtype)(x)
    h = _dense(dim * self.ratio, ("embed", "mlp"), "dense1", self.dtype)(h)
    h = nn.gelu(h, approximate=False)
    h = nn.Dropout(self.drop_units)(h, deterministic=deterministic)
    h = _dense(dim, ("mlp", "embed"), "dense2", self.dtype)(h)
    return x + _drop_path(self, h, self.drop_path, deterministic)


class LatentLayer(nn.Module):
  """Pre-LN transformer layer on the latents (pix2seq TransformerEncoderLayer)."""
  num_heads: int
  mlp_ratio: int
  drop_path: float = 0.0
  drop_units: float = 0.0
  drop_att: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    dim = x.shape[-1]
    h = _layer_norm("mha_ln", self.dtype)(x)
    h = Attention(self.num_heads, dim, dim, self.drop_att, self.dtype, name="mha")(
        h, h, deterministic)
    x = x + _drop_path(self, h, self.drop_path, deterministic)
    return MLPRes(self.mlp_ratio, self.drop_units, self.drop_path, self.dtype, name="mlp")(
        x, deterministic)


class CrossAttentionUnit(nn.Module):
  """READ / WRITE unit (pix2seq TransformerDecoderLayer with cross-attention only, no dropout)."""
  num_heads: int
  inner_dim: int
  mlp_ratio: int
  kv_ln: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    q = _layer_norm("q_ln", self.dtype)(x)
    kv = _layer_norm("kv_ln", self.dtype)(context) if self.kv_ln else context
    x = x + Attention(self.num_heads, self.inner_dim, x.shape[-1], dtype=self.dtype, name="mha")(
        q, kv, deterministic=True)
    if self.mlp_ratio > 0:
      x = MLPRes(self.mlp_ratio, dtype=self.dtype, name="mlp")(x, deterministic=True)
    return x


def _batch_constraint(x: jax.Array) -> jax.Array:
  return nn.with_logical_constraint(x, ("batch",) + (None,) * (x.ndim - 1))


def check_inputs(network: str, x: jax.Array, gamma: jax.Array, class_onehot: jax.Array | None,
                 extra_gammas: jax.Array | None, *, image_size: int, in_channels: int,
                 num_classes: int, num_extra_tokens: int
                 ) -> tuple[jax.Array, jax.Array | None]:
  """The denoiser call contract's input checks, shared by the RIN and the U-Net.

  Raises naming `network` and the expected shape; returns gamma as (B,) float32 and the class
  one-hot (all zeros, unconditional, when None and num_classes > 0; None when num_classes = 0).
  """
  chex.assert_rank(x, 4, custom_message=f"{network} input x: expected (B, H, W, C)")
  chex.assert_type(x, float, custom_message=f"{network} input x: expected float images (data "
                   "scaled to [-1, 1], noised and normalised), not raw integer pixels")
  chex.assert_rank(gamma, {0, 1}, custom_message=f"{network} gamma: expected a scalar or (B,)")
  batch = x.shape[0]
  want = (batch, image_size, image_size, in_channels)
  if x.shape != want:
    raise ValueError(f"{network} input x has shape {x.shape}, expected {want} "
                     "(image_size, image_size, channels + extra_in_channels).")
  gamma = jnp.asarray(gamma, jnp.float32)
  if gamma.ndim == 0:
    gamma = jnp.broadcast_to(gamma, (batch,))
  if gamma.shape != (batch,):
    raise ValueError(f"{network} gamma has shape {gamma.shape}, expected ({batch},).")
  if num_extra_tokens > 0 and (
      extra_gammas is None or extra_gammas.shape != (batch, num_extra_tokens)):
    got = None if extra_gammas is None else extra_gammas.shape
    raise ValueError(f"{network} extra_gammas has shape {got}, expected ({batch}, "
                     f"{num_extra_tokens}) for config.model.num_extra_tokens={num_extra_tokens}.")
  if num_classes <= 0:
    return gamma, None
  if class_onehot is None:  # Unconditional: the all-zeros one-hot.
    class_onehot = jnp.zeros((batch, num_classes), jnp.float32)
  if class_onehot.shape != (batch, num_classes):
    raise ValueError(f"{network} class_onehot has shape {class_onehot.shape}, expected "
                     f"({batch}, {num_classes}).")
  return gamma, class_onehot


class RIN(nn.Module):
  """Recurrent Interface Network denoiser; fields mirror `config.model` (see config_lib)."""
  image_size: int = 64
  channels: int = 3
  extra_in_channels: int = 0
  num_extra_tokens: int = 0
  num_classes: int = 1000
  patch_size: int = 4
  tape_dim: int = 512
  latent_slots: int = 128
  latent_dim: int = 768
  blocks: tuple[int, ...] = (6, 6, 6, 6)
  latent_mlp_ratio: int = 4
  tape_mlp_ratio: int = 4
  latent_heads: int = 16
  rw_heads: int = 16
  drop_units: float = 0.0
  drop_path: float = 0.0
  drop_att: float = 0.0
  tape_pos: str = "learned"
  latent_pos_init_std: float = 0.02
  xattn_kv_ln: bool = False
  # Not in the reference: a residual depthwise 3x3 convolution over the interface grid at the start
  # of every block (lucidrains' rin-pytorch "PEG"), giving neighbouring patches a direct route.
  tape_conv: bool = False
  # Not in the reference either: pre-LN self-attention among the interface tokens at the start of
  # every block (rin-pytorch's patches_self_attn), so that a patch can read its neighbours'
  # noisy pixels without a round trip through the latents.
  tape_self_attn: bool = False
  # Not in the reference: local routes at the ends of the network, for small budgets. stem_overlap
  # widens each token's patch embedding by that many pixels of the neighbouring patches on every
  # side (kernel p + 2 * overlap, stride p); out_kernel > 1 makes the output projection read the
  # out_kernel x out_kernel neighbourhood of tokens, so a patch's pixels can follow its neighbours'.
  stem_overlap: int = 0
  out_kernel: int = 1
  time_scaling: float = 1000.0
  dtype: str = "float32"
  # Recompute each latent layer and each read and write unit in the backward pass instead of
  # keeping their activations; remat_policy says what is kept (REMAT_POLICIES).
  remat: bool = False
  remat_policy: str = "full"

  @property
  def num_learned_latents(self) -> int:
    return self.latent_slots - 1 - (1 if self.num_classes > 0 else 0)

  @property
  def total_latents(self) -> int:
    return self.latent_slots + self.num_extra_tokens

  @property
  def num_tokens(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  def check(self) -> None:
    """Raises ValueError naming the first invalid field; called before any compute."""
    _check_fields({f.name: getattr(self, f.name) for f in _config_fields()})

  @nn.compact
  def __call__(self, x: jax.Array, gamma: jax.Array, class_onehot: jax.Array | None = None,
               hidden: jax.Array | None = None, extra_gammas: jax.Array | None = None, *,
               train: bool) -> tuple[jax.Array, jax.Array]:
    """x: (B, H, W, channels + extra_in_channels), gamma: (B,) -> (pred, latents)."""
    self.check()
    gamma, class_onehot = check_inputs(
        "RIN", x, gamma, class_onehot, extra_gammas, image_size=self.image_size,
        in_channels=self.channels + self.extra_in_channels, num_classes=self.num_classes,
        num_extra_tokens=self.num_extra_tokens)
    dtype = DTYPES[self.dtype]
    p, d, big_d = self.patch_size, self.tape_dim, self.latent_dim
    batch = x.shape[0]
    hidden_shape = (batch, self.total_latents, big_d)
    if hidden is None:
      hidden = jnp.zeros(hidden_shape, jnp.float32)
    elif hidden.shape != hidden_shape:
      raise ValueError(f"RIN hidden has shape {hidden.shape}, expected {hidden_shape}.")
    deterministic = not train

    # Interface: patch embedding, stem LN, then position embedding.
    n_side = self.image_size // p
    stem_size, overlap = p + 2 * self.stem_overlap, self.stem_overlap
    tokens = nn.Conv(
        d, (stem_size, stem_size), strides=(p, p), padding=((overlap, overlap), (overlap, overlap)),
        use_bias=True, dtype=dtype,
        param_dtype=jnp.float32, kernel_init=_named(_KERNEL_INIT, (None, None, "vocab", "embed")),
        bias_init=_named(_ZEROS, ("embed",)), name="stem_conv")(x.astype(dtype))
    iface = _layer_norm("stem_ln", dtype)(tokens.reshape(batch, n_side * n_side, d))
    if self.tape_pos == "learned":
      tape_pos = self.param("tape_pos_emb", _named(_POS_EMB_INIT, ("tokens", "embed")),
                            (n_side * n_side, d), jnp.float32)
    else:
      tape_pos = sincos_2d_pos_emb(n_side, n_side, d, self.time_scaling)
    iface = iface + tape_pos.astype(dtype)[None]

    # Latents: learned rows, time token, class token, extra scalar tokens (cascade aug levels).
    latent_pos = self.param(
        "latent_pos_emb",
        _named(nn.initializers.truncated_normal(self.latent_pos_init_std), ("tokens", "embed")),
        (self.num_learned_latents, big_d), jnp.float32)
    parts = [jnp.broadcast_to(latent_pos.astype(dtype)[None],
                              (batch, self.num_learned_latents, big_d))]
    time_emb = ScalarEmbedding(big_d // 4, self.time_scaling, dtype=dtype, name="time_emb")
    parts.append(time_emb(gamma)[:, None].astype(dtype))
    if self.num_classes > 0:
      class_proj = _dense(big_d, ("vocab", "embed"), "class_proj", dtype)
      parts.append(class_proj(class_onehot.astype(dtype))[:, None].astype(dtype))
    for k in range(self.num_extra_tokens):
      extra_emb = ScalarEmbedding(big_d // 4, self.time_scaling, dtype=dtype,
                                  name=f"extra_emb_{k}")
      parts.append(extra_emb(extra_gammas[:, k])[:, None].astype(dtype))
    latents = jnp.concatenate(parts, axis=1)

    # Latent self-conditioning, applied also to zeros: LN0's zero scale makes it 0 at init.
    prev = MLPRes(self.latent_mlp_ratio, dtype=dtype, name="self_cond_mlp")(
        hidden.astype(dtype), deterministic=True)
    latents = latents + _layer_norm("self_cond_ln", dtype, scale_init=_ZEROS)(prev)

    layer_cls = maybe_remat(LatentLayer, self.remat, self.remat_policy, static_argnums=(2,))
    unit_cls = maybe_remat(CrossAttentionUnit, self.remat, self.remat_policy)
    inner = min(d, big_d)
    for i, num_layers in enumerate(self.blocks):
      latents = _batch_constraint(latents)
      iface = _batch_constraint(iface)
      if self.tape_conv:
        grid = iface.reshape(batch, n_side, n_side, d)
        local = nn.Conv(
            d, (3, 3), padding="SAME", feature_group_count=d, dtype=dtype,
            param_dtype=jnp.float32,
            kernel_init=_named(_KERNEL_INIT, (None, None, None, "embed")),
            bias_init=_named(_ZEROS, ("embed",)), name=f"block_{i}_tape_conv")(grid)
        iface = iface + local.reshape(batch, n_side * n_side, d)
      if self.tape_self_attn:
        normed = _layer_norm(f"block_{i}_tape_attn_ln", dtype)(iface)
        iface = iface + Attention(self.rw_heads, d, d, dtype=dtype,
                                  name=f"block_{i}_tape_attn")(normed, normed, deterministic=True)
      latents = unit_cls(self.rw_heads, inner, self.latent_mlp_ratio, self.xattn_kv_ln,
                                   dtype, name=f"block_{i}_read")(latents, iface)
      if num_layers == 0:  # pix2seq: a read-only block (compute and write are identity).
        continue
      for j in range(num_layers):
        latents = layer_cls(self.latent_heads, self.latent_mlp_ratio, self.drop_path,
                            self.drop_units, self.drop_att, dtype,
                            name=f"block_{i}_layer_{j}")(latents, deterministic)
      iface = unit_cls(self.rw_heads, inner, self.tape_mlp_ratio, self.xattn_kv_ln,
                                 dtype, name=f"block_{i}_write")(iface, latents)

    out = _layer_norm("out_ln", dtype)(iface)
    if self.out_kernel == 1:
      out = _dense(p * p * self.channels, ("embed", "vocab"), "out_dense", dtype)(out)
    else:
      out = nn.Conv(
          p * p * self.channels, (self.out_kernel, self.out_kernel), padding="SAME", dtype=dtype,
          param_dtype=jnp.float32, kernel_init=_named(_KERNEL_INIT, (None, None, "embed", "vocab")),
          bias_init=_named(_ZEROS, ("vocab",)), name="out_conv")(
              out.reshape(batch, n_side, n_side, d))
    pred = depth_to_space(out.reshape(batch, n_side, n_side, p * p * self.channels), p)
    # float32 outputs keep sampler loop carries (and self-conditioning state) dtype-stable.
    return pred.astype(jnp.float32), latents.astype(jnp.float32)


def _config_fields() -> list[dataclasses.Field]:
  skip = {"parent", "name"}
  return [f for f in dataclasses.fields(RIN) if f.name not in skip]


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_fields(f: Mapping[str, Any]) -> None:
  def bad(field, why):
    raise ValueError(f"config.model.{field}={f[field]!r} {why}")

  for name in ("image_size", "channels", "patch_size", "tape_dim", "latent_slots", "latent_dim",
               "latent_mlp_ratio", "latent_heads", "rw_heads"):
    if not _is_int(f[name]) or f[name] < 1:
      bad(name, "must be a positive integer")
  for name in ("extra_in_channels", "num_extra_tokens", "num_classes", "tape_mlp_ratio"):
    if not _is_int(f[name]) or f[name] < 0:
      bad(name, "must be a non-negative integer")
  if f["image_size"] % f["patch_size"]:
    raise ValueError(f"config.model.patch_size={f['patch_size']} does not divide "
                     f"config.model.image_size={f['image_size']}")
  blocks = f["blocks"]
  if (not isinstance(blocks, (tuple, list)) or not blocks
      or not all(_is_int(k) and k >= 0 for k in blocks)):
    bad("blocks", "must be a non-empty tuple of non-negative integers (layers per block)")
  cond_tokens = 1 + (1 if f["num_classes"] > 0 else 0)
  if f["latent_slots"] <= cond_tokens:
    bad("latent_slots", f"must exceed the {cond_tokens} time/class token(s) it includes "
        "(at least one learned latent)")
  if f["latent_dim"] % 4:
    bad("latent_dim", "must be divisible by 4 (the time embedding is 4 x latent_dim / 4 wide)")
  if f["latent_dim"] % f["latent_heads"]:
    raise ValueError(f"config.model.latent_heads={f['latent_heads']} does not divide "
                     f"config.model.latent_dim={f['latent_dim']}")
  inner = min(f["tape_dim"], f["latent_dim"])
  if inner % f["rw_heads"]:
    raise ValueError(f"config.model.rw_heads={f['rw_heads']} does not divide the read/write "
                     f"attention width min(tape_dim, latent_dim)={inner}")
  for name in ("tape_conv", "tape_self_attn"):
    if not isinstance(f[name], bool):
      bad(name, "must be True or False")
  if not _is_int(f["stem_overlap"]) or not 0 <= f["stem_overlap"] <= f["patch_size"]:
    bad("stem_overlap", f"must be an integer in [0, patch_size={f['patch_size']}] (pixels of each "
        "neighbouring patch the patch embedding also sees)")
  if not _is_int(f["out_kernel"]) or f["out_kernel"] < 1 or f["out_kernel"] % 2 == 0:
    bad("out_kernel", "must be a positive odd integer (1: the reference's per-token projection)")
  side = f["image_size"] // f["patch_size"]
  if f["out_kernel"] > 2 * side - 1:
    bad("out_kernel", f"must be at most {2 * side - 1} (twice the {side} tokens per side, minus 1)")
  if f["tape_self_attn"] and f["tape_dim"] % f["rw_heads"]:
    raise ValueError(f"config.model.rw_heads={f['rw_heads']} does not divide "
                     f"config.model.tape_dim={f['tape_dim']} (tape_self_attn's heads)")
  for name in ("drop_units", "drop_path", "drop_att"):
    if not isinstance(f[name], (int, float)) or not 0.0 <= f[name] < 1.0:
      bad(name, "must be in [0, 1)")
  if f["tape_pos"] not in TAPE_POS_OPTIONS:
    bad("tape_pos", f"is not one of {TAPE_POS_OPTIONS}")
  if f["dtype"] not in DTYPES:
    bad("dtype", f"is not one of {tuple(DTYPES)}")
  check_remat(f, bad)
  if not isinstance(f["time_scaling"], (int, float)) or f["time_scaling"] <= 0:
    bad("time_scaling", "must be positive")
  if (not isinstance(f["latent_pos_init_std"], (int, float))
      or isinstance(f["latent_pos_init_std"], bool) or not f["latent_pos_init_std"] > 0):
    bad("latent_pos_init_std", "must be a positive number (the reference uses 0.02)")


def check_remat(f: Mapping[str, Any], bad: Any) -> None:
  """remat and remat_policy (shared by the RIN and the U-Net); bad(field, why) raises."""
  if not isinstance(f["remat"], bool):
    bad("remat", "must be True or False")
  if f["remat_policy"] not in REMAT_POLICIES:
    bad("remat_policy", f"is not one of {tuple(REMAT_POLICIES)}")


def _model_fields(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """Reads the RIN fields from a config.model ConfigDict (or dict); raises on unknown/missing."""
  # 'architecture' selects the network (rin_diffusion.networks); it is not a RIN field.
  keys = set(model_config.keys()) - {"architecture"}
  names = [fd.name for fd in _config_fields()]
  unknown = sorted(keys - set(names))
  if unknown:
    raise ValueError(f"config.model has unknown field(s) {unknown}; RIN takes {names}")
  missing = [n for n in names if n not in keys]
  if missing:
    raise ValueError(f"config.model is missing field(s) {missing}")
  fields = {n: model_config[n] for n in names}
  fields["blocks"] = parse_blocks(fields["blocks"])
  return fields


def parse_blocks(blocks: Any) -> Any:
  """config.model.blocks as a tuple; a string '6,6,6,6' comes from a command-line override."""
  if isinstance(blocks, str):
    try:
      return tuple(int(k) for k in blocks.split(",") if k.strip())
    except ValueError:
      raise ValueError(f"config.model.blocks={blocks!r} is not a comma-separated list of "
                       "integers") from None
  return tuple(blocks) if isinstance(blocks, Sequence) else blocks


def rin_from_config(model_config: Mapping[str, Any]) -> RIN:
  """Builds (and validates) a RIN from `config.model`."""
  fields = _model_fields(model_config)
  _check_fields(fields)
  return RIN(**fields)


def zero_hidden(model_config: Mapping[str, Any], batch_size: int) -> jax.Array:
  """The "no previous latents" self-conditioning state, (B, latent_slots + num_extra_tokens, D)."""
  total = model_config["latent_slots"] + model_config["num_extra_tokens"]
  return jnp.zeros((batch_size, total, model_config["latent_dim"]), jnp.float32)
