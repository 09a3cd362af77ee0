"""Optimizer: learning-rate curves, masked LAMB against numpy, EMA, and the rate after a skip."""

from __future__ import annotations

import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rin_diffusion import config_lib, optim, paper_configs, sharding, train

BASE_LR = 2e-3
WARMUP = 100
TOTAL = 1100
POST_WARMUP = TOTAL - WARMUP


def lr_config(decay, warmup=WARMUP, total=TOTAL, base=BASE_LR):
  config = config_lib.base_config()
  config.total_steps = total
  config.optimizer.learning_rate = base
  config.optimizer.warmup_steps = warmup
  config.optimizer.decay = decay
  return config


def schedule_values(decay, steps, **kwargs):
  schedule = optim.learning_rate_schedule(lr_config(decay, **kwargs))
  return np.array([float(schedule(s)) for s in steps])


# --- Learning-rate curves, each against numpy. -----------------------------------------------


@pytest.mark.parametrize("decay", ["constant", "cosine", "cosine@0.7", "cosine_hold@0.7"])
def test_linear_warmup_from_zero(decay):
  steps = np.arange(0, WARMUP + 1, 7)
  np.testing.assert_allclose(schedule_values(decay, steps), BASE_LR * steps / WARMUP,
                             rtol=1e-6, atol=1e-12)


def test_no_warmup_starts_at_the_base_rate():
  np.testing.assert_allclose(schedule_values("constant", [0, 5], warmup=0), BASE_LR, rtol=1e-6)


def test_constant_holds_the_base_rate():
  steps = np.array([WARMUP, WARMUP + 1, 500, TOTAL, TOTAL + 50])
  np.testing.assert_allclose(schedule_values("constant", steps), BASE_LR, rtol=1e-6)


def test_truncated_cosine_ends_at_0_2061_of_the_base_rate():
  steps = np.arange(WARMUP, TOTAL + 1, 50)
  # Half-period (total - warmup) / 0.7: the last step is 70 % of the way down the cosine.
  expected = BASE_LR * 0.5 * (1 + np.cos(np.pi * (steps - WARMUP) / (POST_WARMUP / 0.7)))
  np.testing.assert_allclose(schedule_values("cosine@0.7", steps), expected, rtol=1e-5)
  end = schedule_values("cosine@0.7", [TOTAL])[0] / BASE_LR
  assert end == pytest.approx(0.2061, abs=1e-4)
  assert end == pytest.approx((1 + math.cos(0.7 * math.pi)) / 2, rel=1e-5)


def test_cosine_ends_at_zero():
  steps = np.arange(WARMUP, TOTAL + 1, 50)
  expected = BASE_LR * 0.5 * (1 + np.cos(np.pi * (steps - WARMUP) / POST_WARMUP))
  values = schedule_values("cosine", steps)
  np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-12)
  assert values[-1] == pytest.approx(0.0, abs=1e-12)
  assert schedule_values("cosine", [WARMUP + POST_WARMUP // 2])[0] == pytest.approx(BASE_LR / 2)
  np.testing.assert_allclose(schedule_values("cosine@1", steps), values)


def test_cosine_hold_reaches_zero_at_rho_then_stays():
  rho = 0.7
  steps = np.arange(WARMUP, TOTAL + 1, 25)
  cosine_end = WARMUP + rho * POST_WARMUP  # Step 800.
  progress = np.minimum(steps - WARMUP, rho * POST_WARMUP) / (rho * POST_WARMUP)
  expected = BASE_LR * 0.5 * (1 + np.cos(np.pi * progress))
  values = schedule_values(f"cosine_hold@{rho}", steps)
  np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-12)
  # Half-way down the cosine at 35 % of the post-warm-up steps, 0 from 70 % on.
  mid = schedule_values(f"cosine_hold@{rho}", [WARMUP + rho * POST_WARMUP / 2])[0]
  assert mid == pytest.approx(BASE_LR / 2, rel=1e-5)
  np.testing.assert_allclose(values[steps >= cosine_end], 0.0, atol=1e-12)
  assert np.all(values[steps < cosine_end] > 0)
  np.testing.assert_allclose(schedule_values("cosine_hold@1", steps),
                             schedule_values("cosine", steps))


@pytest.mark.parametrize("decay", [
    "linear", "Cosine", "cosine@", "cosine@0", "cosine@1.5", "cosine@-0.5", "cosine@x",
    "cosine@nan", "cosine_hold", "cosine_hold@", "cosine_hold@2", "cosine_hold@0.7,1", "",
])
def test_bad_decay_strings_name_the_field(decay):
  with pytest.raises(ValueError, match=r"config\.optimizer\.decay"):
    optim.learning_rate_schedule(lr_config(decay))


# --- Masked LAMB / AdamW against numpy. ---------------------------------------------------------


def _param_tree(rng):
  shapes = {
      "stem_conv": {"kernel": (2, 2, 3, 4), "bias": (4,)},
      "stem_ln": {"scale": (4,), "bias": (4,)},
      "tape_pos_emb": (5, 4),
      "block_0_read": {"mha": {"query": {"kernel": (4, 2, 3), "bias": (2, 3)},
                               "out": {"kernel": (2, 3, 4), "bias": (4,)}},
                       "mlp": {"ln": {"scale": (4,), "bias": (4,)},
                               "dense1": {"kernel": (4, 8), "bias": (8,)}}},
  }
  # Non-zero biases and norms, so that a decay or trust ratio applied to them would show.
  return jax.tree.map(lambda shape: rng.normal(size=shape).astype(np.float32), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def _numpy_step(params, grads, moments, t, lr, *, b1, b2, eps, wd, trust_ratio, masked=True):
  """One LAMB (trust_ratio=True) / AdamW step per leaf, float64; returns params and moments."""
  new_params, new_moments = {}, {}
  for name, w in params.items():
    g = np.asarray(grads[name], np.float64)
    w = np.asarray(w, np.float64)
    m, v = moments.get(name, (np.zeros_like(w), np.zeros_like(w)))
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    decayed = not masked or name.split("/")[-1] not in ("bias", "scale")
    if decayed:
      u = u + wd * w
    if trust_ratio and decayed:
      w_norm, u_norm = np.linalg.norm(w), np.linalg.norm(u)
      u = u * (w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0)
    new_params[name] = w - lr * u
    new_moments[name] = (m, v)
  return new_params, new_moments


def _flat(tree):
  return {"/".join(getattr(k, "key", str(k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_decay_mask_covers_kernels_and_position_embeddings_only():
  mask = _flat(optim.decay_mask(_param_tree(np.random.default_rng(0))))
  assert {name for name, decayed in mask.items() if decayed} == {
      "stem_conv/kernel", "tape_pos_emb", "block_0_read/mha/query/kernel",
      "block_0_read/mha/out/kernel", "block_0_read/mlp/dense1/kernel"}


@pytest.mark.parametrize("name", ["lamb", "adamw", "adam"])
def test_masked_optimizer_matches_numpy_over_two_steps(name):
  # 'adam' (CDM's) is plain Adam: no weight decay, so no mask to matter.
  b1, b2, eps, wd, lrs = 0.9, 0.999, 1e-8, 0.0 if name == "adam" else 0.1, (0.01, 0.02)
  config = config_lib.base_config()
  config.optimizer.update(name=name, b1=b1, b2=b2, eps=eps, weight_decay=wd, clip_norm=0.0)
  tx = optim.make_optimizer(config)
  rng = np.random.default_rng(1)
  params = _param_tree(rng)
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
           for _ in lrs]
  with pytest.raises(TypeError):  # The rate is a required argument of every update.
    tx.update(grads[0], tx.init(params), params)

  state, current = tx.init(params), params
  expected, moments = _flat(params), {}
  hyper = dict(b1=b1, b2=b2, eps=eps, wd=wd, trust_ratio=name == "lamb")
  for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
    updates, state = tx.update(g, state, current, learning_rate=jnp.float32(lr))
    current = jax.tree.map(lambda p, u: p + u, current, updates)
    unmasked, _ = _numpy_step(expected, _flat(g), moments, t, lr, masked=False, **hyper)
    expected, moments = _numpy_step(expected, _flat(g), moments, t, lr, **hyper)
    got = _flat(current)
    assert set(got) == set(expected)
    for leaf in expected:
      np.testing.assert_allclose(got[leaf], expected[leaf], rtol=2e-5, atol=1e-6, err_msg=leaf)
    if name == "adam":
      continue
    # The masks matter: decaying (and trust-ratio scaling) biases and norms would differ.
    for leaf in ("stem_conv/bias", "stem_ln/scale", "block_0_read/mlp/ln/bias"):
      assert np.max(np.abs(unmasked[leaf] - expected[leaf])) > 1e-4, leaf


def test_adam_refuses_weight_decay_and_unknown_names_are_named():
  config = config_lib.base_config()
  config.optimizer.update(name="adam", weight_decay=0.01)
  with pytest.raises(ValueError, match=r"config.optimizer.weight_decay=0.01: 'adam' has no weight"):
    optim.make_optimizer(config)
  config.optimizer.update(name="sgd", weight_decay=0.0)
  with pytest.raises(ValueError, match=r"config.optimizer.name='sgd' is unknown; allowed: 'lamb', "
                     r"'adamw', 'adam'"):
    optim.make_optimizer(config)


# --- EMA. ---------------------------------------------------------------------------------------


def test_ema_update_by_hand():
  ema = {"a": jnp.array([1.0, -2.0]), "b": {"c": jnp.array(4.0)}}
  params = {"a": jnp.array([3.0, 2.0]), "b": {"c": jnp.array(0.0)}}
  new = optim.update_ema(ema, params, jnp.float32(0.75))
  # 0.75 * 1 + 0.25 * 3 = 1.5; 0.75 * -2 + 0.25 * 2 = -1; 0.75 * 4 = 3.
  np.testing.assert_allclose(new["a"], [1.5, -1.0])
  np.testing.assert_allclose(new["b"]["c"], 3.0)


def test_ema_warmup_by_hand():
  # min(decay, (1 + t) / (10 + t)): 1/10, 9/18, 91/100, 1001/1010 = 0.99109 (capped at 0.99).
  for step, expected in [(0, 0.1), (8, 0.5), (90, 0.91), (1000, 0.99)]:
    assert float(optim.ema_decay_at(step, 0.99, True)) == pytest.approx(expected, rel=1e-6)
  assert float(optim.ema_decay_at(10, 0.9999, True)) == pytest.approx(11 / 20, rel=1e-6)
  for step in (0, 8, 1000):
    assert float(optim.ema_decay_at(step, 0.99, False)) == pytest.approx(0.99, rel=1e-7)


# --- After a skipped (non-finite) step the rate applied is lr_schedule(state['step']). ----------


TINY_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "fashion_mnist.py")


def test_rate_applied_after_a_skipped_step_follows_the_step_counter():
  """Sign-descent (Adam with b1 = b2 = 0, no decay) moves every weight by exactly lr * sign(g).

  So the largest |change| of any weight is the learning rate that was applied. With a linear
  warm-up lr(s) = 0.01 * s / 10, a skipped step 3 must not shift the rate of steps 4 and 5.
  """
  config = paper_configs.load_config(f"{TINY_CONFIG}:tiny")
  config.total_steps = 20
  config.nonfinite_loss = "skip"
  config.optimizer.update(name="adamw", b1=0.0, b2=0.0, eps=1e-12, weight_decay=0.0,
                          clip_norm=0.0, learning_rate=0.01, warmup_steps=10, decay="constant",
                          ema_decay=0.9999, ema_warmup=True)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  model, tx, init_fn, _, _ = train.build(config, mesh)
  step_fn = jax.jit(train.make_train_step(model, tx, config))
  state = init_fn(0)
  rng = np.random.default_rng(0)

  def batch(bad=False):
    image = rng.uniform(-1, 1, (8, 32, 32, 1)).astype(np.float32)
    if bad:
      image[0, 0, 0, 0] = np.nan
    return {"image": jnp.asarray(image), "label": jnp.asarray(rng.integers(0, 10, 8))}

  def max_change(new, old):
    return max(float(jnp.max(jnp.abs(n - o))) for n, o in
               zip(jax.tree.leaves(new), jax.tree.leaves(old)))

  for step in range(6):
    before = jax.tree.map(np.asarray, state)
    state, metrics = step_fn(state, batch(bad=step == 3))
    expected_lr = 0.01 * step / 10
    assert int(state["step"]) == step + 1
    assert float(metrics["learning_rate"]) == pytest.approx(expected_lr, rel=1e-6, abs=1e-12)
    if step == 3:
      assert not np.isfinite(float(metrics["loss"]))
      assert int(state["nonfinite_steps"]) == 1
      for part in ("params", "opt_state", "ema_params"):
        assert max_change(state[part], before[part]) == 0.0, part
      continue
    applied = max_change(state["params"], before["params"])
    assert applied == pytest.approx(expected_lr, rel=1e-4, abs=1e-9), step
    # The EMA warm-up reads the same counter: decay min(0.9999, (1 + s) / (10 + s)).
    decay = (1 + step) / (10 + step)
    for ema, old_ema, new in zip(jax.tree.leaves(state["ema_params"]),
                                 jax.tree.leaves(before["ema_params"]),
                                 jax.tree.leaves(state["params"])):
      np.testing.assert_allclose(ema, decay * old_ema + (1 - decay) * np.asarray(new),
                                 rtol=1e-5, atol=1e-7)
  assert int(state["nonfinite_steps"]) == 1


def _copied_entry_parameters(hlo_text: str) -> list[str]:
  """Shapes of the entry computation's parameters that the compiled program copies whole."""
  entry = hlo_text[hlo_text.index("\nENTRY"):]
  parameters = set(re.findall(r"%(\S+) = \S+ parameter\(", entry))
  return [shape for shape, operand in re.findall(r"%\S+ = (\S+) copy\(%(\S+)\)", entry)
          if operand in parameters]


def test_skipping_by_branch_updates_the_donated_state_in_place():
  """skip_by='branch' exists to update the state in place: no parameter, moment or EMA buffer
  may be copied, only scalars (the step counter). (With 'select' XLA:CPU copies 3/4 of the
  state's bytes each step; see train.make_train_step.)"""
  config = paper_configs.load_config(f"{TINY_CONFIG}:tiny")
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  model, tx, _, abstract_state, state_shardings = train.build(config, mesh)
  step = train.jit_train_step(model, tx, config, mesh, state_shardings, skip_by="branch")
  compiled = step.lower(abstract_state, train.batch_spec(config, mesh)).compile()
  copied = _copied_entry_parameters(compiled.as_text())
  assert [shape for shape in copied if not re.fullmatch(r"\w+\[\]", shape)] == []


def test_both_ways_of_skipping_a_step_give_the_same_state():
  """The select (the trainer's) and the branch agree bit for bit, on finite steps and on a
  skipped one (a NaN pixel in step 2), with LAMB, weight decay and the EMA."""
  config = paper_configs.load_config(f"{TINY_CONFIG}:tiny")
  config.optimizer.update(name="lamb", weight_decay=0.01, warmup_steps=0)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  model, tx, init_fn, _, _ = train.build(config, mesh)
  rng = np.random.default_rng(1)
  batches = []
  for step in range(4):
    image = rng.uniform(-1, 1, (8, 32, 32, 1)).astype(np.float32)
    if step == 2:
      image[0, 0, 0, 0] = np.nan
    batches.append({"image": jnp.asarray(image), "label": jnp.asarray(rng.integers(0, 10, 8))})
  final = {}
  for skip_by in train.SKIP_BY:
    step_fn = jax.jit(train.make_train_step(model, tx, config, skip_by=skip_by))
    state = init_fn(0)
    for batch in batches:
      state, _ = step_fn(state, batch)
    final[skip_by] = jax.device_get(state)
  assert int(final["branch"]["nonfinite_steps"]) == 1
  same = jax.tree.map(np.array_equal, final["branch"], final["select"])
  assert all(jax.tree.leaves(same))
