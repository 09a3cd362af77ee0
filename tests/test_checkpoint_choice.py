"""--checkpoint=best|latest and --checkpoint_step for --mode=sample and --mode=eval; the records
carry the step used; --mode=eval --samples scores a shard directory."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import trainer_utils as tu

from rin_diffusion import sample_shards
from rin_diffusion.evaluation import inception as inception_lib


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(flags, workdir) of a tiny run with checkpoints 1 and 2, and step 1 as its 'best'."""
  flags, workdir = tu.trained_run(tmp_path_factory)
  shutil.copytree(os.path.join(workdir, "checkpoints", "1"),
                  os.path.join(workdir, "checkpoints_best", "1"))
  return flags, workdir


def _sample(flags, workdir, output, *extra):
  return tu.run_main(workdir, flags + [
      "--mode=sample", "--num_samples=16", "--sampler=ddim", "--steps=2",
      "--config.eval_batch_size=8", f"--output={output}", *extra])


def test_sample_a_chosen_step_and_the_best_checkpoint(trained, tmp_path):
  flags, workdir = trained
  chosen, best = str(tmp_path / "step1"), str(tmp_path / "best")
  for output, extra in ((chosen, "--checkpoint_step=1"), (best, "--checkpoint=best")):
    result = _sample(flags, workdir, output, extra)
    assert result.returncode == 0, result.stderr[-3000:]
  assert sample_shards.manifest_of(chosen)["checkpoint"] == "checkpoints/1"
  assert sample_shards.manifest_of(best)["checkpoint"] == "checkpoints_best/1"
  assert sample_shards.manifest_of(best)["checkpoint_step"] == 1
  # The same parameters (checkpoints_best/1 is a copy of checkpoints/1), the same images.
  np.testing.assert_array_equal(sample_shards.load(chosen)[0], sample_shards.load(best)[0])


def test_a_missing_step_names_the_steps_that_exist(trained, tmp_path):
  flags, workdir = trained
  line = tu.error_line(_sample(flags, workdir, str(tmp_path / "out"), "--checkpoint_step=7"))
  assert "--checkpoint_step=7" in line and "steps 1, 2" in line
  assert not os.path.exists(tmp_path / "out")


def test_eval_of_the_best_checkpoint_and_of_a_shard_directory_record_their_step(trained,
                                                                                tmp_path):
  try:
    inception_lib.default_weights_path()
  except ValueError as error:
    pytest.skip(f"the FID Inception weights are not installed: {error}")
  flags, workdir = trained
  eval_flags = flags + ["--mode=eval", "--num_samples=16", "--steps=2", "--sampler=ddim",
                        f"--config.eval.cache_dir={tmp_path / 'cache'}",
                        "--config.eval.cas=False", "--config.eval.num_reference=16"]
  result = tu.run_main(workdir, eval_flags + ["--checkpoint=best"], timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  line = tu.read_metrics(workdir)[-1]
  assert line["mode"] == "eval" and line["step"] == 1
  assert line["checkpoint"] == "checkpoints_best/1" and math.isfinite(line["fid"])
  assert os.path.exists(os.path.join(workdir, "eval", "step_1.json"))
  assert "Evaluation (seed 0): sampling and Inception features: 16/16 images" in result.stderr

  samples = str(tmp_path / "samples")
  assert _sample(flags, workdir, samples, "--checkpoint_step=1").returncode == 0
  result = tu.run_main(workdir, eval_flags + [f"--samples={samples}"], timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  line = tu.read_metrics(workdir)[-1]
  assert line["step"] == 1 and line["samples"] == samples and line["num_samples"] == 16
  assert (line["sampler"], line["steps"]) == ("ddim", 2) and math.isfinite(line["fid"])
  with open(os.path.join(workdir, "eval", "step_1.json")) as f:
    assert json.load(f)["results"][0]["checkpoint"] == "checkpoints/1"
