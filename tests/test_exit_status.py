"""The exit status contract (rin_diffusion/exit_status.py): 0 only for complete work.

A preempted run raises exit_status.Preempted after its checkpoint is durable (the CLI exits 75);
a preemption at the last step, after its checkpoint but before the final evaluation, leaves the
evaluation to the restart, which then completes the run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import trainer_utils as tu

from rin_diffusion import exit_status, train
from rin_diffusion.evaluation import evaluate


class _Projection:
  """A stand-in Inception (a fixed projection of the pixels): the real one is tested elsewhere."""

  source = "stand-in projection"
  preprocessing = "stand-in: pixels / 255, projected"

  def __init__(self):
    self.projection = np.random.default_rng(0).normal(size=(32 * 32, 8))

  def compute(self, images, batch_size=32):
    del batch_size
    pool3 = np.asarray(images).reshape(len(images), -1) / 255.0 @ self.projection
    return {"pool3": pool3.astype(np.float32), "logits": None}


def _preempt_at(step_to_preempt: int):
  """A _PreemptionFlag whose SIGTERM arrives during step `step_to_preempt` (read once a step)."""

  class Flag(train._PreemptionFlag):  # noqa: SLF001
    reads = 0

    @property
    def requested(self):
      Flag.reads += 1
      return Flag.reads >= step_to_preempt

    @requested.setter
    def requested(self, value):
      del value

  return Flag


def test_preemption_at_the_last_step_defers_the_final_evaluation_to_the_restart(
    tmp_path, monkeypatch):
  data_root, workdir = str(tmp_path / "data"), str(tmp_path / "run")
  inception = _Projection()
  reference = inception.compute(np.random.default_rng(1).integers(0, 255, (16, 32, 32, 1)))
  features = reference["pool3"].astype(np.float64)
  reference_stats = {"mu": features.mean(0), "sigma": np.cov(features, rowvar=False),
                     "features": features, "num_images": 16, "description": "random"}
  monkeypatch.setattr(evaluate.inception_lib, "load_inception", lambda *a, **k: inception)
  monkeypatch.setattr(evaluate, "load_reference", lambda *a, **k: reference_stats)
  config = tu.tiny_config(data_root, total_steps=3, checkpoint_every_steps=3, eval_every_steps=3,
                          eval_num_samples=8, eval__cas=False)

  monkeypatch.setattr(train, "_PreemptionFlag", _preempt_at(3))
  with pytest.raises(exit_status.Preempted, match="preempted at step 3"):
    train.train_and_evaluate(config, workdir)
  records = tu.read_metrics(workdir)
  assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
  assert not [r for r in records if r.get("mode") == "eval"]  # Skipped for the shutdown ...
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]

  monkeypatch.undo()
  monkeypatch.setattr(evaluate.inception_lib, "load_inception", lambda *a, **k: inception)
  monkeypatch.setattr(evaluate, "load_reference", lambda *a, **k: reference_stats)
  train.train_and_evaluate(config, workdir)  # ... and run by the restart, which completes.
  evals = [r for r in tu.read_metrics(workdir) if r.get("mode") == "eval"]
  assert [r["step"] for r in evals] == [3] and np.isfinite(evals[0]["fid"])
  train.train_and_evaluate(config, workdir)  # Complete: a rerun evaluates nothing again.
  assert len([r for r in tu.read_metrics(workdir) if r.get("mode") == "eval"]) == 1


_RAISE = """
import sys
from absl import app
from rin_diffusion import exit_status
import {module} as cli
def fail(*args, **kwargs):
  raise {error}
app.run = fail
cli.run()
"""


@pytest.mark.parametrize("error,status", [
    ("exit_status.Preempted(7, '/w/checkpoints')", 75),
    ("exit_status.Diverged('non-finite loss')", 3),  # train.NonFiniteLossError's base.
    ("ValueError('config.batch_size=0: must be positive')", 2),
    ("RuntimeError('something unexpected')", 1),  # Python's own: the traceback is kept.
])
@pytest.mark.parametrize("module", ["rin_diffusion.main", "rin_diffusion.cascade.__main__"])
def test_each_cli_maps_errors_to_the_documented_status(module, error, status):
  result = subprocess.run([sys.executable, "-c", _RAISE.format(module=module, error=error)],
                          capture_output=True, text=True, cwd=tu.REPO, timeout=120, check=False)
  assert result.returncode == status, result.stderr[-2000:]
  if status == 1:
    assert "Traceback" in result.stderr and "something unexpected" in result.stderr
    return
  line = result.stderr.strip()
  assert len(line.splitlines()) == 1, line
  assert line.startswith("rin_diffusion") and ("error:" in line) == (status == 2)
  assert error.split("(")[1].strip("')").split(",")[0].strip("'") in line
  assert issubclass(train.NonFiniteLossError, exit_status.Diverged)


def test_every_status_is_documented():
  assert set(exit_status.MEANING) == {0, 1, 2, 3, 75}
  readme = open(os.path.join(tu.REPO, "launch", "README.md")).read()
  for status in exit_status.MEANING:
    assert f"| {status} |" in readme
