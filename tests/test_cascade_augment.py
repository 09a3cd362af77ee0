"""Conditioning augmentation (CDM section 3) against numpy math written here.

gamma(t) is transcribed independently: the offset cosine cos^2(((t + 2e-4) / (1 + 2.5e-4)) pi / 2)
(spec-rin 4.1) and Chen 2023 Algorithm 1's sigmoid schedule, both clipped to [1e-9, 1].
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rin_diffusion import schedules
from rin_diffusion.cascade import augment

# ---- Independent references (float64 numpy).


def offset_cosine_gamma(t):
  return np.clip(np.cos((t + 2e-4) / (1 + 2.5e-4) * np.pi / 2) ** 2, 1e-9, 1.0)


def sigmoid_gamma(t, start=-3.0, end=3.0, tau=1.1):
  def sig(x):
    return 1.0 / (1.0 + np.exp(-x))
  v_start, v_end = sig(start / tau), sig(end / tau)
  out = (v_end - sig((t * (end - start) + start) / tau)) / (v_end - v_start)
  return np.clip(out, 1e-9, 1.0)


SCHEDULES = [("cosine", offset_cosine_gamma), ("sigmoid@-3,3,1.1", sigmoid_gamma)]


def reference_blur(z, sigma):
  """Per-example 3x3 Gaussian convolution with numpy reflect padding, float64 loops."""
  z = np.asarray(z, np.float64)
  out = np.zeros_like(z)
  batch, h, w, channels = z.shape
  for i in range(batch):
    d = np.arange(-1, 2)
    k = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * float(sigma[i]) ** 2))
    k /= k.sum()
    for c in range(channels):
      p = np.pad(z[i, :, :, c], 1, mode="reflect")
      for y in range(h):
        for x in range(w):
          out[i, y, x, c] = np.sum(k * p[y:y + 3, x:x + 3])
  return out


# ---- (a) Gaussian augmentation: moments and the formula itself.


@pytest.mark.parametrize("spec,gamma_ref", SCHEDULES)
def test_gaussian_augment_moments(spec, gamma_ref):
  n, b = 20000, 0.7
  rng = np.random.default_rng(0)
  z_one = rng.uniform(-1, 1, size=(3, 3, 2)).astype(np.float32)
  z = np.broadcast_to(z_one, (n,) + z_one.shape)
  augment_fn = jax.jit(lambda z, s, e: augment.gaussian_augment(
      z, s, e, gamma_fn=schedules.gamma_fn(spec), input_scale=b))
  for s_value in (0.1, 0.4, 0.75):
    noise = rng.standard_normal(z.shape).astype(np.float32)
    out = np.asarray(augment_fn(z, np.full((n,), s_value, np.float32), noise), np.float64)
    g = gamma_ref(s_value)
    # The formula, to float32 rounding, for these very noise draws.
    np.testing.assert_allclose(out, np.sqrt(g) * b * z + np.sqrt(1 - g) * noise, atol=2e-5)
    # Per-pixel mean and variance within 5 standard errors of sqrt(g) b z and 1 - g.
    var = 1 - g
    mean_se = math.sqrt(var / n)
    var_se = var * math.sqrt(2 / (n - 1))
    assert np.all(np.abs(out.mean(0) - np.sqrt(g) * b * z_one) < 5 * mean_se), s_value
    assert np.all(np.abs(out.var(0, ddof=1) - var) < 5 * var_se), s_value


# ---- (b) s = 0 is the identity up to the input scale, bit for bit.


@pytest.mark.parametrize("spec", ["cosine", "sigmoid@-3,3,1.1"])
def test_gaussian_augment_s0_is_exact(spec):
  assert float(schedules.gamma_fn(spec)(0.0)) < 1.0  # Otherwise this test could not fail.
  rng = np.random.default_rng(1)
  b = 0.7
  z = rng.uniform(-1, 1, size=(4, 5, 5, 3)).astype(np.float32)
  noise = rng.standard_normal(z.shape).astype(np.float32)
  s = np.array([0.0, 0.3, 0.0, 1e-3], np.float32)
  out = np.asarray(augment.gaussian_augment(z, s, noise, gamma_fn=schedules.gamma_fn(spec),
                                            input_scale=b))
  expected_clean = z * np.float32(b)
  np.testing.assert_array_equal(out[[0, 2]], expected_clean[[0, 2]])
  assert not np.array_equal(out[1], expected_clean[1])
  assert not np.array_equal(out[3], expected_clean[3])


# ---- (c) Augmentation levels.


def test_sample_levels_uniform():
  n, s_max = 20000, 0.3
  s = np.sort(np.asarray(augment.sample_levels(jax.random.PRNGKey(0), n, s_max), np.float64))
  assert s.shape == (n,) and s.min() >= 0.0 and s.max() <= s_max
  # Kolmogorov-Smirnov distance to U(0, s_max); 1.63 / sqrt(n) is the 1 % critical value.
  cdf = s / s_max
  ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
  assert ks < 1.63 / math.sqrt(n)
  assert abs(s.mean() - s_max / 2) < 4 * s_max / math.sqrt(12 * n)
  assert abs(s.var() - s_max**2 / 12) < 4 * s_max**2 * math.sqrt(1 / 180 / n)
  zeros = np.asarray(augment.sample_levels(jax.random.PRNGKey(1), 64, 0.0))
  np.testing.assert_array_equal(zeros, np.zeros(64, np.float32))


# ---- (d) Blur kernel and blur.


def test_gaussian_kernel_3x3():
  sigma = np.array([0.4, 0.5, 0.6, 1.3], np.float32)
  k = np.asarray(augment.gaussian_kernel_3x3(sigma), np.float64)
  assert k.shape == (4, 3, 3)
  np.testing.assert_allclose(k.sum(axis=(1, 2)), 1.0, atol=1e-6)
  np.testing.assert_allclose(k, np.swapaxes(k, 1, 2), atol=1e-7)
  np.testing.assert_allclose(k, k[:, ::-1, ::-1], atol=1e-7)
  d = np.arange(-1, 2)
  for i, sig in enumerate(sigma.astype(np.float64)):
    ref = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sig**2))
    np.testing.assert_allclose(k[i], ref / ref.sum(), rtol=1e-5)


def test_blur_constant_and_reference():
  const = np.full((2, 4, 4, 3), -0.37, np.float32)
  out = np.asarray(augment.blur(const, np.array([0.4, 0.6], np.float32)))
  np.testing.assert_allclose(out, const, atol=1e-6)

  rng = np.random.default_rng(2)
  z = rng.uniform(-1, 1, size=(3, 5, 6, 2)).astype(np.float32)
  sigma = np.array([0.4, 0.55, 1.0], np.float32)
  out = np.asarray(augment.blur(z, sigma))
  np.testing.assert_allclose(out, reference_blur(z, sigma), atol=1e-5)


# ---- (e) Random blur.


def test_random_blur_fraction_and_identity():
  n = 4000
  rng = np.random.default_rng(3)
  z = rng.uniform(-1, 1, size=(n, 3, 3, 1)).astype(np.float32)
  for i, prob in enumerate((0.5, 0.2)):
    out, applied, sigma = augment.random_blur(jax.random.PRNGKey(i), z, prob=prob,
                                              sigma_min=0.4, sigma_max=0.6)
    out, applied, sigma = np.asarray(out), np.asarray(applied), np.asarray(sigma)
    assert applied.dtype == bool and applied.shape == (n,) and sigma.shape == (n,)
    assert abs(applied.mean() - prob) < 4 * math.sqrt(prob * (1 - prob) / n), prob
    np.testing.assert_array_equal(out[~applied], z[~applied])
    assert np.all((sigma >= 0.4) & (sigma <= 0.6)) and sigma.min() < 0.41 and sigma.max() > 0.59
    idx = np.flatnonzero(applied)[:5]
    np.testing.assert_allclose(out[idx], reference_blur(z[idx], sigma[idx]), atol=1e-5)
  small = z[:16]
  for prob, expected in ((0.0, False), (1.0, True)):
    _, applied, _ = augment.random_blur(jax.random.PRNGKey(7), small, prob=prob)
    assert np.all(np.asarray(applied) == expected)


# ---- (f) Upsampling.


def test_upsample():
  z = np.random.default_rng(4).uniform(-1, 1, size=(2, 4, 4, 3)).astype(np.float32)
  for method in augment.UPSAMPLE_METHODS:
    for size in (4, 8, 12):
      assert augment.upsample(z, size, method).shape == (2, size, size, 3)
  tiny = np.arange(16, dtype=np.float32).reshape(2, 2, 2, 2)
  np.testing.assert_array_equal(np.asarray(augment.upsample(tiny, 4, "nearest")),
                                np.repeat(np.repeat(tiny, 2, axis=1), 2, axis=2))
  const = np.full((1, 4, 4, 2), 0.37, np.float32)
  for method in ("bilinear", "bicubic"):
    np.testing.assert_allclose(np.asarray(augment.upsample(const, 8, method)), 0.37, atol=1e-6)


# ---- (g) Bad inputs name the config field and the value.

_Z = np.zeros((2, 4, 4, 3), np.float32)
_KEY = jax.random.PRNGKey(0)

BAD_CALLS = [
    (lambda: augment.upsample(_Z, 8, "lanczos3"), ["config.cascade.upsample", "'lanczos3'",
                                                   "'bicubic'"]),
    (lambda: augment.upsample(_Z, 10, "bilinear"), ["config.cascade.low_resolution=4", "10"]),
    (lambda: augment.upsample(_Z, 2, "bilinear"), ["config.cascade.low_resolution=4", "2"]),
    (lambda: augment.sample_levels(_KEY, 4, -0.1), ["config.cascade.aug_level_max=-0.1",
                                                    "[0, 1]"]),
    (lambda: augment.sample_levels(_KEY, 4, 1.5), ["config.cascade.aug_level_max=1.5"]),
    (lambda: augment.sample_levels(_KEY, 4, math.nan), ["config.cascade.aug_level_max=nan"]),
    (lambda: augment.random_blur(_KEY, _Z, prob=1.2), ["config.cascade.blur_prob=1.2", "[0, 1]"]),
    (lambda: augment.random_blur(_KEY, _Z, prob=-0.5), ["config.cascade.blur_prob=-0.5"]),
    (lambda: augment.random_blur(_KEY, _Z, sigma_min=0.0, sigma_max=0.5),
     ["config.cascade.blur_sigma=(0.0, 0.5)", "0 < min <= max"]),
    (lambda: augment.random_blur(_KEY, _Z, sigma_min=0.6, sigma_max=0.4),
     ["config.cascade.blur_sigma=(0.6, 0.4)"]),
    (lambda: augment.gaussian_augment(_Z, jnp.zeros(3), _Z, gamma_fn=schedules.gamma_fn("cosine"),
                                      input_scale=1.0), ["s shape (3,)", "(2,)"]),
    (lambda: augment.gaussian_augment(_Z, jnp.zeros(2), _Z[:1],
                                      gamma_fn=schedules.gamma_fn("cosine"), input_scale=1.0),
     ["noise shape (1, 4, 4, 3)", "(2, 4, 4, 3)"]),
]


@pytest.mark.parametrize("call,fragments", BAD_CALLS)
def test_bad_inputs(call, fragments):
  with pytest.raises(ValueError) as info:
    call()
  for fragment in fragments:
    assert fragment in str(info.value), (fragment, str(info.value))
