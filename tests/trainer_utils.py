"""Shared helpers for trainer tests: a tiny config on a small synthetic Fashion-MNIST."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_collections

from rin_diffusion import paper_configs
from rin_diffusion.data import testing as data_testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "fashion_mnist.py")


def fake_fashion_mnist(root: str) -> tuple[str, str]:
  """Raw idx files and a TFDS data_dir for a 64-image Fashion-MNIST under `root`."""
  manual_dir = os.path.join(root, "raw")
  data_dir = os.path.join(root, "tfds")
  if not os.path.exists(manual_dir):
    data_testing.write_fake_fashion_mnist(manual_dir, num_train=64, num_test=16)
  return manual_dir, data_dir


def tiny_config(data_root: str, **overrides) -> ml_collections.ConfigDict:
  """configs/fashion_mnist.py:tiny on the fake data, with a constant learning rate.

  A constant rate makes runs of different total_steps identical step for step, which the resume
  tests rely on.
  """
  config = paper_configs.load_config(f"{TINY_CONFIG}:tiny")
  manual_dir, data_dir = fake_fashion_mnist(data_root)
  config.dataset.manual_dir = manual_dir
  config.dataset.data_dir = data_dir
  config.optimizer.decay = "constant"
  config.sample_every_steps = 0
  for dotted, value in overrides.items():
    node = config
    parts = dotted.split("__")
    for part in parts[:-1]:
      node = node[part]
    node[parts[-1]] = value
  return config


def config_flags(config: ml_collections.ConfigDict, keys: list[str]) -> list[str]:
  """--config.a.b=value flags reproducing selected fields of `config` on a command line."""
  flags = []
  for dotted in keys:
    node = config
    for part in dotted.split("."):
      node = node[part]
    flags.append(f"--config.{dotted}={node}")
  return flags


def main_command(workdir: str, flags: list[str]) -> list[str]:
  return [sys.executable, "-m", "rin_diffusion.main", f"--config={TINY_CONFIG}:tiny",
          f"--workdir={workdir}", *flags]


def run_main(workdir: str, flags: list[str], env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
  return subprocess.run(main_command(workdir, flags), capture_output=True, text=True, cwd=REPO,
                        env={**os.environ, **(env or {})}, timeout=timeout)


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def step_losses(workdir: str) -> dict[int, float]:
  """Loss per step from metrics.jsonl (the last record wins when a step was logged twice)."""
  losses = {}
  for record in read_metrics(workdir):
    first = record["step"] - len(record["step_losses"]) + 1
    for offset, loss in enumerate(record["step_losses"]):
      losses[first + offset] = loss
  return losses


TINY_FLAGS = [
    "--config.optimizer.decay=constant",
    "--config.sample_every_steps=0",
]


def data_flags(data_root: str) -> list[str]:
  manual_dir, data_dir = fake_fashion_mnist(data_root)
  return [f"--config.dataset.manual_dir={manual_dir}", f"--config.dataset.data_dir={data_dir}"]


def snapshot(workdir: str) -> dict[str, bytes]:
  """Every file under `workdir` (relative path -> bytes): equal snapshots mean nothing changed."""
  files = {}
  for root, dirs, names in os.walk(workdir):
    for name in dirs:  # Empty directories count too.
      files[os.path.relpath(os.path.join(root, name), workdir) + "/"] = b""
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, workdir)] = f.read()
  return files


def error_line(result: subprocess.CompletedProcess) -> str:
  """The one `rin_diffusion: error: ...` line of a run that ended in bad input (exit status 2)."""
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("rin_diffusion: error:")]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


# Runs `python -m rin_diffusion.main` as if TensorFlow and TensorBoard were not installed: the path
# finder no longer finds them, so `import tensorflow` raises ModuleNotFoundError and
# importlib.util.find_spec('tensorflow') is None, exactly as on a core (no 'tf' extra) install.
WITHOUT_TENSORFLOW = """
import importlib.machinery, runpy, sys
HIDDEN = ("tensorflow", "tensorboard", "tensorboard_data_server")
class HideTensorFlow:
  @staticmethod
  def find_spec(name, path=None, target=None):
    if name.partition(".")[0] in HIDDEN:
      return None
    return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [HideTensorFlow if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path]
sys.argv[0] = "rin_diffusion.main"
runpy.run_module("rin_diffusion.main", run_name="__main__", alter_sys=True)
"""


def run_main_without_tensorflow(workdir: str, flags: list[str],
                                timeout: float = 300) -> subprocess.CompletedProcess:
  command = [sys.executable, "-c", WITHOUT_TENSORFLOW, f"--config={TINY_CONFIG}:tiny",
             f"--workdir={workdir}", *flags]
  return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=timeout)


def trained_run(tmp_path_factory) -> tuple[list[str], str]:
  """(data and tiny flags, workdir) of a tiny run trained here, with checkpoints at steps 1 and 2."""
  from rin_diffusion import train  # noqa: PLC0415 -- jax only for the tests that train.

  data_root = str(tmp_path_factory.mktemp("fmnist"))
  workdir = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(tiny_config(data_root, total_steps=2, checkpoint_every_steps=1),
                           workdir)
  return data_flags(data_root) + TINY_FLAGS, workdir
