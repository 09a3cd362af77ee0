"""configs/sweeps/table4_fashion_mnist.py: the offline Table 4 sweep, its cells, and a toy run of it.

The toy run trains two members of the real sweep file (its ':tiny' argument: the same members with
the tiny model, 2 steps and a 16-sample evaluation) through the sweep tool, stops after the first
and resumes, then prints the table with paper_tables --layout=grid.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
import trainer_utils as tu

from rin_diffusion import config_lib, exit_status, paper_configs
from rin_diffusion.evaluation import inception as inception_lib
from rin_diffusion.tools import paper_tables
from rin_diffusion.tools import sweep as sweep_lib

SWEEP = os.path.join(tu.REPO, "configs", "sweeps", "table4_fashion_mnist.py")
# The settings that must be the same at every cell for the FIDs and CASs to be comparable.
EQUAL_KEYS = ("config", "total_steps", "batch_size", "optimizer.warmup_steps",
              "checkpoint_every_steps", "eval_every_steps", "sampling.fid_sampler",
              "sampling.fid_steps", "sampling.fid_guidance", "eval_num_samples",
              "eval.num_reference", "eval.cas", "dataset.pad_to")


def test_the_twelve_cells_share_budget_and_evaluation():
  members = sweep_lib.load_sweep(SWEEP)
  assert len(members) == 12
  cells = {(m["dataset.image_size"], m["diffusion.input_scale"]) for m in members}
  assert cells == {(r, b) for r in (32, 64, 128) for b in (1.0, 0.7, 0.5, 0.3)}
  assert {m["diffusion.train_schedule"] for m in members} == {"linear"}  # gamma = 1 - t.
  assert paper_configs.SCHEDULE_SPECS["1-t"] == "linear"
  for key in EQUAL_KEYS:
    assert len({str(m[key]) for m in members}) == 1, key
  first = members[0]
  assert first["total_steps"] > 1000 and first["eval_every_steps"] == first["total_steps"]
  assert first["eval.cas"] is True and first["eval_num_samples"] == 1000
  for m in members:
    r = m["dataset.image_size"]
    assert m["model.image_size"] == r and (r // m["model.patch_size"]) ** 2 == 64
    assert m["model.stem_overlap"] * 16 == r  # The same content window at every R.
    paper = {32: 64, 64: 128, 128: 256}[r]
    assert m["paper_resolution"] == paper
    assert m["paper_fid"] == paper_configs.TABLE4[m["diffusion.input_scale"]][paper][1]
    config = sweep_lib.check_member(m)
    config_lib.validate(config)
    # The evaluation reference and the CAS classifier are built at the member's resolution.
    assert config.dataset.image_size == r and config.seed == 0


def test_cosine_and_second_seed_members():
  members = sweep_lib.load_sweep(SWEEP + ":cosine,seeds")
  cosine = [m for m in members if m["diffusion.train_schedule"] == "cosine@0.2,1,1"]
  seeds = [m for m in members if m["seed"] == 1]
  assert len(members) == 32 and len(cosine) == 12 + 4 and len(seeds) == 8
  assert {m["name"] for m in seeds} >= {"t4fm-r32-lin-b1p0-s1", "t4fm-r128-lin-b0p3-s1"}
  for m in cosine:
    paper = m["paper_resolution"]
    assert m["paper_fid"] == paper_configs.TABLE4[m["diffusion.input_scale"]][paper][0]
  with pytest.raises(ValueError, match="unknown"):
    sweep_lib.load_sweep(SWEEP + ":cosin")
  tiny = sweep_lib.load_sweep(SWEEP + ":tiny")
  assert [m["name"] for m in tiny] == [m["name"] for m in sweep_lib.load_sweep(SWEEP)]


def test_a_sweep_file_without_arguments_rejects_one(tmp_path):
  plain = tmp_path / "plain_sweep.py"
  plain.write_text("def get_sweep():\n  return []\n")
  with pytest.raises(ValueError, match="takes no argument"):
    sweep_lib.load_sweep(f"{plain}:tiny")


def test_finished_members_are_skipped(tmp_path):
  workdir = tmp_path / "run"
  assert not sweep_lib.is_finished(str(workdir), 5)
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text(
      '{"step": 5, "loss": 1.0}\n{"step": 4, "mode": "eval", "fid": 9.0}\n{"step": 5, "mo')
  assert not sweep_lib.is_finished(str(workdir), 5)  # A cut-short line is no record.
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('\n{"step": 5, "mode": "eval", "fid": 8.0}\n')
  assert sweep_lib.is_finished(str(workdir), 5) and not sweep_lib.is_finished(str(workdir), None)


def _fake_member(name: str, script: str) -> tuple[dict, str, list[str]]:
  return {"name": name, "config": "-"}, f"/tmp/{name}", [sys.executable, "-c", script]


def test_sigterm_reaches_the_running_member_and_stops_the_sweep(tmp_path, capfd):
  """The first member signals the sweep (as a session ending would), gets SIGTERM passed on,
  exits 75 like the trainer; the second never starts and the sweep exits 75."""
  marker = tmp_path / "second_ran"
  first = ("import os, signal, sys, time\n"
           "signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n"
           "os.kill(os.getppid(), signal.SIGTERM)\n"
           "time.sleep(30)\n"
           "sys.exit(1)  # SIGTERM never came.\n")
  runs = [_fake_member("a", first), _fake_member("b", f"open({str(marker)!r}, 'w')")]
  assert sweep_lib.run_in_order(runs, [False, False]) == exit_status.PREEMPTED
  assert not marker.exists()
  assert "stopped during a (exit status 75)" in capfd.readouterr().err
  # Rerun: a finished member is skipped, the next one runs.
  assert sweep_lib.run_in_order(runs, [True, False]) == 0
  assert marker.exists() and "a: finished" in capfd.readouterr().err


def _toy_flags(tmp_path) -> str:
  """Fake Fashion-MNIST and an evaluation cache under tmp_path (the Inception's converted weights
  linked from the default cache when they are there, to skip the conversion)."""
  manual_dir, data_dir = tu.fake_fashion_mnist(str(tmp_path / "data"))
  cache = tmp_path / "cache"
  cache.mkdir()
  for path in glob.glob(os.path.join(inception_lib.default_cache_dir(), "inception_*.npz")):
    os.symlink(path, cache / os.path.basename(path))
  return (f"--config.dataset.manual_dir={manual_dir} --config.dataset.data_dir={data_dir} "
          f"--config.eval.cache_dir={cache}")


def _sweep(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "rin_diffusion.tools.sweep", f"{SWEEP}:tiny",
                         "--launcher=python", *args], cwd=tu.REPO, capture_output=True,
                        text=True, timeout=600, check=False)


def test_toy_sweep_runs_stops_resumes_and_tabulates(tmp_path):
  try:
    inception_lib.default_weights_path()
  except ValueError as error:
    pytest.skip(f"the FID Inception weights are not installed: {error}")
  root = str(tmp_path / "table4")
  flags = f"--launcher_flags={_toy_flags(tmp_path)}"
  only = "--only=^t4fm-r32-lin-b1p0$|^t4fm-r64-lin-b0p3$"
  # A session that stopped after the first member.
  first = _sweep(f"--workdir_root={root}", flags, "--only=^t4fm-r32-lin-b1p0$")
  assert first.returncode == 0, first.stderr[-3000:]
  done = os.path.join(root, "t4fm-r32-lin-b1p0", "metrics.jsonl")
  with open(done) as f:
    records = f.read()
  evals = [r for r in map(json.loads, records.splitlines()) if r.get("mode") == "eval"]
  assert [e["step"] for e in evals] == [2]
  # The next session: the finished member is skipped (its records untouched), the other runs.
  second = _sweep(f"--workdir_root={root}", flags, only)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "t4fm-r32-lin-b1p0: finished" in second.stderr
  with open(done) as f:
    assert f.read() == records
  other = tu.read_metrics(os.path.join(root, "t4fm-r64-lin-b0p3"))
  assert [r["step"] for r in other if r.get("mode") == "eval"] == [2]

  table = subprocess.run([sys.executable, "-m", "rin_diffusion.tools.paper_tables",
                          f"--sweep={SWEEP}:tiny", f"--workdir_root={root}", "--layout=grid"],
                         cwd=tu.REPO, capture_output=True, text=True, timeout=120, check=True)
  rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line
          for line in table.stdout.splitlines() if line.startswith("| linear |")}
  assert set(rows) == {("linear", b) for b in ("1", "0.7", "0.5", "0.3")}, table.stdout
  assert f"| {evals[0]['fid']:.1f} | 2.04 | - |" in rows["linear", "1"], table.stdout
  assert "| not yet run | 7.21 | not yet run |" in rows["linear", "1"]  # 128 vs the paper's 256.
  other_fid = [r for r in other if "fid" in r][-1]["fid"]
  assert f"| {other_fid:.1f} | 5.25 | - |" in rows["linear", "0.3"], table.stdout
  assert rows["linear", "0.3"].count("not yet run") == 4  # 32 and 128: FID and CAS.


def test_grid_layout_without_runs():
  rows = paper_tables.sweep_table(SWEEP, "/nonexistent", layout="grid")
  assert rows[0] == ["gamma(t)", "b", "32x32 FID", "paper FID (64x64)", "32x32 CAS",
                     "64x64 FID", "paper FID (128x128)", "64x64 CAS",
                     "128x128 FID", "paper FID (256x256)", "128x128 CAS"]
  assert rows[1] == ["linear", "1", "not yet run", "2.04", "not yet run", "not yet run", "4.51",
                     "not yet run", "not yet run", "7.21", "not yet run"]
  assert len(rows) == 1 + 4
