"""The Cascaded Diffusion Models' U-Net denoiser (Ho et al. 2021, Appendix B) in Flax Linen.

DDPM / Improved-DDPM style (`style='ddpm'`) for the 32 and 64 stages, SR3 style (`style='sr3'`) for
the 128 and 256 super-resolution stages. It has the RIN's call contract, so every trainer, sampler
and cascade path takes either network:

  UNet(...)(x, gamma, class_onehot=None, hidden=None, extra_gammas=None, *, train) -> (pred, hidden)

`hidden` (RIN's self-conditioning latents) is not used and is returned unchanged.

Choices (C = base_channels, E = 4 C the conditioning width):
* Noise level: sinusoidal features of width C of s = time_scaling * gamma ('gamma'), or of
  s = time_scaling * (clip(logSNR, -20, 20) + 20) / 40 with logSNR = log(gamma / (1 - gamma)) and
  gamma clipped to [1e-9, 1 - 1e-7] ('logsnr'; continuous noise conditioning on [0, time_scaling]).
  The features are `model.sinusoid_encoding`: [sin(s r_k), cos(s r_k)], r_k = 10000^(-k / (C/2)):
  Improved DDPM's frequencies in DDPM's sin-then-cos order, not normalised (RIN's ScalarEmbedding
  normalises; DDPM does not). Then Dense(E) -> SiLU -> Dense(E) = emb (DDPM's timestep MLP).
* Class: a bias-free Dense(num_classes -> E) of the one-hot, i.e. an embedding table initialised
  N(0, 1) like Improved DDPM's nn.Embedding; the all-zeros (null) one-hot gives a zero embedding,
  which classifier-free guidance needs. Added to emb. num_classes = 0: no table, class ignored.
* Each extra gamma (a cascade's augmentation level): its own sinusoid (same mapping as the noise
  level) -> Dense(E) -> SiLU -> Dense(E), added to emb (CDM adds it to the class embedding).
* ResBlock(in -> out): h = SiLU(GN(x)); [up/down: resample h and x]; h = Conv3x3(out)(h);
  scale, shift = split(Dense(2 out)(SiLU(emb))); h = SiLU(GN(h) * (1 + scale) + shift);
  h = Conv3x3(out, zero init)(Dropout(h)); skip = x if in == out else Conv1x1(out)(x);
  out = skip + h ('ddpm'), (skip + h) / sqrt(2) ('sr3', SR3's skip rescaling). This is Improved
  DDPM's ResBlock with use_scale_shift_norm.
* Attention(ch): GN -> Dense(3 ch) (a 1x1 conv) split into q, k, v and then into heads
  (Improved DDPM's QKVAttention order) -> softmax(q k^T / sqrt(head_dim)) v over the H W positions
  (softmax in float32) -> Dense(ch, zero init) -> + x. heads = num_heads, or ch // head_dim.
* Downsample: 'ddpm' Conv3x3 stride 2 with PyTorch's symmetric padding of 1 (Improved DDPM; it
  samples pixels 0, 2, 4, ...), 'sr3' a ResBlock(ch -> ch) with 2x2 average pooling inside.
  Upsample: 'ddpm' nearest 2x then Conv3x3, 'sr3' a ResBlock(ch -> ch) with nearest 2x inside
  (BigGAN's up/down residual blocks).
* Layout (Improved DDPM's UNetModel): input Conv3x3(-> C mult[0]); per level l, num_res_blocks x
  [ResBlock(-> C mult[l]) (+ Attention if the resolution is in attention_resolutions)], every
  output pushed on a skip stack (the input conv's too), a Downsample between levels (pushed too);
  middle ResBlock, Attention, ResBlock; up path with levels reversed, (num_res_blocks + 1) x
  [concat(h, skip.pop()) -> ResBlock(-> C mult[l]) (+ Attention)], an Upsample after the last one of
  every level but level 0; output GN -> SiLU -> Conv3x3(zero init) -> channels (x 2 with
  learned_variance: the mean prediction, then Improved DDPM's raw variance interpolation value v).
  attention_resolutions are pixel resolutions, as the paper writes them.
* GroupNorm: norm_groups groups, epsilon 1e-5 (PyTorch's default, used by Improved DDPM's
  GroupNorm32; DDPM's TF code used 1e-6), two-pass variance, statistics in float32.
* Initialisation: Glorot-uniform kernels (DDPM's TF default_init(1.0) = variance scaling, fan_avg,
  uniform), zero biases, and zero kernels for the last conv of each ResBlock, the attention output
  and the output conv, so every residual branch starts as the identity and pred is 0 at init.
* Parameters are float32; `dtype` is the compute dtype; pred is returned as float32.

Every parameter carries logical axis names: conv kernels (None, None, 'embed', 'mlp'), dense
kernels ('embed', 'mlp') (the attention output ('mlp', 'embed')), the class table
('vocab', 'embed'), biases the name of their kernel's output axis, norm scales/biases ('embed',).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rin_diffusion.model import DTYPES, check_inputs, check_remat, maybe_remat, sinusoid_encoding

GN_EPSILON = 1e-5
STYLES = ("ddpm", "sr3")
NOISE_EMBEDDINGS = ("gamma", "logsnr")
LOGSNR_GAMMA_MIN = 1e-9
LOGSNR_GAMMA_MAX = 1.0 - 1e-7
LOGSNR_LIMIT = 20.0
# Fields read from config.model (shared with the RIN); every other UNet field is config.unet's.
MODEL_FIELDS = ("image_size", "channels", "extra_in_channels", "num_extra_tokens", "num_classes",
                "dtype", "remat", "remat_policy")

_KERNEL_INIT = nn.initializers.xavier_uniform()
_ZEROS = nn.initializers.zeros_init()
_ONES = nn.initializers.ones_init()
_CLASS_INIT = nn.initializers.normal(1.0)


def _named(init, names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(init, names)


def _conv(features: int, size: int, name: str, dtype: Any, *, zero: bool = False,
          strides: int = 1) -> nn.Conv:
  pad = size // 2  # PyTorch's symmetric padding: also right for stride 2 on even sizes.
  return nn.Conv(
      features, (size, size), strides=(strides, strides), padding=((pad, pad), (pad, pad)),
      dtype=dtype, param_dtype=jnp.float32,
      kernel_init=_named(_ZEROS if zero else _KERNEL_INIT, (None, None, "embed", "mlp")),
      bias_init=_named(_ZEROS, ("mlp",)), name=name)


def _dense(features: int, name: str, dtype: Any, *, zero: bool = False,
           names: tuple[str, str] = ("embed", "mlp")) -> nn.Dense:
  return nn.Dense(
      features, dtype=dtype, param_dtype=jnp.float32,
      kernel_init=_named(_ZEROS if zero else _KERNEL_INIT, names),
      bias_init=_named(_ZEROS, (names[1],)), name=name)


def _group_norm(groups: int, name: str, dtype: Any) -> nn.GroupNorm:
  return nn.GroupNorm(
      num_groups=groups, epsilon=GN_EPSILON, dtype=dtype, param_dtype=jnp.float32,
      use_fast_variance=False, scale_init=_named(_ONES, ("embed",)),
      bias_init=_named(_ZEROS, ("embed",)), name=name)


def noise_level_input(gamma: jax.Array, noise_embedding: str, time_scaling: float) -> jax.Array:
  """The scalar fed to the sinusoid: time_scaling * gamma, or logSNR mapped onto [0, scaling]."""
  gamma = jnp.asarray(gamma, jnp.float32)
  if noise_embedding == "gamma":
    return time_scaling * gamma
  gamma = jnp.clip(gamma, LOGSNR_GAMMA_MIN, LOGSNR_GAMMA_MAX)
  logsnr = jnp.log(gamma) - jnp.log1p(-gamma)
  logsnr = jnp.clip(logsnr, -LOGSNR_LIMIT, LOGSNR_LIMIT)
  return time_scaling * (logsnr + LOGSNR_LIMIT) / (2.0 * LOGSNR_LIMIT)


class NoiseLevelMLP(nn.Module):
  """(B,) gamma -> sinusoid(width) -> Dense(features) -> SiLU -> Dense(features)."""
  width: int
  features: int
  noise_embedding: str
  time_scaling: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, gamma: jax.Array) -> jax.Array:
    s = noise_level_input(gamma, self.noise_embedding, self.time_scaling)
    h = sinusoid_encoding(s, self.width)
    h = _dense(self.features, "dense0", self.dtype)(h)
    return _dense(self.features, "dense1", self.dtype)(nn.silu(h))


def _resample(x: jax.Array, resample: str) -> jax.Array:
  if resample == "down":
    return nn.avg_pool(x, (2, 2), strides=(2, 2))
  if resample == "up":
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return x


class ResBlock(nn.Module):
  """Improved DDPM's scale-shift ResBlock; resample 'down'/'up' makes it BigGAN's up/down block."""
  out_channels: int
  norm_groups: int
  style: str
  dropout: float = 0.0
  resample: str = "none"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
    out = self.out_channels
    h = nn.silu(_group_norm(self.norm_groups, "norm0", self.dtype)(x))
    h = _resample(h, self.resample)
    x = _resample(x, self.resample)
    h = _conv(out, 3, "conv0", self.dtype)(h)
    scale_shift = _dense(2 * out, "emb_proj", self.dtype)(nn.silu(emb))
    scale, shift = jnp.split(scale_shift[:, None, None, :], 2, axis=-1)
    h = _group_norm(self.norm_groups, "norm1", self.dtype)(h) * (1 + scale) + shift
    h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=not train)
    h = _conv(out, 3, "conv1", self.dtype, zero=True)(h)
    skip = x if x.shape[-1] == out else _conv(out, 1, "skip", self.dtype)(x)
    if self.style == "sr3":
      return (skip + h) * (1.0 / math.sqrt(2.0))
    return skip + h


class AttentionBlock(nn.Module):
  """Residual multi-head self-attention over the H W positions."""
  num_heads: int
  norm_groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, height, width, ch = x.shape
    h = _group_norm(self.norm_groups, "norm", self.dtype)(x)
    qkv = _dense(3 * ch, "qkv", self.dtype)(h)
    qkv = qkv.reshape(b, height * width, 3, self.num_heads, ch // self.num_heads)
    h = nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], dtype=self.dtype,
                                 force_fp32_for_softmax=True)
    h = h.reshape(b, height, width, ch)
    return x + _dense(ch, "out", self.dtype, zero=True, names=("mlp", "embed"))(h)


class UNet(nn.Module):
  """The CDM U-Net; shared fields mirror `config.model`, the rest `config.unet` (see module doc)."""
  image_size: int = 32
  channels: int = 3
  extra_in_channels: int = 0
  num_extra_tokens: int = 0
  num_classes: int = 1000
  base_channels: int = 128
  channel_mult: tuple[int, ...] = (1, 2, 3, 4)
  num_res_blocks: int = 3
  attention_resolutions: tuple[int, ...] = (8, 16)
  num_heads: int = 4  # 0: heads = channels // head_dim.
  head_dim: int = 0  # 0: use num_heads.
  dropout: float = 0.0
  norm_groups: int = 32
  style: str = "ddpm"
  noise_embedding: str = "gamma"
  learned_variance: bool = False
  time_scaling: float = 1000.0
  dtype: str = "float32"
  # Recompute every ResBlock's and attention block's activations in the backward pass instead of
  # storing them (jax.checkpoint): less memory for the 64-256 stages at large batch, ~1/3 more FLOPs.
  remat: bool = False
  remat_policy: str = "full"  # What a rematerialised block keeps: model.REMAT_POLICIES.

  @property
  def out_channels(self) -> int:
    return self.channels * (2 if self.learned_variance else 1)

  def check(self) -> None:
    """Raises ValueError naming the first invalid field; called before any compute."""
    _check_fields({f.name: getattr(self, f.name) for f in _config_fields()})

  def _heads(self, ch: int) -> int:
    return self.num_heads if self.num_heads > 0 else ch // self.head_dim

  @nn.compact
  def __call__(self, x: jax.Array, gamma: jax.Array, class_onehot: jax.Array | None = None,
               hidden: Any = None, extra_gammas: jax.Array | None = None, *,
               train: bool) -> tuple[jax.Array, Any]:
    """x: (B, H, W, channels + extra_in_channels), gamma: () or (B,) -> (pred, hidden)."""
    self.check()
    gamma, class_onehot = check_inputs(
        "UNet", x, gamma, class_onehot, extra_gammas, image_size=self.image_size,
        in_channels=self.channels + self.extra_in_channels, num_classes=self.num_classes,
        num_extra_tokens=self.num_extra_tokens)
    dtype = DTYPES[self.dtype]

    # Conditioning vector emb (B, 4C): noise level + class + augmentation levels.
    width, emb_dim = self.base_channels, 4 * self.base_channels

    def scalar_mlp(name):
      return NoiseLevelMLP(width, emb_dim, self.noise_embedding, self.time_scaling, dtype,
                           name=name)

    emb = scalar_mlp("noise_mlp")(gamma)
    if self.num_classes > 0:
      emb = emb + nn.Dense(
          emb_dim, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
          kernel_init=_named(_CLASS_INIT, ("vocab", "embed")),
          name="class_embedding")(class_onehot.astype(dtype))
    for k in range(self.num_extra_tokens):
      emb = emb + scalar_mlp(f"extra_mlp_{k}")(extra_gammas[:, k])

    res_cls = maybe_remat(ResBlock, self.remat, self.remat_policy, static_argnums=(3,))  # train.
    attention_cls = maybe_remat(AttentionBlock, self.remat, self.remat_policy)

    def res_block(out, name, resample="none"):
      return res_cls(out, self.norm_groups, self.style, self.dropout, resample, dtype, name=name)

    def attention(ch, name):
      return attention_cls(self._heads(ch), self.norm_groups, dtype, name=name)

    def downsample(h, ch, name):
      if self.style == "sr3":
        return res_block(ch, name, "down")(h, emb, train)
      return _conv(ch, 3, name, dtype, strides=2)(h)

    def upsample(h, ch, name):
      if self.style == "sr3":
        return res_block(ch, name, "up")(h, emb, train)
      return _conv(ch, 3, name, dtype)(_resample(h, "up"))

    attn_res = set(self.attention_resolutions)
    levels = len(self.channel_mult)
    h = _conv(self.base_channels * self.channel_mult[0], 3, "input_conv", dtype)(x.astype(dtype))
    skips = [h]
    resolution = self.image_size
    for level, mult in enumerate(self.channel_mult):
      ch = self.base_channels * mult
      for i in range(self.num_res_blocks):
        h = res_block(ch, f"down_{level}_{i}_res")(h, emb, train)
        if resolution in attn_res:
          h = attention(ch, f"down_{level}_{i}_attn")(h)
        skips.append(h)
      if level < levels - 1:
        h = downsample(h, ch, f"down_{level}_downsample")
        skips.append(h)
        resolution //= 2

    ch = h.shape[-1]
    h = res_block(ch, "middle_res_0")(h, emb, train)
    h = attention(ch, "middle_attn")(h)
    h = res_block(ch, "middle_res_1")(h, emb, train)

    for level in reversed(range(levels)):
      ch = self.base_channels * self.channel_mult[level]
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res_block(ch, f"up_{level}_{i}_res")(h, emb, train)
        if resolution in attn_res:
          h = attention(ch, f"up_{level}_{i}_attn")(h)
      if level > 0:
        h = upsample(h, ch, f"up_{level}_upsample")
        resolution *= 2

    h = nn.silu(_group_norm(self.norm_groups, "out_norm", dtype)(h))
    pred = _conv(self.out_channels, 3, "out_conv", dtype, zero=True)(h)
    # float32 outputs keep sampler loop carries dtype-stable (as RIN's).
    return pred.astype(jnp.float32), hidden


def _config_fields() -> list[dataclasses.Field]:
  skip = {"parent", "name"}
  return [f for f in dataclasses.fields(UNet) if f.name not in skip]


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _section(field: str) -> str:
  return "model" if field in MODEL_FIELDS else "unet"


def _check_fields(f: Mapping[str, Any]) -> None:
  def bad(field, why):
    raise ValueError(f"config.{_section(field)}.{field}={f[field]!r} {why}")

  for name in ("image_size", "channels", "base_channels", "num_res_blocks", "norm_groups"):
    if not _is_int(f[name]) or f[name] < 1:
      bad(name, "must be a positive integer")
  for name in ("extra_in_channels", "num_extra_tokens", "num_classes", "num_heads", "head_dim"):
    if not _is_int(f[name]) or f[name] < 0:
      bad(name, "must be a non-negative integer")
  mult = f["channel_mult"]
  if (not isinstance(mult, (tuple, list)) or not mult
      or not all(_is_int(m) and m >= 1 for m in mult)):
    bad("channel_mult", "must be a non-empty tuple of positive integers")
  attn = f["attention_resolutions"]
  if not isinstance(attn, (tuple, list)) or not all(_is_int(r) and r >= 1 for r in attn):
    bad("attention_resolutions", "must be a tuple of positive integers (pixel resolutions)")
  if f["style"] not in STYLES:
    bad("style", f"is not one of {STYLES}")
  if f["noise_embedding"] not in NOISE_EMBEDDINGS:
    bad("noise_embedding", f"is not one of {NOISE_EMBEDDINGS}")
  check_remat(f, bad)
  if not isinstance(f["learned_variance"], bool):
    bad("learned_variance", "must be True or False")
  if f["dtype"] not in DTYPES:
    bad("dtype", f"is not one of {tuple(DTYPES)}")
  if (not isinstance(f["time_scaling"], (int, float)) or isinstance(f["time_scaling"], bool)
      or not f["time_scaling"] > 0):
    bad("time_scaling", "must be positive")
  if (not isinstance(f["dropout"], (int, float)) or isinstance(f["dropout"], bool)
      or not 0.0 <= f["dropout"] < 1.0):
    bad("dropout", "must be in [0, 1)")

  factor = 2 ** (len(mult) - 1)
  if f["image_size"] % factor:
    raise ValueError(f"config.model.image_size={f['image_size']} is not divisible by "
                     f"2**(len(config.unet.channel_mult) - 1)={factor} (one halving per level "
                     f"after the first, channel_mult={tuple(mult)})")
  visited = tuple(f["image_size"] // 2 ** level for level in range(len(mult)))
  for r in attn:
    if r not in visited:
      bad("attention_resolutions", f"includes {r}, which the network never visits; allowed: "
          f"{visited} (config.model.image_size halved per level of config.unet.channel_mult)")
  widths = sorted({f["base_channels"] * m for m in mult})
  for ch in widths:
    if ch % f["norm_groups"]:
      bad("norm_groups", f"does not divide the channel count {ch} (config.unet.base_channels x "
          f"channel_mult gives {tuple(widths)})")
  if (f["num_heads"] > 0) == (f["head_dim"] > 0):
    raise ValueError(f"config.unet.num_heads={f['num_heads']} and config.unet.head_dim="
                     f"{f['head_dim']}: exactly one of them must be > 0 (a head count or a "
                     "channels-per-head width)")
  # Attention runs at the listed resolutions and always in the middle (the lowest resolution).
  attn_widths = sorted({f["base_channels"] * m for m, r in zip(mult, visited) if r in attn}
                       | {f["base_channels"] * mult[-1]})
  field = "num_heads" if f["num_heads"] > 0 else "head_dim"
  for ch in attn_widths:
    if ch % f[field]:
      bad(field, f"does not divide the attention width {ch} (attention widths: "
          f"{tuple(attn_widths)})")


def _int_tuple(value: Any, field: str) -> Any:
  """'1,2,3,4' (a command-line override) or a sequence -> tuple; anything else is left to check."""
  if isinstance(value, str):
    try:
      return tuple(int(k) for k in value.split(",") if k.strip())
    except ValueError:
      raise ValueError(f"config.unet.{field}={value!r} is not a comma-separated list of "
                       "integers") from None
  if _is_int(value):
    return (value,)
  if isinstance(value, Sequence):
    return tuple(value)
  return value


def _unet_fields(model_config: Mapping[str, Any],
                 unet_config: Mapping[str, Any]) -> dict[str, Any]:
  """Shared fields from config.model (its RIN-only fields ignored), the rest from config.unet.

  Fields missing from config.unet take the UNet defaults; unknown ones raise.
  """
  names = [fd.name for fd in _config_fields()]
  unet_names = [n for n in names if n not in MODEL_FIELDS]
  unknown = sorted(set(unet_config.keys()) - set(unet_names))
  if unknown:
    raise ValueError(f"config.unet has unknown field(s) {unknown}; the U-Net takes {unet_names} "
                     f"(and {list(MODEL_FIELDS)} from config.model)")
  missing = [n for n in MODEL_FIELDS if n not in model_config.keys()]
  if missing:
    raise ValueError(f"config.model is missing field(s) {missing}")
  fields = {n: model_config[n] for n in MODEL_FIELDS}
  fields.update({n: unet_config[n] for n in unet_names if n in unet_config.keys()})
  for name in ("channel_mult", "attention_resolutions"):
    if name in fields:
      fields[name] = _int_tuple(fields[name], name)
  return fields


def unet_from_config(model_config: Mapping[str, Any], unet_config: Mapping[str, Any]) -> UNet:
  """Builds (and validates) a UNet from `config.model` and `config.unet`."""
  fields = _unet_fields(model_config, unet_config)
  net = UNet(**fields)
  net.check()
  return net
