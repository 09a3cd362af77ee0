r"""Expands a sweep file into one workdir and launch command per member; runs or prints them.

  python -m rin_diffusion.tools.sweep configs/sweeps/table3_schedules.py \
      --workdir_root=gs://BUCKET/table3 --launcher=queued_resources \
      --launcher_flags='--zone=us-central2-b --accelerator=v4-64 --provisioning=spot \
                        --tfds_data_dir=gs://BUCKET/tensorflow_datasets' --dry-run

A sweep file defines `get_sweep() -> list[dict]`. Each member dict has
  'name'        the run's name: its workdir is WORKDIR_ROOT/NAME (lowercase letters, digits, '-');
  'config'      the config file, 'configs/imagenet64.py' or 'configs/imagenet64.py:ARG';
  'a.b.c'       any number of config overrides, passed as --config.a.b.c=VALUE (a top-level
                field such as 'seed' or 'total_steps' too);
and optional metadata that is not passed on: 'paper_fid' (the paper's number for this cell) and
'paper_resolution' (the paper's resolution it stands for, when it is not the member's own).
`SWEEP.py:ARG` passes ARG to get_sweep(ARG), as `--config=FILE.py:ARG` passes it to get_config.

Launchers (--launcher):
  python            python -m rin_diffusion.main ... (this interpreter)
  local             launch/local.sh ...
  tpu_vm            launch/tpu_vm.sh --name=PREFIX-NAME ... (one TPU VM slice per member)
  queued_resources  launch/queued_resources.sh --name=PREFIX-NAME ... (one queued resource each)
  slurm             launch/slurm.sh --job_name=NAME ... (one SLURM job each)
--launcher_flags are added to every launcher command (zone, accelerator, nodes, ...).

Every member's config is loaded and its overrides applied before anything is printed or run, so a
typo in a key fails here and not an hour into a queue. --dry-run prints the commands, one per line
(shell-quoted); otherwise they run one after another (--parallel=N: N at a time, logs in --log_dir).

Run one after another with --launcher=python or local, a sweep is resumable run by run: a member
whose final evaluation is recorded (an 'eval' record of step total_steps in WORKDIR/metrics.jsonl)
is skipped, a half-trained one resumes from its last checkpoint, and SIGTERM is passed on to the
running member (it saves a checkpoint) and stops the sweep with exit status 75: rerun the same
command to go on.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import inspect
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from rin_diffusion import exit_status, fileio, paper_configs

LAUNCHERS = ("python", "local", "tpu_vm", "queued_resources", "slurm")
# Launchers that run the member here, in order: a finished member is skipped (run_in_order).
RESUMABLE_LAUNCHERS = ("python", "local")
META_KEYS = ("name", "config", "paper_fid", "paper_resolution")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# A config field path: check_member loads the config and rejects one that is not there.
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def split_sweep_arg(path: str) -> tuple[str, str | None]:
  """'SWEEP.py:ARG' -> ('SWEEP.py', 'ARG'); 'SWEEP.py' -> ('SWEEP.py', None)."""
  file, sep, arg = path.rpartition(".py:")
  return (file + ".py", arg) if sep else (path, None)


def load_sweep(path: str) -> list[dict[str, Any]]:
  """Imports the sweep file at `path` ('SWEEP.py' or 'SWEEP.py:ARG'), calls get_sweep() (or
  get_sweep(ARG)) and checks the members' shape."""
  path, arg = split_sweep_arg(path)
  if not os.path.isfile(path):
    raise ValueError(f"sweep file {path!r} does not exist.")
  spec = importlib.util.spec_from_file_location("rin_sweep_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"sweep file {path!r} defines no get_sweep().")
  if arg is not None and not inspect.signature(module.get_sweep).parameters:
    raise ValueError(f"sweep file {path!r}: get_sweep() takes no argument (':{arg}' given).")
  members = list(module.get_sweep() if arg is None else module.get_sweep(arg))
  seen = set()
  for i, member in enumerate(members):
    where = f"{path}: member {i}"
    for key in ("name", "config"):
      if not isinstance(member.get(key), str) or not member[key]:
        raise ValueError(f"{where}: {key!r} is missing or not a non-empty string.")
    name = member["name"]
    if not _NAME_RE.match(name):
      raise ValueError(f"{where}: name={name!r}: use lowercase letters, digits and '-'.")
    if name in seen:
      raise ValueError(
          f"{where}: name={name!r} is used twice; names (and workdirs) must be unique.")
    seen.add(name)
    for key in member:
      if key not in META_KEYS and not _KEY_RE.match(key):
        raise ValueError(f"{where}: key {key!r} is neither a config override ('a.b', 'seed') "
                         f"nor one of {', '.join(META_KEYS)}.")
  return members


def overrides(member: dict[str, Any]) -> dict[str, Any]:
  """The member's dotted config overrides."""
  return {k: v for k, v in member.items() if k not in META_KEYS}


def format_value(value: Any) -> str:
  """A value as ml_collections' --config.x=VALUE flags parse it."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (tuple, list)):
    return "(" + ", ".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def check_member(member: dict[str, Any]):
  """Loads the member's config (relative to the repo root), applies its overrides, returns it."""
  config_file, sep, arg = member["config"].partition(":")
  path = config_file if os.path.isabs(config_file) else os.path.join(_REPO_DIR, config_file)
  config = paper_configs.load_config(path + sep + arg)
  for dotted, value in overrides(member).items():
    *parents, leaf = dotted.split(".")
    node = config
    try:
      for part in parents:
        node = node[part]
      if leaf not in node:
        raise KeyError(leaf)
      node[leaf] = value
    except (KeyError, TypeError, AttributeError) as error:
      raise ValueError(f"sweep member {member['name']!r}: cannot set config.{dotted}={value!r} "
                       f"({type(error).__name__}: {error}).") from None
  return config


def trainer_flags(member: dict[str, Any], workdir: str) -> list[str]:
  return [f"--config={member['config']}", f"--workdir={workdir}"]


def override_flags(member: dict[str, Any]) -> list[str]:
  return [f"--config.{k}={format_value(v)}" for k, v in overrides(member).items()]


def _script(name: str) -> str:
  relative = os.path.join("launch", name)
  return relative if os.path.isfile(relative) else os.path.join(_REPO_DIR, relative)


def launch_command(member: dict[str, Any], workdir: str, launcher: str,
                   launcher_flags: Sequence[str] = (), name_prefix: str = "rin") -> list[str]:
  """The argv that launches one member with `launcher`."""
  base = trainer_flags(member, workdir)
  extra = override_flags(member)
  if launcher == "python":
    return [sys.executable, "-m", "rin_diffusion.main", *base, *extra, *launcher_flags]
  if launcher == "local":
    command = [_script("local.sh"), *base]
  elif launcher in ("tpu_vm", "queued_resources"):
    tpu_name = f"{name_prefix}-{member['name']}" if name_prefix else member["name"]
    command = [_script(f"{launcher}.sh"), f"--name={tpu_name[:63].rstrip('-')}", *base]
  elif launcher == "slurm":
    command = [_script("slurm.sh"), f"--job_name={member['name']}", *base]
  else:
    raise ValueError(f"--launcher={launcher!r}: allowed: {', '.join(LAUNCHERS)}.")
  return [*command, *launcher_flags, "--", *extra] if extra else [*command, *launcher_flags]


def expand(path: str, workdir_root: str, launcher: str, launcher_flags: Sequence[str] = (),
           name_prefix: str = "rin", only: str = "", check: bool = True
           ) -> list[tuple[dict[str, Any], str, list[str]]]:
  """(member, workdir, argv) for every member of the sweep at `path` (matching `only`)."""
  if launcher not in LAUNCHERS:
    raise ValueError(f"--launcher={launcher!r}: allowed: {', '.join(LAUNCHERS)}.")
  members = load_sweep(path)
  if only:
    members = [m for m in members if re.search(only, m["name"])]
  result = []
  for member in members:
    if check:
      check_member(member)
    workdir = workdir_root.rstrip("/") + "/" + member["name"]
    result.append((member, workdir, launch_command(member, workdir, launcher, launcher_flags,
                                                   name_prefix)))
  return result


def _run_one(argv: list[str], log_path: str | None) -> int:
  if log_path is None:
    return subprocess.run(argv, check=False).returncode
  with open(log_path, "w") as log:
    return subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def finished_step(member: dict[str, Any]) -> int | None:
  """The step whose evaluation record marks the member's run complete (its total_steps), or None
  when the run has no in-loop evaluation to look for."""
  config = check_member(member)
  return int(config.total_steps) if int(config.eval_every_steps) else None


def is_finished(workdir: str, step: int | None) -> bool:
  """Whether WORKDIR/metrics.jsonl holds the evaluation record of `step` (the trainer's own test
  for a complete run, fileio.has_eval_record; local paths and gs:// alike)."""
  return step is not None and fileio.has_eval_record(os.path.join(workdir, "metrics.jsonl"), step)


class _ForwardSigterm:
  """While installed, SIGTERM to the sweep is passed on to the running member (whose trainer saves
  a durable checkpoint and exits 75) and no further member starts."""

  def __init__(self):
    self.requested = False
    self.child: subprocess.Popen | None = None
    self._previous = None

  def __enter__(self) -> _ForwardSigterm:
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame) -> None:
    del frame
    self.requested = True
    if self.child is not None and self.child.poll() is None:
      self.child.send_signal(signum)

  def run(self, argv: list[str]) -> int:
    self.child = subprocess.Popen(argv)
    if self.requested:  # The signal came while the member was being started.
      self.child.send_signal(signal.SIGTERM)
    try:
      return self.child.wait()
    finally:
      self.child = None


def run_in_order(runs: Sequence[tuple[dict[str, Any], str, list[str]]],
                 finished: Sequence[bool]) -> int:
  """Runs the members one after another, skipping finished ones; the sweep's exit status.

  Resumable run by run: a member that is finished (its final evaluation recorded) is skipped, a
  half-trained one resumes from its checkpoint (the trainer does that). SIGTERM, or a member that
  exits PREEMPTED, stops the sweep with PREEMPTED; the same command then carries on.
  """
  failed = []
  with _ForwardSigterm() as stop:
    for (member, workdir, command), done in zip(runs, finished, strict=True):
      if stop.requested:
        break
      if done:
        print(f"sweep: {member['name']}: finished (final evaluation in {workdir}/metrics.jsonl); "
              "skipped", file=sys.stderr, flush=True)
        continue
      print(f"sweep: {member['name']}: {shlex.join(command)}", file=sys.stderr, flush=True)
      status = stop.run(command)
      if stop.requested or status == exit_status.PREEMPTED:
        print(f"sweep: stopped during {member['name']} (exit status {status}); rerun the same "
              "command to resume", file=sys.stderr, flush=True)
        return exit_status.PREEMPTED
      if status != 0:
        failed.append(member["name"])
  if stop.requested:
    return exit_status.PREEMPTED
  if failed:
    print(f"sweep: {len(failed)} of {len(runs)} failed: {', '.join(sorted(failed))}",
          file=sys.stderr)
    return 1
  return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m rin_diffusion.tools.sweep",
      description="Expand a sweep file into one workdir and launch command per member.")
  parser.add_argument("sweep", help="Sweep file, e.g. configs/sweeps/table3_schedules.py.")
  parser.add_argument("--workdir_root", required=True,
                      help="Each member runs in WORKDIR_ROOT/NAME (gs:// for TPU launchers).")
  parser.add_argument("--launcher", default="local", choices=LAUNCHERS)
  parser.add_argument("--launcher_flags", default="",
                      help="Flags added to every launcher command (one shell-quoted string).")
  parser.add_argument("--name_prefix", default="rin",
                      help="Prefix of TPU / queued-resource names (PREFIX-NAME).")
  parser.add_argument("--only", default="", help="Regex: only members whose name matches.")
  parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                      help="Print the commands, one per line, instead of running them.")
  parser.add_argument("--parallel", type=int, default=1,
                      help="Run up to N commands at once (logs in --log_dir).")
  parser.add_argument("--log_dir", default="sweep_logs", help="Per-member logs with --parallel.")
  parser.add_argument("--no_check", dest="check", action="store_false",
                      help="Do not load the configs to check the overrides.")
  args = parser.parse_args(argv)
  if args.parallel < 1:
    parser.error(f"--parallel={args.parallel}: must be >= 1")
  try:
    args.launcher_flags = shlex.split(args.launcher_flags)
  except ValueError as error:
    parser.error(f"--launcher_flags: {error}")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    runs = expand(args.sweep, args.workdir_root, args.launcher, args.launcher_flags,
                  args.name_prefix, args.only, args.check)
  except ValueError as error:
    print(f"sweep: error: {error}", file=sys.stderr)
    return 2
  if args.dry_run:
    for _, _, command in runs:
      print(shlex.join(command))
    return 0
  if args.parallel == 1:
    # Runs on this machine can be checked here; a TPU or SLURM job is the launcher's business.
    local = args.check and args.launcher in RESUMABLE_LAUNCHERS
    return run_in_order(runs, [local and is_finished(workdir, finished_step(m))
                               for m, workdir, _ in runs])
  os.makedirs(args.log_dir, exist_ok=True)
  with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
    futures = {pool.submit(_run_one, command, os.path.join(args.log_dir, m["name"] + ".log")):
               m["name"] for m, _, command in runs}
    failed = [futures[f] for f in concurrent.futures.as_completed(futures) if f.result() != 0]
  if failed:
    print(f"sweep: {len(failed)} of {len(runs)} failed: {', '.join(sorted(failed))}",
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
