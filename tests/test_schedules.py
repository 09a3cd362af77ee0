"""gamma(t) against an independent transcription of Algorithm 1 (Chen 2023), and logSNR."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rin_diffusion import schedules

# ---- Algorithm 1 of "On the Importance of Noise Scheduling for Diffusion Models", transcribed
# ---- (scalar math, float64; `sigmoid` is the logistic function).


def sigmoid(x):
  return 1 / (1 + math.exp(-x))


def simple_linear_schedule(t, clip_min=1e-9):
  return np.clip(1 - t, clip_min, 1.)


def sigmoid_schedule(t, start=-3, end=3, tau=1.0, clip_min=1e-9):
  v_start = sigmoid(start / tau)
  v_end = sigmoid(end / tau)
  output = sigmoid((t * (end - start) + start) / tau)
  output = (v_end - output) / (v_end - v_start)
  return np.clip(output, clip_min, 1.)


def cosine_schedule(t, start=0, end=1, tau=1, clip_min=1e-9):
  v_start = math.cos(start * math.pi / 2) ** (2 * tau)
  v_end = math.cos(end * math.pi / 2) ** (2 * tau)
  output = math.cos((t * (end - start) + start) * math.pi / 2) ** (2 * tau)
  output = (v_end - output) / (v_end - v_start)
  return np.clip(output, clip_min, 1.)


def offset_cosine_reference(t):
  # The reference's plain 'cosine' inference schedule (spec-rin 4.1).
  return np.clip(math.cos(((t + 2e-4) / (1 + 2.5e-4)) * math.pi / 2) ** 2, 1e-9, 1.)


T_GRID = np.linspace(0.0, 1.0, 1000)

# Every row of Table 3 of the paper.
TABLE3 = [
    ("linear", simple_linear_schedule),
    ("simple_linear", simple_linear_schedule),
    ("cosine@0,1,1", lambda t: cosine_schedule(t, 0, 1, 1)),
    ("cosine@0.2,1,1", lambda t: cosine_schedule(t, 0.2, 1, 1)),
    ("cosine@0.2,1,2", lambda t: cosine_schedule(t, 0.2, 1, 2)),
    ("cosine@0.2,1,3", lambda t: cosine_schedule(t, 0.2, 1, 3)),
    ("sigmoid@-3,3,0.9", lambda t: sigmoid_schedule(t, -3, 3, 0.9)),
    ("sigmoid@-3,3,1.1", lambda t: sigmoid_schedule(t, -3, 3, 1.1)),
    ("sigmoid@0,3,0.3", lambda t: sigmoid_schedule(t, 0, 3, 0.3)),
    ("sigmoid@0,3,0.5", lambda t: sigmoid_schedule(t, 0, 3, 0.5)),
    ("sigmoid@0,3,0.7", lambda t: sigmoid_schedule(t, 0, 3, 0.7)),
    ("sigmoid@0,3,0.9", lambda t: sigmoid_schedule(t, 0, 3, 0.9)),
    ("sigmoid@0,3,1.1", lambda t: sigmoid_schedule(t, 0, 3, 1.1)),
    ("cosine", offset_cosine_reference),
]


@pytest.mark.parametrize("spec,reference", TABLE3, ids=[s for s, _ in TABLE3])
def test_gamma_matches_algorithm1(spec, reference):
  expected = np.array([reference(float(t)) for t in T_GRID])
  got = np.asarray(schedules.gamma_fn(spec)(jnp.asarray(T_GRID, jnp.float32)))
  assert got.dtype == np.float32
  # float32 evaluation against float64: absolute error at the level of float32 rounding of t.
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  assert got.min() >= schedules.CLIP_MIN and got.max() <= 1.0


def test_sanity_values_spec_4_1():
  t = jnp.array([0.25, 0.5, 0.75])
  cases = {
      "linear": [0.75, 0.5, 0.25],
      "sigmoid@-3,3,1": [0.851, 0.5, 0.149],
      "sigmoid@-3,3,0.9": [0.866, 0.5, 0.134],
      "cosine@0,1,1": [0.854, 0.5, 0.146],
  }
  for spec, expected in cases.items():
    np.testing.assert_allclose(schedules.gamma_fn(spec)(t), expected, atol=6e-4, err_msg=spec)


def test_endpoints():
  for spec in ("linear", "cosine@0,1,1", "cosine@0.2,1,3", "sigmoid@-3,3,1", "sigmoid@0,3,0.3"):
    g = schedules.gamma_fn(spec)(jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(g, [1.0, schedules.CLIP_MIN], rtol=1e-5, err_msg=spec)
  g = np.asarray(schedules.gamma_fn("cosine")(jnp.array([0.0, 1.0])))
  # Offset cosine: gamma(0) ~ 1 - 1e-7, gamma(1) ~ 6.2e-9, with relative precision at t = 1.
  assert 1.0 - 2e-7 <= g[0] < 1.0
  np.testing.assert_allclose(g[1], offset_cosine_reference(1.0), rtol=1e-4)
  assert 6.1e-9 < g[1] < 6.3e-9


def test_small_gamma_relative_precision_near_t1():
  # Near t = 1 the cosines are evaluated without cancellation: relative accuracy, not just absolute.
  t = np.linspace(0.99, 1.0, 50)
  for spec, ref in [("cosine", offset_cosine_reference),
                    ("cosine@0.2,1,2", lambda t: cosine_schedule(t, 0.2, 1, 2))]:
    got = np.asarray(schedules.gamma_fn(spec)(jnp.asarray(t, jnp.float32)))
    expected = np.array([ref(float(np.float32(x))) for x in t])
    np.testing.assert_allclose(got, expected, rtol=2e-4, err_msg=spec)


def test_jit_and_shapes():
  fn = schedules.gamma_fn("sigmoid@-3,3,0.9")
  t = jnp.linspace(0, 1, 12).reshape(3, 4)
  np.testing.assert_allclose(jax.jit(fn)(t), fn(t), rtol=1e-6)  # XLA fusion may reorder ops.
  assert fn(t).shape == (3, 4)
  assert fn(0.5).shape == ()


@pytest.mark.parametrize("spec,fragment", [
    ("foo", "is unknown"),
    ("cosine@0,1", "exactly 3 arguments"),
    ("cosine@", "exactly 3 arguments"),
    ("sigmoid@a,b,c", "not numbers"),
    ("sigmoid@3,-3,1", "start < end"),
    ("cosine@0.5,0.5,1", "start < end"),
    ("sigmoid@-3,3,0", "tau > 0"),
    ("sigmoid@-3,3,-1", "tau > 0"),
    ("cosine@0,1.5,1", "0 <= start < end <= 1"),
    ("cosine@-0.1,1,1", "0 <= start < end <= 1"),
    ("sigmoid@-3,inf,1", "non-finite"),
    ("linear@1", "takes no arguments"),
    ("log@0,1,1", "is unknown"),
])
def test_bad_specs(spec, fragment):
  with pytest.raises(ValueError) as info:
    schedules.gamma_fn(spec)
  message = str(info.value)
  assert f"diffusion schedule {spec!r}" in message
  assert fragment in message
  assert ("allowed: 'linear', 'simple_linear', 'cosine', 'cosine@start,end,tau', "
          "'sigmoid@start,end,tau'") in message


def test_logsnr_values_and_input_scale_shift():
  gamma = np.array([1e-9, 1e-6, 0.01, 0.3, 0.5, 0.7, 0.99, 1 - 1e-6], np.float32)
  expected = np.log(gamma.astype(np.float64)) - np.log1p(-gamma.astype(np.float64))
  np.testing.assert_allclose(schedules.logsnr(gamma), expected, rtol=1e-5, atol=1e-5)
  base = schedules.logsnr(gamma)
  for b in (0.1, 0.5, 0.7, 2.0):
    shift = np.asarray(schedules.logsnr(gamma, b) - base)
    np.testing.assert_allclose(shift, 2 * math.log(b), atol=5e-6)


def test_logsnr_finite_at_the_ends():
  out = schedules.logsnr(jnp.array([0.0, 1.0]))
  assert np.all(np.isfinite(out))
  assert out[0] < -20 and out[1] > 15
  assert jax.jit(schedules.logsnr)(jnp.array([0.5])) == pytest.approx(0.0, abs=1e-6)
