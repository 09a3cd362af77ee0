"""A super-resolution stage's conditioning: from a low-resolution image to the network's extra inputs.

Training (spec-rin 8.4): z (the batch's 'low_res', in [-1, 1]) -> blur with probability
config.cascade.blur_prob -> Gaussian augmentation at s ~ U(0, aug_level_max) with the stage
below's inference process (aug_schedule, aug_input_scale) -> normalise -> upsample to image_size.
Sampling: the caller hands over z_s itself, already in the augmentation process's x_t units
(the stage below's truncated state, or its final image re-noised with `augment.gaussian_augment`),
with its level s; no blur.

Normalisation: z_s is divided by its analytic std sqrt((b^2 - 1) gamma(s) + 1) (spec-rin 8.2
asks for a normalised z_s when b < 1, mirroring x_t's normalisation); for b = 1 that is 1 and z_s
passes unchanged. Analytic rather than empirical: it must not depend on the image's content,
which differs between a real and a generated z.

The level enters as gamma(s) (not s) through one extra latent token, like the time token; a
stage without Gaussian augmentation has no such token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from rin_diffusion import schedules, train
from rin_diffusion.cascade import augment


def extra_inputs(z_s: jax.Array, level: jax.Array, config: ml_collections.ConfigDict
                 ) -> dict[str, jax.Array]:
  """The network's extra inputs for z_s (B, h, w, C) at augmentation level `level` (B,)."""
  cascade = config.cascade
  gamma = schedules.gamma_fn(cascade.aug_schedule)(jnp.asarray(level, jnp.float32))
  # At s = 0, gamma is taken as exactly 1 (augment.gaussian_augment's z_0 = b z).
  gamma = jnp.where(level == 0.0, 1.0, gamma)
  scale = float(cascade.aug_input_scale)
  std = jnp.sqrt((scale**2 - 1.0) * gamma + 1.0)[:, None, None, None]
  extras = {"extra_channels": augment.upsample(z_s / std, int(config.model.image_size),
                                               cascade.upsample)}
  if float(cascade.aug_level_max) > 0:
    extras["extra_gammas"] = gamma[:, None]
  return extras


def augment_low_res(z: jax.Array, key: jax.Array, config: ml_collections.ConfigDict,
                    level: jax.Array | None = None, *, train_blur: bool = True
                    ) -> tuple[jax.Array, jax.Array]:
  """(z_s, s): z in [-1, 1] blurred (training) and noised at s ~ U(0, s_max), or at `level`."""
  cascade = config.cascade
  blur_key, level_key, noise_key = jax.random.split(key, 3)
  if train_blur and float(cascade.blur_prob) > 0:
    sigma_min, sigma_max = (float(v) for v in cascade.blur_sigma)
    z, _, _ = augment.random_blur(blur_key, z, prob=float(cascade.blur_prob),
                                  sigma_min=sigma_min, sigma_max=sigma_max)
  batch = z.shape[0]
  if level is None:
    level = augment.sample_levels(level_key, batch, float(cascade.aug_level_max))
  level = jnp.broadcast_to(jnp.asarray(level, jnp.float32), (batch,))
  noise = jax.random.normal(noise_key, z.shape, jnp.float32)
  z_s = augment.gaussian_augment(z, level, noise, gamma_fn=schedules.gamma_fn(cascade.aug_schedule),
                                 input_scale=float(cascade.aug_input_scale))
  return z_s, level


def conditioning(config: ml_collections.ConfigDict) -> train.Conditioning:
  """The trainer's hook for a super-resolution stage (config.cascade.low_resolution > 0)."""
  if int(config.cascade.low_resolution) <= 0:
    raise ValueError(f"config.cascade.low_resolution={config.cascade.low_resolution!r}: not a "
                     "super-resolution stage (allowed: a positive divisor of image_size).")

  def for_training(batch, key):
    z_s, level = augment_low_res(batch["low_res"], key, config)
    return extra_inputs(z_s, level, config)

  def for_grid(batch, key):
    z_s, level = augment_low_res(batch["low_res"], key, config,
                                 level=float(config.cascade.sample_level), train_blur=False)
    return extra_inputs(z_s, level, config)

  return train.Conditioning(train=for_training, grid=for_grid)


def conditioning_or_none(config: ml_collections.ConfigDict) -> train.Conditioning | None:
  """conditioning(config) for a super-resolution stage, None for a base model (what the trainer,
  the benchmarks and the planner take for any config)."""
  return conditioning(config) if int(config.cascade.low_resolution) > 0 else None
