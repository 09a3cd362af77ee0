"""Optimizer, learning-rate schedule and parameter EMA (spec sections 5.5-5.7).

LAMB follows the reference (TF Addons LAMB as configured by pix2seq): Adam moments, decoupled weight
decay and the layer-wise trust ratio, with biases and LayerNorm parameters excluded from BOTH the
decay and the trust ratio. `optax.lamb` masks only the decay, so the chain is built here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

Params = Any

# Parameter leaf names that are never decayed nor trust-ratio scaled (reference: 'bias,beta,gamma').
_NO_DECAY_LEAF_NAMES = ("bias", "scale")


def decay_mask(params: Params) -> Params:
  """True for parameters that get weight decay and the trust ratio: all but biases and norms.

  Position embeddings are decayed, as in the reference config (spec A12).
  """

  def is_decayed(path, _):
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", str(last)))
    return name not in _NO_DECAY_LEAF_NAMES

  return jax.tree_util.tree_map_with_path(is_decayed, params)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> Callable[[jax.Array], jax.Array]:
  """Linear warm-up from 0, then the configured decay.

  'cosine@rho' is the reference's truncated cosine (spec A1): the half-period is
  (total - warmup) / rho long, so training stops a fraction rho into it (0.206x the base rate for
  rho = 0.7) with no constant tail. 'cosine' is 'cosine@1' (decays to 0). 'constant' holds.
  """
  opt = config.optimizer
  base = float(opt.learning_rate)
  warmup = int(opt.warmup_steps)
  decay = str(opt.decay)
  if decay == "constant":
    rho = None
  elif decay == "cosine":
    rho = 1.0
  elif decay.startswith("cosine@"):
    try:
      rho = float(decay.split("@", 1)[1])
    except ValueError:
      rho = -1.0
    if not 0.0 < rho <= 1.0:
      raise ValueError(
          f"config.optimizer.decay={decay!r}: the fraction after 'cosine@' must be in (0, 1].")
  else:
    raise ValueError(
        f"config.optimizer.decay={decay!r} is unknown; allowed: 'constant', 'cosine', 'cosine@rho'.")
  decay_steps = max(int(config.total_steps) - warmup, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(step / max(warmup, 1), 1.0) if warmup > 0 else 1.0
    if rho is None:
      factor = 1.0
    else:
      period = decay_steps / rho
      progress = jnp.clip(step - warmup, 0.0, period) / period
      factor = 0.5 * (1.0 + jnp.cos(math.pi * progress))
    return base * warm * factor

  return schedule


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer chain from config.optimizer (LAMB or AdamW, optional global-norm clipping)."""
  opt = config.optimizer
  schedule = learning_rate_schedule(config)
  parts = []
  if float(opt.clip_norm) > 0:
    parts.append(optax.clip_by_global_norm(float(opt.clip_norm)))
  parts.append(optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps))
  if opt.weight_decay:
    parts.append(optax.add_decayed_weights(float(opt.weight_decay), mask=decay_mask))
  if opt.name == "lamb":
    parts.append(optax.masked(optax.scale_by_trust_ratio(), decay_mask))
  elif opt.name != "adamw":
    raise ValueError(f"config.optimizer.name={opt.name!r} is unknown; allowed: 'lamb', 'adamw'.")
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
  """The EMA decay used after optimizer step `step` (0-based); optional warm-up (not official)."""
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update_ema(ema_params: Params, params: Params, decay: jax.Array) -> Params:
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
