r"""Command line: train (default), sample or eval.

  python -m rin_diffusion.main --config=configs/fashion_mnist.py --workdir=/tmp/fmnist
  python -m rin_diffusion.main --config=configs/imagenet64.py:runlocal --workdir=... \
      --config.batch_size=16
  python -m rin_diffusion.main --mode=sample --config=configs/fashion_mnist.py \
      --workdir=/tmp/fmnist --num_samples=100 --sampler=ddpm --steps=250 --guidance=2
  python -m rin_diffusion.main --mode=eval --config=configs/fashion_mnist.py \
      --workdir=/tmp/fmnist --num_samples=10000 --seeds=3   # FID, IS, P/R, CAS -> metrics.jsonl

Sample and eval mode read the latest checkpoint, or --checkpoint=best (checkpoints_best/) and/or
--checkpoint_step=N. Sample mode writes a directory of shards as it goes (--output, --png) and a
rerun resumes it; --mode=eval --samples=DIR scores such a directory.

Restarting with the same workdir resumes from the latest checkpoint. Multi-process: TPU pods and
SLURM are detected by `jax.distributed.initialize()` (--distributed=auto); elsewhere pass
--coordinator_address, --num_processes and --process_id.

Exit status (rin_diffusion/exit_status.py; launchers act on it): 0 only when the work is complete
(training: step == total_steps and the final evaluation recorded); 75 after a preemption notice
(SIGTERM) once the checkpoint is durable: rerun to resume; 3 when a non-finite loss stopped the run;
2 for bad input (flags, config values, files, a checkpoint that does not fit the config: one line
`rin_diffusion: error: ...` on stderr, before anything in the workdir changes); 1 for a crash.
"""

from __future__ import annotations

import logging
import os
import re
import sys

from absl import app, flags
from etils import epath
from ml_collections import config_flags

from rin_diffusion import distributed, exit_status

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"],
                          "train; sample (a directory of .npz shards + grid); eval (FID, IS, P/R, "
                          "CAS of a checkpoint's EMA samples, or of --samples).")
_DISTRIBUTED_FLAGS = distributed.define_flags()
# Sample mode: each flag overrides a config.sampling field (and is validated as that field).
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", None,
    "Sample mode: config.sampling.num_samples; eval mode: samples (config.eval_num_samples).")
_SAMPLER = flags.DEFINE_string("sampler", None, "Sample mode: config.sampling.sampler; eval "
                               "mode: config.sampling.fid_sampler.")
_STEPS = flags.DEFINE_integer("steps", None, "Sample mode: config.sampling.steps; eval mode: "
                              "config.sampling.fid_steps.")
_GUIDANCE = flags.DEFINE_float("guidance", None, "Sample mode: config.sampling.guidance (w); "
                               "eval mode: config.sampling.fid_guidance.")
_CLASSES = flags.DEFINE_string("classes", None, "Sample mode: config.sampling.classes (ids).")
_SEED = flags.DEFINE_integer("sample_seed", 0, "Sample and eval mode: random seed.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Eval mode: evaluations with seeds sample_seed + 0.. "
                              "(metrics.jsonl gets the mean and std of each metric).")
_OUTPUT = flags.DEFINE_string(
    "output", "", "Sample mode: the output directory (default workdir/samples/sample_<sampler>_"
    "<steps>steps_w<guidance>): shard_<process>_<batch>.npz, index.json, grid.png.")
_PNG = flags.DEFINE_bool("png", False, "Sample mode: also one PNG per image (OUTPUT/png/).")
_CHECKPOINT = flags.DEFINE_enum(
    "checkpoint", "latest", ["latest", "best"], "Sample and eval mode: the parameters of "
    "checkpoints/ (latest) or of checkpoints_best/ (the in-loop evaluation's lowest FID).")
_CHECKPOINT_STEP = flags.DEFINE_integer(
    "checkpoint_step", None, "Sample and eval mode: this step of the --checkpoint directory "
    "(default its newest).")
_SAMPLES = flags.DEFINE_string(
    "samples", "", "Eval mode: score this directory of samples (what --mode=sample writes) "
    "instead of sampling; its index.json names the checkpoint step and sampler.")


def _sample_flags() -> dict[str, object]:
  """config.sampling field -> the sample-mode flag's value, for the flags given."""
  given = {"num_samples": _NUM_SAMPLES, "sampler": _SAMPLER, "steps": _STEPS,
           "guidance": _GUIDANCE, "classes": _CLASSES}
  return {field: flag.value for field, flag in given.items() if flag.value is not None}


def _validate(config, overrides: dict[str, object]) -> None:
  """config_lib.validate, naming the sample-mode flag that set a bad config.sampling field."""
  from rin_diffusion import config_lib  # noqa: PLC0415

  for field, value in overrides.items():
    try:
      config.sampling[field] = value
    except TypeError as error:  # ConfigDict keeps a field's type.
      raise ValueError(f"--{field}={value!r}: {error}") from None
  try:
    config_lib.validate(config)
  except ValueError as error:
    for field in overrides:
      if str(error).startswith(f"config.sampling.{field}="):
        raise ValueError(f"--{field}: {error}") from None
    raise


def _restore_ema(config, workdir: str, abstract_params):
  """(EMA parameters, step, 'checkpoints/N' or 'checkpoints_best/N') as --checkpoint and
  --checkpoint_step choose."""
  from rin_diffusion import checkpointing  # noqa: PLC0415

  if _CHECKPOINT_STEP.value is not None and _CHECKPOINT_STEP.value < 0:
    raise ValueError(f"--checkpoint_step={_CHECKPOINT_STEP.value}: must be a step (>= 0).")
  params, step = checkpointing.restore_chosen_params(
      workdir, "ema", abstract_params, config, source="--workdir", checkpoint=_CHECKPOINT.value,
      step=_CHECKPOINT_STEP.value)
  directory = checkpointing.CHECKPOINT_CHOICES[_CHECKPOINT.value](workdir).name
  return params, step, f"{directory}/{step}"


def _labels_scheme(labels) -> str:
  """How generate.class_labels assigned the classes, for the samples' manifest."""
  import numpy as np  # noqa: PLC0415

  classes, counts = np.unique(labels, return_counts=True)
  return (f"generate.class_labels: classes {classes.tolist()} in turn, {int(counts.max())} "
          "consecutive samples each (the last may have fewer)")


def sample_mode(config, workdir: str) -> str:
  """Samples config.sampling.num_samples images (with the sample-mode flags applied) from the EMA
  parameters of a checkpoint of `workdir` (--checkpoint, --checkpoint_step) into a directory of
  shards (sample_shards.py): each process writes its own as it goes, a rerun resumes."""
  import jax  # noqa: PLC0415

  from rin_diffusion import generate, sample_shards, sharding, train  # noqa: PLC0415

  mesh = sharding.make_mesh(config.mesh)
  model, _, _, abstract_state, _ = train.build(config, mesh)
  ema_params, step, checkpoint = _restore_ema(config, workdir, abstract_state["params"])
  sampler = config.sampling.sampler
  steps = int(config.sampling.steps)
  guidance = float(config.sampling.guidance)
  labels = generate.class_labels(config, int(config.sampling.num_samples),
                                 config.sampling.classes)
  # Sharded global batches of config.eval_batch_size (fewer for few samples), so any number fits.
  sample_fn = generate.make_batched_sample_fn(model, config, mesh, sampler=sampler, steps=steps,
                                              guidance=guidance)
  batch_size = generate.sampling_batch_size(int(config.eval_batch_size), len(labels), mesh)
  output = _OUTPUT.value or os.path.join(
      workdir, "samples", f"sample_{sampler}_{steps}steps_w{guidance:g}")
  manifest = {  # Everything the images depend on: a rerun resumes only under equal values.
      "workdir": str(epath.Path(workdir).absolute()) if "://" not in workdir else workdir,
      "checkpoint": checkpoint, "checkpoint_step": step, "sampler": sampler, "steps": steps,
      "guidance": guidance, "seed": _SEED.value, "labels": _labels_scheme(labels),
      **{f"sampling.{k}": config.sampling.get(k) for k in (
          "time_grid", "td", "guidance_interval", "self_condition")}}
  image_shape = (int(config.model.image_size), int(config.model.image_size),
                 int(config.model.channels))
  written = sample_shards.write(sample_fn, ema_params, jax.random.key(_SEED.value), labels,
                                batch_size=batch_size, mesh=mesh, directory=output,
                                manifest=manifest, image_shape=image_shape, png=_PNG.value)
  logging.info("Wrote %d images of %s to %s (%d batches sampled, %d already there); grid %s",
               len(labels), checkpoint, output, written["sampled"], written["skipped"],
               os.path.join(output, "grid.png"))
  return output


def eval_mode(config, workdir: str) -> dict:
  """FID, IS, precision/recall (and CAS) of --num_samples EMA samples of a checkpoint (--checkpoint,
  --checkpoint_step; default the latest), or of a directory of samples (--samples).

  --sampler, --steps and --guidance override config.sampling.fid_*; --seeds=K repeats the
  evaluation with seeds --sample_seed + 0 .. K - 1 and reports the mean and std of every metric.
  Appends one 'eval' record (with the step evaluated) to workdir/metrics.jsonl and writes
  workdir/eval/step_<N>.json.
  """
  import jax  # noqa: PLC0415

  from rin_diffusion import config_lib, sample_shards, sharding, train  # noqa: PLC0415
  from rin_diffusion.evaluation import evaluate  # noqa: PLC0415

  for field, flag in (("fid_sampler", _SAMPLER), ("fid_steps", _STEPS),
                      ("fid_guidance", _GUIDANCE)):
    if flag.value is not None:
      config.sampling[field] = flag.value
  config_lib.validate(config)
  num_samples = int(config.eval_num_samples if _NUM_SAMPLES.value is None else _NUM_SAMPLES.value)
  if num_samples < 2:
    raise ValueError(f"--num_samples={num_samples}: eval mode needs at least 2 samples.")
  if _SEEDS.value < 1:
    raise ValueError(f"--seeds={_SEEDS.value}: must be a positive integer.")
  if _SAMPLES.value:
    if _CHECKPOINT_STEP.value is not None or _SEEDS.value != 1 or jax.process_count() > 1:
      raise ValueError(f"--samples={_SAMPLES.value}: scores the samples as they are, from one "
                       "process (their index.json names the checkpoint); drop --checkpoint_step "
                       "and --seeds, and run one process.")
    step = int(sample_shards.manifest_of(_SAMPLES.value)["checkpoint_step"])
    results = [evaluate.score_sample_dir(config, _SAMPLES.value)]
  else:
    mesh = sharding.make_mesh(config.mesh)
    model, _, _, abstract_state, _ = train.build(config, mesh)
    ema_params, step, checkpoint = _restore_ema(config, workdir, abstract_state["params"])
    evaluator = evaluate.make_evaluator(config, model, mesh)
    results = []
    for seed in range(_SEED.value, _SEED.value + _SEEDS.value):
      results.append({**evaluator(ema_params, num_samples=num_samples, seed=seed),
                      "checkpoint": checkpoint})
      logging.info("eval seed %d: %s", seed, {k: results[-1][v] for k, v in
                                              evaluate.RECORD_METRICS.items()})
  line = evaluate.record(step, results)
  path = evaluate.write_results(workdir, step, line, results)
  if jax.process_index() == 0:
    print(" ".join(f"{k}={v}" for k, v in line.items() if k in evaluate.RECORD_METRICS
                   or k.endswith("_std") or k in ("step", "num_samples")))
  logging.info("Appended to %s/metrics.jsonl; details in %s", workdir, path)
  return line


def main(argv):
  # ValueError, not app.UsageError: absl would print the whole module docstring before the message.
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}: every option is a --flag=value "
                     "(see --helpshort).")
  config = _CONFIG.value
  if config is None:
    raise ValueError("--config is required, e.g. --config=configs/fashion_mnist.py")
  try:
    _ = config.to_dict  # config_flags defers a load failure to the first access.
  except OSError as error:  # config_flags loads lazily and reports a missing file as OSError.
    raise ValueError(f"--config could not be loaded: {_one_line(str(error))}") from None
  if not _WORKDIR.value:
    raise ValueError("--workdir is required: the run directory (checkpoints, metrics, samples), "
                     "e.g. --workdir=workdir/fashion_mnist")
  _validate(config, _sample_flags() if _MODE.value == "sample" else {})
  distributed.initialize(_DISTRIBUTED_FLAGS)
  logging.getLogger().setLevel(logging.INFO)

  from rin_diffusion import train  # noqa: PLC0415

  super_resolution = int(config.cascade.low_resolution) > 0
  if super_resolution and _MODE.value != "train":
    raise ValueError(
        f"--mode={_MODE.value}: config.cascade.low_resolution={config.cascade.low_resolution} is a "
        "super-resolution stage, whose samples need the stage below; sample and evaluate it "
        "with python -m rin_diffusion.cascade --pipeline=... --workdir=...")
  if _MODE.value == "sample":
    sample_mode(config, _WORKDIR.value)
  elif _MODE.value == "eval":
    eval_mode(config, _WORKDIR.value)
  else:
    from rin_diffusion.cascade import stage  # noqa: PLC0415 -- the CLI wires the cascade in.

    train.train_and_evaluate(config, _WORKDIR.value,
                             conditioning=stage.conditioning_or_none(config))


def _one_line(message: str) -> str:
  """A message as one line; one that embeds a traceback keeps its first and last lines."""
  lines = [line.strip() for line in str(message).splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    lines = [lines[0], lines[-1]]
  return " ".join(lines) or "(no message)"


def _config_argument(argv: list[str]) -> str | None:
  """The value of --config in argv ('' when it has none), or None without --config."""
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith(("--config=", "-config=")):
      return arg.split("=", 1)[1]
    if arg in ("--config", "-config"):
      return argv[i + 1] if i + 1 < len(argv) else ""
  return None


def _flag_error(error: Exception) -> str:
  message = _one_line(str(error))
  field = re.match(r"flag --config\.([\w.]+)=", message)
  if field:  # A value of the wrong type: say which type the field takes.
    try:
      value = _CONFIG.value
      for part in field.group(1).split("."):
        value = value[part]
      kind = {bool: "True or False", int: "an integer", float: "a number", str: "a string"}.get(
          type(value), type(value).__name__)
      message += f"; config.{field.group(1)} takes {kind} (the config has {value!r})"
    except Exception:  # noqa: BLE001 -- the hint is optional.
      pass
  return f"{message} (see --helpshort)"


def _unknown_field_error(argv: list[str], error: Exception) -> str | None:
  """The message for an override of a field the (locked) config does not have, else None."""
  text = str(error.args[0]) if error.args else str(error)
  key = re.match(r"\W*(\w+)", text)
  if not key:
    return None
  overrides = [arg.split("=", 1)[0].lstrip("-") for arg in argv if re.match(r"--?config\.", arg)]
  matching = [name for name in overrides if key.group(1) in name.split(".")[1:]]
  if not matching:
    return None
  suggestion = re.search(r'Did you mean "(\w+)"', text)
  hint = f" (did you mean {suggestion.group(1)!r}?)" if suggestion else ""
  return (f"--{matching[0]}: the config has no field {key.group(1)!r}{hint}; overrides can only "
          "set the fields of config_lib.base_config() and the --config file.")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every failure one ValueError naming the flag (no usage wall)."""
  config_argument = _config_argument(argv)
  if config_argument is not None:
    path = config_argument.split(":", 1)[0]
    if not os.path.isfile(path):
      what = f"{path!r} is a directory" if os.path.isdir(path) else f"no such file {path!r}"
      raise ValueError(f"--config={config_argument}: {what}; pass a config file, "
                       "e.g. --config=configs/fashion_mnist.py")
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    raise ValueError(_flag_error(error)) from None
  except Exception as error:  # noqa: BLE001 -- raised by the config file or an override of it.
    message = (isinstance(error, (KeyError, AttributeError)) and _unknown_field_error(argv, error)
               or f"--config={config_argument}: loading it failed: {type(error).__name__}: "
               f"{_one_line(str(error))}")
    raise ValueError(message) from None


def _is_bad_input(error: Exception) -> bool:
  """ValueError is bad input here (flags, config, files); so are the data's not-found errors."""
  bad = [ValueError]
  for module, name in (("rin_diffusion.data.fashion_mnist", "RawFilesNotFoundError"),
                       ("rin_diffusion.data.pipeline", "DatasetNotReadyError")):
    if module in sys.modules:  # Not imported: the error cannot be one of its types.
      bad.append(getattr(sys.modules[module], name))
  return isinstance(error, tuple(bad))


def run() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  try:
    app.run(main, flags_parser=_parse_flags)
  except Exception as error:
    status = (exit_status.BAD_INPUT if _is_bad_input(error)
              else exit_status.of_exception(error, bad_input=()))
    if status == exit_status.CRASH:
      raise  # The traceback, and Python's status 1.
    print(f"rin_diffusion: {'error: ' if status == exit_status.BAD_INPUT else ''}"
          f"{_one_line(str(error))}", file=sys.stderr)  # No traceback wall.
    sys.exit(status)


if __name__ == "__main__":
  run()
