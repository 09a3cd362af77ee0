"""Learned variances (Improved DDPM) against math written here, in float64.

References, all transcribed independently of rin_diffusion:
* Improved DDPM's cosine process (Nichol & Dhariwal 2021, eq. 17 and the 0.999 clip) and DDPM's
  linear betas, as cumulative products.
* The posterior q(x_(i-1) | x_i, x0) by conditioning the joint Gaussian of (x_(i-1), x_i) given x0
  (not by transcribing DDPM eq. 7, so the two are checked against each other).
* The Gaussian KL in closed form (and by Monte Carlo), the discretised decoder by numerical
  integration of the density (scipy.integrate.quad).
* The sampler on Gaussian data, whose Bayes-optimal eps is closed form, against the exact moments of
  the same linear-Gaussian reverse chain propagated here in float64.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from rin_diffusion import config_lib, learned_variance, samplers, schedules, train

LOG2 = np.log(2.0)
HALF_BIN = 1.0 / 255.0


# ---- Independent references (float64).


def iddpm_cosine_alpha_bar(timesteps: int) -> np.ndarray:
  """alpha-bar_0 .. alpha-bar_T of Improved DDPM's cosine process, betas clipped to 0.999."""
  def f(u):
    return np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2

  betas = [min(1.0 - f(i / timesteps) / f((i - 1) / timesteps), 0.999)
           for i in range(1, timesteps + 1)]
  return np.concatenate([[1.0], np.cumprod(1.0 - np.asarray(betas))])


def ddpm_linear_1000_alpha_bar() -> np.ndarray:
  """DDPM's 1000 betas from 1e-4 to 0.02, linearly (DDPM section 4)."""
  betas = 1e-4 + (0.02 - 1e-4) * np.arange(1000) / 999
  return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


def posterior(alpha_bar: np.ndarray, i):
  """(coef_x0, coef_xt, variance) of q(x_(i-1) | x_i, x0), by Gaussian conditioning.

  Given x0: x_(i-1) = sqrt(ab_(i-1)) x0 + sqrt(1 - ab_(i-1)) e1 and x_i = sqrt(a_i) x_(i-1)
  + sqrt(1 - a_i) e2, so Cov(x_(i-1), x_i) = sqrt(a_i) (1 - ab_(i-1)), Var(x_i) = 1 - ab_i.
  """
  prev, cur = alpha_bar[np.asarray(i) - 1], alpha_bar[i]
  cov = np.sqrt(cur / prev) * (1.0 - prev)
  coef_xt = cov / (1.0 - cur)
  coef_x0 = np.sqrt(prev) - coef_xt * np.sqrt(cur)
  variance = (1.0 - prev) - cov**2 / (1.0 - cur)
  return coef_x0, coef_xt, variance


def betas_of(alpha_bar: np.ndarray) -> np.ndarray:
  return np.concatenate([[0.0], 1.0 - alpha_bar[1:] / alpha_bar[:-1]])


def gaussian_kl(m1, var1, m2, var2):
  """KL(N(m1, var1) || N(m2, var2)) in nats."""
  return 0.5 * np.log(var2 / var1) + (var1 + (m1 - m2) ** 2) / (2.0 * var2) - 0.5


def decoder_log_prob(x0, mean, std):
  """log P(x0's bin) under N(mean, std^2); x0 on the 256-level grid of [-1, 1], outer bins open."""
  level = np.rint((x0 + 1.0) * 127.5)
  upper = stats.norm.cdf((x0 + HALF_BIN - mean) / std)
  lower = stats.norm.cdf((x0 - HALF_BIN - mean) / std)
  inner = np.log(np.maximum(upper - lower, 1e-300))
  return np.where(level == 0, stats.norm.logcdf((x0 + HALF_BIN - mean) / std),
                  np.where(level == 255, stats.norm.logsf((x0 - HALF_BIN - mean) / std), inner))


def reference_vlb(alpha_bar, step, x0, x_t, eps_hat, v):
  """L_i per example in bits/dim (Improved DDPM eqs. 13-16 with DDPM's decoder, section 3.3)."""
  x0, x_t, eps_hat, v = (np.asarray(a, np.float64) for a in (x0, x_t, eps_hat, v))
  step = np.asarray(step)
  shape = (-1,) + (1,) * (x_t.ndim - 1)
  beta = betas_of(alpha_bar)
  variances = posterior(alpha_bar, np.arange(1, len(alpha_bar)))[2]
  beta_tilde = np.concatenate([[np.nan], variances])
  beta_tilde[1] = beta_tilde[2]  # beta~_1 = 0; Improved DDPM's clipped log-variance uses beta~_2.
  b, bt, ab = (np.reshape(a[step], shape) for a in (beta, beta_tilde, alpha_bar))
  coef_x0, coef_xt, _ = posterior(alpha_bar, step)
  true_mean = np.reshape(coef_x0, shape) * x0 + np.reshape(coef_xt, shape) * x_t
  model_mean = (x_t - b / np.sqrt(1.0 - ab) * eps_hat) / np.sqrt(1.0 - b)  # DDPM eq. 11.
  frac = (v + 1.0) / 2.0
  model_var = np.exp(frac * np.log(b) + (1.0 - frac) * np.log(bt))
  axes = tuple(range(1, x_t.ndim))
  kl = np.mean(gaussian_kl(true_mean, bt, model_mean, model_var), axis=axes) / LOG2
  nll = -np.mean(decoder_log_prob(x0, model_mean, np.sqrt(model_var)), axis=axes) / LOG2
  return np.where(step == 1, nll, kl)


def grid_values(rng, shape):
  """Data on the 256-level grid of [-1, 1], including both edge levels."""
  levels = rng.integers(0, 256, size=shape)
  levels.flat[:2] = (0, 255)
  return levels / 127.5 - 1.0


# ---- 1. The discrete processes as gamma(t).


@pytest.mark.parametrize("timesteps", [4000, 10])
def test_iddpm_cosine_table_matches_improved_ddpm(timesteps):
  expected = iddpm_cosine_alpha_bar(timesteps)
  table = schedules.alpha_bar_table(f"iddpm_cosine@{timesteps}")
  assert table.dtype == np.float64 and table.shape == (timesteps + 1,)
  np.testing.assert_allclose(table, expected, rtol=1e-12, atol=0)
  # The last beta is the clipped one: alpha-bar_T = 0.001 alpha-bar_(T-1).
  np.testing.assert_allclose(table[-1] / table[-2], 0.001, rtol=1e-9)
  assert schedules.is_table(f"iddpm_cosine@{timesteps}")


def test_ddpm_linear_table_matches_ddpm():
  table = schedules.alpha_bar_table("ddpm_linear@1000")
  np.testing.assert_allclose(table, ddpm_linear_1000_alpha_bar(), rtol=1e-12, atol=0)
  beta = betas_of(table)
  np.testing.assert_allclose([beta[1], beta[1000]], [1e-4, 0.02], rtol=1e-9)
  assert schedules.is_table("ddpm_linear@1000") and not schedules.is_table("cosine@0,1,1")


@pytest.mark.parametrize("timesteps", [4000, 10])
def test_gamma_fn_interpolates_sqrt_alpha_bar(timesteps):
  alpha_bar = iddpm_cosine_alpha_bar(timesteps)
  gamma = schedules.gamma_fn(f"iddpm_cosine@{timesteps}")
  on_grid = np.asarray(gamma(jnp.asarray(np.arange(timesteps + 1) / timesteps, jnp.float32)))
  # gamma_fn's documented range is [CLIP_MIN, 1]: alpha-bar_4000 = 1.5e-10 comes back as 1e-9.
  expected = np.maximum(alpha_bar, schedules.CLIP_MIN)
  np.testing.assert_allclose(on_grid, expected, rtol=1e-5, atol=0)
  root_mid = (np.sqrt(alpha_bar[:-1]) + np.sqrt(alpha_bar[1:])) / 2.0
  midway = np.asarray(gamma(jnp.asarray((np.arange(timesteps) + 0.5) / timesteps, jnp.float32)))
  np.testing.assert_allclose(midway, np.maximum(root_mid**2, schedules.CLIP_MIN), rtol=1e-5, atol=0)


@pytest.mark.parametrize("spec", ["iddpm_cosine@0", "iddpm_cosine@x", "ddpm_linear@10"])
def test_bad_table_specs_raise_naming_the_spec(spec):
  with pytest.raises(ValueError, match=re.escape(repr(spec))):
    schedules.alpha_bar_table(spec)
  with pytest.raises(ValueError, match=re.escape(repr(spec))):
    schedules.gamma_fn(spec)


def test_process_needs_two_steps():
  with pytest.raises(ValueError, match=re.escape("'iddpm_cosine@1'")):
    learned_variance.process("iddpm_cosine@1")


# ---- 2. Process tables.


@pytest.mark.parametrize("spec,alpha_bar", [
    ("iddpm_cosine@4000", iddpm_cosine_alpha_bar(4000)),
    ("iddpm_cosine@10", iddpm_cosine_alpha_bar(10)),
    ("ddpm_linear@1000", ddpm_linear_1000_alpha_bar()),
])
def test_process_tables(spec, alpha_bar):
  tables = learned_variance.process(spec)
  steps = np.arange(1, len(alpha_bar))
  beta = betas_of(alpha_bar)[1:]
  coef_x0, coef_xt, beta_tilde = posterior(alpha_bar, steps)
  # DDPM eq. 7's closed forms, which the conditioning above must reproduce (checks the reference).
  prev = alpha_bar[:-1]
  np.testing.assert_allclose(beta_tilde[1:], (beta * (1 - prev) / (1 - alpha_bar[1:]))[1:],
                             rtol=1e-9)
  np.testing.assert_allclose(coef_x0, np.sqrt(prev) * beta / (1 - alpha_bar[1:]), rtol=1e-9,
                             atol=1e-15)
  assert tables.timesteps == len(alpha_bar) - 1
  for name, table in tables._asdict().items():
    assert table.dtype == jnp.float32 and table.shape == alpha_bar.shape, name
  for name, got, want in [
      ("alpha_bar", tables.alpha_bar, alpha_bar),
      ("posterior_coef_x0", tables.posterior_coef_x0[1:], coef_x0),
      ("posterior_coef_xt", tables.posterior_coef_xt[1:], coef_xt),
      ("mean_coef_eps", tables.mean_coef_eps[1:], beta / np.sqrt(1 - alpha_bar[1:])),
      ("recip_sqrt_alpha", tables.recip_sqrt_alpha[1:], 1 / np.sqrt(1 - beta)),
      ("exp(log_beta)", np.exp(np.float64(tables.log_beta[1:])), beta),
      ("exp(log_beta_tilde_clipped)[2:]", np.exp(np.float64(tables.log_beta_tilde_clipped[2:])),
       beta_tilde[1:]),
  ]:
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-6, atol=1e-30,
                               err_msg=name)
  # beta~_1 = 0: entries 1 (and the unused 0) hold log beta~_2.
  np.testing.assert_allclose(np.float64(tables.log_beta_tilde_clipped[:2]),
                             np.log(beta_tilde[1]), rtol=1e-6)
  assert beta_tilde[0] == 0.0


# ---- 3. Interpolated log-variance.


def test_interpolated_log_variance_endpoints_and_midpoint():
  alpha_bar = iddpm_cosine_alpha_bar(4000)
  log_beta = jnp.asarray(np.log(betas_of(alpha_bar)[2:]), jnp.float32)
  log_beta_tilde = jnp.asarray(np.log(posterior(alpha_bar, np.arange(2, 4001))[2]), jnp.float32)
  ones = jnp.ones_like(log_beta)

  def at(v):
    return learned_variance.interpolated_log_variance(v * ones, log_beta, log_beta_tilde)

  np.testing.assert_array_equal(at(-1.0), log_beta_tilde)
  np.testing.assert_array_equal(at(1.0), log_beta)
  geometric = np.sqrt(np.exp(np.float64(log_beta)) * np.exp(np.float64(log_beta_tilde)))
  np.testing.assert_allclose(np.exp(np.float64(at(0.0))), geometric, rtol=1e-6)


# ---- 4. Gaussian KL.


def test_normal_kl_closed_form_and_monte_carlo():
  rng = np.random.default_rng(0)
  m1, m2 = rng.normal(size=16), rng.normal(size=16)
  lv1, lv2 = rng.uniform(-3, 1, size=16), rng.uniform(-3, 1, size=16)
  got = np.asarray(learned_variance.normal_kl(*(jnp.asarray(a, jnp.float32)
                                                for a in (m1, lv1, m2, lv2))), np.float64)
  np.testing.assert_allclose(got, gaussian_kl(m1, np.exp(lv1), m2, np.exp(lv2)), rtol=1e-5,
                             atol=1e-6)
  # Monte Carlo: KL = E_p1[log p1(x) - log p2(x)], 200k draws per pair, 5 standard errors.
  draws = m1 + np.exp(lv1 / 2) * rng.normal(size=(200_000, 16))
  log_ratio = (stats.norm.logpdf(draws, m1, np.exp(lv1 / 2))
               - stats.norm.logpdf(draws, m2, np.exp(lv2 / 2)))
  standard_error = log_ratio.std(axis=0) / np.sqrt(len(draws))
  assert np.all(np.abs(log_ratio.mean(axis=0) - got) < 5 * standard_error + 1e-6)
  same = learned_variance.normal_kl(*(jnp.asarray(a, jnp.float32) for a in (m1, lv1, m1, lv1)))
  # Zero up to float32 rounding of (-1 + log_var2) - log_var1 + 1 (the log-variances reach 3).
  np.testing.assert_allclose(same, 0.0, atol=2.5e-7)


# ---- 5. Discretised Gaussian decoder.


@pytest.mark.parametrize("mean,std", [(0.1, 0.3), (-0.95, 0.02), (0.97, 0.05)])
def test_discretized_gaussian_against_integration(mean, std):
  levels = np.array([0, 1, 2, 60, 127, 128, 200, 253, 254, 255])
  x0 = levels / 127.5 - 1.0
  got = np.asarray(learned_variance.discretized_gaussian_log_likelihood(
      jnp.asarray(x0, jnp.float32), jnp.full(x0.shape, mean, jnp.float32),
      jnp.full(x0.shape, np.log(std), jnp.float32)), np.float64)
  pdf = lambda u: stats.norm.pdf(u, mean, std)  # noqa: E731
  expected = []
  for level, x in zip(levels, x0):
    lower = -np.inf if level == 0 else x - HALF_BIN
    upper = np.inf if level == 255 else x + HALF_BIN
    points = [mean] if lower < mean < upper and np.isfinite(lower) and np.isfinite(upper) else None
    expected.append(integrate.quad(pdf, lower, upper, points=points, epsabs=1e-14, epsrel=1e-10)[0])
  expected = np.log(np.maximum(expected, 1e-12))  # The code floors probabilities at 1e-12.
  # float32 CDFs: an absolute error of ~1e-7 in each bin probability.
  np.testing.assert_allclose(np.exp(got), np.exp(expected), rtol=1e-4, atol=3e-7)
  # In log space: where 1.2e-7 (two float32 CDF ulps near 1) is small against the probability.
  resolved = np.exp(expected) > 1e-3
  assert np.sum(resolved) >= 2
  np.testing.assert_allclose(got[resolved], expected[resolved], atol=2e-4)


@pytest.mark.parametrize("mean,std", [(0.1, 0.3), (-0.95, 0.02), (0.5, 2.0)])
def test_discretized_gaussian_bins_sum_to_one(mean, std):
  x0 = jnp.asarray(np.arange(256) / 127.5 - 1.0, jnp.float32)
  log_p = learned_variance.discretized_gaussian_log_likelihood(
      x0, jnp.full((256,), mean, jnp.float32), jnp.full((256,), np.log(std), jnp.float32))
  total = np.sum(np.exp(np.asarray(log_p, np.float64)))
  # Bins below the 1e-12 floor add at most 256e-12.
  assert abs(total - 1.0) < 2e-5, total


# ---- 6. and 7. VLB terms and the hybrid loss.


@pytest.fixture(scope="module")
def vlb_case():
  """A batch at steps 1, 2, 3, 50, 2000, 3999, 4000 of 'iddpm_cosine@4000', noisy eps-hat."""
  spec, timesteps = "iddpm_cosine@4000", 4000
  alpha_bar = iddpm_cosine_alpha_bar(timesteps)
  rng = np.random.default_rng(1)
  step = np.array([1, 1, 2, 3, 50, 2000, 3999, 4000])
  x0 = grid_values(rng, (len(step), 4, 4, 3))
  eps = rng.normal(size=x0.shape)
  ab = alpha_bar[step][:, None, None, None]
  x_t = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
  eps_hat = eps + 0.1 * rng.normal(size=x0.shape)
  v = rng.uniform(-1, 1, size=x0.shape)
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  return dict(spec=spec, alpha_bar=alpha_bar, tables=learned_variance.process(spec), step=step,
              x0=x0, x_t=x_t, eps=eps, eps_hat=eps_hat, v=v, f32=f32, timesteps=timesteps)


def test_vlb_terms_against_reference(vlb_case):
  c, f32 = vlb_case, vlb_case["f32"]
  got = np.asarray(learned_variance.vlb_terms(
      c["tables"], jnp.asarray(c["step"]), x0=f32(c["x0"]), x_t=f32(c["x_t"]),
      eps_hat=f32(c["eps_hat"]), v=f32(c["v"])), np.float64)
  x_t32 = np.asarray(f32(c["x_t"]), np.float64)  # The reference sees the same rounded inputs.
  expected = reference_vlb(c["alpha_bar"], c["step"], c["x0"], x_t32, np.float64(f32(c["eps_hat"])),
                           np.float64(f32(c["v"])))
  assert np.all(expected > 0)
  # float32 tolerance; tiny KLs (step 2000: 8e-6 bits) are cancellations, hence the atol.
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-7)


def test_vlb_terms_vanish_for_the_exact_posterior(vlb_case):
  """eps-hat = eps and v = -1 make N(mu, Sigma) the true posterior: KL = 0 for every i > 1."""
  c, f32 = vlb_case, vlb_case["f32"]
  got = np.asarray(learned_variance.vlb_terms(
      c["tables"], jnp.asarray(c["step"]), x0=f32(c["x0"]), x_t=f32(c["x_t"]),
      eps_hat=f32(c["eps"]), v=-jnp.ones(c["x0"].shape)), np.float64)
  kl = got[c["step"] > 1]
  assert np.all(np.abs(kl) < 1e-6), kl
  # At i = 1 the exact eps gives mu = x0 exactly (x_1 = sqrt(1 - beta_1) x0 + sqrt(beta_1) eps), so
  # the decoder N(x0, beta~_2) puts P = 2 Phi(h / std) - 1 in an inner bin and Phi(h / std) in an
  # edge bin, h = 1/255.
  ratio = HALF_BIN / np.sqrt(posterior(c["alpha_bar"], 2)[2])
  x0_1 = c["x0"][c["step"] == 1]
  edge = np.abs(x0_1) == 1.0
  log_p = np.where(edge, np.log(stats.norm.cdf(ratio)), np.log(2 * stats.norm.cdf(ratio) - 1))
  expected = -np.mean(log_p, axis=(1, 2, 3)) / LOG2
  assert np.all((expected > 0.05) & (expected < 1.0)), expected
  np.testing.assert_allclose(got[c["step"] == 1], expected, rtol=1e-3)


def test_hybrid_vlb_stops_the_mean(vlb_case):
  c, f32 = vlb_case, vlb_case["f32"]
  weight = 0.001
  pred = jnp.concatenate([f32(c["eps_hat"]), f32(c["v"])], axis=-1)

  def total(p):
    return jnp.sum(learned_variance.hybrid_vlb(c["tables"], jnp.asarray(c["step"]),
                                               x0=f32(c["x0"]), x_t=f32(c["x_t"]), pred=p,
                                               vlb_weight=weight))

  value, grad = jax.value_and_grad(total)(pred)
  grad = np.asarray(grad)
  channels = c["x0"].shape[-1]
  np.testing.assert_array_equal(grad[..., :channels], 0.0)
  assert np.mean(grad[..., channels:] != 0.0) > 0.9
  assert np.all(np.abs(grad[..., channels:]).sum(axis=(1, 2, 3)) > 0)
  # Without the stop the eps half would get gradients: the KL depends on the mean.
  unstopped = jax.grad(lambda e: jnp.sum(learned_variance.vlb_terms(
      c["tables"], jnp.asarray(c["step"]), x0=f32(c["x0"]), x_t=f32(c["x_t"]), eps_hat=e,
      v=f32(c["v"]))))(f32(c["eps_hat"]))
  assert np.any(np.asarray(unstopped) != 0.0)
  expected = weight * c["timesteps"] * reference_vlb(
      c["alpha_bar"], c["step"], c["x0"], np.float64(f32(c["x_t"])),
      np.float64(f32(c["eps_hat"])), np.float64(f32(c["v"])))
  np.testing.assert_allclose(float(value), expected.sum(), rtol=2e-5)


# ---- 8. The 'ddpm_learned' sampler on Gaussian data.

MU, SIGMA = 0.3, 0.5
SAMPLER_T = 1000
BATCH = 4000  # (B, 4, 4, 1): 64000 independent scalars.


def chain_moments(alpha_bar_path: np.ndarray, v: float) -> tuple[float, float]:
  """Exact (mean, std) of the final state of the reverse chain with the optimal eps, float64.

  alpha_bar_path: alpha-bar at the visited steps, from the first (noise) to 1. Each step is
  x' = (x - beta / sqrt(1 - ab) eps_opt(x)) / sqrt(1 - beta) + sqrt(Sigma) z (DDPM eq. 11) with the
  respaced beta = 1 - ab / ab', beta~ = beta (1 - ab') / (1 - ab), log Sigma = frac log beta
  + (1 - frac) log beta~, frac = (v + 1) / 2; eps_opt is linear in x, so x stays Gaussian.
  """
  mean, var = 0.0, 1.0
  for ab, ab_next in zip(alpha_bar_path[:-1], alpha_bar_path[1:]):
    beta = 1.0 - ab / ab_next
    beta_tilde = beta * (1.0 - ab_next) / (1.0 - ab)
    slope = np.sqrt(1 - ab) / (ab * SIGMA**2 + 1 - ab)  # eps_opt = slope (x - sqrt(ab) MU).
    shrink = beta / np.sqrt(1 - ab) * slope
    a = (1.0 - shrink) / np.sqrt(1 - beta)
    offset = shrink * np.sqrt(ab) * MU / np.sqrt(1 - beta)
    frac = (v + 1.0) / 2.0
    sigma2 = 0.0 if beta_tilde == 0.0 and frac == 0.0 else beta**frac * beta_tilde ** (1 - frac)
    mean, var = a * mean + offset, a * a * var + sigma2
  return mean, float(np.sqrt(var))


def optimal_eps_with_v(v: float):
  """denoise_fn returning [E[eps | x_t], v] for x0 ~ N(MU, SIGMA^2) per element."""
  def denoise_fn(x_t, gamma, cond, hidden):
    del cond, hidden
    g = gamma[:, None, None, None]
    eps = jnp.sqrt(1 - g) * (x_t - jnp.sqrt(g) * MU) / (g * SIGMA**2 + 1 - g)
    return jnp.concatenate([eps, jnp.full_like(eps, v)], axis=-1), None
  return denoise_fn


# (steps, v, largest allowed |exact std - SIGMA| / SIGMA). The exact chain's deficit is O(1/steps):
# the reverse variance misses the x0-uncertainty term coef_x0^2 Var[x0 | x_i] at every step, so the
# fixed beta~ chain loses 0.4% of the std at 1000 steps and 3.5% strided to 100; beta (v = 1)
# overshoots slightly instead.
SAMPLER_CASES = [(1000, -1.0, 0.01), (100, -1.0, 0.05), (1000, 1.0, 0.01)]


@pytest.mark.parametrize("steps,v,bias_bound", SAMPLER_CASES)
def test_ddpm_learned_sampler_reproduces_gaussian_data(steps, v, bias_bound):
  spec = f"iddpm_cosine@{SAMPLER_T}"
  alpha_bar = iddpm_cosine_alpha_bar(SAMPLER_T)
  path = alpha_bar[::SAMPLER_T // steps][::-1]
  exact_mean, exact_std = chain_moments(path, v)
  assert abs(exact_mean - MU) < 1e-6
  assert abs(exact_std - SIGMA) < bias_bound * SIGMA, exact_std
  # The test separates v = -1 from v = 1 on the strided grid (both exact stds, in standard errors).
  n = BATCH * 16
  if steps == 100:
    other = chain_moments(path, -v)[1]
    assert abs(other - exact_std) > 10 * exact_std / np.sqrt(2 * n), (other, exact_std)

  noise = jax.random.normal(jax.random.PRNGKey(0), (BATCH, 4, 4, 1), jnp.float32)
  out = samplers.sample(optimal_eps_with_v(v), noise, jax.random.PRNGKey(1),
                        gamma_fn=schedules.gamma_fn(spec), steps=steps, sampler="ddpm_learned",
                        clip_x0=False, pred_type="eps")
  x = np.asarray(out.x_t, np.float64)
  assert np.all(np.isfinite(x))
  # Elements are independent (per-element denoiser, independent noise): standard errors of the
  # mean and (Gaussian) std of n draws, 5 of them.
  mean_se, std_se = exact_std / np.sqrt(n), exact_std / np.sqrt(2 * n)
  print(f"steps={steps} v={v:+.0f}: sample mean {x.mean():.5f} std {x.std():.5f}; exact chain "
        f"{exact_mean:.5f} {exact_std:.5f}; target {MU} {SIGMA}; se {mean_se:.5f} {std_se:.5f}")
  assert abs(x.mean() - exact_mean) < 5 * mean_se
  assert abs(x.std() - exact_std) < 5 * std_se


# ---- 9. The trainer's hybrid loss, with a stub network.


def test_trainer_loss_is_mse_plus_weighted_vlb():
  timesteps, weight = 10, 0.001
  spec = f"iddpm_cosine@{timesteps}"
  alpha_bar = iddpm_cosine_alpha_bar(timesteps)
  config = config_lib.base_config()
  config.model.architecture = "unet"
  config.model.num_classes = 0
  config.diffusion.update(train_schedule=spec, infer_schedule=spec, timesteps=timesteps,
                          learned_variance=True, vlb_weight=weight, normalize_input="none",
                          self_cond_rate=0.0, pred_type="eps", loss_target="eps",
                          loss_weighting="constant", input_scale=1.0)
  seen = []

  class StubNet(nn.Module):
    """[scale x_in, v]: one parameter for each half."""

    @nn.compact
    def __call__(self, x, gamma, class_onehot, hidden, extra_gammas, train):
      scale = self.param("scale", lambda key: jnp.asarray(0.7, jnp.float32))
      v = self.param("v", lambda key: jnp.asarray(0.3, jnp.float32))
      if not isinstance(x, jax.core.Tracer):
        seen.append((np.asarray(x, np.float64), np.asarray(gamma, np.float64)))
      return jnp.concatenate([scale * x, jnp.broadcast_to(v, x.shape)], axis=-1), hidden

  params = {"scale": jnp.asarray(0.7, jnp.float32), "v": jnp.asarray(0.3, jnp.float32)}
  loss_fn = train.make_loss_fn(StubNet(), config)
  x0 = grid_values(np.random.default_rng(2), (64, 4, 4, 1))
  batch = {"image": jnp.asarray(x0, jnp.float32), "label": jnp.zeros((64,), jnp.int32)}
  key = jax.random.PRNGKey(3)
  loss = float(loss_fn(params, batch, key))
  x_t, gamma = seen[-1]  # normalize_input 'none': the network input is x_t itself.
  step = np.argmin(np.abs(alpha_bar[None, :] - gamma[:, None]), axis=1)
  np.testing.assert_allclose(gamma, alpha_bar[step], rtol=1e-6)
  assert 1 in step and np.any(step > 1), step
  g = gamma[:, None, None, None]
  x0_32 = np.float64(batch["image"])
  eps = (x_t - np.sqrt(g) * x0_32) / np.sqrt(1 - g)

  def reference(scale, v):
    mse = np.mean((scale * x_t - eps) ** 2, axis=(1, 2, 3))
    vlb = reference_vlb(alpha_bar, step, x0_32, x_t, scale * x_t, np.full(x_t.shape, v))
    return mse, vlb

  mse, vlb = reference(0.7, 0.3)
  print(f"trainer loss {loss:.6f}; reference mean(mse) {mse.mean():.6f} + "
        f"{weight} T mean(L_i) {weight * timesteps * vlb.mean():.6f}")
  np.testing.assert_allclose(loss, np.mean(mse + weight * timesteps * vlb), rtol=1e-4)

  grads = jax.grad(loss_fn)(params, batch, key)
  # The eps half gets only the MSE's gradient (the mean is stopped in L_vlb) ...
  grad_scale = np.mean(2 * (0.7 * x_t - eps) * x_t)
  np.testing.assert_allclose(float(grads["scale"]), grad_scale, rtol=1e-3)
  # ... and v only lambda T dL/dv (central difference of the float64 reference).
  h = 1e-5
  dvlb_dv = (reference(0.7, 0.3 + h)[1] - reference(0.7, 0.3 - h)[1]) / (2 * h)
  grad_v = weight * timesteps * np.mean(dvlb_dv)
  np.testing.assert_allclose(float(grads["v"]), grad_v, rtol=1e-3)
