"""A simulated pod: the real launchers and the startup script they generate, against fake cloud
tools (tests/fake_cloud/) and a localhost 2-process JAX job, from launch to a filled table row.

launch -> train -> SIGTERM to every worker (preemption) -> the watcher re-creates the slice ->
resume -> the trainer is killed on the live slice -> the watcher restarts it -> finish -> final
FID -> DONE -> the watcher deletes the slice -> paper_tables prints the row with the run's FID.
A finished job is never started again. Every gcloud call is recorded in order (calls.jsonl).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import trainer_utils as tu

from rin_diffusion.evaluation import inception as inception_lib

FAKES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_cloud")
LAUNCHER = os.path.join(tu.REPO, "launch", "queued_resources.sh")
NAME = "toy-pod"
TOTAL_STEPS = 24


def _wait(predicate, what: str, timeout: float, watcher: subprocess.Popen | None = None):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    if watcher is not None and watcher.poll() is not None:
      raise AssertionError(f"the watcher exited ({watcher.returncode}) before {what}")
    time.sleep(0.25)
  raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _checkpoints(workdir: str) -> list[int]:
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def _calls(cloud: str) -> list[list[str]]:
  path = os.path.join(cloud, "calls.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f]


def _gcloud_verbs(cloud: str) -> list[str]:
  """'create', 'describe', 'delete', 'ssh' ... in the order the fake gcloud received them."""
  verbs = []
  for call in _calls(cloud):
    if call[0] == "gcloud":
      verbs.append(call[4] if call[3] == "queued-resources" else call[4] if call[3] != "tpu-vm"
                   else "ssh")
  return verbs


def _transcript(cloud: str) -> str:
  """The recorded calls in order, a run of identical calls (the watcher's polls) as one line."""
  lines: list[list] = []
  for call in _calls(cloud):
    text = " ".join(call)
    if lines and lines[-1][0] == text:
      lines[-1][1] += 1
    else:
      lines.append([text, 1])
  return "\n".join(text + (f"   (x{count})" if count > 1 else "") for text, count in lines)


def _logs(cloud: str) -> str:
  """Every worker's startup log, of live and deleted slices."""
  text = []
  for root, _, names in os.walk(os.path.join(cloud, "qr")):
    text += [open(os.path.join(root, n)).read() for n in sorted(names) if n == "startup.log"]
  return "\n".join(text)


def test_queued_resource_pod_from_launch_to_a_table_row(tmp_path):
  try:
    inception_lib.default_weights_path()
  except ValueError as error:
    pytest.skip(f"the FID Inception weights are not installed: {error}")
  cloud, workdir = str(tmp_path / "cloud"), str(tmp_path / "runs" / NAME)
  os.makedirs(cloud)
  manual_dir, data_dir = tu.fake_fashion_mnist(str(tmp_path / "data"))
  env = {**os.environ, "PATH": FAKES + os.pathsep + os.environ["PATH"], "FAKE_CLOUD_DIR": cloud,
         "FAKE_CLOUD_PYTHON": sys.executable, "FAKE_TPU_WORKERS": "2", "TMPDIR": str(tmp_path),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  flags = [f"--name={NAME}", "--zone=us-central2-b", "--accelerator=v4-16", "--provisioning=spot",
           "--config=configs/fashion_mnist.py:tiny", f"--workdir={workdir}",
           f"--tfds_data_dir={data_dir}", "--poll_seconds=1", "--max_restarts=1", "--",
           f"--config.dataset.manual_dir={manual_dir}", f"--config.dataset.data_dir={data_dir}",
           f"--config.total_steps={TOTAL_STEPS}", "--config.checkpoint_every_steps=4",
           "--config.optimizer.decay=constant", "--config.sample_every_steps=0",
           f"--config.eval_every_steps={TOTAL_STEPS}", "--config.eval.cas=False",
           f"--config.eval.cache_dir={tmp_path / 'cache'}"]

  def launcher(*args):
    return subprocess.run(["bash", LAUNCHER, *args, *flags], env=env, capture_output=True,
                          text=True, timeout=120, check=False)

  def sim(verb):
    return subprocess.run([sys.executable, os.path.join(FAKES, "fake_cloud.py"), "sim", verb,
                           NAME], env=env, capture_output=True, text=True, timeout=180,
                          check=True).stdout.strip()

  created = launcher("--action=create")
  assert created.returncode == 0, created.stderr
  watch_log = open(tmp_path / "watch.log", "w")
  watcher = subprocess.Popen(["bash", LAUNCHER, "--action=watch", *flags], env=env,
                             stdout=watch_log, stderr=subprocess.STDOUT, text=True)
  try:
    # Preempted after its checkpoint at step 4: every worker saves at the same step, exits 75.
    _wait(lambda: _checkpoints(workdir) and _checkpoints(workdir)[-1] >= 4, "checkpoint 4", 420,
          watcher)
    sim("preempt")
    preempted_at = _checkpoints(workdir)[-1]
    assert "preempted at step" in _logs(cloud)
    # The watcher deletes and re-creates the slice; the new workers resume past that step ...
    _wait(lambda: _gcloud_verbs(cloud).count("create") == 2, "the re-creation", 60, watcher)
    _wait(lambda: _checkpoints(workdir)[-1] >= preempted_at + 4, "training after the resume",
          420, watcher)
    # ... then the trainers die on the live slice (killed), and the watcher restarts them.
    assert int(sim("crash")) == 2
    _wait(lambda: "ssh" in _gcloud_verbs(cloud), "the restart over ssh", 60, watcher)
    watcher.wait(timeout=600)
  finally:
    if watcher.poll() is None:
      watcher.kill()
      watcher.wait()
    if watcher.returncode != 0:  # Leave no worker running behind a failed test.
      subprocess.run([sys.executable, os.path.join(FAKES, "fake_cloud.py"), "sim", "preempt",
                      NAME], env=env, capture_output=True, check=False)
    watch_log.close()
  transcript = open(tmp_path / "watch.log").read()
  assert watcher.returncode == 0, transcript[-3000:] + _logs(cloud)[-5000:]

  # Complete: every step trained once the restarts are counted, the final FID recorded, DONE.
  records = tu.read_metrics(workdir)
  assert {r["step"] for r in records if "loss" in r} == set(range(1, TOTAL_STEPS + 1))
  evals = [r for r in records if r.get("mode") == "eval"]
  assert [r["step"] for r in evals] == [TOTAL_STEPS]
  assert os.path.exists(os.path.join(workdir, "launch", "train", "DONE"))
  logs = _logs(cloud)
  assert logs.count("Resumed from") >= 2 * 2  # Both workers, after the preemption and the crash.
  assert "the program exited with status 75" in logs and "status 137" in logs
  verbs = _gcloud_verbs(cloud)
  assert verbs[0] == "create" and verbs[-1] == "delete"
  assert verbs.count("create") == 2 and verbs.count("ssh") == 1 and verbs.count("delete") == 2
  print(_transcript(cloud))  # pytest -s shows it.

  # A finished job is never started again: a new slice's workers find DONE and stop at once.
  again = launcher("--action=create")
  assert again.returncode == 0, again.stderr
  _wait(lambda: _logs(cloud).count("the job is complete; nothing to do") == 2, "the no-op boot",
        60)
  assert len(tu.read_metrics(workdir)) == len(records)
  watched = launcher("--action=watch")
  assert watched.returncode == 0 and "the job is complete" in watched.stdout, watched.stderr

  # The table row, from the run's own records.
  sweep = tmp_path / "toy_sweep.py"
  sweep.write_text(f"def get_sweep():\n  return [dict(name={NAME!r}, "
                   "config='configs/fashion_mnist.py:tiny', paper_fid=2.04)]\n")
  table = subprocess.run([sys.executable, "-m", "rin_diffusion.tools.paper_tables",
                          f"--sweep={sweep}", f"--workdir_root={tmp_path / 'runs'}"],
                         capture_output=True, text=True, cwd=tu.REPO, timeout=120, check=True)
  row = [line for line in table.stdout.splitlines() if line.startswith(f"| {NAME} ")]
  assert row and row[0].rstrip(" |").endswith(f"{evals[0]['fid']:.2f}"), table.stdout


def test_slurm_job_requeues_itself_on_preemption_and_finishes(tmp_path):
  """launch/slurm.sh under fake sbatch/srun/scontrol: 2 nodes (2 processes); SIGTERM to the tasks
  (--signal=TERM@N before the time limit) -> exit 75 -> scontrol requeue -> resume -> exit 0."""
  cloud, workdir = str(tmp_path / "cloud"), str(tmp_path / "run")
  os.makedirs(cloud)
  manual_dir, data_dir = tu.fake_fashion_mnist(str(tmp_path / "data"))
  env = {**os.environ, "PATH": FAKES + os.pathsep + os.environ["PATH"], "FAKE_CLOUD_DIR": cloud,
         "FAKE_CLOUD_PYTHON": sys.executable,
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
  submitted = subprocess.run(
      ["bash", os.path.join(tu.REPO, "launch", "slurm.sh"), "--nodes=2", "--gpus_per_node=1",
       f"--python={sys.executable}", "--config=configs/fashion_mnist.py:tiny",
       f"--workdir={workdir}", f"--tfds_data_dir={data_dir}", "--time=01:00:00", "--",
       f"--config.dataset.manual_dir={manual_dir}", f"--config.dataset.data_dir={data_dir}",
       "--config.total_steps=16", "--config.checkpoint_every_steps=4",
       "--config.optimizer.decay=constant", "--config.sample_every_steps=0"],
      env=env, capture_output=True, text=True, timeout=60, check=False)
  assert submitted.returncode == 0, submitted.stderr
  job_id = submitted.stdout.split()[-1]
  job_dir = os.path.join(cloud, "jobs", job_id)
  runs = os.path.join(job_dir, "runs")

  def output():
    path = os.path.join(job_dir, "output.log")
    return open(path).read() if os.path.exists(path) else ""

  _wait(lambda: _checkpoints(workdir) and _checkpoints(workdir)[-1] >= 4 or os.path.exists(runs),
        "checkpoint 4", 240)
  assert not os.path.exists(runs), output()[-3000:]
  subprocess.run([sys.executable, os.path.join(FAKES, "fake_cloud.py"), "sim", "slurm-signal",
                  job_id], env=env, check=True, timeout=30)
  _wait(lambda: os.path.exists(runs) and len(open(runs).read().split()) == 2, "the requeued run",
        300)
  assert open(runs).read().split() == ["75", "0"], output()[-3000:]
  sbatch = [c for c in _calls(cloud) if c[0] == "sbatch"][0]
  assert "--requeue" in sbatch and "--signal=TERM@120" in sbatch
  assert ["scontrol", "requeue", job_id] in _calls(cloud)
  assert [c[0] for c in _calls(cloud)].count("srun") == 2
  assert "requeueing job" in output() and output().count("Resumed from") == 2
  records = tu.read_metrics(workdir)
  assert {r["step"] for r in records if "loss" in r} == set(range(1, 17))
  assert _checkpoints(workdir)[-1] == 16
