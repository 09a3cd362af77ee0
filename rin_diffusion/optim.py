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


OPTIMIZERS = ("lamb", "adamw", "adam")


def decay_mask(params: Params) -> Params:
  """True for parameters that get weight decay and the trust ratio: all but biases and norms.

  Position embeddings are decayed, as in the reference config (spec A12).
  """

  def is_decayed(path, _):
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", str(last)))
    return name not in _NO_DECAY_LEAF_NAMES

  return jax.tree_util.tree_map_with_path(is_decayed, params)


DECAY_SPECS = ("constant", "cosine", "cosine@rho", "cosine_hold@rho")


def _decay_fraction(decay: str) -> float:
  """rho of 'cosine@rho' / 'cosine_hold@rho'; raises naming config.optimizer.decay otherwise."""
  try:
    rho = float(decay.split("@", 1)[1])
  except ValueError:
    rho = float("nan")
  if not 0.0 < rho <= 1.0:
    raise ValueError(f"config.optimizer.decay={decay!r}: the fraction after '@' must be a number "
                     "in (0, 1].")
  return rho


def learning_rate_schedule(config: ml_collections.ConfigDict) -> Callable[[jax.Array], jax.Array]:
  """step -> learning rate: linear warm-up from 0 over warmup_steps, then config.optimizer.decay.

  With s = step - warmup_steps and T = total_steps - warmup_steps (the post-warm-up steps):
  * 'cosine@rho' is the reference's truncated cosine (spec A1): a cosine half-period of T / rho
    steps, base * (1 + cos(pi * rho * s / T)) / 2, so training stops a fraction rho into it
    (0.206x the base rate at the last step for rho = 0.7) with no constant tail.
  * 'cosine' is 'cosine@1': the cosine reaches 0 at total_steps.
  * 'cosine_hold@rho' is the other reading of the paper's "cosine (first 70%)" (spec A1): a full
    cosine from the base rate to 0 over the first rho * T post-warm-up steps, then constant at that
    end value, 0, for the remaining (1 - rho) * T steps (which then only move the EMA).
  * 'constant' holds the base rate after the warm-up.
  """
  opt = config.optimizer
  base = float(opt.learning_rate)
  warmup = int(opt.warmup_steps)
  decay = str(opt.decay)
  post_warmup = max(int(config.total_steps) - warmup, 1)
  if decay == "constant":
    cosine_steps = None
  elif decay == "cosine":
    cosine_steps = post_warmup
  elif decay.startswith("cosine@"):
    cosine_steps = post_warmup / _decay_fraction(decay)
  elif decay.startswith("cosine_hold@"):
    cosine_steps = post_warmup * _decay_fraction(decay)
  else:
    raise ValueError(f"config.optimizer.decay={decay!r} is unknown; allowed: "
                     f"{', '.join(repr(d) for d in DECAY_SPECS)} with rho in (0, 1].")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(step / max(warmup, 1), 1.0) if warmup > 0 else 1.0
    if cosine_steps is None:
      factor = 1.0
    else:
      progress = jnp.clip(step - warmup, 0.0, cosine_steps) / cosine_steps
      factor = 0.5 * (1.0 + jnp.cos(math.pi * progress))
    return base * warm * factor

  return schedule


def _scale_by_learning_rate_argument() -> optax.GradientTransformationExtraArgs:
  """updates -> -learning_rate * updates, with the rate given to `update(...)` by the caller."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, learning_rate, **extra_args):
    del params, extra_args
    step_size = -jnp.asarray(learning_rate, jnp.float32)
    return jax.tree.map(lambda u: step_size.astype(u.dtype) * u, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
  """The optimizer chain from config.optimizer (LAMB, AdamW or Adam, optional global-norm clipping).

  The learning rate is an argument of every update, not a schedule inside the chain:
  `tx.update(grads, opt_state, params, learning_rate=learning_rate_schedule(config)(step))`. The
  trainer's step counter alone drives it, so a skipped (non-finite) step, which keeps the
  optimizer state but advances the step, cannot put the rate out of step. The state holds only the
  Adam moments and their count (the number of updates applied, for the bias correction).
  """
  opt = config.optimizer
  if opt.name not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name={opt.name!r} is unknown; allowed: "
                     f"{', '.join(map(repr, OPTIMIZERS))}.")
  if opt.name == "adam" and opt.weight_decay:
    raise ValueError(f"config.optimizer.weight_decay={opt.weight_decay!r}: 'adam' has no weight "
                     "decay; allowed: 0 (or use 'adamw' for decoupled decay).")
  parts = []
  if float(opt.clip_norm) > 0:
    parts.append(optax.clip_by_global_norm(float(opt.clip_norm)))
  parts.append(optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps))
  if opt.weight_decay:
    parts.append(optax.add_decayed_weights(float(opt.weight_decay), mask=decay_mask))
  if opt.name == "lamb":
    parts.append(optax.masked(optax.scale_by_trust_ratio(), decay_mask))
  parts.append(_scale_by_learning_rate_argument())
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
