"""Parameter counts: paper Table 1, the spec's closed form, and the param_table CLI."""

import os
import subprocess
import sys

import numpy as np
import pytest

from rin_diffusion import config_lib
from rin_diffusion.tools import param_table

SPEC_COUNTS_M = (214.43, 214.83, 319.03, 320.61, 408.28, 411.95)
PAPER_COUNTS_M = (214, 215, 319, 320, 408, 412)


def closed_form_count(c) -> int:
  """Spec section 3.1, generalised to any ratios, input channels, extra tokens and options."""
  d, big_d, p = c["tape_dim"], c["latent_dim"], c["patch_size"]
  a = min(d, big_d)
  r, r_t = c["latent_mlp_ratio"], c["tape_mlp_ratio"]
  c_in = c["channels"] + c["extra_in_channels"]
  n = (c["image_size"] // p) ** 2

  def ffn(w, ratio):  # Dense(w -> ratio w) + Dense(ratio w -> w), with biases.
    return 2 * ratio * w * w + (ratio + 1) * w

  def mlp_res(w, ratio):  # LN + FFN.
    return 2 * w + ffn(w, ratio)

  kv_ln = c["xattn_kv_ln"]
  latent_layer = 2 * big_d + 4 * big_d * big_d + 4 * big_d + mlp_res(big_d, r)
  read = (2 * big_d + (big_d * a + a) + 2 * (d * a + a) + (a * big_d + big_d) + mlp_res(big_d, r)
          + (2 * d if kv_ln else 0))
  write = (2 * d + (d * a + a) + 2 * (big_d * a + a) + (a * d + d)
           + (mlp_res(d, r_t) if r_t > 0 else 0) + (2 * big_d if kv_ln else 0))
  total = 0
  for k in c["blocks"]:
    total += read + (k * latent_layer + write if k > 0 else 0)
  total += p * p * c_in * d + d + 2 * d  # Stem conv + stem LN.
  total += n * d if c["tape_pos"] == "learned" else 0
  n_classes = c["num_classes"]
  total += (c["latent_slots"] - 1 - (1 if n_classes > 0 else 0)) * big_d
  scalar_embedding = (big_d // 4) * big_d + big_d + big_d * big_d + big_d
  total += scalar_embedding * (1 + c["num_extra_tokens"])
  total += n_classes * big_d + big_d if n_classes > 0 else 0
  total += mlp_res(big_d, r) + 2 * big_d  # Latent self-conditioning MLPres + LN0.
  total += 2 * d + d * p * p * c["channels"] + p * p * c["channels"]  # Output LN + head.
  return total


@pytest.fixture(scope="module")
def table1_counts():
  return [param_table.count_params(param_table.model_config_for(row))
          for row in param_table.TABLE1]


def test_table1_rows_match_paper_and_spec(table1_counts):
  assert [row["spec_params_m"] for row in param_table.TABLE1] == list(SPEC_COUNTS_M)
  assert [row["paper_params_m"] for row in param_table.TABLE1] == list(PAPER_COUNTS_M)
  for row, count, paper, spec in zip(param_table.TABLE1, table1_counts, PAPER_COUNTS_M,
                                     SPEC_COUNTS_M):
    millions = count / 1e6
    assert abs(millions - paper) / paper < 0.005, (row["name"], millions, paper)
    assert abs(millions - spec) < 0.01, (row["name"], millions, spec)
    assert count == closed_form_count(param_table.model_config_for(row)), row["name"]


def test_worked_example_exact(table1_counts):
  assert table1_counts[0] == 214_433_840  # Spec section 3.2.


def test_extra_rows():
  want = {"cifar10 (pix2seq config)": 30.95, "imagenet64 as released": 157.78}
  for row in param_table.EXTRA_ROWS:
    cfg = param_table.model_config_for(row)
    count = param_table.count_params(cfg)
    assert abs(count / 1e6 - want[row["name"]]) < 0.01, row["name"]
    assert count == closed_form_count(cfg)


def _random_architecture(rng: np.random.Generator) -> dict:
  cfg = config_lib.base_config().model
  heads = int(rng.choice([1, 2, 4]))
  patch = int(rng.choice([1, 2, 4]))
  cfg.update(dict(
      image_size=patch * int(rng.integers(1, 4)) * 2, patch_size=patch,
      channels=int(rng.integers(1, 4)), extra_in_channels=int(rng.integers(0, 4)),
      num_extra_tokens=int(rng.integers(0, 3)), num_classes=int(rng.choice([0, 3, 10])),
      tape_dim=8 * int(rng.integers(1, 5)), latent_dim=8 * int(rng.integers(1, 5)),
      latent_slots=int(rng.integers(3, 9)),
      blocks=tuple(int(k) for k in rng.integers(0, 3, size=int(rng.integers(1, 4)))),
      latent_mlp_ratio=int(rng.integers(1, 5)), tape_mlp_ratio=int(rng.integers(0, 5)),
      latent_heads=heads, rw_heads=heads, xattn_kv_ln=bool(rng.integers(0, 2)),
      tape_pos=str(rng.choice(["learned", "sincos"]))))
  return cfg


def test_closed_form_matches_random_small_architectures():
  rng = np.random.default_rng(0)
  configs = [_random_architecture(rng) for _ in range(6)]
  # Make sure the interesting cases are covered whatever the draw.
  configs[0].update(dict(num_classes=0, extra_in_channels=3, num_extra_tokens=2))
  configs[1].update(dict(tape_mlp_ratio=0, blocks=(0, 2), xattn_kv_ln=True))
  configs[2].update(dict(tape_dim=24, latent_dim=16))  # d > D: a = D.
  for cfg in configs:
    assert param_table.count_params(cfg) == closed_form_count(cfg), cfg


def test_cli_prints_table():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", "rin_diffusion.tools.param_table"],
                          capture_output=True, text=True, env=env, timeout=300, check=True)
  lines = result.stdout.splitlines()
  first_table = []
  for line in lines[lines.index(next(ln for ln in lines if ln.startswith("| config"))) + 2:]:
    if not line.startswith("|"):
      break
    first_table.append([cell.strip() for cell in line.strip("|").split("|")])
  assert len(first_table) == 6
  for cells, row, spec, paper in zip(first_table, param_table.TABLE1, SPEC_COUNTS_M,
                                     PAPER_COUNTS_M):
    assert cells[0] == row["name"]
    assert cells[1] == f"{spec:.2f}"
    assert cells[2] == str(paper)
    assert cells[3] == f"{spec:.2f}"
  assert "cifar10 (pix2seq config) | 30.95" in result.stdout
  assert "imagenet64 as released | 157.78" in result.stdout


def test_cli_rejects_arguments():
  with pytest.raises(SystemExit):
    param_table.main(["--bogus"])
