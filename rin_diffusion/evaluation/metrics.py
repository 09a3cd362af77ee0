"""Sample-quality metrics on Inception features (numpy, float64): FID, Inception Score, P/R.

  mu, sigma = feature_statistics(pool3)
  fid = frechet_distance(mu, sigma, ref_mu, ref_sigma)
  fid = frechet_distance_to_features(pool3, ref_mu, ref_sigma)  # The same, faster for N <= D.
  is_mean, is_std = inception_score(logits)
  precision, recall = precision_recall(real_pool3, fake_pool3, k=3)
  precision, recall, count = precision_recall_equal_sizes(real_pool3, fake_pool3, k=3)
"""

from __future__ import annotations

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(N, D) features -> (mean (D,), covariance (D, D) with the unbiased N - 1 normalisation)."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"features: need an (N, D) array with N >= 2; got shape {features.shape}.")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  eigenvalues, eigenvectors = np.linalg.eigh(matrix)
  return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)) of two Gaussians.

  tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1 S2, which are those of
  the symmetric PSD matrix S1^(1/2) S2 S1^(1/2): two symmetric eigendecompositions, no complex
  parts and no failure on the singular covariances of fewer samples than dimensions (where
  scipy's sqrtm, which pytorch-fid uses, needs an epsilon retry).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  dim = mu1.shape[0]
  if mu1.shape != (dim,) or mu2.shape != (dim,):
    raise ValueError(f"frechet_distance: means of shapes {mu1.shape} and {mu2.shape}.")
  if sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
    raise ValueError(
        f"frechet_distance: covariances of shapes {sigma1.shape} and {sigma2.shape}, "
        f"expected ({dim}, {dim}).")
  sqrt_sigma1 = _psd_sqrt(sigma1)
  product = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
  eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
  trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None)))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def frechet_distance_to_features(features: np.ndarray, mu: np.ndarray,
                                 sigma: np.ndarray) -> float:
  """frechet_distance(*feature_statistics(features), mu, sigma), fast when N <= D.

  With B the centred features / sqrt(N - 1), the features' covariance is B^T B, and the nonzero
  eigenvalues of sigma B^T B are those of the N x N matrix B sigma B^T: for 1k samples of 2048-d
  features one small eigendecomposition replaces two 2048 x 2048 ones.
  """
  features = np.asarray(features, np.float64)
  num, dim = features.shape if features.ndim == 2 else (0, 0)
  if num > dim:
    return frechet_distance(*feature_statistics(features), mu, sigma)
  if num < 2:
    raise ValueError(f"features: need an (N, D) array with N >= 2; got shape {features.shape}.")
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  if mu.shape != (dim,) or sigma.shape != (dim, dim):
    raise ValueError(f"frechet_distance_to_features: {dim}-d features against statistics of "
                     f"shapes {mu.shape} and {sigma.shape}.")
  features_mu = features.mean(axis=0)
  centred = (features - features_mu) / np.sqrt(num - 1)
  product = centred @ sigma @ centred.T
  eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
  trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None)))
  diff = features_mu - mu
  return float(diff @ diff + np.sum(centred * centred) + np.trace(sigma) - 2.0 * trace_sqrt)


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """exp(E_x KL(p(y|x) || p(y))) over `splits` consecutive parts: (mean, std over parts).

  p(y|x) is the softmax over all 1008 logits, as the original TF code (Salimans et al. 2016)
  computes it; parts are logits[i * N // splits:(i + 1) * N // splits].
  """
  logits = np.asarray(logits, np.float64)
  num = logits.shape[0] if logits.ndim == 2 else 0
  if num < splits or splits < 1:
    raise ValueError(f"inception_score: need (N, classes) logits with N >= splits={splits}; got "
                     f"shape {logits.shape}.")
  log_p = logits - np.max(logits, axis=1, keepdims=True)
  log_p -= np.log(np.sum(np.exp(log_p), axis=1, keepdims=True))
  p = np.exp(log_p)
  scores = []
  for i in range(splits):
    part = slice(i * num // splits, (i + 1) * num // splits)
    part_p, part_log_p = p[part], log_p[part]
    marginal = np.mean(part_p, axis=0)
    # A class no sample gives any probability contributes 0; log(1) keeps its terms finite.
    log_marginal = np.log(np.where(marginal > 0, marginal, 1.0))
    kl = np.sum(part_p * (part_log_p - log_marginal), axis=1)
    scores.append(np.exp(np.mean(kl)))
  return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(a: np.ndarray, b: np.ndarray, b_squared_norms: np.ndarray) -> np.ndarray:
  a_squared_norms = np.einsum("ij,ij->i", a, a)
  return np.maximum(a_squared_norms[:, None] - 2.0 * (a @ b.T) + b_squared_norms[None, :], 0.0)


def _kth_neighbour_radii(features: np.ndarray, k: int, batch_size: int) -> np.ndarray:
  """Squared distance of each row to its k-th nearest other row (the row itself is 0th)."""
  squared_norms = np.einsum("ij,ij->i", features, features)
  radii = np.empty(features.shape[0], features.dtype)
  for start in range(0, features.shape[0], batch_size):
    d = _squared_distances(features[start:start + batch_size], features, squared_norms)
    radii[start:start + batch_size] = np.partition(d, k, axis=1)[:, k]
  return radii


def _fraction_inside(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray,
                     batch_size: int) -> float:
  """Fraction of queries inside at least one ball (centre, radius) of the k-NN manifold."""
  squared_norms = np.einsum("ij,ij->i", centres, centres)
  inside = 0
  for start in range(0, queries.shape[0], batch_size):
    d = _squared_distances(queries[start:start + batch_size], centres, squared_norms)
    inside += int(np.sum(np.any(d <= radii[None, :], axis=1)))
  return inside / queries.shape[0]


def precision_recall(real_features: np.ndarray, fake_features: np.ndarray, k: int = 3,
                     batch_size: int = 1024) -> tuple[float, float]:
  """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN manifolds.

  Precision: the fraction of fake samples inside the real manifold (the union of balls around each
  real feature reaching its k-th nearest real neighbour); recall: real samples inside the fake
  manifold. Distances are computed `batch_size` rows at a time in float32, so memory stays at
  about batch_size x max(N_real, N_fake) floats.
  """
  real = np.asarray(real_features, np.float32)
  fake = np.asarray(fake_features, np.float32)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"precision_recall: need (N, D) features of equal D; got {real.shape} and "
                     f"{fake.shape}.")
  if min(real.shape[0], fake.shape[0]) <= k:
    raise ValueError(f"precision_recall: need more than k={k} features in each set; got "
                     f"{real.shape[0]} real and {fake.shape[0]} fake.")
  real_radii = _kth_neighbour_radii(real, k, batch_size)
  fake_radii = _kth_neighbour_radii(fake, k, batch_size)
  precision = _fraction_inside(fake, real, real_radii, batch_size)
  recall = _fraction_inside(real, fake, fake_radii, batch_size)
  return precision, recall


def subset_indices(total: int, size: int, seed: int = 0) -> np.ndarray:
  """Sorted indices of a seed-fixed random `size`-subset of range(total); all of it if smaller."""
  if size >= total:
    return np.arange(total)
  return np.sort(np.random.default_rng(seed).choice(total, size, replace=False))


def precision_recall_equal_sizes(real_features: np.ndarray, fake_features: np.ndarray,
                                 k: int = 3) -> tuple[float, float, int] | None:
  """precision_recall on equally many real and fake features: (precision, recall, count).

  k-NN radii grow with the sparsity of a set, so P/R compare like with like only at equal sizes:
  the larger set is cut to count = min(N_real, N_fake) rows, a seed-0 random subset in its
  original order (the same cut in the training loop, --mode=eval and tools.fid). None when
  count <= k.
  """
  count = min(len(real_features), len(fake_features))
  if count <= k:
    return None
  real = np.asarray(real_features)[subset_indices(len(real_features), count)]
  fake = np.asarray(fake_features)[subset_indices(len(fake_features), count)]
  return (*precision_recall(real, fake, k=k), count)
