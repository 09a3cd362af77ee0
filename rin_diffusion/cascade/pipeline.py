"""Sampling a cascade: a base stage, then super-resolution stages, with a sweep over the levels s*.

A pipeline config (configs/cdm/pipeline_*.py) lists the stages in order; each stage is a trainer
workdir `<workdir>/<name>` and a run config. Every stage after the first has `levels`, the
augmentation levels s* it is conditioned at, and `truncated`:

* non-truncated (CDM 3.3): the stage below runs to t = 0; its images (uint8, as they would be
  stored) are re-noised at each s* with the augmentation process and handed up. The stage below is
  sampled once whatever the number of levels.
* truncated: the stage below hands up its state z_{s*} unchanged, its augmentation process being
  the stage below's inference process (config.cascade.aug_schedule / aug_input_scale). A sweep is
  ONE trajectory of the stage below from t = 1, stopped at every level in turn: its sampler runs
  the segments [s_1, 1], [s_2, s_1], ... (levels in decreasing order), each from the state and the
  self-conditioning latents the previous one ended with, so every denoiser call is made once. The
  `steps` of the stage below are shared out over the segments by the grid of a single run over
  [min s*, 1] (each level taken to the nearest point of that grid, at least one step per segment):
  the whole sweep makes `steps` denoiser calls ('heun': calls_per_run per segment), and a level on
  that grid gets exactly the grid a single run over [s*, 1] of as many steps would use. Each segment
  spaces its steps by the sampler's time grid over its own interval; 'dpmpp_2m' restarts at first
  order after each stop. So the state at s* depends on the other levels: a truncated sweep's
  levels are part of its settings (below), and a sweep extended by a level is a new trajectory.

Every combination of levels is a branch, named by its levels ('s0.2' below the second stage,
's0.2-s0' below the third). Samples go in global batches of `batch_size` over the stage's mesh.

Storage: a stored batch is served only to a run whose settings made it; a run with other settings
is stored apart (never refused, never served another run's images). Each stage's batches go under
`<output>/<stage>/<key>/`, key = a short hash of everything that determines them, written beside
them as `settings.json`: the run's seed, batch size, number of samples and classes; every setting
of this stage and of each stage below (workdir, checkpoint step, sampler, steps, guidance, time
grid, td, guidance interval, self-conditioning, inference process; for a conditioned stage
truncated or not, its augmentation process and upsampling, and a truncated stage's levels); and,
if the stage above is truncated, the levels this stage stops at. The levels of a non-truncated
stage are not in its key but in its branch names. So running the non-truncated sweep and then
`:truncated` into the same output keeps both, a rerun resumes, and a non-truncated sweep extended
by new levels samples only what is new (a new seed, sampler, checkpoint... samples everything
again, apart). Layout: `<output>/<stage>/<key>/<branch>/batch_<i>.npz` per batch (uint8 `images` in
[0, 255], `labels`; a truncated handover also keeps `state`, float32 z_{s*}), and `grid.png` of the
first `grid_samples`. `<output>/summary.json` describes the latest run (its branches, seconds,
checkpoint step and `directory` = `<stage>/<key>` per stage); `--evaluate` writes `eval.json` there
and beside the last stage's batches.

Keys: the stage at index k draws batch i from fold_in(fold_in(key(seed), k), i) whatever the
branch, so branches differ only by their conditioning (common random numbers across s*), and a
truncated trajectory starts from the same noise as the stage's run to t = 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from rin_diffusion import (
  checkpointing,
  config_lib,
  fileio,
  generate,
  networks,
  paper_configs,
  sample_shards,
  samplers,
  schedules,
  sharding,
  train,
)
from rin_diffusion.cascade import augment
from rin_diffusion.cascade import stage as stage_lib

STAGE_FIELDS = ("name", "config", "overrides", "sampler", "steps", "guidance", "levels",
                "truncated", "checkpoint_step")
# pipeline.input_samples: 'real:SPLIT' or a directory of sample shards (sample_shards).
REAL_PREFIX = "real:"
_AUG_KEY_OFFSET = 1_000_003  # Keys of the non-truncated re-noising, apart from the samplers'.
_KEY_CHARS = 12  # Hex digits of a settings key: 48 bits, no collision among a directory's runs.


@dataclasses.dataclass
class Stage:
  name: str
  config: ml_collections.ConfigDict
  sampler: str
  steps: int
  guidance: float
  levels: tuple[float, ...]  # Levels s* this stage is conditioned at ((0.0,) for the base).
  truncated: bool
  checkpoint_step: int | None = None  # The checkpoint to restore (None: the newest).
  model: Any = None
  params: Any = None
  mesh: Any = None
  step: int | None = None  # The restored checkpoint's step.
  workdir: str = ""  # Where it was restored from.


def _bad(where: str, message: str) -> ValueError:
  return ValueError(f"{where}: {message}")


def _stage_config(entry: dict[str, Any], where: str) -> ml_collections.ConfigDict:
  spec = entry.get("config")
  if not isinstance(spec, str) or not spec:
    raise _bad(f"{where}.config", f"{spec!r}; allowed: a config path[:arg], e.g. "
               "'configs/cdm/fashion_mnist_16.py'")
  try:
    config = paper_configs.load_config(spec)
  except ValueError as error:
    raise _bad(f"{where}.config", str(error)) from None
  overrides = entry.get("overrides") or {}
  for dotted, value in dict(overrides).items():
    node, *path = dotted.split(".")
    target = config
    parts = [node, *path]
    try:
      for part in parts[:-1]:
        target = target[part]
      if parts[-1] not in target:
        raise KeyError(parts[-1])
      target[parts[-1]] = value
    except (KeyError, TypeError) as error:
      raise _bad(f"{where}.overrides[{dotted!r}]", f"cannot set {value!r} ({error}); allowed: "
                 "the fields of config_lib.base_config()") from None
  try:
    config_lib.validate(config)
  except ValueError as error:
    raise _bad(f"{where} ({spec})", str(error)) from None
  return config


def load_stages(pipeline: ml_collections.ConfigDict) -> list[Stage]:
  """The pipeline's stages with their configs, checked stage against stage; touches no files
  but the config files and no device."""
  entries = list(pipeline.stages)
  if not entries:
    raise _bad("pipeline.stages", "is empty; allowed: a base stage and super-resolution stages")
  stages = []
  for index, entry in enumerate(entries):
    entry = dict(entry)
    where = f"pipeline.stages[{index}]"
    unknown = sorted(set(entry) - set(STAGE_FIELDS))
    if unknown:
      raise _bad(where, f"unknown field(s) {unknown}; allowed: {', '.join(STAGE_FIELDS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
      raise _bad(f"{where}.name", f"{name!r}; allowed: a directory name under --workdir")
    config = _stage_config(entry, where)
    sampling = config.sampling
    sampler = entry.get("sampler") or sampling.sampler
    steps = int(entry.get("steps") or sampling.steps)
    guidance = float(sampling.guidance if entry.get("guidance") is None else entry["guidance"])
    allowed = samplers.samplers_for(config.diffusion.learned_variance)
    if sampler not in allowed:
      raise _bad(f"{where}.sampler", f"{sampler!r}; allowed for this stage: "
                 f"{', '.join(map(repr, allowed))}")
    if steps < 1 or not math.isfinite(guidance) or guidance < 0:
      raise _bad(where, f"steps={steps}, guidance={guidance}; allowed: steps >= 1, guidance >= 0")
    low = int(config.cascade.low_resolution)
    levels = entry.get("levels")
    truncated = bool(entry.get("truncated", False))
    if index == 0:
      if low:
        raise _bad(f"{where} ({entry['config']})", f"config.cascade.low_resolution={low}: the "
                   "first stage is the base and conditions on nothing; allowed: 0")
      if levels is not None or truncated:
        raise _bad(where, "levels/truncated belong to the stages that are conditioned; the base "
                   "has none")
      levels = (0.0,)
    else:
      below = stages[-1].config
      if low != int(below.model.image_size):
        raise _bad(f"{where} ({entry['config']})",
                   f"config.cascade.low_resolution={low} does not match the output of stage "
                   f"{stages[-1].name!r} (config.model.image_size={below.model.image_size}); "
                   "they must be equal")
      for field in ("channels", "num_classes"):
        if config.model[field] != below.model[field]:
          raise _bad(f"{where} ({entry['config']})",
                     f"config.model.{field}={config.model[field]} differs from stage "
                     f"{stages[-1].name!r}'s {below.model[field]}; they must be equal")
      levels = (0.0,) if levels is None else levels
      if isinstance(levels, (int, float)):
        levels = (levels,)
      levels = tuple(levels)
      s_max = float(config.cascade.aug_level_max)
      for level in levels:
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not (
            0.0 <= level <= 1.0):
          raise _bad(f"{where}.levels", f"s*={level!r}; allowed: numbers in [0, 1]")
        if level > s_max:
          raise _bad(f"{where}.levels",
                     f"s*={level!r} exceeds the trained range: config.cascade.aug_level_max="
                     f"{s_max:g}; allowed: levels in [0, {s_max:g}]")
      if not levels or len(set(levels)) != len(levels):
        raise _bad(f"{where}.levels", f"{levels!r}; allowed: distinct levels, at least one")
      if truncated:
        below_process = (below.diffusion.infer_schedule, float(below.diffusion.input_scale))
        this_process = (config.cascade.aug_schedule, float(config.cascade.aug_input_scale))
        if below_process != this_process:
          raise _bad(f"{where}.truncated",
                     f"the augmentation process (config.cascade.aug_schedule, aug_input_scale) = "
                     f"{this_process} must be stage {stages[-1].name!r}'s inference process "
                     f"(config.diffusion.infer_schedule, input_scale) = {below_process}, whose "
                     "state it receives unchanged; use truncated=False or retrain")
        if stages[-1].steps < len(levels):
          raise _bad(f"{where}.levels",
                     f"{len(levels)} levels of a truncated sweep need stage {stages[-1].name!r} to "
                     f"take at least {len(levels)} steps (one trajectory, stopped at every level); "
                     f"it takes steps={stages[-1].steps}")
    checkpoint_step = entry.get("checkpoint_step")
    if checkpoint_step is not None and (isinstance(checkpoint_step, bool) or not isinstance(
        checkpoint_step, int) or checkpoint_step < 0):
      raise _bad(f"{where}.checkpoint_step", f"{checkpoint_step!r}; allowed: a step the stage's "
                 "checkpoints/ holds, or None for the newest")
    stages.append(Stage(name=name, config=config, sampler=sampler, steps=steps,
                        guidance=guidance, levels=tuple(float(v) for v in levels),
                        truncated=truncated, checkpoint_step=checkpoint_step))
  return stages


def train_stages(pipeline: ml_collections.ConfigDict, workdir: str,
                 only: Sequence[str] | None = None) -> None:
  """Trains every stage in order (or the stages named in `only`), each an ordinary resumable run
  in <workdir>/<stage name> (`python -m rin_diffusion.cascade --mode=train`). Every stage is
  checked before the first trains. No stage reads another's parameters in training (an SR stage
  learns from real downsampled images), so separate processes may train them at once."""
  stages = load_stages(pipeline)
  if only is not None:
    names = [stage.name for stage in stages]
    unknown = [name for name in only if name not in names]
    if unknown or not only:
      raise ValueError(f"--stages={','.join(only)}: unknown stage(s) {unknown}; allowed: "
                       f"names of the pipeline's stages: {', '.join(names)}")
    stages = [stage for stage in stages if stage.name in only]
  for stage in stages:
    conditioning = stage_lib.conditioning_or_none(stage.config)
    logging.info("cascade: training stage %r", stage.name)
    train.train_and_evaluate(stage.config, str(epath.Path(workdir) / stage.name),
                             conditioning=conditioning)


def restore_stages(stages: Sequence[Stage], workdir: str) -> None:
  """Builds each stage's model and mesh and restores its EMA parameters from workdir/<name>."""
  for stage in stages:
    stage.mesh = sharding.make_mesh(stage.config.mesh)
    model, _, _, abstract_state, _ = train.build(stage.config, stage.mesh)
    stage_dir = str(epath.Path(workdir) / stage.name)
    if not epath.Path(stage_dir).is_dir():
      raise ValueError(f"stage {stage.name!r}: no workdir {stage_dir}; train it first with "
                       f"python -m rin_diffusion.main --config=<its config> --workdir={stage_dir}")
    stage.model = model
    stage.workdir = stage_dir
    try:
      stage.params, stage.step = checkpointing.restore_chosen_params(
          stage_dir, "ema", abstract_state["params"], stage.config,
          source=f"stage {stage.name!r} workdir", step=stage.checkpoint_step)
    except ValueError as error:
      raise ValueError(f"stage {stage.name!r} (checkpoint_step={stage.checkpoint_step}): "
                       f"{error}") from None


def _stage_settings(stage: Stage) -> dict[str, Any]:
  """What of one stage decides its samples (with its input, decided by the stages below)."""
  config = stage.config
  sampling = config.sampling
  settings = {
      "workdir": stage.workdir, "checkpoint_step": stage.step, "sampler": stage.sampler,
      "steps": stage.steps, "guidance": stage.guidance,
      "time_grid": sampling.get("time_grid", "") or samplers.DEFAULT_TIME_GRID[stage.sampler],
      "td": float(sampling.td),
      "guidance_interval": [float(v) for v in sampling.guidance_interval],
      "self_condition": bool(sampling.self_condition),
      "infer_schedule": str(config.diffusion.infer_schedule),
      "input_scale": float(config.diffusion.input_scale)}
  if int(config.cascade.low_resolution) > 0:
    cascade = config.cascade
    settings.update(truncated=stage.truncated, upsample=str(cascade.upsample),
                    aug_schedule=str(cascade.aug_schedule),
                    aug_input_scale=float(cascade.aug_input_scale))
    if stage.truncated:  # The trajectory below passes through every level (module docstring).
      settings["levels"] = sorted(stage.levels, reverse=True)
  return settings


def stored_settings(stages: Sequence[Stage], k: int, run: dict[str, Any],
                    input_identity: dict[str, Any] | None = None) -> dict[str, Any]:
  """Everything that determines stage k's stored batches: the run's settings (seed, batch size,
  number of samples, classes), stage k's and every stage's below it (the first one's replaced by
  `input_identity` when its images are given), and the levels it stops at when the stage above
  is truncated."""
  above = stages[k + 1] if k + 1 < len(stages) else None
  below = [_stage_settings(stage) for stage in stages[:k + 1]]
  if input_identity is not None:
    below[0] = input_identity
  return {"run": run, "stages": below,
          "stops_at": (sorted(above.levels, reverse=True)
                       if above is not None and above.truncated else None)}


def settings_key(settings: dict[str, Any]) -> str:
  """A short hash of the settings: the name of the directory their batches are stored in."""
  text = json.dumps(settings, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:_KEY_CHARS]


def _check_pipeline_fields(pipeline: ml_collections.ConfigDict) -> None:
  for field in ("num_samples", "batch_size", "grid_samples"):
    value = pipeline.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise _bad(f"pipeline.{field}", f"{value!r}; allowed: a positive integer")
  if isinstance(pipeline.get("seed"), bool) or not isinstance(pipeline.get("seed"), int):
    raise _bad("pipeline.seed", f"{pipeline.get('seed')!r}; allowed: an integer")


def _branch_name(levels: tuple[float, ...]) -> str:
  return "-".join(f"s{level:g}" for level in levels) if levels else "all"


def _make_stage_sampler(stage: Stage) -> Callable[..., jax.Array]:
  """jitted (params, key_data, batch_index, labels, z_s, level) -> x0 in [-1, 1], run to t = 0."""
  conditioned = int(stage.config.cascade.low_resolution) > 0

  def run(params, key_data, batch_index, labels, z_s, level):
    key = jax.random.fold_in(jax.random.wrap_key_data(key_data), batch_index)
    extra = stage_lib.extra_inputs(z_s, level, stage.config) if conditioned else None
    return generate.sample_output(stage.model, stage.config, params, key, labels,
                                  sampler=stage.sampler, steps=stage.steps,
                                  guidance=stage.guidance, extra_cond=extra).x0

  return jax.jit(run, out_shardings=sharding.batch_sharding(stage.mesh))


def segment_steps(stage: Stage, stops: Sequence[float]) -> list[int]:
  """The steps of each segment [stops[0], 1], [stops[1], stops[0]], ... of one trajectory stopped
  at the decreasing `stops`: stage.steps in all, at least one each, shared out by the grid of a
  single run over [stops[-1], 1] (each stop taken to that grid's nearest point)."""
  if list(stops) != sorted(set(stops), reverse=True) or not 0 < len(stops) <= stage.steps:
    raise ValueError(f"stops={list(stops)}; allowed: distinct decreasing levels, at most "
                     f"steps={stage.steps} of them")
  config = stage.config
  t_now, _ = samplers.time_grid(
      stage.steps, t_end=float(stops[-1]),
      kind=config.sampling.get("time_grid", "") or samplers.DEFAULT_TIME_GRID[stage.sampler],
      gamma_fn=schedules.gamma_fn(config.diffusion.infer_schedule),
      input_scale=float(config.diffusion.input_scale))
  points = np.append(np.asarray(t_now, np.float64), float(stops[-1]))  # Grid point i at step i.
  ends, previous = [], 0
  for index, stop in enumerate(stops[:-1]):
    nearest = int(np.argmin(np.abs(points - float(stop))))
    later = len(stops) - 1 - index  # Segments still to come, one step each at least.
    previous = min(max(nearest, previous + 1), stage.steps - later)
    ends.append(previous)
  return [int(count) for count in np.diff([0, *ends, stage.steps])]


def _trajectory(stage: Stage, params: Any, key: jax.Array, labels: jax.Array,
                extra_cond: dict[str, jax.Array] | None, stops: Sequence[float],
                steps: Sequence[int]) -> list[samplers.SampleOutput]:
  """One run of the stage's sampler from t = 1, stopped at each of the decreasing `stops`: the
  output at every stop. The same start as generate.sample_output (generate.sampling_setup), whose
  runs start from zero self-conditioning latents; these carry them over each stop."""
  setup = generate.sampling_setup(stage.model, stage.config, params, key, labels,
                                  sampler=stage.sampler, guidance=stage.guidance,
                                  extra_cond=extra_cond)
  x_t, hidden = setup.noise, networks.zero_hidden(stage.config, labels.shape[0])
  outputs, t_start = [], 1.0
  for index, (t_end, count) in enumerate(zip(stops, steps)):
    # The first segment draws its step noise as a run to t = 0 does; the next ones fresh noise.
    segment_key = jax.random.fold_in(setup.sample_key, index) if index else setup.sample_key
    out = samplers.sample(
        setup.denoise_fn, x_t, segment_key, steps=int(count), cond=setup.cond,
        null_cond=setup.null_cond, hidden_init=hidden, t_end=float(t_end), t_start=t_start,
        **setup.sampler_kwargs)
    outputs.append(out)
    x_t, hidden, t_start = out.x_t, out.hidden, float(t_end)
  return outputs


def _make_chain_sampler(stage: Stage, levels: Sequence[float]) -> Callable[..., tuple]:
  """jitted (params, key_data, batch_index, labels, z_s, level) -> (x0s, states), one per level
  (in the order of `levels`): one trajectory of the stage stopped at every level."""
  conditioned = int(stage.config.cascade.low_resolution) > 0
  stops = sorted(levels, reverse=True)
  steps = segment_steps(stage, stops)

  def run(params, key_data, batch_index, labels, z_s, level):
    key = jax.random.fold_in(jax.random.wrap_key_data(key_data), batch_index)
    extra = stage_lib.extra_inputs(z_s, level, stage.config) if conditioned else None
    outputs = dict(zip(stops, _trajectory(stage, params, key, labels, extra, stops, steps)))
    return (tuple(outputs[v].x0 for v in levels), tuple(outputs[v].x_t for v in levels))

  return jax.jit(run, out_shardings=sharding.batch_sharding(stage.mesh))


def _to_device(array: np.ndarray, mesh) -> jax.Array:
  """A host array present on every process, sharded over the mesh's batch axes."""
  array = np.asarray(array)
  return jax.make_array_from_callback(array.shape, sharding.batch_sharding(mesh),
                                      lambda index: array[index])


def _to_host(array: jax.Array) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
  return np.asarray(jax.device_get(array))


def _to_uint8(x0: np.ndarray) -> np.ndarray:
  return generate.to_uint8(x0 * 0.5 + 0.5)  # [-1, 1] -> [0, 255], as stored images are.


def _from_uint8(images: np.ndarray) -> np.ndarray:
  return images.astype(np.float32) / 127.5 - 1.0


class _Store:
  """batch_<i>.npz files per (stage directory, branch); loads what exists instead of sampling it."""

  def __init__(self, root: epath.Path, write: bool):
    self.root = root
    self.write = write
    # What existed when the run started: every process then agrees on what to load and what to
    # sample (the chief writes as it goes).
    self.existing = ({str(path) for path in root.glob("*/*/*/batch_*.npz")} if root.exists()
                     else set())

  def path(self, directory: str, branch: str, batch_index: int) -> epath.Path:
    return self.root / directory / branch / f"batch_{batch_index:05d}.npz"

  def load(self, directory: str, branch: str, batch_index: int) -> dict[str, np.ndarray] | None:
    path = self.path(directory, branch, batch_index)
    if str(path) not in self.existing:
      return None
    with path.open("rb") as f:
      with np.load(f) as data:
        return {key: data[key] for key in data.files}

  def save(self, directory: str, branch: str, batch_index: int,
           arrays: dict[str, np.ndarray]) -> None:
    if not self.write:
      return
    path = self.path(directory, branch, batch_index)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    fileio.write_bytes_atomically(path, buffer.getvalue())  # A batch file is complete or absent.

  def claim(self, directory: str, settings: dict[str, Any]) -> None:
    """Writes settings.json beside a directory's batches; refuses a directory made by others."""
    path = self.root / directory / "settings.json"
    if path.exists():
      stored = json.loads(path.read_text())
      if stored != json.loads(json.dumps(settings)):
        raise ValueError(f"{path}: its batches were made with other settings under the same "
                         f"key ({stored} against {settings}); delete that directory")
    elif self.write:
      path.parent.mkdir(parents=True, exist_ok=True)
      fileio.write_bytes_atomically(path, json.dumps(settings, indent=1).encode())


def input_samples(source: str, base: ml_collections.ConfigDict, num_samples: int
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """(uint8 images, labels, identity) that stand in for the first stage's samples.

  source: 'real:SPLIT', real images of the first stage's data set preprocessed as in its training
  (sample j of class j mod num_classes, the first unused image of that class), the bound a
  super-resolution stage reaches on a perfect base (take 'real:train' when scoring CAS, which
  tests on the test split: 'real:test' would test the classifier on its own inputs); or a
  directory of sample shards (`main --mode=sample` writes them), its first num_samples images
  with their labels.
  """
  size, channels = int(base.model.image_size), int(base.model.channels)
  if source.startswith(REAL_PREFIX):
    # noqa: PLC0415 below -- the classifier module imports TFDS; only this input needs it.
    from rin_diffusion.evaluation import classifier  # noqa: PLC0415

    split = source[len(REAL_PREFIX):]
    images, labels = classifier.load_split(base.dataset, split)
    num_classes = int(base.model.num_classes)
    wanted = generate.cycled_labels(num_classes, num_samples)
    pool = labels if num_classes > 1 else np.zeros_like(labels)  # Unconditional: any image.
    by_class = {int(c): list(np.flatnonzero(pool == c)) for c in np.unique(wanted)}
    picked = []
    for label in wanted:
      if not by_class[int(label)]:
        raise ValueError(f"pipeline.input_samples={source!r}: the split has too few images of "
                         f"class {int(label)} for num_samples={num_samples}")
      picked.append(by_class[int(label)].pop(0))
    identity = {"input_samples": source, "dataset": str(base.dataset.name),
                "image_size": size, "pad_to": int(base.dataset.get("pad_to", 0))}
    return images[picked], np.asarray(wanted, np.int32), identity
  if not sample_shards.is_shard_dir(source):
    raise ValueError(f"pipeline.input_samples={source!r}: allowed: '' (sample the first stage), "
                     f"'{REAL_PREFIX}SPLIT' (real images) or a directory of sample shards (with "
                     f"{sample_shards.MANIFEST}, as `main --mode=sample` writes)")
  images, labels = sample_shards.load(source)
  if images.shape[1:] != (size, size, channels) or len(images) < num_samples:
    raise ValueError(f"pipeline.input_samples={source!r}: holds {len(images)} images of shape "
                     f"{tuple(images.shape[1:])}; the first stage makes {(size, size, channels)} "
                     f"and the run needs num_samples={num_samples}")
  identity = {"input_samples": str(epath.Path(source).resolve()),
              "manifest": sample_shards.manifest_of(source)}
  return images[:num_samples], labels[:num_samples].astype(np.int32), identity


def run(pipeline: ml_collections.ConfigDict, workdir: str, output: str = "") -> dict[str, Any]:
  """Samples the whole pipeline (and its sweep over levels); returns the summary it writes."""
  _check_pipeline_fields(pipeline)
  stages = load_stages(pipeline)
  source = str(pipeline.get("input_samples", "") or "")
  given = None
  if source:
    if len(stages) < 2 or stages[1].truncated:
      raise _bad("pipeline.input_samples", f"{source!r} needs a non-truncated stage above the "
                 "first (given images carry no state z_s to hand over)")
    given = input_samples(source, stages[0].config, int(pipeline.num_samples))
    stages[0].mesh = sharding.make_mesh(stages[0].config.mesh)
  restore_stages(stages[1:] if given else stages, workdir)  # Fails before anything is written.
  root = epath.Path(output or str(epath.Path(workdir) / "cascade_samples"))
  is_chief = jax.process_index() == 0
  store = _Store(root, write=is_chief)
  base = stages[0].config
  num_samples = int(pipeline.num_samples)
  classes = str(pipeline.get("classes", ""))
  # Sample j has class j mod num_classes (as in evaluation: every prefix balanced), or the ids given.
  labels = (generate.class_labels(base, num_samples, classes) if classes
            else generate.cycled_labels(int(base.model.num_classes), num_samples))
  if given is not None:
    labels = given[1]
  batch_size = generate.sampling_batch_size(int(pipeline.batch_size), num_samples, stages[0].mesh)
  num_batches = -(-num_samples // batch_size)
  run_settings = {"seed": int(pipeline.seed), "batch_size": batch_size,
                  "num_samples": num_samples, "classes": classes}
  settings = [stored_settings(stages, k, run_settings, given[2] if given else None)
              for k in range(len(stages))]
  directories = [f"{stage.name}/{settings_key(settings[k])}" for k, stage in enumerate(stages)]
  for directory, stage_settings in zip(directories, settings):
    store.claim(directory, stage_settings)
  samplers_ = [None if k == 0 and given else _make_stage_sampler(stage)
               for k, stage in enumerate(stages)]
  # The stages below a truncated one: one trajectory per batch and branch, stopped at every level.
  chains = [_make_chain_sampler(stage, stages[k + 1].levels)
            if k + 1 < len(stages) and stages[k + 1].truncated else None
            for k, stage in enumerate(stages)]
  root_key = jax.random.key(int(pipeline.seed))
  stage_keys = [np.asarray(jax.random.key_data(jax.random.fold_in(root_key, k)))
                for k in range(len(stages))]
  seconds = [0.0] * len(stages)
  branches: dict[str, list[str]] = {stage.name: [] for stage in stages}

  def sample(k: int, fn: Callable[..., Any], batch_index: int, batch_labels: np.ndarray, z_s,
             level: float) -> Any:
    """fn's outputs for stage k's batch on (z_s, level), on the host."""
    stage = stages[k]
    start = time.perf_counter()
    mesh = stage.mesh
    outputs = fn(stage.params, stage_keys[k], np.int32(batch_index),
                 _to_device(batch_labels, mesh), None if z_s is None else _to_device(z_s, mesh),
                 _to_device(np.full((len(batch_labels),), level, np.float32), mesh))
    result = jax.tree.map(_to_host, outputs)
    seconds[k] += time.perf_counter() - start
    return result

  def descend(k: int, batch_index: int, batch_labels: np.ndarray, path: tuple[float, ...],
              z_s, level: float) -> None:
    """Samples stage k on (z_s, level) and everything above it, for every level above."""
    stage, directory = stages[k], directories[k]
    above = stages[k + 1] if k + 1 < len(stages) else None
    if above is not None and above.truncated:
      names = [_branch_name(path + (next_level,)) for next_level in above.levels]
      stored = [store.load(directory, name, batch_index) for name in names]
      if any(batch is None for batch in stored):  # One trajectory gives every level's batch.
        x0s, states = sample(k, chains[k], batch_index, batch_labels, z_s, level)
        for index, name in enumerate(names):
          if stored[index] is None:
            stored[index] = {"images": _to_uint8(x0s[index]), "labels": batch_labels,
                             "state": states[index]}
            store.save(directory, name, batch_index, stored[index])
      for name in names:
        _record(stage.name, name)
      handovers = [(next_level, batch["state"].astype(np.float32))
                   for next_level, batch in zip(above.levels, stored)]
    else:
      branch = _branch_name(path)
      stored = store.load(directory, branch, batch_index)
      if stored is None and k == 0 and given is not None:
        images = np.zeros((len(batch_labels), *given[0].shape[1:]), np.uint8)
        chunk = given[0][batch_index * batch_size:(batch_index + 1) * batch_size]
        images[:len(chunk)] = chunk
        stored = {"images": images, "labels": batch_labels}
        store.save(directory, branch, batch_index, stored)
      elif stored is None:
        x0 = sample(k, samplers_[k], batch_index, batch_labels, z_s, level)
        stored = {"images": _to_uint8(x0), "labels": batch_labels}
        store.save(directory, branch, batch_index, stored)
      _record(stage.name, branch)
      if above is None:
        return
      handovers = [(next_level, _renoise(k + 1, batch_index, stored["images"], next_level))
                   for next_level in above.levels]
    for next_level, next_z in handovers:
      descend(k + 1, batch_index, batch_labels, path + (next_level,), next_z, next_level)

  def _renoise(k: int, batch_index: int, images: np.ndarray, level: float) -> np.ndarray:
    """Non-truncated handover: the stored image re-noised at `level` (same noise for every level)."""
    cascade = stages[k].config.cascade
    key = jax.random.fold_in(jax.random.fold_in(root_key, _AUG_KEY_OFFSET + k), batch_index)
    z = jnp.asarray(_from_uint8(images))
    noise = jax.random.normal(key, z.shape, jnp.float32)
    levels = jnp.full((z.shape[0],), level, jnp.float32)
    return np.asarray(augment.gaussian_augment(
        z, levels, noise, gamma_fn=schedules.gamma_fn(cascade.aug_schedule),
        input_scale=float(cascade.aug_input_scale)))

  def _record(stage_name: str, branch: str) -> None:
    if branch not in branches[stage_name]:
      branches[stage_name].append(branch)

  for batch_index in range(num_batches):
    chunk = labels[batch_index * batch_size:(batch_index + 1) * batch_size]
    batch_labels = np.zeros((batch_size,), np.int32)
    batch_labels[:len(chunk)] = chunk  # The last batch is padded; files keep the padding rows.
    descend(0, batch_index, batch_labels, (), None, 0.0)
    logging.info("cascade: batch %d/%d done", batch_index + 1, num_batches)

  summary = {"num_samples": num_samples, "batch_size": batch_size, "num_batches": num_batches,
             "stages": [{"name": stage.name, "image_size": int(stage.config.model.image_size),
                         "levels": list(stage.levels), "truncated": stage.truncated,
                         "checkpoint_step": stage.step,
                         "input_samples": source if k == 0 and given else None,
                         "sampler": stage.sampler, "steps": stage.steps,
                         "guidance": stage.guidance, "seconds": round(seconds[k], 2),
                         "directory": directories[k], "branches": branches[stage.name]}
                        for k, stage in enumerate(stages)],
             "output": str(root)}
  if is_chief:
    grid_samples = min(int(pipeline.grid_samples), num_samples)
    for k, stage in enumerate(stages):
      for branch in branches[stage.name]:
        order = np.argsort(labels[:grid_samples], kind="stable")  # One row per class.
        images = load_images(root, directories[k], branch, num_samples)[:grid_samples][order]
        shown = labels[:grid_samples][order]
        columns = int(np.sum(shown == shown[0]))
        generate.save_grid(images, str(root / directories[k] / branch / "grid.png"),
                           columns=columns if 1 < columns < len(shown) else None)
        if k == 0 and len(stages) > 1:  # What the cascade adds: the base upsampled to the end.
          generate.save_grid(upsample_to_last(stages, images),
                             str(root / directories[k] / branch / "grid_upsampled.png"),
                             columns=columns if 1 < columns < len(shown) else None)
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
  return summary


def upsample_to_last(stages: Sequence[Stage], images: np.ndarray) -> np.ndarray:
  """uint8 images of the first stage upsampled to the last stage's resolution, with the last
  stage's upsampling method: the cascade's output without its super-resolution stages."""
  last = stages[-1].config
  size = int(last.model.image_size)
  z = jnp.asarray(_from_uint8(images))
  return _to_uint8(np.asarray(augment.upsample(z, size, str(last.cascade.upsample))))


def load_images(root: epath.Path | str, stage_directory: str, branch: str, num_samples: int,
                with_labels: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """The first num_samples uint8 images (and labels) of one branch, in batch order.

  stage_directory: `<stage>/<key>`, as a summary's stages list it ("directory").
  """
  directory = epath.Path(root) / stage_directory / branch
  images, labels = [], []
  for path in sorted(directory.glob("batch_*.npz")):
    with path.open("rb") as f, np.load(f) as data:
      images.append(data["images"])
      labels.append(data["labels"])
  if not images:
    raise ValueError(f"{directory}: no batch_*.npz files")
  images = np.concatenate(images)[:num_samples]
  return (images, np.concatenate(labels)[:num_samples]) if with_labels else images


def upsampled_name(base_name: str) -> str:
  """evaluate_branches' key for the first stage's images upsampled to the last stage's size."""
  return f"{base_name} upsampled"


def evaluate_branches(pipeline: ml_collections.ConfigDict, summary: dict[str, Any], *,
                      upsampled_base: bool = True) -> dict[str, dict[str, Any]]:
  """FID, precision/recall and CAS of every branch of the last stage; writes eval.json.

  Scored with the last stage's config.eval (reference images, Inception, CAS classifier), so the
  sweep over s* can be read off as one number per level. With upsampled_base, also the first
  stage's images upsampled to the last stage's size (upsample_to_last), under
  upsampled_name(first stage): what the super-resolution stages add is the difference.
  """
  # noqa: PLC0415 below -- evaluation modules load Inception and TFDS; only sampling needs none.
  from rin_diffusion.evaluation import evaluate  # noqa: PLC0415
  from rin_diffusion.evaluation import inception as inception_lib  # noqa: PLC0415

  last = summary["stages"][-1]
  stages = load_stages(pipeline)
  config = stages[-1].config
  inception = inception_lib.load_inception(
      config.eval.inception_weights or None, cache_dir=config.eval.cache_dir or None)
  reference_stats = evaluate.load_reference(config, inception)
  classifier = evaluate.load_classifier(config) if config.eval.cas else None
  results = {}

  def score(name: str, images: np.ndarray, labels: np.ndarray) -> None:
    scores = evaluate.score_images(config, images, labels, inception=inception,
                                   reference_stats=reference_stats, classifier=classifier)
    results[name] = {k: scores.get(k) for k in (
        "fid", "fid_protocol", "precision", "recall", "cas", "cas_real_ceiling",
        "accuracy_on_samples", "num_samples", "num_reference", "reference")}
    logging.info("cascade eval %s: %s", name, results[name])

  for branch in last["branches"]:
    images, labels = load_images(summary["output"], last["directory"], branch,
                                 summary["num_samples"], with_labels=True)
    score(branch, images, labels)
  first = summary["stages"][0]
  if upsampled_base and len(summary["stages"]) > 1:
    images, labels = load_images(summary["output"], first["directory"], first["branches"][0],
                                 summary["num_samples"], with_labels=True)
    score(upsampled_name(first["name"]), upsample_to_last(stages, images), labels)
  if jax.process_index() == 0:
    text = json.dumps(results, indent=1)
    output = epath.Path(summary["output"])
    (output / "eval.json").write_text(text)  # The latest run's, and kept beside its batches:
    (output / last["directory"] / "eval.json").write_text(text)
  return results
