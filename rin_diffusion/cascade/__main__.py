r"""Command line of a cascade: sample it (default), or train its stages one after the other.

  python -m rin_diffusion.cascade --pipeline=configs/cdm/pipeline_fashion_mnist.py \
      --workdir=workdir/cascade                    # samples every stage and every level s*
  python -m rin_diffusion.cascade --mode=train --pipeline=... --workdir=workdir/cascade

Each stage is an ordinary run in <workdir>/<stage name>: `--mode=train` is the same as
`python -m rin_diffusion.main --config=<stage config> --workdir=<workdir>/<stage name>` per stage
(resuming where a stage stopped). Samples go to --output (default <workdir>/cascade_samples); see
rin_diffusion/cascade/pipeline.py for the layout. Bad input (pipeline fields, a stage that does
not fit the one below, a missing workdir or checkpoint) ends in one line
`rin_diffusion.cascade: error: ...` and exit status 2, before anything is written. The other exit
statuses are rin_diffusion.main's (rin_diffusion/exit_status.py): 0 complete, 75 preempted (a stage
saved a durable checkpoint: rerun to resume), 3 diverged, 1 crash. Multi-process: the flags of
rin_diffusion.main (--distributed=auto, or --coordinator_address/--num_processes/--process_id).
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags

from rin_diffusion import distributed, exit_status

_PIPELINE = flags.DEFINE_string("pipeline", None, "Pipeline config file (path[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the stage workdirs <name>/.")
_MODE = flags.DEFINE_enum("mode", "sample", ["sample", "train"],
                          "sample: the whole cascade; train: every stage in order.")
_STAGES = flags.DEFINE_list(
    "stages", None, "With --mode=train: only these stages (names), e.g. one per process: an SR "
    "stage trains on real downsampled images, so it need not wait for the stage below.")
_OUTPUT = flags.DEFINE_string("output", "", "Samples directory (default workdir/cascade_samples).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Overrides pipeline.num_samples.")
_DISTRIBUTED_FLAGS = distributed.define_flags()
_EVALUATE = flags.DEFINE_bool("evaluate", False, "Sample mode: also FID, precision/recall (and "
                              "CAS) of every level s* of the last stage, and of the first stage "
                              "upsampled (eval.json).")
_LEVELS = flags.DEFINE_list("levels", None, "Overrides the last stage's levels s* (e.g. 0,0.1).")
_UPSAMPLED = flags.DEFINE_bool("upsampled", True, "With --evaluate: also score the first stage's "
                               "images upsampled to the last stage's size.")
_INPUT_SAMPLES = flags.DEFINE_string(
    "input_samples", None, "Overrides pipeline.input_samples: images that stand in for the first "
    "stage's samples: 'real:SPLIT' (e.g. real:train, real low-resolution images) or a directory "
    "of sample shards (main --mode=sample --samples=DIR writes one).")


def main(argv) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}: every option is a --flag=value.")
  if not _PIPELINE.value:
    raise ValueError("--pipeline is required, e.g. "
                     "--pipeline=configs/cdm/pipeline_fashion_mnist.py")
  if not _WORKDIR.value:
    raise ValueError("--workdir is required: the directory holding one workdir per stage.")
  from rin_diffusion import paper_configs  # noqa: PLC0415

  try:
    pipeline = paper_configs.load_config(_PIPELINE.value)
  except ValueError as error:
    raise ValueError(f"--pipeline={_PIPELINE.value}: {error}") from None
  if _NUM_SAMPLES.value is not None:
    pipeline.num_samples = _NUM_SAMPLES.value
  if _INPUT_SAMPLES.value is not None:
    pipeline.input_samples = _INPUT_SAMPLES.value
  if _STAGES.value is not None and _MODE.value != "train":
    raise ValueError(f"--stages={','.join(_STAGES.value)}: allowed only with --mode=train (the "
                     "sample mode runs the whole cascade)")
  if _LEVELS.value is not None:
    try:
      levels = tuple(float(level) for level in _LEVELS.value)
    except ValueError:
      raise ValueError(f"--levels={','.join(_LEVELS.value)}: allowed: comma-separated numbers "
                       "in [0, 1], e.g. --levels=0,0.1") from None
    pipeline.stages[-1]["levels"] = levels
  distributed.initialize(_DISTRIBUTED_FLAGS)
  logging.getLogger().setLevel(logging.INFO)
  from rin_diffusion.cascade import pipeline as pipeline_lib  # noqa: PLC0415

  if _MODE.value == "train":
    pipeline_lib.train_stages(pipeline, _WORKDIR.value, only=_STAGES.value)
    return
  summary = pipeline_lib.run(pipeline, _WORKDIR.value, _OUTPUT.value)
  print(json.dumps({"stages": [{k: stage[k] for k in ("name", "seconds", "directory", "branches")}
                               for stage in summary["stages"]], "output": summary["output"]}))
  if _EVALUATE.value:
    results = pipeline_lib.evaluate_branches(pipeline, summary, upsampled_base=_UPSAMPLED.value)
    for line in result_lines(summary, results):
      print(line)


def result_lines(summary: dict, results: dict) -> list[str]:
  """The evaluation as a table (one row per level s* and the upsampled first stage), the best
  level, and where the grids are."""
  from rin_diffusion.cascade import pipeline as pipeline_lib  # noqa: PLC0415

  stages = summary["stages"]
  last, first = stages[-1], stages[0]
  upsampled = pipeline_lib.upsampled_name(first["name"])
  lines = ["| samples | FID | precision | recall | CAS | real-data CAS ceiling |",
           "|---|---|---|---|---|---|"]

  def cell(value, percent=False):
    if value is None:
      return "-"
    return f"{100 * value:.1f} %" if percent else f"{value:.3f}"

  for name, scores in results.items():
    label = name if name == upsampled else f"{last['name']} {name}"
    lines.append(f"| {label} | {scores['fid']:.1f} | {cell(scores['precision'])} | "
                 f"{cell(scores['recall'])} | {cell(scores['cas'], True)} | "
                 f"{cell(scores.get('cas_real_ceiling'), True)} |")
  any_scores = next(iter(results.values()))
  lines.append(f"({any_scores['num_samples']} samples against {any_scores['num_reference']} "
               f"reference images; FID protocol: {any_scores.get('fid_protocol')})")
  levels = {name: scores for name, scores in results.items() if name != upsampled}
  best = min(levels, key=lambda name: levels[name]["fid"])
  lines.append(f"Best level by FID: {last['name']} {best} (FID {levels[best]['fid']:.1f})")
  output = summary["output"]
  base_branch = f"{output}/{first['directory']}/{first['branches'][0]}"
  lines.append(f"Grids: {base_branch}/grid.png (first stage), {base_branch}/grid_upsampled.png "
               f"(upsampled), {output}/{last['directory']}/{best}/grid.png (last stage, {best})")
  return lines


def run() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  try:
    app.run(main)
  except Exception as error:
    status = exit_status.of_exception(error)
    if status == exit_status.CRASH:
      raise  # The traceback, and Python's status 1.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    prefix = "error: " if status == exit_status.BAD_INPUT else ""
    print(f"rin_diffusion.cascade: {prefix}{' '.join(lines)}", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
  run()
