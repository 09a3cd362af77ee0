"""LoopEvaluation's checkpoints_best/: restarts that re-evaluate the best step, and FIDs compared
only between evaluations of the same settings. The evaluator is a stand-in returning given FIDs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import trainer_utils as tu

from rin_diffusion.evaluation import evaluate


def _stand_in_evaluator(fids: list[float], sampler: str = "ddpm"):
  """evaluator(params, num_samples, seed) returning the next FID of `fids`, with .settings."""
  def settings(num_samples, seeds):
    return {"num_samples": num_samples, "seeds": list(seeds), "sampler": sampler, "steps": 2,
            "guidance": 0.0, "labels": "sample j has class j mod 10", "preprocessing": "p",
            "inception": "stand-in", "reference": "stand-in", "num_reference": 16}

  def evaluator(params, *, num_samples, seed):
    del params
    described = settings(num_samples, [seed])
    del described["seeds"]
    return {**described, **dict.fromkeys(evaluate.RECORD_METRICS.values()), "seed": seed,
            "fid": fids.pop(0), "fid_protocol": "clean-fid",
            "timings": {"sampling_s": 1.0, "images_per_s": 1.0}}

  evaluator.settings = settings
  return evaluator


class _Writer:
  def write_scalars(self, step, scalars):
    del step, scalars


def _loop_evaluation(monkeypatch, config, workdir, fids, **kwargs):
  monkeypatch.setattr(evaluate, "make_evaluator",
                      lambda *a, **k: _stand_in_evaluator(list(fids), **kwargs))
  return evaluate.LoopEvaluation(config, model=None, mesh=None, workdir=workdir,
                                  writer=_Writer())


def _state(value: float):
  return {"ema_params": {"w": np.full((3,), value, np.float32)}}


def _best(workdir, loop_evaluation=None):
  """{step: FID of its eval record} of checkpoints_best/, once the loop's saves are done."""
  if loop_evaluation is not None:
    loop_evaluation.manager.wait_until_finished()
  directory = os.path.join(workdir, "checkpoints_best")
  best = {}
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name, "eval", "metadata")) as f:
      best[int(name)] = json.load(f)["fid"]
  return best


@pytest.fixture
def config(tmp_path):
  return tu.tiny_config(str(tmp_path / "data"), eval_num_samples=16, eval__cas=False)


def test_restart_re_evaluating_the_best_step_with_a_lower_fid_replaces_it(
    config, tmp_path, monkeypatch):
  """A run preempted after step 6 was saved as the best but before its regular checkpoint resumes
  from step 4 and evaluates step 6 again: Orbax used to raise StepAlreadyExistsError here."""
  workdir = str(tmp_path / "run")
  first = _loop_evaluation(monkeypatch, config, workdir, [3.0, 2.0])
  first(_state(4.0), 4, 0)
  first(_state(6.0), 6, 0)
  first.close()
  assert _best(workdir) == {6: 2.0}

  restarted = _loop_evaluation(monkeypatch, config, workdir, [1.5])
  assert restarted.best_fid == 2.0
  restarted(_state(6.5), 6, 0)  # The same step, retrained from step 4, evaluates lower.
  restarted.close()
  assert _best(workdir) == {6: 1.5}
  again = _loop_evaluation(monkeypatch, config, workdir, [])
  assert again.best_fid == 1.5
  again.close()


def test_a_worse_re_evaluation_of_the_best_step_keeps_it(config, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  first = _loop_evaluation(monkeypatch, config, workdir, [2.0])
  first(_state(6.0), 6, 0)
  first.close()
  restarted = _loop_evaluation(monkeypatch, config, workdir, [2.5])
  restarted(_state(6.5), 6, 0)
  restarted.close()
  assert _best(workdir) == {6: 2.0}


def test_best_fid_is_compared_only_under_the_same_settings(config, tmp_path, monkeypatch):
  """FID 1.0 of 16 samples is no bar for an FID of 32 samples (FID falls with the sample count):
  the first evaluation under new settings becomes the best and replaces the old one."""
  workdir = str(tmp_path / "run")
  first = _loop_evaluation(monkeypatch, config, workdir, [1.0])
  first(_state(2.0), 2, 0)
  first.close()

  more_samples = config.copy_and_resolve_references()
  more_samples.eval_num_samples = 32
  changed = _loop_evaluation(monkeypatch, more_samples, workdir, [5.0, 6.0, 4.0])
  assert changed.best_fid == float("inf")
  changed(_state(4.0), 4, 0)
  assert _best(workdir, changed) == {4: 5.0}
  changed(_state(6.0), 6, 0)  # Worse under the same (new) settings: not saved.
  changed(_state(8.0), 8, 0)
  changed.close()
  assert _best(workdir) == {8: 4.0}

  other_sampler = _loop_evaluation(monkeypatch, more_samples, workdir, [], sampler="ddim")
  assert other_sampler.best_fid == float("inf")
  other_sampler.close()
  back = _loop_evaluation(monkeypatch, more_samples, workdir, [])
  assert back.best_fid == 4.0
  back.close()
