"""Conditioning augmentation of a super-resolution stage's low-resolution input z (CDM section 3).

Pure jnp math, no networks. z is the low-resolution image (B, h, w, C) in [-1, 1]; b is the input
scale; every function works at low resolution, before `upsample` (spec-rin 8.4: blur / noise,
then upsample, then concatenate with x_t).

Why augment at all (CDM 4.3): an SR stage trained on clean downsampled images is conditioned on
*generated* ones at test time. Corrupting z in training closes that train/test gap; without it a
16 -> 64 cascade was worse than no cascade (FID 6.02 vs 2.35), with it better (2.13).

* Gaussian (forward-process) noise augmentation (CDM 3.2-3.3, used for the 32 -> 64 stage):
    z_s = sqrt(gamma(s)) b z + sqrt(1 - gamma(s)) eps,   eps ~ N(0, I),
  with gamma and b those of the *base* stage's inference process, and z_0 = b z exactly.
  Units: z_s is in the base process's scaled x_t units, i.e. exactly the state a base sampler
  holds at t = s (`samplers.sample(..., t_end=s).x_t`). That is what makes the two sampling modes
  interchangeable: truncated sampling (stop the base sampler at t = s and hand over its state) and
  non-truncated sampling (finish the base run, then re-noise its z_0 with `gaussian_augment`) pass
  the SR stage the same kind of tensor. The SR model is amortized over s ~ U(0, s_max)
  (`sample_levels`) and told gamma(s), so the best s can be picked after training (CDM 3.2).
  s = 0 returns b z bit-exactly: schedules clipped for numerical safety give gamma(0) slightly
  below 1 (the offset 'cosine' gives 1 - 1.2e-7), which would otherwise leak a little noise into
  the "clean" condition.
* Gaussian blur augmentation (CDM 3.1 and 4.4, used for the 64 -> 128 / 256 stages, where noise
  augmentation did not help): each example independently, with probability 0.5, is convolved with
  a 3 x 3 Gaussian kernel
    k(dy, dx) = exp(-(dy^2 + dx^2) / (2 sigma^2)) / sum over dy, dx in {-1, 0, 1},
  sigma ~ U(0.4, 0.6) (the best range at 256, CDM Table 4a), depthwise over channels, with reflect
  padding (spec-rin 8.3) so flat borders stay flat. Training only: inference feeds z unblurred.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

from rin_diffusion import config_lib, diffusion

UPSAMPLE_METHODS = config_lib.UPSAMPLE_METHODS


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def upsample(z: jax.Array, size: int, method: str) -> jax.Array:
  """(B, h, w, C) -> (B, size, size, C) with jax.image.resize; size must be k h = k w, k >= 1."""
  diffusion.check_choice("config.cascade.upsample", method, UPSAMPLE_METHODS)
  if z.ndim != 4:
    raise ValueError(f"upsample expects z of shape (B, h, w, C), got shape {tuple(z.shape)}")
  _, h, w, channels = z.shape
  if h != w:
    raise ValueError(f"config.cascade.low_resolution: z is {h}x{w}; allowed: square images")
  if not (isinstance(size, numbers.Integral) and size >= h and size % h == 0):
    raise ValueError(
        f"config.cascade.low_resolution={h} with target resolution {size!r}; allowed: a target "
        f"that is an integer multiple >= 1 of the low resolution ({h}, {2 * h}, {3 * h}, ...)")
  return jax.image.resize(z, (z.shape[0], size, size, channels), method=method)


def gaussian_augment(z: jax.Array, s: jax.Array, noise: jax.Array, *,
                     gamma_fn: Callable[[jax.Array], jax.Array],
                     input_scale: float) -> jax.Array:
  """z_s = sqrt(gamma(s)) b z + sqrt(1 - gamma(s)) noise, and exactly b z where s == 0.

  z: (B, h, w, C) in [-1, 1]; s: (B,) in [0, 1]; noise: like z, N(0, I); gamma_fn: the base
  stage's inference schedule (`schedules.gamma_fn(spec)`); input_scale: the base stage's b.
  Returns float32 in the base process's scaled x_t units (the base sampler's state at t = s).
  """
  z = jnp.asarray(z, jnp.float32)
  s = jnp.asarray(s, jnp.float32)
  noise = jnp.asarray(noise, jnp.float32)
  if z.ndim < 1 or noise.shape != z.shape:
    raise ValueError(f"gaussian_augment: noise shape {tuple(noise.shape)} must equal z shape "
                     f"{tuple(z.shape)}")
  if s.shape != z.shape[:1]:
    raise ValueError(f"gaussian_augment: s shape {tuple(s.shape)} must be (batch,) = "
                     f"{tuple(z.shape[:1])}")
  noised = diffusion.add_noise(z, gamma_fn(s), noise, input_scale)
  clean = s.reshape(s.shape + (1,) * (z.ndim - 1)) == 0.0
  return jnp.where(clean, input_scale * z, noised)


def sample_levels(key: jax.Array, batch: int, s_max: float) -> jax.Array:
  """Per-example augmentation levels s ~ U(0, s_max), shape (batch,); all zeros when s_max == 0."""
  if not (_is_number(s_max) and math.isfinite(s_max) and 0.0 <= s_max <= 1.0):
    raise ValueError(f"config.cascade.aug_level_max={s_max!r}; allowed: a number in [0, 1]")
  if not (isinstance(batch, numbers.Integral) and batch >= 1):
    raise ValueError(f"sample_levels: batch={batch!r}; allowed: an integer >= 1")
  # u in [0, 1), so s_max = 0 gives exact zeros.
  return jax.random.uniform(key, (batch,), jnp.float32) * s_max


def gaussian_kernel_3x3(sigma: jax.Array) -> jax.Array:
  """Per-example normalised 3 x 3 Gaussian kernels: (B,) sigma -> (B, 3, 3), each summing to 1."""
  sigma = jnp.asarray(sigma, jnp.float32)
  offsets = jnp.arange(-1.0, 2.0)
  dist2 = offsets[:, None] ** 2 + offsets[None, :] ** 2
  # exp(-d2 / 2 sigma^2) with the centre weight 1, so the sum is >= 1 and never underflows.
  kernel = jnp.exp(-dist2[None] / (2.0 * jnp.square(sigma)[:, None, None]))
  return kernel / jnp.sum(kernel, axis=(1, 2), keepdims=True)


def blur(z: jax.Array, sigma: jax.Array) -> jax.Array:
  """Depthwise 3 x 3 Gaussian blur of (B, h, w, C) z with per-example sigma (B,), reflect padded."""
  z = jnp.asarray(z, jnp.float32)
  if z.ndim != 4 or min(z.shape[1:3]) < 2:
    raise ValueError(f"blur expects z of shape (B, h, w, C) with h, w >= 2 (reflect padding), "
                     f"got shape {tuple(z.shape)}")
  kernel = gaussian_kernel_3x3(sigma)
  if kernel.shape[0] != z.shape[0]:
    raise ValueError(f"blur: sigma shape {tuple(jnp.shape(sigma))} must be (batch,) = "
                     f"{tuple(z.shape[:1])}")
  h, w = z.shape[1:3]
  padded = jnp.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  # Nine shifted views weighted per example: cheaper to compile than a grouped conv with a
  # per-example kernel, and the kernel is symmetric so correlation = convolution.
  out = jnp.zeros_like(z)
  for dy in range(3):
    for dx in range(3):
      weight = kernel[:, dy, dx][:, None, None, None]
      out = out + weight * padded[:, dy:dy + h, dx:dx + w, :]
  return out


def random_blur(key: jax.Array, z: jax.Array, *, prob: float = 0.5, sigma_min: float = 0.4,
                sigma_max: float = 0.6) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Blurs each example with probability prob, sigma ~ U(sigma_min, sigma_max) (training only).

  Returns (z_out, applied_mask (B,) bool, sigma (B,)). sigma is drawn for every example (also the
  unblurred ones, where it is unused); unblurred examples are returned bit-identical.
  """
  if not (_is_number(prob) and 0.0 <= prob <= 1.0):
    raise ValueError(f"config.cascade.blur_prob={prob!r}; allowed: a number in [0, 1]")
  if not (_is_number(sigma_min) and _is_number(sigma_max) and math.isfinite(sigma_max)
          and 0.0 < sigma_min <= sigma_max):
    raise ValueError(f"config.cascade.blur_sigma=({sigma_min!r}, {sigma_max!r}); allowed: "
                     f"(min, max) with 0 < min <= max, finite")
  z = jnp.asarray(z, jnp.float32)
  key_mask, key_sigma = jax.random.split(key)
  batch = z.shape[0]
  # u in [0, 1): prob = 0 never blurs, prob = 1 always does.
  applied = jax.random.uniform(key_mask, (batch,)) < prob
  sigma = jax.random.uniform(key_sigma, (batch,), jnp.float32, sigma_min, sigma_max)
  blurred = blur(z, sigma)
  return jnp.where(applied[:, None, None, None], blurred, z), applied, sigma
