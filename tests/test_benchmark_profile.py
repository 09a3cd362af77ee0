"""benchmarks/train_step.py's op scopes: which compiled ops belong to the gradient's forward and
backward passes and which to the rest of the step (the update)."""

import collections
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import train_step  # noqa: E402


def test_op_scopes_split_forward_backward_and_update():
  def loss(w, x):
    return jnp.sum(jnp.tanh(x @ w) ** 2)

  def step(w, x):
    value, grad = jax.value_and_grad(loss)(w, x)
    return w - 0.1 * grad / (jnp.sqrt(jnp.sum(grad * grad)) + 1e-6), value

  compiled = jax.jit(step).lower(jnp.ones((8, 8)), jnp.ones((4, 8))).compile()
  scopes = train_step.op_scopes(compiled.as_text())
  assert set(collections.Counter(scopes.values())) == {"forward", "backward", "outside_grad"}
  # x @ w runs forward; the weight gradient x^T g is its transpose; the normalising square root
  # of the update is outside the gradient.
  dots = {name: scope for name, scope in scopes.items() if name.startswith("dot")}
  assert sorted(dots.values()) == ["backward", "forward"], dots
  assert {scope for name, scope in scopes.items() if name.startswith("sqrt")} == {"outside_grad"}
