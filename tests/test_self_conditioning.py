"""Label dropout and two-pass latent self-conditioning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rin_diffusion import self_conditioning

KEY = jax.random.PRNGKey(0)


# ---------------------------------------------------------------------------------------------
# label_dropout


def _onehot(batch, classes=10):
  labels = jax.random.randint(KEY, (batch,), 0, classes)
  return jax.nn.one_hot(labels, classes)


def test_label_dropout_rate_zero_is_identity():
  onehot = _onehot(512)
  out = self_conditioning.label_dropout(onehot, jax.random.PRNGKey(1), 0.0)
  np.testing.assert_array_equal(out, onehot)


def test_label_dropout_rate_one_gives_zeros():
  out = self_conditioning.label_dropout(_onehot(512), jax.random.PRNGKey(1), 1.0)
  np.testing.assert_array_equal(out, 0.0)


def test_label_dropout_is_per_example():
  n = 20_000
  onehot = _onehot(n)
  out = np.asarray(jax.jit(self_conditioning.label_dropout)(onehot, jax.random.PRNGKey(2), 0.3))
  kept = out.sum(axis=1) == 1
  dropped = np.all(out == 0, axis=1)
  assert np.all(kept | dropped)  # Whole rows are kept or zeroed.
  np.testing.assert_array_equal(out[kept], np.asarray(onehot)[kept])
  se = np.sqrt(0.7 * 0.3 / n)
  assert abs(kept.mean() - 0.7) < 5 * se


# ---------------------------------------------------------------------------------------------
# self_conditioned_apply


class Recorder:
  """apply_fn whose hidden output is a fixed non-zero pytree; records what each pass saw."""

  def __init__(self, batch):
    k1, k2 = jax.random.split(KEY)
    self.out = {"latents": 1.0 + jax.random.uniform(k1, (batch, 3, 4)),
                "tape": 1.0 + jax.random.uniform(k2, (batch, 5))}
    self.seen, self.keys = [], []

  def __call__(self, hidden, key):
    self.seen.append(hidden)
    self.keys.append(key)
    pred = jnp.zeros((self.out["tape"].shape[0], 2)) + len(self.seen)
    return pred, self.out


def test_rate_zero_second_pass_sees_zeros():
  fn = Recorder(8)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, fn.out)
  pred, hidden = self_conditioning.self_conditioned_apply(fn, zeros, KEY, 0.0)
  assert len(fn.seen) == 2
  for leaf in jax.tree_util.tree_leaves(fn.seen[1]):
    np.testing.assert_array_equal(leaf, 0.0)
  np.testing.assert_array_equal(pred, 2.0)  # The prediction is pass 2's.
  assert hidden is fn.out


def test_rate_one_second_pass_sees_first_pass_latents():
  fn = Recorder(8)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, fn.out)
  self_conditioning.self_conditioned_apply(fn, zeros, KEY, 1.0)
  for leaf in jax.tree_util.tree_leaves(fn.seen[0]):
    np.testing.assert_array_equal(leaf, 0.0)
  jax.tree_util.tree_map(np.testing.assert_array_equal, fn.seen[1], fn.out)


def test_each_pass_gets_its_own_key():
  fn = Recorder(4)
  self_conditioning.self_conditioned_apply(fn, None, KEY, 0.5)
  key1, key2 = (np.asarray(jax.random.key_data(k)) for k in fn.keys)
  assert not np.array_equal(key1, key2)
  assert not np.array_equal(key1, np.asarray(jax.random.key_data(KEY)))


@pytest.mark.parametrize("rate", [0.5, 0.9])
def test_mask_is_per_example_and_shared_across_leaves(rate):
  n = 4000
  fn = Recorder(n)
  self_conditioning.self_conditioned_apply(fn, None, jax.random.PRNGKey(5), jnp.float32(rate))
  latents, tape = np.asarray(fn.seen[1]["latents"]), np.asarray(fn.seen[1]["tape"])
  keep_latents = np.all(latents == np.asarray(fn.out["latents"]), axis=(1, 2))
  drop_latents = np.all(latents == 0, axis=(1, 2))
  keep_tape = np.all(tape == np.asarray(fn.out["tape"]), axis=1)
  assert np.all(keep_latents ^ drop_latents)  # Whole examples, never parts.
  np.testing.assert_array_equal(keep_latents, keep_tape)  # One mask for every leaf.
  assert 0 < keep_latents.sum() < n
  assert abs(keep_latents.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)


@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_gradients_flow_through_the_second_pass_only(rate):
  """Toy linear model: hidden_out = x w + hidden u, pred = hidden_out."""
  batch, dim = 64, 3
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(7), 3)
  x = jax.random.normal(k1, (batch, dim))
  params = {"w": jax.random.normal(k2, (dim, dim)), "u": jax.random.normal(k3, (dim, dim))}
  key = jax.random.PRNGKey(11)

  def apply_fn(p, hidden, _):
    out = x @ p["w"] + hidden @ p["u"]
    return out, out

  def objective(p):
    pred, _ = self_conditioning.self_conditioned_apply(
        lambda h, k: apply_fn(p, h, k), jnp.zeros((batch, dim)), key, rate)
    return jnp.sum(pred**2)

  grads = jax.jit(jax.grad(objective))(params)

  # By hand, pass 1 treated as a constant: h1 = x w (masked), pred = x w + m h1 u.
  seen = []
  self_conditioning.self_conditioned_apply(
      lambda h, k: (seen.append(h), apply_fn(params, h, k))[1], jnp.zeros((batch, dim)), key, rate)
  masked = seen[1]
  keep = np.asarray(jnp.any(masked != 0, axis=1))
  assert keep.all() if rate == 1.0 else 0 < keep.sum() < batch
  pred = x @ params["w"] + masked @ params["u"]
  np.testing.assert_allclose(grads["w"], x.T @ (2 * pred), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grads["u"], masked.T @ (2 * pred), rtol=1e-5, atol=1e-5)

  # Without the stop_gradient the gradient of w would have a second term; make sure it is non-zero,
  # so the comparison above really tests the stop_gradient.
  keep_f = jnp.asarray(keep, jnp.float32)[:, None]
  full = jax.grad(lambda p: jnp.sum((x @ p["w"] + keep_f * (x @ p["w"]) @ p["u"]) ** 2))(params)
  assert float(jnp.max(jnp.abs(full["w"] - grads["w"]))) > 1e-2
