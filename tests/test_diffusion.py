"""Forward process, input normalisation, prediction conversions, loss targets and weightings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rin_diffusion import diffusion

KEY = jax.random.PRNGKey(0)


def _gaussian(key, shape, mean=0.0, std=1.0):
  return mean + std * jax.random.normal(key, shape, jnp.float32)


# ---------------------------------------------------------------------------------------------
# Forward process and normalisation.


@pytest.mark.parametrize("gamma,b", [(0.05, 1.0), (0.5, 1.0), (0.9, 0.5), (0.3, 0.7), (0.7, 2.0)])
def test_add_noise_moments(gamma, b):
  k1, k2 = jax.random.split(KEY)
  n, mean, std = 200_000, 0.3, 0.5
  x0 = _gaussian(k1, (n, 1, 1, 1), mean, std)
  noise = jax.random.normal(k2, x0.shape)
  x_t = np.asarray(diffusion.add_noise(x0, jnp.full((n,), gamma), noise, b)).ravel()
  expected_mean = np.sqrt(gamma) * b * mean
  expected_var = gamma * b**2 * std**2 + 1 - gamma
  # 5 standard errors of the sample mean and of the sample variance (Gaussian: sd = var sqrt(2/n)).
  assert abs(x_t.mean() - expected_mean) < 5 * np.sqrt(expected_var / n)
  assert abs(x_t.var() - expected_var) < 5 * expected_var * np.sqrt(2 / n)


def test_add_noise_is_the_formula_per_example():
  x0 = _gaussian(KEY, (3, 2, 2, 1))
  noise = _gaussian(jax.random.PRNGKey(1), x0.shape)
  gamma = jnp.array([0.1, 0.5, 0.9])
  g = np.asarray(gamma)[:, None, None, None]
  expected = np.sqrt(g) * 0.7 * np.asarray(x0) + np.sqrt(1 - g) * np.asarray(noise)
  np.testing.assert_allclose(diffusion.add_noise(x0, gamma, noise, 0.7), expected, rtol=1e-6)


@pytest.mark.parametrize("gamma,b", [(0.2, 0.5), (0.8, 0.5), (0.5, 0.3), (0.5, 2.0), (1.0, 0.1)])
def test_analytic_normalisation_gives_unit_variance(gamma, b):
  k1, k2 = jax.random.split(KEY)
  x0 = jax.random.normal(k1, (4096, 8, 8, 3))  # Unit-variance data.
  noise = jax.random.normal(k2, x0.shape)
  gamma = jnp.full((x0.shape[0],), gamma)
  x_t = diffusion.add_noise(x0, gamma, noise, b)
  x_in = np.asarray(diffusion.normalize_input(x_t, gamma, b, "analytic"))
  n = x_in.size
  assert abs(x_in.var() - 1.0) < 5 * np.sqrt(2 / n)


def test_empirical_normalisation_gives_per_example_unit_std():
  k1, k2 = jax.random.split(KEY)
  x0 = _gaussian(k1, (16, 8, 8, 3), 0.2, 0.4)
  noise = jax.random.normal(k2, x0.shape)
  gamma = jnp.linspace(0.01, 0.99, 16)
  x_t = diffusion.add_noise(x0, gamma, noise, 0.5)
  x_in = np.asarray(diffusion.normalize_input(x_t, gamma, 0.5, "empirical"))
  np.testing.assert_allclose(x_in.std(axis=(1, 2, 3)), 1.0, rtol=1e-5)
  # Population std (ddof = 0) of each example, not of the batch.
  np.testing.assert_allclose(
      x_in, np.asarray(x_t) / np.asarray(x_t).std(axis=(1, 2, 3), keepdims=True), rtol=1e-5)
  # Clamped: a constant example stays finite.
  flat = diffusion.normalize_input(jnp.zeros((2, 4, 4, 3)), jnp.ones((2,)), 1.0, "empirical")
  np.testing.assert_array_equal(flat, 0.0)


def test_normalize_none_and_bad_mode():
  x_t = _gaussian(KEY, (2, 4, 4, 3))
  np.testing.assert_array_equal(diffusion.normalize_input(x_t, jnp.ones(2), 0.5, "none"), x_t)
  with pytest.raises(ValueError) as info:
    diffusion.normalize_input(x_t, jnp.ones(2), 0.5, "batch")
  assert "config.diffusion.normalize_input='batch'" in str(info.value)
  assert "allowed: 'empirical', 'analytic', 'none'" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Prediction conversions.


def _noised(b, gammas=(0.01, 0.1, 0.5, 0.9, 0.99), shape=(4, 4, 3)):
  k1, k2 = jax.random.split(KEY)
  gamma = jnp.asarray(gammas, jnp.float32)
  x0 = jax.random.uniform(k1, (len(gammas),) + shape, minval=-1.0, maxval=1.0)
  noise = jax.random.normal(k2, x0.shape)
  return x0, noise, gamma, diffusion.add_noise(x0, gamma, noise, b)


def _true_pred(pred_type, x0, noise, gamma, b):
  g = gamma[:, None, None, None]
  return {"eps": noise, "x0": b * x0,
          "v": jnp.sqrt(g) * noise - jnp.sqrt(1 - g) * b * x0}[pred_type]


@pytest.mark.parametrize("pred_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("b", [1.0, 0.5])
def test_round_trip_without_clipping(pred_type, b):
  x0, noise, gamma, x_t = _noised(b)
  pred = _true_pred(pred_type, x0, noise, gamma, b)
  for truncate in (False, True):
    x0_hat, eps_hat = diffusion.predict_x0_eps(pred, x_t, gamma, pred_type=pred_type,
                                               input_scale=b, clip_x0=False,
                                               truncate_noise=truncate)
    # Worst conditioning here is a division by sqrt(0.01) (eps -> x0) or sqrt(1 - 0.99).
    np.testing.assert_allclose(x0_hat, b * x0, atol=2e-5)
    np.testing.assert_allclose(eps_hat, noise, atol=2e-5)


@pytest.mark.parametrize("pred_type", ["eps", "x0", "v"])
def test_clipping_and_truncation(pred_type):
  b = 0.5
  x0, noise, gamma, x_t = _noised(b)
  # A prediction whose x0-hat is far out of range.
  g = gamma[:, None, None, None]
  x0s_hat = 3.0 * b * x0
  eps = (x_t - jnp.sqrt(g) * x0s_hat) / jnp.sqrt(1 - g)
  pred = {"eps": eps, "x0": x0s_hat, "v": jnp.sqrt(g) * eps - jnp.sqrt(1 - g) * x0s_hat}[pred_type]
  x0_hat, eps_hat = diffusion.predict_x0_eps(pred, x_t, gamma, pred_type=pred_type,
                                             input_scale=b, clip_x0=True, truncate_noise=True)
  assert float(jnp.max(jnp.abs(x0_hat))) <= b
  assert float(jnp.max(jnp.abs(x0_hat))) == pytest.approx(b)
  # Truncated eps is re-derived from the clipped x0: x_t is reproduced exactly.
  np.testing.assert_allclose(jnp.sqrt(g) * x0_hat + jnp.sqrt(1 - g) * eps_hat, x_t, atol=1e-5)

  _, eps_raw = diffusion.predict_x0_eps(pred, x_t, gamma, pred_type=pred_type, input_scale=b,
                                        clip_x0=True, truncate_noise=False)
  if pred_type == "eps":
    np.testing.assert_array_equal(eps_raw, pred)  # Not truncated: the raw eps output.
  elif pred_type == "x0":
    np.testing.assert_allclose(eps_raw, eps_hat)  # From x0 eps is always derived after clipping.
  else:
    np.testing.assert_allclose(eps_raw, jnp.sqrt(1 - g) * x_t + jnp.sqrt(g) * pred, atol=1e-6)


def test_conversions_finite_at_gamma_extremes():
  x0, noise, _, _ = _noised(1.0, gammas=(0.0, 1.0))
  gamma = jnp.array([0.0, 1.0])
  x_t = diffusion.add_noise(x0, gamma, noise, 1.0)
  for pred_type in ("eps", "x0", "v"):
    for clip in (False, True):
      pred = _true_pred(pred_type, x0, noise, gamma, 1.0)
      x0_hat, eps_hat = diffusion.predict_x0_eps(pred, x_t, gamma, pred_type=pred_type,
                                                 input_scale=1.0, clip_x0=clip)
      assert np.all(np.isfinite(x0_hat)) and np.all(np.isfinite(eps_hat))
  # gamma = 1 (data): eps prediction gives x0-hat = x_t exactly; v gives it without any division.
  x0_hat, _ = diffusion.predict_x0_eps(noise, x_t, gamma, pred_type="eps", input_scale=1.0,
                                       clip_x0=False)
  np.testing.assert_array_equal(x0_hat[1], x_t[1])
  v = _true_pred("v", x0, noise, gamma, 1.0)
  x0_hat, eps_hat = diffusion.predict_x0_eps(v, x_t, gamma, pred_type="v", input_scale=1.0,
                                             clip_x0=False)
  np.testing.assert_allclose(x0_hat, x0, atol=1e-6)
  np.testing.assert_allclose(eps_hat, noise, atol=1e-6)


def test_bad_pred_type():
  with pytest.raises(ValueError,
                     match=r"config.diffusion.pred_type='score'; allowed: 'eps', 'x0', 'v'"):
    diffusion.predict_x0_eps(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.ones(1), pred_type="score",
                             input_scale=1.0)


# ---------------------------------------------------------------------------------------------
# Loss weights.


def _snr64(gamma, b):
  # The clip bound as float32 sees it (1 - 1e-7 rounds to 1 - 2**-23).
  g = np.clip(np.asarray(gamma, np.float64), 1e-9, float(np.float32(1 - 1e-7)))
  return b**2 * g / (1 - g), g


GAMMAS = np.array([1e-9, 1e-4, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.9999, 1.0], np.float32)


@pytest.mark.parametrize("b", [1.0, 0.5, 0.7, 2.0])
@pytest.mark.parametrize("k", [5.0, 1.0])
def test_min_snr_closed_forms(b, k):
  snr, _ = _snr64(GAMMAS, b)
  expected = {"eps": np.minimum(snr, k) / snr, "x0": np.minimum(snr, k),
              "v": np.minimum(snr, k) / (snr + b**2)}
  for target, want in expected.items():
    got = diffusion.loss_weight(jnp.asarray(GAMMAS), input_scale=b, loss_target=target,
                                weighting="min_snr", min_snr_gamma=k)
    assert got.shape == GAMMAS.shape
    np.testing.assert_allclose(got, want, rtol=2e-5, err_msg=target)
  if b == 1.0:  # Hang et al. (Min-SNR repository) formulas with SNR = gamma / (1 - gamma).
    g = GAMMAS[2:-2].astype(np.float64)
    s = g / (1 - g)
    got = diffusion.loss_weight(jnp.asarray(GAMMAS[2:-2]), input_scale=1.0, loss_target="v",
                                weighting="min_snr", min_snr_gamma=k)
    np.testing.assert_allclose(got, np.minimum(s, k) / (s + 1), rtol=2e-5)


@pytest.mark.parametrize("b", [1.0, 0.5])
def test_other_weightings_closed_forms(b):
  snr, g = _snr64(GAMMAS, b)
  expected = {
      ("constant", "eps"): np.ones_like(snr), ("constant", "x0"): np.ones_like(snr),
      ("constant", "v"): np.ones_like(snr),
      ("snr", "eps"): np.ones_like(snr), ("snr", "x0"): snr, ("snr", "v"): g,
      ("truncated_snr", "eps"): np.maximum(1, 1 / snr),
      ("truncated_snr", "x0"): np.maximum(snr, 1),
      ("truncated_snr", "v"): np.maximum(snr, 1) / (snr + b**2),
  }
  for (weighting, target), want in expected.items():
    got = diffusion.loss_weight(jnp.asarray(GAMMAS), input_scale=b, loss_target=target,
                                weighting=weighting, min_snr_gamma=5.0)
    np.testing.assert_allclose(got, want, rtol=2e-5, err_msg=f"{weighting}/{target}")
    assert np.all(np.isfinite(got))


def _one_error_three_ways(b, gammas):
  """x0, noise, x_t and one x0'-hat with its eps-hat and v-hat (float64 derivation)."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
  gamma = np.asarray(gammas, np.float32)
  x0 = jax.random.uniform(k1, (len(gammas), 4, 4, 3), minval=-1.0, maxval=1.0)
  noise = jax.random.normal(k2, x0.shape)
  x_t = diffusion.add_noise(x0, gamma, noise, b)
  # Deliberately beyond [-b, b] in places, so any clipping would change the loss.
  x0s_hat = b * np.asarray(x0, np.float64) + 0.8 * b * np.asarray(jax.random.normal(k3, x0.shape))
  g = gamma.astype(np.float64)[:, None, None, None]
  eps_hat = (np.asarray(x_t, np.float64) - np.sqrt(g) * x0s_hat) / np.sqrt(1 - g)
  v_hat = np.sqrt(g) * eps_hat - np.sqrt(1 - g) * x0s_hat
  preds = {"x0": x0s_hat, "eps": eps_hat, "v": v_hat}
  preds = {k: jnp.asarray(v, jnp.float32) for k, v in preds.items()}
  return x0, noise, x_t, jnp.asarray(gamma), preds


@pytest.mark.parametrize("b", [1.0, 0.5, 0.7, 2.0])
@pytest.mark.parametrize("weighting", ["min_snr", "snr", "truncated_snr"])
def test_weighted_targets_are_one_objective(b, weighting):
  """One prediction error, measured as eps-, x0- or v-MSE with its weight, is one number."""
  gammas = (0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98)
  x0, noise, x_t, gamma, preds = _one_error_three_ways(b, gammas)
  results = {}
  for pred_type, pred in preds.items():
    for target in ("eps", "x0", "v"):
      loss, per_example = diffusion.diffusion_loss(
          pred, x0=x0, noise=noise, x_t=x_t, gamma=gamma, pred_type=pred_type,
          loss_target=target, input_scale=b, weighting=weighting, min_snr_gamma=5.0)
      np.testing.assert_allclose(loss, np.mean(per_example), rtol=1e-6)
      results[pred_type, target] = np.asarray(per_example)
  reference = results["x0", "x0"]
  assert np.all(reference > 0)
  for name, value in results.items():
    np.testing.assert_allclose(value, reference, rtol=1e-5, err_msg=str(name))


@pytest.mark.parametrize("b", [1.0, 0.5])
def test_constant_and_snr_relations(b):
  gammas = (0.02, 0.3, 0.5, 0.9, 0.98)
  x0, noise, x_t, gamma, preds = _one_error_three_ways(b, gammas)
  snr, g = _snr64(gammas, b)

  def per_example(target, weighting, pred_type="x0"):
    return np.asarray(diffusion.diffusion_loss(
        preds[pred_type], x0=x0, noise=noise, x_t=x_t, gamma=gamma, pred_type=pred_type,
        loss_target=target, input_scale=b, weighting=weighting, min_snr_gamma=5.0)[1])

  eps_mse, x0_mse, v_mse = (per_example(t, "constant") for t in ("eps", "x0", "v"))
  # Unweighted MSEs of one error: eps-MSE = S x0-MSE = gamma v-MSE, v-MSE = (S + b^2) x0-MSE.
  np.testing.assert_allclose(eps_mse, snr * x0_mse, rtol=1e-5)
  np.testing.assert_allclose(eps_mse, g * v_mse, rtol=1e-5)
  np.testing.assert_allclose(v_mse, (snr + b**2) * x0_mse, rtol=1e-5)
  # 'snr' is the x0-MSE weighted by S, i.e. the plain eps-MSE.
  np.testing.assert_allclose(per_example("eps", "snr"), eps_mse, rtol=1e-6)
  np.testing.assert_allclose(per_example("x0", "snr"), eps_mse, rtol=1e-5)
  # min-SNR below the clamp is 'snr', above it k x0-MSE.
  min_snr = per_example("x0", "min_snr")
  np.testing.assert_allclose(min_snr, np.where(snr < 5, eps_mse, 5 * x0_mse), rtol=1e-5)


def test_loss_values_and_no_clipping():
  b = 0.5
  x0, noise, x_t, gamma, preds = _one_error_three_ways(b, (0.2, 0.6))
  # eps target, eps prediction, constant: the plain MSE.
  loss, per_example = diffusion.diffusion_loss(
      preds["eps"], x0=x0, noise=noise, x_t=x_t, gamma=gamma, pred_type="eps", loss_target="eps",
      input_scale=b, weighting="constant", min_snr_gamma=5.0)
  want = np.mean((np.asarray(preds["eps"]) - np.asarray(noise)) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(per_example, want, rtol=1e-6)
  np.testing.assert_allclose(loss, want.mean(), rtol=1e-6)
  # x0 target in unscaled units, on the unclipped prediction (spec-rin A11).
  _, per_example = diffusion.diffusion_loss(
      preds["x0"], x0=x0, noise=noise, x_t=x_t, gamma=gamma, pred_type="x0", loss_target="x0",
      input_scale=b, weighting="constant", min_snr_gamma=5.0)
  assert np.abs(np.asarray(preds["x0"])).max() > b
  want = np.mean((np.asarray(preds["x0"]) / b - np.asarray(x0)) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(per_example, want, rtol=1e-6)
  # A perfect prediction has zero loss for every target and weighting.
  g = gamma[:, None, None, None]
  v = jnp.sqrt(g) * noise - jnp.sqrt(1 - g) * b * x0
  for target in ("eps", "x0", "v"):
    loss, _ = diffusion.diffusion_loss(v, x0=x0, noise=noise, x_t=x_t, gamma=gamma,
                                       pred_type="v", loss_target=target, input_scale=b,
                                       weighting="min_snr", min_snr_gamma=5.0)
    assert float(loss) < 1e-10


def test_loss_jits():
  x0, noise, x_t, gamma, preds = _one_error_three_ways(0.7, (0.2, 0.6))

  @jax.jit
  def loss_fn(pred):
    return diffusion.diffusion_loss(pred, x0=x0, noise=noise, x_t=x_t, gamma=gamma,
                                    pred_type="v", loss_target="eps", input_scale=0.7,
                                    weighting="min_snr", min_snr_gamma=5.0)[0]

  grad = jax.grad(loss_fn)(preds["v"])
  assert grad.shape == preds["v"].shape and np.all(np.isfinite(grad))


def test_bad_loss_fields():
  x0, noise, x_t, gamma, preds = _one_error_three_ways(1.0, (0.5,))
  kwargs = dict(x0=x0, noise=noise, x_t=x_t, gamma=gamma, pred_type="eps", input_scale=1.0,
                min_snr_gamma=5.0)
  with pytest.raises(ValueError) as info:
    diffusion.diffusion_loss(preds["eps"], loss_target="eps", weighting="foo", **kwargs)
  assert str(info.value) == ("config.diffusion.loss_weighting='foo'; allowed: 'constant', 'snr', "
                             "'truncated_snr', 'min_snr'")
  with pytest.raises(ValueError) as info:
    diffusion.diffusion_loss(preds["eps"], loss_target="score", weighting="constant", **kwargs)
  assert str(info.value) == "config.diffusion.loss_target='score'; allowed: 'eps', 'x0', 'v'"
  with pytest.raises(ValueError, match="config.diffusion.min_snr_gamma=0.0"):
    diffusion.loss_weight(gamma, input_scale=1.0, loss_target="eps", weighting="min_snr",
                          min_snr_gamma=0.0)
