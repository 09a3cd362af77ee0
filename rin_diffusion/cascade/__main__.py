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
_OUTPUT = flags.DEFINE_string("output", "", "Samples directory (default workdir/cascade_samples).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Overrides pipeline.num_samples.")
_DISTRIBUTED_FLAGS = distributed.define_flags()
_EVALUATE = flags.DEFINE_bool("evaluate", False, "Sample mode: also FID, precision/recall (and "
                              "CAS) of every level s* of the last stage (eval.json).")


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
  distributed.initialize(_DISTRIBUTED_FLAGS)
  logging.getLogger().setLevel(logging.INFO)
  from rin_diffusion.cascade import pipeline as pipeline_lib  # noqa: PLC0415

  if _MODE.value == "train":
    pipeline_lib.train_stages(pipeline, _WORKDIR.value)
    return
  summary = pipeline_lib.run(pipeline, _WORKDIR.value, _OUTPUT.value)
  print(json.dumps({"stages": [{k: stage[k] for k in ("name", "seconds", "directory", "branches")}
                               for stage in summary["stages"]], "output": summary["output"]}))
  if _EVALUATE.value:
    results = pipeline_lib.evaluate_branches(pipeline, summary)
    last = summary["stages"][-1]["name"]
    for branch, scores in results.items():
      extra = "".join(f", {name} {scores[key]:.3f}" for name, key in
                      (("precision", "precision"), ("recall", "recall"))
                      if scores[key] is not None)
      if scores["cas"] is not None:
        extra += f", CAS {100 * scores['cas']:.1f}%"
      print(f"{last} {branch}: FID {scores['fid']:.1f}{extra} ({scores['num_samples']} samples "
            f"against {scores['num_reference']} reference images)")
    best = min(results, key=lambda branch: results[branch]["fid"])
    print(f"Best level by FID: {last} {best} (FID {results[best]['fid']:.1f})")


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
