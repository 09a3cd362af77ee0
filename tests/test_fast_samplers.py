"""The second-order ODE samplers ('dpmpp_2m', 'heun') against the exact probability-flow ODE, and
the stochastic 'dpmpp_2m_sde' against the exact law of its samples (below `SDE`).

For Gaussian data x0 ~ N(mu, diag(s^2)) every marginal is Gaussian and the flow map between two
times is the monotone affine map between them, so it keeps each coordinate's standardised value
z = (x_t - sqrt(g) b mu) / sqrt(g b^2 s^2 + 1 - g): the exact endpoint of every noise draw is known
in closed form (`exact_endpoint`). The errors are mean absolute errors of the final state x_t to it,
against the number of denoiser calls (counted at run time, `test_calls_are_counted`).

`python tests/test_fast_samplers.py` prints the error table of docs/samplers.md, and
`python tests/test_fast_samplers.py distribution` its table of distribution errors.
"""

import functools
import itertools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_samplers import MU, S, exact_moments, gamma64, optimal_denoiser

from rin_diffusion import config_lib, samplers, schedules

DRAWS = 2000
SPEC = "cosine"  # The reference's offset cosine inference schedule.


def exact_endpoint(noise, b, mu=MU, t_start=1.0, t_end=0.0):
  """The probability-flow ODE's state at t_end from the state `noise` at t_start (float64)."""
  g_start, g_end = gamma64(SPEC, t_start), gamma64(SPEC, t_end)
  z = (noise - np.sqrt(g_start) * b * mu) / np.sqrt(g_start * b**2 * S**2 + 1 - g_start)
  return np.sqrt(g_end) * b * mu + z * np.sqrt(g_end * b**2 * S**2 + 1 - g_end)


def _noise(seed=0):
  return np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (DRAWS, len(MU))), np.float64)


def _grid_kwargs(sampler, time_grid=None, b=1.0, t_end=0.0, t_start=1.0):
  return dict(gamma_fn=schedules.gamma_fn(SPEC), time_grid=time_grid, t_end=t_end,
              t_start=t_start, input_scale=b)


def _run(sampler, steps, noise, *, denoise_fn=None, b=1.0, pred_type="eps", **kwargs):
  denoise_fn = denoise_fn or optimal_denoiser(MU, S, b, pred_type)
  fn = jax.jit(functools.partial(
      samplers.sample, denoise_fn, gamma_fn=schedules.gamma_fn(SPEC), steps=steps,
      sampler=sampler, input_scale=b, pred_type=pred_type, clip_x0=False, **kwargs))
  return fn(jnp.asarray(noise, jnp.float32), jax.random.PRNGKey(1))


def gaussian_error(sampler, calls, time_grid=None, b=1.0, pred_type="eps"):
  """(calls made, mean absolute error of x_t to the exact endpoint) at most `calls` calls."""
  grid = _grid_kwargs(sampler, time_grid, b)
  steps = samplers.steps_for_calls(sampler, calls, **grid)
  noise = _noise()
  out = _run(sampler, steps, noise, b=b, pred_type=pred_type, time_grid=time_grid)
  error = np.abs(np.asarray(out.x_t, np.float64) - exact_endpoint(noise, b)).mean()
  return samplers.calls_per_run(sampler, steps, **grid), float(error)


@functools.cache
def _ddim_error_at_10():
  calls, error = gaussian_error("ddim", 10)
  assert calls == 10
  return error


def test_dpmpp_2m_at_12_calls_is_4x_better_than_ddim_at_10():
  calls, error = gaussian_error("dpmpp_2m", 12)
  assert calls <= 12
  assert error <= _ddim_error_at_10() / 4, (error, _ddim_error_at_10())


@pytest.mark.xfail(strict=True, reason=(
    "Measured: heun (Karras' trapezoid in sigma) at 12 calls is only about as good as DDIM at 10 "
    "on every grid; it needs ~40 calls for a quarter of DDIM@10's error (docs/samplers.md)."))
def test_heun_at_12_calls_is_4x_better_than_ddim_at_10():
  calls, error = gaussian_error("heun", 12)
  assert calls <= 12
  assert error <= _ddim_error_at_10() / 4, (error, _ddim_error_at_10())


def test_heun_at_40_calls_is_4x_better_than_ddim_at_10():
  calls, error = gaussian_error("heun", 40)
  assert calls <= 40
  assert error <= _ddim_error_at_10() / 4, (error, _ddim_error_at_10())


@pytest.mark.parametrize("sampler", samplers.ODE_SAMPLERS)
def test_second_order_convergence(sampler):
  """Doubling the calls from ~20 to ~40 cuts the error at least 3x (a first-order solver: 2x)."""
  (calls_20, error_20), (calls_40, error_40) = (gaussian_error(sampler, c) for c in (20, 40))
  assert 18 <= calls_20 <= 20 and 38 <= calls_40 <= 40
  assert error_20 >= 3 * error_40, (error_20, error_40)
  # DDIM's is first order, so the bound means something.
  (_, ddim_20), (_, ddim_40) = (gaussian_error("ddim", c) for c in (20, 40))
  assert ddim_20 < 2.2 * ddim_40


@pytest.mark.parametrize("sampler", samplers.ODE_SAMPLERS)
def test_every_prediction_type_and_input_scale(sampler):
  """eps, x0 and v heads of the same optimal denoiser give the same flow, at b = 0.5 too; at 40
  calls 'dpmpp_2m' beats DDIM's error at as many calls. (heun, whose last step is an Euler step
  from sigma(t = 1 / 21) ~ 0.07, does not at b = 0.5: 0.0128 against 0.0118.)"""
  noise = _noise()[:500]
  for b in (1.0, 0.5):
    want = exact_endpoint(noise, b)
    grid = _grid_kwargs(sampler, b=b)
    steps = samplers.steps_for_calls(sampler, 40, **grid)
    ddim = np.abs(np.asarray(_run("ddim", samplers.calls_per_run(sampler, steps, **grid), noise,
                                  b=b).x_t) - want).mean()
    outs = [np.asarray(_run(sampler, steps, noise, b=b, pred_type=p).x_t)
            for p in ("eps", "x0", "v")]
    for out in outs:
      error = np.abs(out - want).mean()
      assert error < (ddim if sampler == "dpmpp_2m" else 0.05 * b), (error, ddim)
      np.testing.assert_allclose(out, outs[0], atol=2e-3 * b)


def _two_class_denoiser(means, b):
  """An eps head: the optimal denoiser of N(cond @ means, diag(S^2)); a zero cond means mean 0."""
  means = jnp.asarray(means, jnp.float32)
  s = jnp.asarray(S, jnp.float32)

  def denoise_fn(x_t, gamma, cond, hidden):
    mu = cond @ means
    g = gamma[:, None]
    shrink = jnp.sqrt(g) * b**2 * s**2 / (g * b**2 * s**2 + 1 - g)
    x0s = b * mu + shrink * (x_t - jnp.sqrt(g) * b * mu)
    return (x_t - jnp.sqrt(g) * x0s) / jnp.sqrt(1 - g), hidden

  return denoise_fn


@pytest.mark.parametrize("sampler", samplers.ODE_SAMPLERS)
def test_guidance_follows_the_guided_gaussian(sampler):
  """Two classes with means mu_a, mu_b, the null condition mean 0, all with covariance S^2: the
  guided eps (1 + w) eps_c - w eps_0 is the optimal eps of N((1 + w) mu_c, S^2) (the scores are
  linear with one slope), whose flow endpoint is closed form."""
  means = np.stack([MU, -0.5 * MU + 0.1])
  noise = _noise()[:1000]
  labels = np.arange(noise.shape[0]) % 2
  cond = jnp.asarray(np.eye(2)[labels], jnp.float32)
  kw = dict(denoise_fn=_two_class_denoiser(means, 1.0), cond=cond)
  calls = 16
  steps = samplers.steps_for_calls(sampler, calls, **_grid_kwargs(sampler))
  unguided = np.asarray(_run(sampler, steps, noise, **kw).x_t)
  np.testing.assert_allclose(np.asarray(_run(sampler, steps, noise, guidance=0.0, **kw).x_t),
                             unguided)
  assert np.abs(unguided - exact_endpoint(noise, 1.0, means[labels])).mean() < 0.05
  w = 1.5
  guided = np.asarray(_run(sampler, steps, noise, guidance=w, **kw).x_t)
  error = np.abs(guided - exact_endpoint(noise, 1.0, (1 + w) * means[labels])).mean()
  assert error < 0.05, error
  assert np.abs(guided - unguided).mean() > 0.1
  # Guiding t in (0.5, 1] only lands between the two (and runs heun's second calls under it too).
  half = np.asarray(_run(sampler, steps, noise, guidance=w, guidance_interval=(0.5, 1.0),
                         **kw).x_t)
  assert 0.01 < np.abs(half - guided).mean() < np.abs(unguided - guided).mean()


@pytest.mark.parametrize("sampler", samplers.ODE_SAMPLERS)
@pytest.mark.parametrize("t_start,t_end", [(1.0, 0.3), (0.6, 0.0), (0.6, 0.2)])
def test_truncated_runs_follow_the_exact_flow(sampler, t_start, t_end):
  """t_end > 0 (a cascade's handover) returns the flow's state at t_end; t_start < 1 continues
  from the exact marginal there."""
  b = 0.7
  noise = _noise()[:1000]
  g = gamma64(SPEC, t_start)
  x_start = np.sqrt(g) * b * MU + np.sqrt(g * b**2 * S**2 + 1 - g) * noise
  grid = _grid_kwargs(sampler, b=b, t_end=t_end, t_start=t_start)
  steps = samplers.steps_for_calls(sampler, 16, **grid)
  out = _run(sampler, steps, x_start, b=b, t_end=t_end, t_start=t_start)
  want = exact_endpoint(x_start, b, t_start=t_start, t_end=t_end)
  ddim = _run("ddim", samplers.calls_per_run(sampler, steps, **grid), x_start, b=b, t_end=t_end,
              t_start=t_start)
  error, ddim_error = (np.abs(np.asarray(o.x_t) - want).mean() for o in (out, ddim))
  # 'dpmpp_2m': within 2% of the state's scale at t_end, and closer than DDIM at as many calls.
  # 'heun' to t_end = 0 ends with an Euler step from sigma ~ 0.1 (13% here, DDIM 12%).
  scale = np.sqrt(gamma64(SPEC, t_end) * b**2 * S**2 + 1 - gamma64(SPEC, t_end)).mean()
  if sampler == "dpmpp_2m":
    assert error < 0.02 * scale and error < ddim_error, (error, ddim_error, scale)
  else:
    assert error < (0.02 if t_end > 0 else 0.15) * scale, (error, ddim_error, scale)


def _call_counter(calls):
  """An x0 head whose prediction is the hidden it got; each call adds cond to the hidden and, at
  run time, 1 to calls[0] (a host callback: a traced Python counter would count traces)."""

  def denoise_fn(x_t, gamma, cond, hidden):
    def bump():
      calls[0] += 1

    jax.debug.callback(bump)
    count = hidden["count"]
    return count + 0.0 * x_t, {"count": count + cond[:, :1]}

  return denoise_fn


@pytest.mark.parametrize("sampler,time_grid", list(itertools.product(
    samplers.ODE_SAMPLERS + ("ddim", "dpmpp_2m_sde"), samplers.TIME_GRIDS)))
def test_calls_are_counted_and_the_hidden_is_threaded(sampler, time_grid):
  """calls_per_run matches a run-time counter; each call's hidden feeds the next call (heun's second
  call within a step included), from the conditional half when guided ('dpmpp_2m_sde''s noise
  leaves x0-hat, the hidden here, alone)."""
  batch = 3
  cond = jnp.ones((batch, 1))
  null_cond = jnp.full((batch, 1), 100.0)  # The unconditional half would add 100 per call.
  for steps, guidance in ((1, 0.0), (2, 0.0), (5, 2.0), (9, 0.0)):
    counter = [0]
    out = samplers.sample(
        _call_counter(counter), jnp.zeros((batch, 2)), jax.random.PRNGKey(0),
        gamma_fn=schedules.gamma_fn(SPEC), steps=steps, sampler=sampler, pred_type="x0",
        cond=cond, null_cond=null_cond, guidance=guidance, clip_x0=False,
        hidden_init={"count": jnp.zeros((batch, 2))}, time_grid=time_grid)
    jax.block_until_ready(out)
    calls = samplers.calls_per_run(sampler, steps, **_grid_kwargs(sampler, time_grid))
    assert counter[0] == calls, (steps, counter[0], calls)
    # The output is the last call's x0-hat: the hidden after all the calls before it.
    np.testing.assert_allclose(out.x0, calls - 1)
  if sampler == "heun":  # 2 per step, but 1 on the last step and on the jump from sigma(1).
    assert samplers.calls_per_run("heun", 9, **_grid_kwargs("heun", time_grid)) == 16


def test_time_grids():
  gamma_fn = schedules.gamma_fn(SPEC)

  def sigma(t):
    g = np.asarray(gamma_fn(t), np.float64)
    return np.sqrt((1 - g) / g)

  for kind, coordinate in (("logsnr", np.log), ("edm", lambda s: s ** (1 / samplers.EDM_RHO))):
    for t_end, t_start in ((0.0, 1.0), (0.2, 0.9)):
      t_now, t_next = samplers.time_grid(8, t_end=t_end, t_start=t_start, kind=kind,
                                         gamma_fn=gamma_fn)
      assert t_now[0] == np.float32(t_start) and t_next[-1] == np.float32(t_end)
      np.testing.assert_array_equal(t_now[1:], t_next[:-1])
      assert np.all(np.diff(np.asarray(t_now)) < 0)
      # Uniform in the coordinate between sigma_max (capped at EDM_SIGMA_MAX) and sigma(t_end),
      # the first point being t_start itself.
      points = coordinate(sigma(np.concatenate([t_now[1:], t_next[-1:]])))
      start = coordinate(min(sigma(np.float32(t_start)), samplers.EDM_SIGMA_MAX))
      want = start + np.arange(1, 9) / 8 * (points[-1] - start)
      # (Near gamma = 1 float32 gamma_fn resolves 1 - gamma to a few parts in 1e3.)
      np.testing.assert_allclose(points, want, rtol=0, atol=0.02 * abs(points[-1] - start))
  # The uniform grid is unchanged and needs no schedule; td shifts t_next on every grid.
  np.testing.assert_array_equal(samplers.time_grid(10)[0], samplers.time_grid(10, kind="uniform_t")[0])
  t_now, t_next = samplers.time_grid(8, td=1.0, kind="logsnr", gamma_fn=gamma_fn)
  np.testing.assert_array_equal(t_next[:-2], t_now[2:])
  with pytest.raises(ValueError, match="config.sampling.time_grid='karras'"):
    samplers.time_grid(4, kind="karras", gamma_fn=gamma_fn)
  with pytest.raises(ValueError, match="needs the schedule gamma_fn"):
    samplers.time_grid(4, kind="edm")


def test_defaults_and_errors():
  assert samplers.DEFAULT_TIME_GRID["dpmpp_2m"] == "logsnr"
  assert samplers.DEFAULT_TIME_GRID["dpmpp_2m_sde"] == "logsnr"
  assert set(samplers.DEFAULT_TIME_GRID) == set(samplers.SAMPLERS)
  assert set(samplers.END_TO_END_SAMPLERS) <= set(samplers.samplers_for(False))
  # ODE_SAMPLERS are the deterministic ones; the SDE solver needs td = 0 all the same.
  assert "dpmpp_2m_sde" not in samplers.ODE_SAMPLERS
  assert set(samplers.END_TO_END_SAMPLERS) == {"dpmpp_2m", "heun", "dpmpp_2m_sde"}
  noise = _noise()[:4]
  # The default grid is the named one.
  for sampler in samplers.END_TO_END_SAMPLERS:
    default = _run(sampler, 6, noise).x_t
    named = _run(sampler, 6, noise, time_grid=samplers.DEFAULT_TIME_GRID[sampler]).x_t
    np.testing.assert_array_equal(default, named)
    with pytest.raises(ValueError) as info:
      _run(sampler, 6, noise, td=0.5)
    assert str(info.value) == (f"config.sampling.td=0.5; allowed: 0 with the sampler {sampler!r}, "
                               "whose steps must meet end to end")


def test_config_fields():
  config = config_lib.base_config()
  config.sampling.fid_sampler = "dpmpp_2m"
  config.sampling.time_grid = "edm"
  config_lib.validate(config)
  del config.sampling["time_grid"]  # A config from before the field: the sampler's default.
  config_lib.validate(config)
  config.sampling.time_grid = "karras"
  with pytest.raises(ValueError, match="config.sampling.time_grid='karras' is not allowed"):
    config_lib.validate(config)
  config.sampling.time_grid = ""
  config.sampling.td = 1.0
  with pytest.raises(ValueError, match="config.sampling.td=1.0: must be 0 with "
                                       "config.sampling.fid_sampler='dpmpp_2m'"):
    config_lib.validate(config)
  config.sampling.fid_sampler = "ddpm_small"
  config.sampling.sampler = "dpmpp_2m_sde"
  with pytest.raises(ValueError) as info:
    config_lib.validate(config)
  assert str(info.value) == ("config.sampling.td=1.0: must be 0 with "
                             "config.sampling.sampler='dpmpp_2m_sde' (its steps meet end to end).")
  config.sampling.td = 0.0
  config_lib.validate(config)


# The stochastic solver 'dpmpp_2m_sde' (DPM-Solver++(2M) SDE, eta = 1): its samples are checked
# against the law of its final state. On Gaussian data that law is Gaussian and follows, in float64,
# from the paper's update in lambda = log(alpha / sigma) (`sde_exact_moments`), an independent
# writing of what samplers.py computes in gamma.

SDE = "dpmpp_2m_sde"
SDE_DRAWS = 4000


def _lambda(g):
  return 0.5 * (np.log(g) - np.log1p(-g))


def sde_exact_moments(steps, mu=MU, b=1.0, t_start=1.0, t_end=0.0, time_grid="logsnr",
                      second_order=True):
  """float64 (mean, var) per coordinate of the final state of 'dpmpp_2m_sde' from the exact
  marginal at t_start (pure noise at 1), with the optimal denoiser of N(mu, diag(S^2)); `mu` may
  be a function of the step's t_now (a guidance interval switches the Gaussian the denoiser is
  optimal for).

  One step, h = lambda_next - lambda_now, D the extrapolated x0'-hat:
    x_next = (sigma_next / sigma_now) e^-h x + alpha_next (1 - e^-2h) D
             + sigma_next sqrt(1 - e^-2h) z,   D = x0'-hat + h / (2 h_prev) (x0'-hat - x0'-hat_prev)
  (first order, D = x0'-hat, on the first step, after a step of no length and on a last step to
  t = 0; on every step without second_order, which makes it 'ddpm_small'). x0'-hat = a x + c is
  affine in x, so (x, x0'-hat_prev) stays jointly Gaussian: its mean and 2 x 2 covariance go
  through the affine map of each step."""
  t_now, t_next = (np.asarray(t, np.float64) for t in samplers.time_grid(
      steps, 0.0, t_end, t_start, kind=time_grid, gamma_fn=schedules.gamma_fn(SPEC),
      input_scale=b))
  mu_at = mu if callable(mu) else lambda t: mu
  g_start = gamma64(SPEC, t_start) if t_start < 1.0 else 0.0
  mean = np.stack([np.sqrt(g_start) * b * mu_at(t_start), np.zeros(len(S))])  # (x, x0'-hat_prev).
  cov = np.zeros((2, 2, len(S)))
  cov[0, 0] = g_start * b**2 * S**2 + 1 - g_start
  h_prev = 0.0
  for i, (t, gn, gx) in enumerate(zip(t_now, gamma64(SPEC, t_now), gamma64(SPEC, t_next))):
    a = np.sqrt(gn) * b**2 * S**2 / (gn * b**2 * S**2 + 1 - gn)
    c = b * mu_at(t) - a * np.sqrt(gn) * b * mu_at(t)
    h = _lambda(gx) - _lambda(gn)
    first_order = (not second_order or i == 0 or h_prev <= 0
                   or (t_end == 0.0 and i == steps - 1))
    ratio = 0.0 if first_order else h / (2 * h_prev)
    x_coef = np.sqrt((1 - gx) / (1 - gn)) * np.exp(-h)
    d_coef = np.sqrt(gx) * -np.expm1(-2 * h)
    noise_var = (1 - gx) * -np.expm1(-2 * h)
    # (x_next, x0'-hat) = L (x, x0'-hat_prev) + offset, per coordinate.
    one = np.ones_like(a)
    lin = np.array([[x_coef + d_coef * (1 + ratio) * a, -d_coef * ratio * one], [a, 0 * one]])
    offset = np.stack([d_coef * (1 + ratio) * c, c])
    mean = np.einsum("ijd,jd->id", lin, mean) + offset
    cov = np.einsum("ijd,jkd,lkd->ild", lin, cov, lin)
    cov[0, 0] += noise_var
    h_prev = h
  return mean[0], cov[0, 0]


def _sde_noise(draws=SDE_DRAWS, seed=0):
  return np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (draws, len(MU))), np.float64)


def fitted_w2(samples, mean, std):
  """2-Wasserstein distance between the diagonal Gaussian fitted to `samples` and N(mean, std^2):
  sqrt(sum |mean_hat - mean|^2 + |std_hat - std|^2), closed form for diagonal Gaussians."""
  samples = np.asarray(samples, np.float64)
  return float(np.sqrt(np.sum((samples.mean(0) - mean) ** 2 + (samples.std(0) - std) ** 2)))


def distribution_error(sampler, calls, time_grid=None, draws=SDE_DRAWS):
  """(calls made, fitted W2 of x_t at t = 0 to the data N(mu, S^2)) at most `calls` calls."""
  grid = _grid_kwargs(sampler, time_grid)
  steps = samplers.steps_for_calls(sampler, calls, **grid)
  out = _run(sampler, steps, _sde_noise(draws), time_grid=time_grid)
  return samplers.calls_per_run(sampler, steps, **grid), fitted_w2(out.x_t, MU, S)


def _assert_law(samples, mean, var, label=""):
  """The samples follow N(mean, var) to 5 standard errors per coordinate (mean: sqrt(var / n);
  a Gaussian sample std: sqrt(var / 2n))."""
  samples = np.asarray(samples, np.float64)
  n = samples.shape[0]
  np.testing.assert_array_less(np.abs(samples.mean(0) - mean), 5 * np.sqrt(var / n), label)
  np.testing.assert_array_less(np.abs(samples.std(0) - np.sqrt(var)), 5 * np.sqrt(var / (2 * n)),
                               label)


def test_sde_first_order_steps_are_ddpm_small():
  """With D = x0'-hat the step is (sigma_next / sigma_now) e^-h x + alpha_next (1 - e^-2h) x0'-hat
  + sigma_next sqrt(1 - e^-2h) z, which is the posterior q(x_next | x, x0'-hat): 'ddpm_small''s
  step. A 2-step run to t = 0 has only first-order steps (the first, and the last to t = 0), and
  a 1-step run to t_end = 0.3 too: on the same grid and key they equal 'ddpm_small''s runs."""
  noise = _sde_noise(64)
  for steps, t_end in ((2, 0.0), (1, 0.3)):
    for time_grid in ("logsnr", "uniform_t"):
      sde, small = (_run(name, steps, noise, t_end=t_end, time_grid=time_grid)
                    for name in (SDE, "ddpm_small"))
      np.testing.assert_allclose(sde.x_t, small.x_t, rtol=1e-6, atol=1e-6)
      np.testing.assert_allclose(sde.x0, small.x0, rtol=1e-6, atol=1e-6)
  # The same holds of the laws: the lambda-form first-order step gives 'ddpm_small''s law as
  # test_samplers.exact_moments propagates it in gamma.
  _, _, mean, var = exact_moments("ddpm_small", SPEC, MU, S, 1.0, steps=12)
  np.testing.assert_allclose(sde_exact_moments(12, time_grid="uniform_t", second_order=False),
                             (mean, var), rtol=1e-9)
  # With a second-order step (3 steps to t_end = 0.3) they part.
  sde, small = (_run(name, 3, noise, t_end=0.3) for name in (SDE, "ddpm_small"))
  assert np.abs(np.asarray(sde.x_t) - np.asarray(small.x_t)).mean() > 1e-3


def test_sde_path_follows_the_update_in_lambda():
  """Each draw's path against the update written in lambda (float64), with the fresh z of every
  step drawn as the sampler draws it: (key, z_key) = split(key), z = normal(z_key)."""
  b, steps, t_start, t_end = 0.8, 6, 0.9, 0.2
  noise = _sde_noise(256)
  out = _run(SDE, steps, noise, b=b, pred_type="v", t_start=t_start, t_end=t_end)
  t_now, t_next = (np.asarray(t, np.float64) for t in samplers.time_grid(
      steps, 0.0, t_end, t_start, kind="logsnr", gamma_fn=schedules.gamma_fn(SPEC),
      input_scale=b))
  x, x0_prev, h_prev, key = noise, None, None, jax.random.PRNGKey(1)
  for gn, gx in zip(gamma64(SPEC, t_now), gamma64(SPEC, t_next)):
    x0_hat = b * MU + np.sqrt(gn) * b**2 * S**2 / (gn * b**2 * S**2 + 1 - gn) * (
        x - np.sqrt(gn) * b * MU)
    h = _lambda(gx) - _lambda(gn)
    d = x0_hat if x0_prev is None else x0_hat + h / (2 * h_prev) * (x0_hat - x0_prev)
    key, z_key = jax.random.split(key)
    z = np.asarray(jax.random.normal(z_key, noise.shape, jnp.float32), np.float64)
    x = (np.sqrt((1 - gx) / (1 - gn)) * np.exp(-h) * x + np.sqrt(gx) * -np.expm1(-2 * h) * d
         + np.sqrt(1 - gx) * np.sqrt(-np.expm1(-2 * h)) * z)
    x0_prev, h_prev = x0_hat, h
  np.testing.assert_allclose(out.x_t, x, atol=2e-4)
  np.testing.assert_allclose(out.x0, x0_prev / b, atol=2e-4)


def test_sde_reproduces_the_data_distribution():
  """At 25 calls (25 steps on 'logsnr') the 4,000 samples follow the 25-step law to 5 standard
  errors; that law's std is 3.3% above the data's (discretisation), and 4x the steps cut that
  bias at least 8x (second order: 16x; measured 13x; 'ddpm_small' is first order, ~3x); so the
  samples match N(mu, S^2) within 5 standard errors plus that bias."""
  calls, steps = 25, samplers.steps_for_calls(SDE, 25, **_grid_kwargs(SDE))
  assert steps == calls == samplers.calls_per_run(SDE, steps, **_grid_kwargs(SDE))
  x = np.asarray(_run(SDE, steps, _sde_noise()).x_t, np.float64)
  mean, var = sde_exact_moments(steps)
  _assert_law(x, mean, var)
  bias = np.abs(np.sqrt(var) - S)
  np.testing.assert_array_less(np.abs(mean - MU), 1e-6)
  np.testing.assert_array_less(bias, 0.04 * S)
  _, var_100 = sde_exact_moments(4 * steps)
  np.testing.assert_array_less(8 * np.abs(np.sqrt(var_100) - S), bias)
  n = x.shape[0]
  np.testing.assert_array_less(np.abs(x.mean(0) - MU), 5 * S / np.sqrt(n))
  np.testing.assert_array_less(np.abs(x.std(0) - S), 5 * S / np.sqrt(2 * n) + bias)


def test_sde_at_12_calls_is_3x_closer_to_the_data_than_ddpm_small():
  """Fitted-Gaussian W2 to the data at 12 calls, each on its default grid, same noise: measured
  (4,000 draws) 3.0e-2 for 'dpmpp_2m_sde' against 1.66e-1 for 'ddpm_small', whose posterior
  variance leaves samples too narrow at few steps (std 0.64-0.74 of the data's)."""
  (sde_calls, sde), (small_calls, small) = (distribution_error(name, 12)
                                            for name in (SDE, "ddpm_small"))
  assert sde_calls == small_calls == 12
  assert 3 * sde < small, (sde, small)


def test_sde_every_prediction_type_and_input_scale():
  """eps, x0 and v heads of one optimal denoiser give the same samples from the same key (b = 1
  and 0.5), and at b = 0.5 the samples follow the 16-step law of N(b mu, b^2 S^2)."""
  noise = _sde_noise()
  for b in (1.0, 0.5):
    outs = [np.asarray(_run(SDE, 16, noise, b=b, pred_type=p).x_t) for p in ("eps", "x0", "v")]
    for out in outs[1:]:
      np.testing.assert_allclose(out, outs[0], atol=2e-3 * b)
  mean, var = sde_exact_moments(16, b=0.5)
  _assert_law(outs[0], mean, var)


def test_sde_guidance_follows_the_guided_gaussian():
  """The guided eps (1 + w) eps_c - w eps_0 of two classes is the optimal eps of
  N((1 + w) mu_c, S^2) (test_guidance_follows_the_guided_gaussian), so each class's samples follow
  that Gaussian's 16-step law; w = 0 is the unguided run at the same key. Guiding only
  t in (0.5, 1] gives the law of a denoiser optimal for N((1 + w) mu_c, S^2) at those steps and
  for N(mu_c, S^2) after: its means are told apart from both others'. (They lie below the
  unguided means, not between: the first unguided step extrapolates the jump of x0-hat from the
  guided to the unguided model, docs/samplers.md.)"""
  means = np.stack([MU, -0.5 * MU + 0.1])
  noise = _sde_noise(20_000)
  labels = np.arange(noise.shape[0]) % 2
  cond = jnp.asarray(np.eye(2)[labels], jnp.float32)
  kw = dict(denoise_fn=_two_class_denoiser(means, 1.0), cond=cond)
  steps, w = 16, 1.5
  unguided = np.asarray(_run(SDE, steps, noise, **kw).x_t)
  np.testing.assert_array_equal(np.asarray(_run(SDE, steps, noise, guidance=0.0, **kw).x_t),
                                unguided)
  guided = np.asarray(_run(SDE, steps, noise, guidance=w, **kw).x_t)
  half = np.asarray(_run(SDE, steps, noise, guidance=w, guidance_interval=(0.5, 1.0), **kw).x_t)
  for label in (0, 1):
    rows, mu = labels == label, means[label]
    laws = {"unguided": sde_exact_moments(steps, mu=mu),
            "guided": sde_exact_moments(steps, mu=(1 + w) * mu),
            "half": sde_exact_moments(steps, mu=lambda t, mu=mu: (1 + w) * mu if t > 0.5 else mu)}
    for name, samples in (("unguided", unguided), ("guided", guided), ("half", half)):
      _assert_law(samples[rows], *laws[name], f"class {label}, {name}")
    # The half-guided samples' means are nearer their law's than halfway to either other law's
    # (class 1: its means 0.008 from the unguided law's on average, the sampling noise 0.002).
    deviation = np.abs(half[rows].mean(0) - laws["half"][0]).mean()
    for other in ("unguided", "guided"):
      gap = np.abs(laws[other][0] - laws["half"][0]).mean()
      assert deviation < gap / 2, (label, other, deviation, gap)


@pytest.mark.parametrize("t_start,t_end", [(1.0, 0.3), (0.6, 0.0), (0.6, 0.2)])
def test_sde_truncated_runs_reach_the_marginal(t_start, t_end):
  """t_end > 0 (a cascade's handover) returns a state distributed as the marginal at t_end,
  N(alpha b mu, alpha^2 b^2 S^2 + sigma^2); t_start < 1 continues from the marginal there. The
  samples follow the 16-step law, whose std is within 4% of the marginal's (measured: 0.6-0.8%
  for t_end > 0, 3.5% for t_end = 0)."""
  b = 0.7
  g = gamma64(SPEC, t_start)
  x_start = np.sqrt(g) * b * MU + np.sqrt(g * b**2 * S**2 + 1 - g) * _sde_noise()
  out = _run(SDE, 16, x_start, b=b, t_end=t_end, t_start=t_start)
  mean, var = sde_exact_moments(16, b=b, t_start=t_start, t_end=t_end)
  _assert_law(out.x_t, mean, var)
  g = gamma64(SPEC, t_end)
  want_mean, want_std = np.sqrt(g) * b * MU, np.sqrt(g * b**2 * S**2 + 1 - g)
  np.testing.assert_array_less(np.abs(mean - want_mean), 1e-6)
  np.testing.assert_array_less(np.abs(np.sqrt(var) - want_std), 0.04 * want_std)


def test_sde_clips_x0():
  """clip_x0 bounds x0'-hat to [-b, b] (the output x0 is in unscaled units)."""
  def wild(x_t, gamma, cond, hidden):
    return 10.0 * jnp.ones_like(x_t), hidden

  out = samplers.sample(wild, jnp.zeros((2, 3)), jax.random.PRNGKey(0),
                        gamma_fn=schedules.gamma_fn(SPEC), steps=4, sampler=SDE,
                        pred_type="x0", input_scale=0.5)
  np.testing.assert_allclose(out.x0, 1.0)
  # The last step, to t = 0, returns x0'-hat plus noise of std below sigma(0) = 3.4e-4.
  np.testing.assert_allclose(out.x_t, 0.5, atol=5e-3)


def distribution_table(calls=(8, 12, 25), draws=100_000):
  """Rows (sampler, time_grid, calls made, sampled W2, exact-law W2) for docs/samplers.md."""
  for sampler in (SDE, "ddpm_small"):
    for time_grid in samplers.TIME_GRIDS:
      for budget in calls:
        made, w2 = distribution_error(sampler, budget, time_grid, draws)
        mean, var = sde_exact_moments(made, time_grid=time_grid, second_order=sampler == SDE)
        exact = np.sqrt(np.sum((mean - MU) ** 2 + (np.sqrt(var) - S) ** 2))
        yield sampler, time_grid, made, w2, exact


def error_table(calls=(6, 8, 10, 12, 16, 20, 25, 40, 50)):
  """Rows (sampler, time_grid, calls made, error) for docs/samplers.md."""
  for sampler in ("ddim",) + samplers.ODE_SAMPLERS:
    for time_grid in samplers.TIME_GRIDS:
      for budget in calls:
        yield (sampler, time_grid) + gaussian_error(sampler, budget, time_grid)


if __name__ == "__main__":
  if sys.argv[1:] == ["distribution"]:
    for row in distribution_table():
      print("{:<12} {:<10} calls={:<3d} w2={:.2e} exact_law_w2={:.2e}".format(*row), flush=True)
  else:
    for row in error_table():
      print("{:<9} {:<10} calls={:<3d} error={:.2e}".format(*row), flush=True)
