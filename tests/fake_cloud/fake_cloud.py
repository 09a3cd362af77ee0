"""A fake Google Cloud TPU and SLURM for the simulated pod (tests/test_simulated_pod.py).

The shims in this folder (gcloud, uv, sudo, google_metadata_script_runner, sbatch, srun, scontrol) run
this file. Every call is appended to $FAKE_CLOUD_DIR/calls.jsonl. A queued resource is a folder
$FAKE_CLOUD_DIR/qr/NAME holding its state and its startup script; its "workers" are local process
groups running that script with the environment a TPU VM worker would give the trainer (its own
install root and log, and JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID standing in for
the TPU metadata that jax.distributed.initialize() reads on a real slice).

The test drives the cloud's side with `fake_cloud.py sim preempt|crash|state NAME`: a preemption
marks the resource SUSPENDING, sends SIGTERM to every worker (as the VMs' shutdown does), waits for
them to exit and marks it SUSPENDED; a crash SIGKILLs the trainer processes on a live slice;
`sim slurm-signal JOB_ID` sends SIGTERM to a SLURM job's tasks, as --signal=TERM@N does.
Only the commands the launchers use are implemented; anything else fails loudly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("FAKE_CLOUD_DIR", "")


def _record(argv: list[str]) -> None:
  with open(os.path.join(ROOT, "calls.jsonl"), "a") as f:
    f.write(json.dumps(argv) + "\n")


def _fail(message: str, status: int = 1) -> None:
  print(f"ERROR: (fake {os.path.basename(sys.argv[1])}) {message}", file=sys.stderr)
  sys.exit(status)


def _flags(args: list[str]) -> dict[str, str]:
  return {a.split("=", 1)[0]: a.split("=", 1)[1] if "=" in a else "" for a in args
          if a.startswith("--")}


def _qr_dir(name: str) -> str:
  return os.path.join(ROOT, "qr", name)


def _state_path(name: str) -> str:
  return os.path.join(_qr_dir(name), "state")


def _read_state(name: str) -> str | None:
  try:
    with open(_state_path(name)) as f:
      return f.read().strip()
  except FileNotFoundError:
    return None


def _write_state(name: str, state: str) -> None:
  with open(_state_path(name), "w") as f:
    f.write(state)


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def _worker_env(name: str, index: int, port: int) -> dict[str, str]:
  count = int(os.environ.get("FAKE_TPU_WORKERS", "2"))
  worker_dir = os.path.join(_qr_dir(name), f"worker-{index}")
  return {**os.environ,
          "PATH": HERE + os.pathsep + os.environ["PATH"],
          "RIN_ROOT": os.path.join(worker_dir, "root"),
          "RIN_LOG": os.path.join(worker_dir, "startup.log"),
          "RIN_WORKER_ID": f"worker-{index}",
          "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
          "JAX_NUM_PROCESSES": str(count),
          "JAX_PROCESS_ID": str(index),
          "FAKE_STARTUP_SCRIPT": os.path.join(_qr_dir(name), "startup.sh")}


def _add_group(name: str, index: int, pid: int) -> None:
  with open(os.path.join(_qr_dir(name), f"worker-{index}", "groups"), "a") as f:
    f.write(f"{pid}\n")


def _groups(name: str) -> list[int]:
  groups = []
  for index in range(int(os.environ.get("FAKE_TPU_WORKERS", "2"))):
    path = os.path.join(_qr_dir(name), f"worker-{index}", "groups")
    if os.path.exists(path):
      groups += [int(line) for line in open(path) if line.strip()]
  return groups


def _alive(pgid: int) -> bool:
  try:
    os.killpg(pgid, 0)
  except (ProcessLookupError, PermissionError):
    return False
  # A group whose processes have all exited but not been reaped is gone for our purposes.
  result = subprocess.run(["ps", "-o", "stat=", "--sid", str(pgid)], capture_output=True, text=True,
                          check=False)
  return any(not line.strip().startswith("Z") for line in result.stdout.splitlines())


def _signal_all(name: str, signum: int) -> None:
  for pgid in _groups(name):
    try:
      os.killpg(pgid, signum)
    except ProcessLookupError:
      pass


def _wait_gone(name: str, timeout: float) -> bool:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if not any(_alive(pgid) for pgid in _groups(name)):
      return True
    time.sleep(0.2)
  return False


def _boot(name: str) -> None:
  """Starts the startup script on every worker, as a slice's boot does."""
  port = _free_port()
  for index in range(int(os.environ.get("FAKE_TPU_WORKERS", "2"))):
    env = _worker_env(name, index, port)
    os.makedirs(env["RIN_ROOT"], exist_ok=True)
    with open(os.path.join(_qr_dir(name), f"worker-{index}", "port"), "w") as f:
      f.write(str(port))
    proc = subprocess.Popen(["bash", env["FAKE_STARTUP_SCRIPT"]], env=env, cwd="/",
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    _add_group(name, index, proc.pid)


def queued_resources(verb: str, args: list[str]) -> None:
  name = args[0] if args and not args[0].startswith("-") else _fail("a resource name is needed")
  flags = _flags(args)
  if verb == "create":
    if _read_state(name) is not None:
      _fail(f"ALREADY_EXISTS: queued resource {name}")
    os.makedirs(_qr_dir(name))
    startup = flags["--metadata-from-file"].removeprefix("startup-script=")
    with open(startup) as src, open(os.path.join(_qr_dir(name), "startup.sh"), "w") as dst:
      dst.write(src.read())
    for index in range(int(os.environ.get("FAKE_TPU_WORKERS", "2"))):
      os.makedirs(os.path.join(_qr_dir(name), f"worker-{index}"), exist_ok=True)
    _write_state(name, "ACTIVE")
    _boot(name)
  elif verb == "describe":
    state = _read_state(name)
    if state is None:
      _fail(f"NOT_FOUND: queued resource {name}")
    print(state if flags.get("--format") == "value(state.state)" else f"state:\n  state: {state}")
  elif verb == "delete":
    if _read_state(name) is None:
      _fail(f"NOT_FOUND: queued resource {name}")
    _signal_all(name, signal.SIGKILL)
    _wait_gone(name, 30)
    os.rename(_qr_dir(name), _qr_dir(name) + f".deleted.{time.time_ns()}")
  else:
    _fail(f"queued-resources {verb} is not simulated")


def tpu_vm_ssh(args: list[str]) -> None:
  name = args[0]
  flags = _flags(args)
  if _read_state(name) != "ACTIVE":
    _fail(f"ssh: TPU node {name} is not ready", 255)
  if flags.get("--worker") != "all":
    _fail("ssh: only --worker=all is simulated")
  statuses = []
  for index in range(int(os.environ.get("FAKE_TPU_WORKERS", "2"))):
    with open(os.path.join(_qr_dir(name), f"worker-{index}", "port")) as f:
      env = _worker_env(name, index, int(f.read()))
    # Its own session, so that what the command leaves running belongs to this worker's groups.
    proc = subprocess.Popen(["bash", "-c", flags["--command"]], env=env, cwd="/",
                            stdin=subprocess.DEVNULL, start_new_session=True)
    _add_group(name, index, proc.pid)
    statuses.append(proc.wait())
  sys.exit(max(statuses))


def sim(verb: str, name: str) -> None:
  """The cloud's side: preemption, a crash, or reading the state."""
  if verb != "state":
    _record(["sim", verb, name])  # Where the test injected it, in the transcript.
  if verb == "preempt":
    _write_state(name, "SUSPENDING")
    _signal_all(name, signal.SIGTERM)  # The VMs shut down: every process gets SIGTERM ...
    if not _wait_gone(name, 120):  # ... and a grace period, then the power goes.
      _signal_all(name, signal.SIGKILL)
    _write_state(name, "SUSPENDED")
  elif verb == "crash":
    killed = 0
    for index in range(int(os.environ.get("FAKE_TPU_WORKERS", "2"))):
      path = os.path.join(_qr_dir(name), f"worker-{index}", "root", "program.pid")
      if os.path.exists(path):
        try:
          os.kill(int(open(path).read()), signal.SIGKILL)
          killed += 1
        except ProcessLookupError:
          pass
    print(killed)
  elif verb == "slurm-signal":  # SLURM's --signal=TERM@N (or a preemption): SIGTERM every task.
    with open(os.path.join(_job_dir(name), "tasks")) as f:
      for pid in f.read().split():
        try:
          os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
          pass
  elif verb == "state":
    print(_read_state(name) or "MISSING")
  else:
    _fail(f"sim {verb} is not simulated")


# ----------------------------------------------------------------------------------------------
# SLURM: a job is a folder $FAKE_CLOUD_DIR/jobs/ID; a detached runner runs its batch script, and
# again for every `scontrol requeue ID` made while it ran (the job's next allocation).


def _job_dir(job_id: str) -> str:
  return os.path.join(ROOT, "jobs", job_id)


def sbatch(args: list[str]) -> None:
  _record(["sbatch", *args])
  script_index = next(i for i, a in enumerate(args) if not a.startswith("-"))
  options, script = _flags(args[:script_index]), args[script_index:]
  job_id = str(10000 + int.from_bytes(os.urandom(2), "big") % 50000)
  os.makedirs(_job_dir(job_id))
  with open(os.path.join(_job_dir(job_id), "job.json"), "w") as f:
    json.dump({"options": options, "script": script}, f)
  subprocess.Popen([sys.executable, os.path.abspath(__file__), "job-runner", job_id],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   start_new_session=True)
  print(f"Submitted batch job {job_id}")


def job_runner(job_id: str) -> None:
  with open(os.path.join(_job_dir(job_id), "job.json")) as f:
    job = json.load(f)
  options = job["options"]
  env = {**os.environ, "PATH": HERE + os.pathsep + os.environ["PATH"], "SLURM_JOB_ID": job_id,
         "SLURM_JOB_NUM_NODES": options.get("--nodes", "1"), "SLURM_JOB_NODELIST": "localhost",
         "SLURM_GPUS_ON_NODE": options.get("--gpus-per-node", "1")}
  requeue = os.path.join(_job_dir(job_id), "requeue")
  while True:
    with open(os.path.join(_job_dir(job_id), "output.log"), "a") as log:
      status = subprocess.run(["bash", *job["script"]], env=env, cwd=options.get("--chdir", "/"),
                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              check=False).returncode
    with open(os.path.join(_job_dir(job_id), "runs"), "a") as f:
      f.write(f"{status}\n")
    if not os.path.exists(requeue):
      return
    os.remove(requeue)  # Requeued (it has --requeue): the next allocation runs the script again.


def srun(args: list[str]) -> None:
  _record(["srun", *args])
  command_index = next(i for i, a in enumerate(args) if not a.startswith("-"))
  options, command = _flags(args[:command_index]), args[command_index:]
  count = int(options.get("--nodes", "1")) * int(options.get("--ntasks-per-node", "1"))
  tasks = [subprocess.Popen(command, env={**os.environ, "SLURM_PROCID": str(i),
                                          "SLURM_NTASKS": str(count), "SLURM_LOCALID": "0",
                                          "SLURM_NODEID": str(i)})
           for i in range(count)]
  with open(os.path.join(_job_dir(os.environ["SLURM_JOB_ID"]), "tasks"), "w") as f:
    f.write("".join(f"{task.pid}\n" for task in tasks))

  def forward(signum, frame):
    del frame
    for task in tasks:
      task.send_signal(signum)

  signal.signal(signal.SIGTERM, forward)
  statuses = [None] * count
  while None in statuses:
    for i, task in enumerate(tasks):
      if statuses[i] is None and task.poll() is not None:
        statuses[i] = task.returncode
        if task.returncode != 0 and options.get("--kill-on-bad-exit") == "1":
          for other in tasks:  # --kill-on-bad-exit: the step ends with its first failed task.
            if other.poll() is None:
              other.kill()
    time.sleep(0.1)
  sys.exit(max(status if status >= 0 else 128 - status for status in statuses))


def scontrol(args: list[str]) -> None:
  _record(["scontrol", *args])
  if args[:2] == ["show", "hostnames"]:
    print("localhost")
  elif args[0] == "requeue":
    open(os.path.join(_job_dir(args[1]), "requeue"), "w").close()
  else:
    _fail(f"scontrol {args[0]} is not simulated")


def gcloud(args: list[str]) -> None:
  _record(["gcloud", *args])
  if args[:3] == ["compute", "tpus", "queued-resources"]:
    queued_resources(args[3], args[4:])
  elif args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
    tpu_vm_ssh(args[4:])
  else:
    _fail(f"gcloud {' '.join(args[:4])} is not simulated")


def main() -> None:
  tool, args = sys.argv[1], sys.argv[2:]
  if tool == "gcloud":
    gcloud(args)
  elif tool == "sim":
    sim(args[0], args[1])
  elif tool in ("sbatch", "srun", "scontrol"):
    {"sbatch": sbatch, "srun": srun, "scontrol": scontrol}[tool](args)
  elif tool == "job-runner":
    job_runner(args[0])
  elif tool == "sudo":
    _record(["sudo", *args])
    os.execvp(args[0], args)
  elif tool == "uv":  # The workers' installer: a virtualenv that is the tests' interpreter.
    _record(["uv", *args])
    if args[0] == "venv":
      python = os.path.join(args[-1], "bin", "python")
      os.makedirs(os.path.dirname(python), exist_ok=True)
      with open(python, "w") as f:
        f.write(f'#!/bin/sh\nexec {os.environ["FAKE_CLOUD_PYTHON"]} "$@"\n')
      os.chmod(python, 0o755)
    elif args[:2] != ["pip", "install"]:
      _fail(f"uv {args[0]} is not simulated")
  elif tool == "google_metadata_script_runner":
    _record(["google_metadata_script_runner", *args])
    os.execvp("bash", ["bash", os.environ["FAKE_STARTUP_SCRIPT"]])
  else:
    _fail(f"{tool} is not simulated")


if __name__ == "__main__":
  main()
