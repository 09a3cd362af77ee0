"""Samplers against the closed-form optimal denoiser of Gaussian data.

Data x0 ~ N(mu, diag(s^2)) in D dims, so x0' = b x0 ~ N(b mu, b^2 s^2) and, per dimension,
E[x0' | x_t] = b mu + sqrt(g) b^2 s^2 / (g b^2 s^2 + 1 - g) (x_t - sqrt(g) b mu). Everything is
linear-Gaussian, so the exact mean and variance that a sampler with T steps produces (without
clipping) follow from propagating the two moments through the same update in float64
(`exact_moments`). That gives the discretisation allowance of the statistical checks: the sample
moments must be within 5 standard errors of the finite-T moments, and the finite-T moments within a
small, asserted distance of the data moments.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rin_diffusion import samplers, schedules

N = 20_000
STEPS = 250
# |mu| + 3 s <= 1 in every dimension, so clipping x0-hat to [-1, 1] (b = 1) hardly ever acts.
MU = np.array([0.3, -0.3, 0.2, -0.1, 0.0, 0.15], np.float64)
S = np.array([0.2, 0.15, 0.25, 0.3, 0.28, 0.22], np.float64)


def gamma64(spec, t):
  t = np.asarray(t, np.float64)
  if spec == "cosine":
    g = np.cos(((t + 2e-4) / (1 + 2.5e-4)) * np.pi / 2) ** 2
  elif spec == "linear":
    g = 1 - t
  else:
    raise ValueError(spec)
  return np.clip(g, 1e-9, 1.0)


def optimal_denoiser(mu, s, b, pred_type):
  """denoise_fn(x_t, gamma, cond, hidden) returning the Bayes-optimal prediction."""
  mu = jnp.asarray(mu, jnp.float32)
  s = jnp.asarray(s, jnp.float32)

  def denoise_fn(x_t, gamma, cond, hidden):
    del cond
    g = gamma[:, None]
    shrink = jnp.sqrt(g) * b**2 * s**2 / (g * b**2 * s**2 + 1 - g)
    x0s = b * mu + shrink * (x_t - jnp.sqrt(g) * b * mu)
    eps = (x_t - jnp.sqrt(g) * x0s) / jnp.sqrt(1 - g)
    pred = {"x0": x0s, "eps": eps, "v": jnp.sqrt(g) * eps - jnp.sqrt(1 - g) * x0s}[pred_type]
    return pred, hidden

  return denoise_fn


def exact_moments(sampler, spec, mu, s, b, steps=STEPS, t_end=0.0, td=0.0, t_start=1.0):
  """float64 (mean, var) of the output x0 and of the final state x_t, per dimension, no clipping.

  The start state is the exact marginal at t_start (pure noise at t_start = 1 for the offset
  cosine, whose gamma(1) is 0 to float precision)."""
  t_now, t_next = (np.asarray(a, np.float64)
                   for a in samplers.time_grid(steps, td, t_end, t_start))
  g_start = gamma64(spec, t_start) if t_start < 1.0 else 0.0
  m = np.sqrt(g_start) * b * mu
  v = g_start * b**2 * s**2 + 1 - g_start
  for gn, gx in zip(gamma64(spec, t_now), gamma64(spec, t_next)):
    a = np.sqrt(gn) * b**2 * s**2 / (gn * b**2 * s**2 + 1 - gn)  # x0-hat = a x + c.
    c = b * mu - a * np.sqrt(gn) * b * mu
    out_mean, out_var = (a * m + c) / b, a**2 * v / b**2
    if sampler == "ddim":
      # eps-hat = ((1 - sqrt(gn) a) x - sqrt(gn) c) / sqrt(1 - gn).
      p = np.sqrt(gx) * a + np.sqrt(1 - gx) * (1 - np.sqrt(gn) * a) / np.sqrt(1 - gn)
      q = np.sqrt(gx) * c - np.sqrt(1 - gx) * np.sqrt(gn) * c / np.sqrt(1 - gn)
      added = 0.0
    else:
      alpha, one_minus_alpha = gn / gx, (gx - gn) / gx
      p = np.sqrt(gx) * one_minus_alpha / (1 - gn) * a + np.sqrt(alpha) * (1 - gx) / (1 - gn)
      q = np.sqrt(gx) * one_minus_alpha / (1 - gn) * c
      added = one_minus_alpha if sampler == "ddpm" else (1 - gx) / (1 - gn) * one_minus_alpha
    m, v = p * m + q, p**2 * v + added
  return out_mean, out_var, m, v


def _run(sampler, spec, pred_type, b, clip_x0, t_end=0.0, seed=0):
  denoise_fn = optimal_denoiser(MU, S, b, pred_type)
  fn = jax.jit(functools.partial(
      samplers.sample, denoise_fn, gamma_fn=schedules.gamma_fn(spec), steps=STEPS,
      sampler=sampler, input_scale=b, pred_type=pred_type, clip_x0=clip_x0, t_end=t_end))
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  out = fn(jax.random.normal(k1, (N, len(MU))), k2)
  return np.asarray(out.x0, np.float64), np.asarray(out.x_t, np.float64)


def _check_moments(samples, want_mean, want_var, exact, exact_1000, max_bias):
  """Checks samples against the T-step law and the data law.

  exact / exact_1000: the (mean, var) that the sampler produces with T = 250 / 1000 steps.
  """
  (mean_t, var_t), (_, var_1000) = exact, exact_1000
  n = samples.shape[0]
  se_mean = np.sqrt(var_t / n)
  se_std = np.sqrt(var_t / (2 * n))  # SE of a Gaussian sample std.
  # 1. The implementation: the samples follow the T-step law exactly (to 5 standard errors).
  assert np.all(np.abs(samples.mean(0) - mean_t) < 5 * se_mean), (samples.mean(0), mean_t)
  assert np.all(np.abs(samples.std(0) - np.sqrt(var_t)) < 5 * se_std), (
      samples.std(0), np.sqrt(var_t))
  # 2. The allowance: the T-step law's bias is discretisation error. It is small and decays at
  # least 2x from 250 to 1000 steps (first order in 1/T). This validates the float64 moment model
  # used in 1: an update formula that were wrong there would leave a bias that does not vanish.
  want_std = np.sqrt(want_var)
  bias_mean, bias_std = np.abs(mean_t - want_mean), np.abs(np.sqrt(var_t) - want_std)
  assert np.all(bias_mean < 1e-4 * want_std)
  assert np.all(bias_std < max_bias * want_std), bias_std / want_std
  assert np.all(np.abs(np.sqrt(var_1000) - want_std) < 0.5 * bias_std + 1e-6)
  # 3. Hence the samples reproduce the data law within 5 SE plus that allowance.
  assert np.all(np.abs(samples.mean(0) - want_mean) < 5 * se_mean + bias_mean)
  assert np.all(np.abs(samples.std(0) - want_std) < 5 * se_std + bias_std)


def _exact(sampler, spec, b, **kwargs):
  return [exact_moments(sampler, spec, MU, S, b, steps=steps, **kwargs)
          for steps in (STEPS, 4 * STEPS)]


# Largest T = 250 std bias, relative to the data std, that each schedule may have. The reference's
# offset 'cosine' has 1 - gamma ~ 4e-5 at the last step; 'linear' has 1 - gamma = 1 / T there, so
# its last x0-hat (a posterior mean) is visibly shrunk at 250 steps (spec-rin 6.3 returns x0-hat).
MAX_BIAS = {"cosine": 0.08, "linear": 0.15}

# 'ddpm_learned' takes a 2C-channel prediction: tests/test_learned_variance.py covers it.
# The ODE solvers ('dpmpp_2m', 'heun') are checked against the exact flow in test_fast_samplers.py.
# So is 'dpmpp_2m_sde', against the exact law of its samples.
FIXED_VARIANCE = ("ddpm", "ddpm_small", "ddim")
CASES = (
    [(s, "cosine", p, 1.0, True) for s in FIXED_VARIANCE for p in ("eps", "x0", "v")]
    + [(s, "linear", "eps", 1.0, True) for s in FIXED_VARIANCE]
    + [("ddpm", "cosine", "v", 0.5, False), ("ddpm_small", "cosine", "eps", 0.5, False),
       ("ddim", "cosine", "x0", 0.5, True)]
)


@pytest.mark.parametrize("sampler,spec,pred_type,b,clip_x0", CASES)
def test_gaussian_data_is_reproduced(sampler, spec, pred_type, b, clip_x0):
  x0, _ = _run(sampler, spec, pred_type, b, clip_x0)
  assert np.all(np.isfinite(x0))
  exact, exact_1000 = ([m[0], m[1]] for m in _exact(sampler, spec, b))
  _check_moments(x0, MU, S**2, exact, exact_1000, MAX_BIAS[spec])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_t_end_returns_the_marginal_state(sampler):
  t_end, b = 0.3, 0.7
  x0, x_t = _run(sampler, "cosine", "eps", b, True, t_end=t_end)
  g = gamma64("cosine", t_end)
  want_mean, want_var = np.sqrt(g) * b * MU, g * b**2 * S**2 + 1 - g
  exact, exact_1000 = ([m[2], m[3]] for m in _exact(sampler, "cosine", b, t_end=t_end))
  _check_moments(x_t, want_mean, want_var, exact, exact_1000, MAX_BIAS["cosine"])
  # x0 is the x0-hat of the last step (at t_now = t_end + (1 - t_end) / T), not the state.
  assert np.all(np.abs(x0.mean(0) - MU) < 0.05)
  assert not np.allclose(x0, x_t)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_t_start_continues_from_a_partly_noised_state(sampler):
  """Started from the exact marginal at t_start = 0.5 (as SDEdit starts from noised real
  images), the remaining steps reproduce the data law."""
  t_start, b = 0.5, 1.0
  g = gamma64("cosine", t_start)
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
  x0 = MU + S * np.asarray(jax.random.normal(k1, (N, len(MU))), np.float64)
  x_t = np.sqrt(g) * b * x0 + np.sqrt(1 - g) * np.asarray(jax.random.normal(k2, x0.shape))
  out = jax.jit(functools.partial(
      samplers.sample, optimal_denoiser(MU, S, b, "eps"), gamma_fn=schedules.gamma_fn("cosine"),
      steps=STEPS, sampler=sampler, input_scale=b, pred_type="eps", clip_x0=False,
      t_start=t_start))(jnp.asarray(x_t, jnp.float32), k3)
  exact, exact_1000 = ([m[0], m[1]] for m in _exact(sampler, "cosine", b, t_start=t_start))
  _check_moments(np.asarray(out.x0, np.float64), MU, S**2, exact, exact_1000, MAX_BIAS["cosine"])


def test_time_grid():
  t_now, t_next = samplers.time_grid(10)
  i = np.arange(10)
  np.testing.assert_allclose(t_now, 1 - i / 10, atol=1e-7)  # spec-rin 6.1.
  np.testing.assert_allclose(t_next, np.maximum(1 - (i + 1) / 10, 0), atol=1e-7)
  t_now, t_next = samplers.time_grid(10, td=1.5)
  np.testing.assert_allclose(t_next, np.maximum(1 - (i + 2.5) / 10, 0), atol=1e-7)
  t_now, t_next = samplers.time_grid(8, td=0.5, t_end=0.2)
  i = np.arange(8)
  np.testing.assert_allclose(t_now, 1 - i / 8 * 0.8, atol=1e-7)
  np.testing.assert_allclose(t_next, np.maximum(1 - (i + 1.5) / 8 * 0.8, 0.2), atol=1e-7)
  assert t_now[0] == 1.0 and t_next[-1] == pytest.approx(0.2)
  t_now, t_next = samplers.time_grid(5, t_start=0.5, t_end=0.1)
  np.testing.assert_allclose(t_now, [0.5, 0.42, 0.34, 0.26, 0.18], atol=1e-7)
  np.testing.assert_allclose(t_next, [0.42, 0.34, 0.26, 0.18, 0.1], atol=1e-7)
  for bad in (dict(steps=0), dict(steps=2.0), dict(steps=4, t_end=1.0), dict(steps=4, td=-1.0),
              dict(steps=4, t_start=0.0), dict(steps=4, t_start=1.5),
              dict(steps=4, t_start=0.3, t_end=0.3)):
    with pytest.raises(ValueError):
      samplers.time_grid(**bad)


# ---------------------------------------------------------------------------------------------
# Guidance, hidden carry, scan structure, errors.


def _linear_cond_fn(calls):
  """pred = 0.5 x + cond; records the batch size it was traced with."""

  def denoise_fn(x_t, gamma, cond, hidden):
    calls.append(x_t.shape[0])
    return 0.5 * x_t + cond["label"], hidden

  return denoise_fn


@pytest.mark.parametrize("guidance", [0.0, 1.0, 3.0])
def test_guidance_mixes_raw_outputs(guidance):
  batch, dim = 4, 3
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
  noise = jax.random.normal(k1, (batch, dim))
  cond = {"label": jax.random.normal(k2, (batch, dim))}
  null_cond = {"label": jax.random.normal(k3, (batch, dim))}
  calls = []
  # One DDIM step with an x0 head and no clipping: the output x0 is the guided prediction itself.
  out = samplers.sample(_linear_cond_fn(calls), noise, jax.random.PRNGKey(0),
                        gamma_fn=schedules.gamma_fn("cosine"), steps=1, sampler="ddim",
                        pred_type="x0", cond=cond, null_cond=null_cond, guidance=guidance,
                        clip_x0=False)
  c = 0.5 * noise + cond["label"]
  u = 0.5 * noise + null_cond["label"]
  np.testing.assert_allclose(out.x0, (1 + guidance) * c - guidance * u, rtol=1e-6, atol=1e-6)
  # Both halves in one 2B call when guided; a single B call otherwise. (The first, shape-only call
  # is jax.eval_shape looking for the hidden's shape.)
  assert set(calls) == ({2 * batch} if guidance else {batch})


def test_guidance_default_null_condition_is_zeros():
  noise = jnp.ones((2, 3))
  cond = {"label": jnp.full((2, 3), 2.0)}
  out = samplers.sample(_linear_cond_fn([]), noise, jax.random.PRNGKey(0),
                        gamma_fn=schedules.gamma_fn("linear"), steps=1, sampler="ddim",
                        pred_type="x0", cond=cond, guidance=2.0, clip_x0=False)
  np.testing.assert_allclose(out.x0, 3 * (0.5 + 2.0) - 2 * 0.5)
  with pytest.raises(ValueError, match="cond is None"):
    samplers.sample(_linear_cond_fn([]), noise, jax.random.PRNGKey(0),
                    gamma_fn=schedules.gamma_fn("linear"), steps=1, guidance=2.0)


def test_guidance_interval_guides_only_the_steps_inside_it():
  """(0.6, 1] on a 4-step grid guides t = 1 and 0.75 only: the same as a guided 2-step run to
  t = 0.5 finished by an unguided 2-step run from there."""
  batch, dim, guidance = 4, 3, 2.5
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
  noise = jax.random.normal(k1, (batch, dim))
  cond = {"label": jax.random.normal(k2, (batch, dim))}
  null_cond = {"label": jax.random.normal(k3, (batch, dim))}

  def denoise_fn(x_t, gamma, cond, hidden):  # An x0 head that depends on gamma and the label.
    return 0.5 * jnp.sqrt(gamma)[:, None] * x_t + cond["label"], hidden

  kw = dict(gamma_fn=schedules.gamma_fn("cosine"), sampler="ddim", pred_type="x0", cond=cond,
            null_cond=null_cond, clip_x0=False)
  key = jax.random.PRNGKey(0)
  out = samplers.sample(denoise_fn, noise, key, steps=4, guidance=guidance,
                        guidance_interval=(0.6, 1.0), **kw)
  first = samplers.sample(denoise_fn, noise, key, steps=2, guidance=guidance, t_end=0.5, **kw)
  want = samplers.sample(denoise_fn, first.x_t, key, steps=2, guidance=0.0, t_start=0.5, **kw)
  np.testing.assert_allclose(out.x0, want.x0, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.x_t, want.x_t, rtol=1e-5, atol=1e-6)
  # And it is neither the guided nor the unguided run.
  for w in (guidance, 0.0):
    other = samplers.sample(denoise_fn, noise, key, steps=4, guidance=w, **kw)
    assert np.abs(np.asarray(other.x0 - out.x0)).max() > 1e-2


@pytest.mark.parametrize("interval", [(0.5, 0.5), (0.6, 0.2), (-0.1, 1.0), (0.0, 1.5), (0.3,),
                                      "a"])
def test_guidance_interval_bad_values(interval):
  with pytest.raises(ValueError) as info:
    samplers.sample(_linear_cond_fn([]), jnp.ones((2, 3)), jax.random.PRNGKey(0),
                    gamma_fn=schedules.gamma_fn("cosine"), steps=2, sampler="ddim",
                    cond={"label": jnp.ones((2, 3))}, guidance=1.0, guidance_interval=interval)
  assert str(info.value) == (
      f"config.sampling.guidance_interval={interval!r}; allowed: (t_lo, t_hi) with "
      "0 <= t_lo < t_hi <= 1, e.g. (0.0, 1.0) to guide every step")


def _counting_fn(x_t, gamma, cond, hidden):
  """pred (an x0 head) = the hidden it was given; hidden_out = hidden + cond marker.

  Like the model, it reads hidden=None as zeros.
  """
  count = jnp.zeros_like(x_t) if hidden is None else hidden["count"]
  return count + 0.0 * x_t, {"count": count + cond[:, :1]}


@pytest.mark.parametrize("hidden_init", ["zeros", None])
@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_hidden_is_carried_from_the_conditional_half(hidden_init, guidance):
  batch, steps = 3, 7
  noise = jnp.zeros((batch, 2))
  cond = jnp.ones((batch, 1))  # Conditional rows add 1 per step ...
  null_cond = jnp.full((batch, 1), 100.0)  # ... unconditional rows would add 100.
  if hidden_init == "zeros":
    hidden_init = {"count": jnp.zeros((batch, 2))}
  out = samplers.sample(_counting_fn, noise, jax.random.PRNGKey(0),
                        gamma_fn=schedules.gamma_fn("cosine"), steps=steps, sampler="ddim",
                        pred_type="x0", cond=cond, null_cond=null_cond, guidance=guidance,
                        hidden_init=hidden_init, clip_x0=False)
  # The last step saw the hidden after steps - 1 conditional updates; both guidance halves saw
  # the same hidden, so (1 + w) h - w h = h.
  np.testing.assert_allclose(out.x0, steps - 1, rtol=1e-6)


def test_hidden_none_stays_none():
  seen = []

  def denoise_fn(x_t, gamma, cond, hidden):
    seen.append(hidden)
    return jnp.zeros_like(x_t), None

  samplers.sample(denoise_fn, jnp.ones((2, 3)), jax.random.PRNGKey(0),
                  gamma_fn=schedules.gamma_fn("cosine"), steps=3, sampler="ddim", pred_type="x0")
  assert seen and all(h is None for h in seen)


def test_sampler_is_one_scan_and_traces_the_network_at_most_twice():
  traces = []

  def denoise_fn(x_t, gamma, cond, hidden):
    traces.append(1)
    return 0.1 * x_t + cond, (0.0 if hidden is None else hidden) + jnp.ones((x_t.shape[0], 5))

  def run(noise, key, hidden_init):
    return samplers.sample(denoise_fn, noise, key, gamma_fn=schedules.gamma_fn("cosine"),
                           steps=50, sampler="ddpm", cond=jnp.ones((4, 3)), guidance=1.5,
                           null_cond=jnp.zeros((4, 3)), hidden_init=hidden_init)

  for hidden_init, expected_traces in ((None, 2), (jnp.zeros((4, 5)), 1)):
    traces.clear()
    jaxpr = jax.make_jaxpr(functools.partial(run, hidden_init=hidden_init))(
        jnp.zeros((4, 3)), jax.random.PRNGKey(0))
    top_level = [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns]
    assert top_level.count("scan") == 1
    assert "while" not in top_level
    scan = next(e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan")
    assert scan.params["length"] == 50
    # The scan body once, plus (hidden_init=None) jax.eval_shape finding the hidden's shape.
    assert len(traces) == expected_traces


def test_deterministic_given_key_and_ddim_ignores_key():
  fn = optimal_denoiser(MU[:2], S[:2], 1.0, "eps")
  noise = jax.random.normal(jax.random.PRNGKey(3), (5, 2))
  ddpm, ddim = (
      jax.jit(functools.partial(samplers.sample, fn, gamma_fn=schedules.gamma_fn("cosine"),
                                steps=20, sampler=name))
      for name in ("ddpm", "ddim"))
  a, b, c = (ddpm(noise, jax.random.PRNGKey(k)).x0 for k in (1, 1, 2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  np.testing.assert_array_equal(ddim(noise, jax.random.PRNGKey(1)).x0,
                                ddim(noise, jax.random.PRNGKey(2)).x0)


def test_clipping_bounds_the_output():
  def wild(x_t, gamma, cond, hidden):
    return 10.0 * jnp.ones_like(x_t), hidden

  out = samplers.sample(wild, jnp.zeros((2, 3)), jax.random.PRNGKey(0),
                        gamma_fn=schedules.gamma_fn("cosine"), steps=4, sampler="ddim",
                        pred_type="x0", input_scale=0.5)
  np.testing.assert_allclose(out.x0, 1.0)  # Clipped to [-b, b], reported in unscaled units.


def test_bad_arguments():
  fn = optimal_denoiser(MU[:2], S[:2], 1.0, "eps")
  kw = dict(gamma_fn=schedules.gamma_fn("cosine"), steps=2)
  with pytest.raises(ValueError) as info:
    samplers.sample(fn, jnp.zeros((2, 2)), jax.random.PRNGKey(0), sampler="euler", **kw)
  assert str(info.value) == ("config.sampling.sampler='euler'; allowed: 'ddpm', 'ddpm_small', 'ddim', "
                             "'ddpm_learned', 'dpmpp_2m', 'heun', 'dpmpp_2m_sde'")
  with pytest.raises(ValueError, match="config.diffusion.pred_type='score'"):
    samplers.sample(fn, jnp.zeros((2, 2)), jax.random.PRNGKey(0), pred_type="score", **kw)
  with pytest.raises(ValueError, match="config.diffusion.input_scale=0.0"):
    samplers.sample(fn, jnp.zeros((2, 2)), jax.random.PRNGKey(0), input_scale=0.0, **kw)
