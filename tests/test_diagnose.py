"""The latent-collapse diagnostic (tools/diagnose.py) and the latent-table init it measures."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rin_diffusion.tools import diagnose
from tests import trainer_utils as tu


def test_mean_pairwise_cosine_against_hand_cases():
  rng = np.random.RandomState(0)
  row = rng.randn(1, 1, 64)
  # One vector copied (and shifted, which centring removes) into every latent: cosine 1.
  assert diagnose.mean_pairwise_cosine(np.repeat(row, 5, axis=1) + np.arange(5)[None, :, None]) \
      == pytest.approx(1.0)
  # Centred orthogonal rows: cosine 0. Rows of a Hadamard matrix other than the first have zero
  # mean and are mutually orthogonal.
  hadamard = np.array([[1.0]])
  for _ in range(3):
    hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
  assert diagnose.mean_pairwise_cosine(hadamard[None, 1:]) == pytest.approx(0.0, abs=1e-12)
  # Two latents, v and -v: cosine -1; averaged with an identical pair: 0.
  pair = np.stack([row[0, 0], -row[0, 0]])[None]
  same = np.stack([row[0, 0], row[0, 0]])[None]
  assert diagnose.mean_pairwise_cosine(pair) == pytest.approx(-1.0)
  assert diagnose.mean_pairwise_cosine(np.concatenate([pair, same])) == pytest.approx(0.0)
  with pytest.raises(ValueError, match="at least 2 latents"):
    diagnose.mean_pairwise_cosine(row)


@pytest.mark.parametrize("init_std", [0.02, 1.0])
def test_tool_on_fresh_parameters_reports_the_latent_table_scale(tmp_path, init_std):
  """`--workdir=init`: one JSON line; the latent table's RMS is that of its truncated normal."""
  data_flags = tu.data_flags(str(tmp_path / "data"))
  command = [sys.executable, "-m", "rin_diffusion.tools.diagnose",
             f"--config={tu.TINY_CONFIG}:tiny", "--workdir=init",
             f"--config.model.latent_pos_init_std={init_std}", *data_flags]
  result = subprocess.run(command, capture_output=True, text=True, cwd=tu.REPO, timeout=300,
                          env={**os.environ})
  assert result.returncode == 0, result.stderr[-3000:]
  line = json.loads(result.stdout.strip().splitlines()[-1])
  # N(0, s^2) truncated at +-2s has std s * sqrt(1 - 4 phi(2) / (2 Phi(2) - 1)) = 0.8796 s.
  # The tiny model has 8 x 32 = 256 entries; the RMS estimate's relative standard error is
  # sqrt(kurtosis - 1) / (2 sqrt(n)) <= 0.71 / sqrt(n): allow 4 of them.
  rms = line["position_signal"]["latent_pos_rms"]
  assert rms == pytest.approx(0.8796 * init_std, rel=4 * 0.71 / np.sqrt(256))
  cosines = [v for level in line["latent_cosine"].values() for v in level.values()]
  assert sorted(line["latent_cosine"]) == ["0.3", "0.6", "0.9"]
  assert set(line["latent_cosine"]["0.9"]) == {"block_0_read", "block_0_layer_0",
                                               "block_1_read", "block_1_layer_0"}
  assert all(-1.0 <= c <= 1.0 for c in cosines)


def test_tool_locality_on_fresh_parameters(tmp_path):
  """`--locality`: shares of the model and of the Gaussian linear estimator at each noise level,
  each summing to 1; the tiny config's 8 x 8 patches make a 4 x 4 grid of them."""
  data_flags = tu.data_flags(str(tmp_path / "data"))
  command = [sys.executable, "-m", "rin_diffusion.tools.diagnose", f"--config={tu.TINY_CONFIG}:tiny",
             "--workdir=init", "--locality", *data_flags]
  result = subprocess.run(command, capture_output=True, text=True, cwd=tu.REPO, timeout=300,
                          env={**os.environ})
  assert result.returncode == 0, result.stderr[-3000:]
  locality = json.loads(result.stdout.strip().splitlines()[-1])["locality"]
  assert locality["patch_size"] == 8 and sorted(locality["shares"]) == ["0.3", "0.6", "0.9"]
  for level in locality["shares"].values():
    for estimator in ("model", "gaussian_linear"):
      shares = level[estimator]
      assert sum(shares.values()) == pytest.approx(1.0, abs=2e-4)
      assert all(0.0 <= v <= 1.0 for v in shares.values())
  # Less noise, less need to look away from the patch: the optimal linear estimator's own share
  # grows as t falls.
  own = [locality["shares"][t]["gaussian_linear"]["own"] for t in ("0.9", "0.6", "0.3")]
  assert own[0] < own[1] < own[2]


def test_patch_shares_against_hand_counts():
  # Identity: every output draws only on its own pixel, inside its own patch.
  assert diagnose.patch_shares(np.eye(64), 8, 4) == {"own": 1.0, "neighbours": 0.0, "far": 0.0}
  # All-ones on a 3 x 3 grid of 4 x 4 patches: each output pixel draws 16 units from each patch.
  # Own patch: 16 of 144 inputs for every output. Neighbours (Chebyshev distance 1): 3 patches
  # for the 4 corner patches, 5 for the 4 edge patches, 8 for the centre one.
  shares = diagnose.patch_shares(np.ones((144, 144)), 12, 4)
  assert shares["own"] == pytest.approx(1 / 9)
  assert shares["neighbours"] == pytest.approx((4 * 3 + 4 * 5 + 8) * 16 / (9 * 144))
  assert shares["own"] + shares["neighbours"] + shares["far"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="expected \\(64, 64\\)"):
    diagnose.patch_shares(np.eye(16), 8, 4)
  with pytest.raises(ValueError, match="not a multiple of patch_size 3"):
    diagnose.patch_shares(np.eye(64), 8, 3)


@pytest.mark.parametrize("input_scale", [1.0, 0.5])
def test_gaussian_linear_jacobian_is_the_least_squares_regression(input_scale):
  """The MMSE linear estimator of x0 from x_t is the regression of x0 on x_t: fit it on samples
  of a correlated 3-d Gaussian and compare (and the diagonal case with the scalar Wiener gain)."""
  rng = np.random.RandomState(0)
  factor = rng.randn(3, 3)
  covariance = factor @ factor.T / 3 + 0.1 * np.eye(3)
  gamma = 0.4
  x0 = rng.multivariate_normal(np.zeros(3), covariance, size=400_000)
  x_t = np.sqrt(gamma) * input_scale * x0 + np.sqrt(1 - gamma) * rng.randn(*x0.shape)
  regression, *_ = np.linalg.lstsq(x_t, x0, rcond=None)  # x0 ~ x_t @ regression.
  np.testing.assert_allclose(diagnose.gaussian_linear_jacobian(covariance, gamma, input_scale),
                             regression.T, atol=0.01)
  variances = np.array([0.1, 1.0, 4.0])
  gain = (np.sqrt(gamma) * input_scale * variances
          / (gamma * input_scale**2 * variances + 1 - gamma))
  np.testing.assert_allclose(
      diagnose.gaussian_linear_jacobian(np.diag(variances), gamma, input_scale), np.diag(gain),
      rtol=1e-12)


@pytest.mark.parametrize("t,close", [(0.02, True), (1.0, False)])
def test_tool_renoise_finishes_real_images_from_t(tmp_path, t, close):
  """`--renoise=t`: test images noised to t and sampled from there. Near t = 0 the sampler has
  almost nothing to do (even a fresh network's prediction is weighted by sqrt(1 - gamma) ~ 0.03),
  so the results are the test images to within a few grey levels; from t = 1 they are pure
  samples, unrelated to them."""
  from rin_diffusion.evaluation import classifier  # noqa: PLC0415

  data_flags = tu.data_flags(str(tmp_path / "data"))
  output = str(tmp_path / "renoised.npz")
  command = [sys.executable, "-m", "rin_diffusion.tools.diagnose", f"--config={tu.TINY_CONFIG}:tiny",
             "--workdir=init", f"--renoise={t}", f"--renoise_output={output}",
             "--renoise_images=16", *data_flags]
  result = subprocess.run(command, capture_output=True, text=True, cwd=tu.REPO, timeout=300,
                          env={**os.environ})
  assert result.returncode == 0, result.stderr[-3000:]
  renoise = json.loads(result.stdout.strip().splitlines()[-1])["renoise"]
  assert renoise["images"] == 16 and renoise["steps"] == (1 if t < 1 else 4)
  with np.load(output) as data:
    finished = data["images"]
  dataset = tu.tiny_config(str(tmp_path / "data")).dataset  # The same fake data as data_flags.
  real = classifier.load_split(dataset, "test")[0][:16]
  assert finished.shape == real.shape and finished.dtype == np.uint8
  error = np.abs(finished.astype(np.float64) - real).mean()
  assert (error < 6.0) if close else (error > 30.0), error
