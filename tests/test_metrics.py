"""FID, Inception Score and precision/recall against closed forms and brute-force references."""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance

from rin_diffusion.evaluation import metrics


def _random_covariance(rng, dim):
  a = rng.normal(size=(dim, dim))
  return a @ a.T / dim + 0.1 * np.eye(dim)


def test_feature_statistics_by_hand():
  features = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
  mu, sigma = metrics.feature_statistics(features)
  np.testing.assert_allclose(mu, [1.0, 1.0])
  # Unbiased: each coordinate has squared deviations 4 x 1, divided by N - 1 = 3; no correlation.
  np.testing.assert_allclose(sigma, [[4 / 3, 0.0], [0.0, 4 / 3]], atol=1e-15)
  with pytest.raises(ValueError, match="N >= 2"):
    metrics.feature_statistics(features[:1])


def test_frechet_distance_diagonal_and_commuting_covariances():
  rng = np.random.default_rng(0)
  dim = 6
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  var1, var2 = rng.uniform(0.1, 3.0, size=dim), rng.uniform(0.1, 3.0, size=dim)
  # Commuting covariances: tr sqrt(S1 S2) = sum sqrt(a_i b_i), so the distance is
  # ||mu1 - mu2||^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
  fd = metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
  assert fd == pytest.approx(expected, rel=1e-12)
  rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  fd_rotated = metrics.frechet_distance(
      mu1, rotation @ np.diag(var1) @ rotation.T, mu2, rotation @ np.diag(var2) @ rotation.T)
  assert fd_rotated == pytest.approx(expected, rel=1e-10)
  # One dimension: the 2-Wasserstein distance of N(m1, s1^2) and N(m2, s2^2).
  assert metrics.frechet_distance(
      np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])) == pytest.approx(
          3.0 ** 2 + (2.0 - 3.0) ** 2)


def test_frechet_distance_general_case_matches_sqrtm():
  rng = np.random.default_rng(1)
  dim = 12
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  sigma1, sigma2 = _random_covariance(rng, dim), _random_covariance(rng, dim)
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2.0 * covmean)
  assert metrics.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)
  assert metrics.frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(expected, rel=1e-9)
  with pytest.raises(ValueError, match="covariances"):
    metrics.frechet_distance(mu1, sigma1, mu2, sigma2[:-1, :-1])


def test_fid_of_features_self_zero_and_grows_with_noise():
  rng = np.random.default_rng(2)
  features = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
  mu, sigma = metrics.feature_statistics(features)
  assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-9
  noise = rng.normal(size=features.shape)
  distances = []
  for scale in (0.1, 0.3, 1.0, 3.0):
    noisy_mu, noisy_sigma = metrics.feature_statistics(features + scale * noise)
    distances.append(metrics.frechet_distance(mu, sigma, noisy_mu, noisy_sigma))
  assert distances[0] > 0 and all(a < b for a, b in zip(distances, distances[1:])), distances
  # Fewer samples than dimensions: singular covariances still give a finite, ~0 self-distance
  # (square roots of the rounding noise in the 54 null directions leave about 1e-7 of the trace).
  few = rng.normal(size=(10, 64))
  few_mu, few_sigma = metrics.feature_statistics(few)
  fd = metrics.frechet_distance(few_mu, few_sigma, few_mu, few_sigma)
  assert abs(fd) < 1e-6 * np.trace(few_sigma)


@pytest.mark.parametrize("num, dim", [(30, 64), (64, 64), (200, 8)])
def test_frechet_distance_to_features_equals_statistics_route(num, dim):
  rng = np.random.default_rng(num)
  features = rng.normal(size=(num, dim)) * rng.uniform(0.5, 2.0, size=dim) + 0.3
  mu, sigma = rng.normal(size=dim), _random_covariance(rng, dim)
  expected = metrics.frechet_distance(*metrics.feature_statistics(features), mu, sigma)
  # rel 1e-7: the D x D route carries square roots of rounding noise in the null directions.
  assert metrics.frechet_distance_to_features(features, mu, sigma) == pytest.approx(
      expected, rel=1e-7)


def test_inception_score_by_hand():
  # p(y|x1) = (0.8, 0.2), p(y|x2) = (0.2, 0.8): marginal (0.5, 0.5), and both KLs are
  # 0.8 ln(0.8 / 0.5) + 0.2 ln(0.2 / 0.5).
  logits = np.log(np.array([[0.8, 0.2], [0.2, 0.8]])) + 5.0  # Softmax ignores the shift.
  kl = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
  mean, std = metrics.inception_score(logits, splits=1)
  assert mean == pytest.approx(math.exp(kl), rel=1e-12) and std == 0.0
  # Two splits: part 1 = two confident, different classes (IS 2), part 2 = identical rows (IS 1).
  logits = np.array([[50.0, 0.0, 0.0], [0.0, 50.0, 0.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
  mean, std = metrics.inception_score(logits, splits=2)
  assert mean == pytest.approx(1.5, rel=1e-9) and std == pytest.approx(0.5, rel=1e-9)


def test_inception_score_confident_uniform_classes_and_underflow():
  classes = 10
  logits = np.full((100, 1008), -1e4)  # Softmax underflows to exactly 0 off the chosen class.
  logits[np.arange(100), np.arange(100) % classes] = 0.0
  mean, std = metrics.inception_score(logits, splits=10)
  assert mean == pytest.approx(classes, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
  with pytest.raises(ValueError, match="splits"):
    metrics.inception_score(logits[:5], splits=10)


def _brute_force_precision_recall(real, fake, k):
  def radii(x):
    return np.sort(scipy.spatial.distance.cdist(x, x), axis=1)[:, k]

  def inside(queries, centres, r):
    return np.mean(np.any(scipy.spatial.distance.cdist(queries, centres) <= r[None], axis=1))

  return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_precision_recall_identical_disjoint_and_half_overlap():
  rng = np.random.default_rng(3)
  a, b, c = (rng.normal(size=(20, 8)) + offset for offset in (0.0, 100.0, -100.0))
  assert metrics.precision_recall(a, a.copy(), k=3) == (1.0, 1.0)
  assert metrics.precision_recall(a, b, k=3) == (0.0, 0.0)
  # Real = A + B, fake = A + C: half of the fakes lie on the real manifold and vice versa.
  precision, recall = metrics.precision_recall(np.concatenate([a, b]), np.concatenate([a, c]))
  assert (precision, recall) == (0.5, 0.5)


def test_precision_recall_mode_collapse_and_batching_matches_brute_force():
  rng = np.random.default_rng(4)
  real = rng.normal(size=(150, 5)).astype(np.float32)
  # Every fake sits next to one real point: all fakes are realistic, few reals are covered.
  collapsed = real[0] + 1e-3 * rng.normal(size=(150, 5)).astype(np.float32)
  precision, recall = metrics.precision_recall(real, collapsed, k=3)
  assert precision == 1.0 and recall < 0.05
  fake = rng.normal(size=(130, 5)).astype(np.float32) * 1.3 + 0.4
  expected = _brute_force_precision_recall(real, fake, k=3)
  assert metrics.precision_recall(real, fake, k=3, batch_size=7) == pytest.approx(expected)
  assert 0.0 < expected[0] < 1.0 and 0.0 < expected[1] < 1.0
  with pytest.raises(ValueError, match="more than k"):
    metrics.precision_recall(real[:3], fake, k=3)


def test_precision_recall_equal_sizes_cuts_the_larger_set_to_a_seed_0_subset():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=(30, 4)), rng.normal(size=(12, 4))
  precision, recall, count = metrics.precision_recall_equal_sizes(real, fake, k=3)
  chosen = metrics.subset_indices(30, 12)
  assert count == 12 and len(chosen) == 12 and np.all(np.diff(chosen) > 0)
  assert (precision, recall) == metrics.precision_recall(real[chosen], fake, k=3)
  np.testing.assert_array_equal(metrics.subset_indices(5, 9), np.arange(5))
  assert metrics.precision_recall_equal_sizes(real, fake[:3], k=3) is None
