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
