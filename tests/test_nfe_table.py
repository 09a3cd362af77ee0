"""tools/nfe_table: one record per (sampler, calls, grid, guidance) cell, scored by the evaluation
code, at toy size (tiny untrained model, the stand-in Inception of test_evaluate)."""

import numpy as np
import pytest
import trainer_utils as tu
from test_evaluate import StandInInception

from rin_diffusion import samplers, schedules, sharding, train
from rin_diffusion.evaluation import evaluate
from rin_diffusion.tools import nfe_table


def _toy(tmp_path):
  """The tiny config, its untrained EMA parameters, the stand-in Inception and 64 random images'
  statistics as the reference."""
  config = tu.tiny_config(str(tmp_path / "data"))
  mesh = sharding.make_mesh(config.mesh)
  model, _, init_fn, _, _ = train.build(config, mesh)
  inception = StandInInception()
  real = inception.pool3(np.random.default_rng(0).integers(0, 256, (64, 32, 32, 1), np.uint8))
  reference_stats = {"mu": real.mean(0), "sigma": np.cov(real, rowvar=False), "features": real,
                     "num_images": 64, "description": "stand-in"}
  return config, model, init_fn(0)["ema_params"], mesh, inception, reference_stats


def test_table_cells_match_the_evaluator(tmp_path):
  config, model, params, mesh, inception, reference_stats = _toy(tmp_path)
  rows = list(nfe_table.table(
      config, model, params, mesh, sampler_names=["dpmpp_2m", "heun"], calls=[3, 4],
      time_grids=["", "edm"], guidances=[0.0], num_samples=8, inception=inception,
      reference_stats=reference_stats))
  assert [(r["sampler"], r["time_grid"], r["calls_budget"]) for r in rows] == [
      (s, g, c) for s, grids in (("dpmpp_2m", ("logsnr", "edm")), ("heun", ("uniform_t", "edm")))
      for g in grids for c in (3, 4)]
  gamma_fn = schedules.gamma_fn(config.diffusion.infer_schedule)
  for row in rows:
    assert row["calls"] <= row["calls_budget"]
    assert row["calls"] == samplers.calls_per_run(row["sampler"], row["steps"], gamma_fn=gamma_fn,
                                                  time_grid=row["time_grid"])
    assert np.isfinite(row["fid"]) and row["precision"] is not None
  # heun within 3 calls: the jump from sigma(1), then an Euler step (2 steps, 2 calls); 4: 3 steps.
  assert [r["steps"] for r in rows if r["sampler"] == "heun"] == [2, 3, 2, 3]
  # A cell is exactly --mode=eval's evaluation with that sampler, steps and grid.
  config.sampling.time_grid = "edm"
  config.eval.cas = False
  want = evaluate.make_evaluator(config, model, mesh, inception=inception,
                                 reference_stats=reference_stats, sampler="heun", steps=3,
                                 guidance=0.0)(params, num_samples=8, seed=0)
  assert rows[-1]["fid"] == pytest.approx(want["fid"], rel=1e-6)


def test_skipped_cells_network_evals_and_markdown(tmp_path):
  """A cell `skip` names is not computed (how --output resumes); guidance doubles the network
  evaluations per call; the Markdown table has one row per cell, fewest calls first."""
  config, model, params, mesh, inception, reference_stats = _toy(tmp_path)
  done = nfe_table.cell_key("ddim", "uniform_t", 2.0, 3, 8, 0, False)
  rows = list(nfe_table.table(
      config, model, params, mesh, sampler_names=["ddim"], calls=[4, 3], guidances=[2.0],
      num_samples=8, inception=inception, reference_stats=reference_stats,
      skip=lambda key: key == done))
  assert [r["calls_budget"] for r in rows] == [4]
  assert rows[0]["network_evals"] == 2 * rows[0]["calls"] == 8
  lines = nfe_table.markdown(rows + [{**rows[0], "calls": 2, "steps": 2, "fid": 1.0}])
  assert len(lines) == 4 and lines[2].startswith("| ddim | uniform_t | 2 | 2 | 2 | 1.0 |")
