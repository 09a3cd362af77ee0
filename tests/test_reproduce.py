"""docs/reproduce.md: generated from the plans, every command accepted by its launcher, every config
loading with the flags it carries and ending in its FID-50k."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from rin_diffusion import config_lib, paper_configs
from rin_diffusion.tools import paper_tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(REPO, "docs", "reproduce.md")


def _generated() -> str:
  rows = paper_tables.cost_rows(xla=False)
  return paper_tables.reproduce_section(rows, paper_tables.PEAK_TFLOPS, paper_tables.MFU)


def _commands() -> list[str]:
  return re.findall(r"\| `([^`]+)` \|", _generated())


def test_page_matches_the_generator():
  page = open(PAGE).read()
  start = page.index(paper_tables.REPRODUCE_BEGIN)
  end = page.index(paper_tables.REPRODUCE_END) + len(paper_tables.REPRODUCE_END)
  assert page[start:end] == _generated(), (
      "docs/reproduce.md is stale: regenerate its section with "
      "python -m rin_diffusion.tools.paper_tables --reproduce")


def test_every_table_row_fits_its_slice():
  assert set(paper_configs.FITTING_PLANS) == set(paper_configs.RESOLUTIONS)
  for resolution, plan in paper_configs.FITTING_PLANS.items():
    assert plan["peak_gib"] < plan["hbm_gib"], resolution
    config = paper_configs.load_config(
        os.path.join(REPO, paper_configs.config_path(resolution)))
    for flag in paper_configs.plan_overrides(resolution):
      dotted, value = flag.removeprefix("--config.").split("=")
      node = config
      *parents, leaf = dotted.split(".")
      for part in parents:
        node = node[part]
      node[leaf] = {"True": True}.get(value, value)
    config_lib.validate(config)
    assert config.model.dtype == plan["dtype"] and bool(config.model.remat) == plan["remat"]
    # The run records its own table cell: FID-50k with the paper's sampler at the last step.
    assert config.eval_every_steps == config.total_steps and config.eval_num_samples == 50_000
  runlocal = paper_configs.load_config(
      os.path.join(REPO, paper_configs.config_path(64)) + ":runlocal")
  assert runlocal.eval_every_steps == 0  # Smoke runs do not sample 50,000 images.


@pytest.mark.parametrize("command", _commands())
def test_every_command_runs_through_its_launcher(command, tmp_path):
  values = {"$TPU": ("--zone=us-central2-b --accelerator=v4-128 --provisioning=spot "
                     "--tfds_data_dir=gs://bucket/tensorflow_datasets"),
            "$RUNS": "gs://bucket/runs", '"$TPU"': "'--zone=us-central2-b --accelerator=v4-128'"}
  for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
    command = command.replace(name, value)
  argv = shlex.split(command)
  env = {**os.environ, "TMPDIR": str(tmp_path)}
  if argv[0].startswith("launch/"):
    argv = ["bash", argv[0], "--dry-run", *argv[1:]]
  else:  # The sweep tool, which checks every member's config before printing.
    assert argv[:3] == ["python", "-m", "rin_diffusion.tools.sweep"], argv
    argv = [sys.executable, *argv[1:], "--dry-run"]
  result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
                          check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  if "queued_resources.sh" in command and " -- " in command:
    name = re.search(r"--name=(\S+)", command)[1]
    startup = open(tmp_path / f"rin_startup_{name}.sh").read()
    assert command.split(" -- ", 1)[1] in startup  # The plan's flags reach the trainer.
