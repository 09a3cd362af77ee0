"""Classifier-free-guidance label dropout and two-pass latent self-conditioning for training.

* `label_dropout` (spec-rin 5.4): each example's one-hot is multiplied by its own
  Bernoulli(1 - rate) draw, so a dropped label becomes the all-zeros "unconditional" vector.
  rate 0 keeps every label exactly (a uniform draw in [0, 1) is always < 1), rate 1 drops all.
* `self_conditioned_apply` (spec-rin 5.3, ambiguity A5; Chen 2023 trains with rate 0.9): pass 1
  runs on zero latents; per example its output latents are kept with probability `rate` and zeroed
  otherwise; stop_gradient; pass 2 runs on the masked latents and its outputs are returned. Pass 1
  always runs (static graph), pass 1 and pass 2 get their own keys (the trainer draws label dropout
  and dropout from them) and the mask a third one. The hidden may be any pytree of arrays with batch
  as axis 0. Dropped entries are set with `jnp.where`, so they are exactly zero even if pass 1 gave
  non-finite values. A Python `rate` of 0 (or >= 1) is resolved statically: pass 2 then gets zeros
  (or all of pass 1's latents) and, for rate 0, pass 1 is dead code that XLA removes under jit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def _per_example(mask: jax.Array, x: jax.Array) -> jax.Array:
  """(B,) mask -> shape (B, 1, ..., 1) broadcastable against x."""
  return jnp.reshape(mask, mask.shape + (1,) * (x.ndim - 1))


def label_dropout(onehot: jax.Array, key: jax.Array, rate: float) -> jax.Array:
  """Zeroes each example's one-hot (all non-batch axes) with probability `rate`."""
  keep = jax.random.bernoulli(key, 1.0 - rate, (onehot.shape[0],))
  return jnp.where(_per_example(keep, onehot), onehot, jnp.zeros_like(onehot))


def self_conditioned_apply(apply_fn: Callable[[PyTree, jax.Array], tuple[jax.Array, PyTree]],
                           hidden_zeros: PyTree, key: jax.Array,
                           rate: float) -> tuple[jax.Array, PyTree]:
  """Two-pass self-conditioning. apply_fn(hidden, key) -> (pred, hidden_out).

  Returns (pred, hidden_out) of pass 2. Gradients flow through pass 2 only.
  """
  key_pass1, key_pass2, key_mask = jax.random.split(key, 3)
  _, hidden1 = apply_fn(hidden_zeros, key_pass1)

  if isinstance(rate, (int, float)) and rate <= 0:
    masked = jax.tree_util.tree_map(jnp.zeros_like, hidden1)
  elif isinstance(rate, (int, float)) and rate >= 1:
    masked = jax.tree_util.tree_map(jax.lax.stop_gradient, hidden1)
  else:
    leaves = jax.tree_util.tree_leaves(hidden1)
    if not leaves:
      raise ValueError("self_conditioned_apply: apply_fn returned a hidden with no arrays")
    keep = jax.random.bernoulli(key_mask, rate, (leaves[0].shape[0],))
    masked = jax.tree_util.tree_map(
        lambda h: jax.lax.stop_gradient(jnp.where(_per_example(keep, h), h, jnp.zeros_like(h))),
        hidden1)
  return apply_fn(masked, key_pass2)
