"""Sampling a cascade: a base stage, then super-resolution stages, with a sweep over the levels s*.

A pipeline config (configs/cdm/pipeline_*.py) lists the stages in order; each stage is a trainer
workdir `<workdir>/<name>` and a run config. Every stage after the first has `levels`, the
augmentation levels s* it is conditioned at, and `truncated`:

* non-truncated (CDM 3.3): the stage below runs to t = 0; its images (uint8, as they would be
  stored) are re-noised at each s* with the augmentation process and handed up. The stage below is
  sampled once whatever the number of levels.
* truncated: the stage below stops its sampler at t = s* and hands up its state z_{s*} unchanged
  (one run of the stage below per s*, since each stops elsewhere). Its augmentation process must
  then be the stage below's inference process (config.cascade.aug_schedule / aug_input_scale).

Every combination of levels is a branch, named by its levels ('s0.2' below the second stage,
's0.2-s0' below the third). Samples go in global batches of `batch_size` over the stage's mesh.
Outputs under `<output>/<stage>/<branch>/`: `batch_<i>.npz` per batch (uint8 `images` in [0, 255],
`labels`; a truncated handover also keeps `state`, float32 z_{s*}), and `grid.png` of the first
`grid_samples`. A stored batch is loaded, never sampled again: a rerun resumes, and a sweep
extended by new levels samples only what is new. `summary.json` has the branches, seconds and
checkpoint step per stage; a rerun refuses an output made from other checkpoints.

Keys: the stage at index k draws batch i from fold_in(fold_in(key(seed), k), i) whatever the
branch, so branches differ only by their conditioning (common random numbers across s*), and the
truncated handover at s* is exactly the stage's own sampler run with t_end = s* and that key.
"""

from __future__ import annotations

import dataclasses
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
  paper_configs,
  samplers,
  schedules,
  sharding,
  train,
)
from rin_diffusion.cascade import augment
from rin_diffusion.cascade import stage as stage_lib

STAGE_FIELDS = ("name", "config", "overrides", "sampler", "steps", "guidance", "levels",
                "truncated")
_AUG_KEY_OFFSET = 1_000_003  # Keys of the non-truncated re-noising, apart from the samplers'.


@dataclasses.dataclass
class Stage:
  name: str
  config: ml_collections.ConfigDict
  sampler: str
  steps: int
  guidance: float
  levels: tuple[float, ...]  # Levels s* this stage is conditioned at ((0.0,) for the base).
  truncated: bool
  model: Any = None
  params: Any = None
  mesh: Any = None
  step: int | None = None  # The restored checkpoint's step.


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
    stages.append(Stage(name=name, config=config, sampler=sampler, steps=steps,
                        guidance=guidance, levels=tuple(float(v) for v in levels),
                        truncated=truncated))
  return stages


def train_stages(pipeline: ml_collections.ConfigDict, workdir: str) -> None:
  """Trains every stage in order, each an ordinary resumable run in <workdir>/<stage name>
  (`python -m rin_diffusion.cascade --mode=train`). Every stage is checked before the first trains."""
  stages = load_stages(pipeline)
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
    stage.params = checkpointing.restore_params_from(
        stage_dir, "ema", abstract_state["params"], stage.config,
        source=f"stage {stage.name!r} workdir")
    with checkpointing.open_reader(stage_dir) as reader:
      stage.step = reader.latest_step()


def _check_stored(root: epath.Path, stages: Sequence[Stage]) -> None:
  """Stored samples are reused only if every stage is still at the step that made them."""
  path = root / "summary.json"
  if not path.exists():
    return
  stored = {entry["name"]: entry.get("checkpoint_step")
            for entry in json.loads(path.read_text())["stages"]}
  for stage in stages:
    if stage.name in stored and stored[stage.name] != stage.step:
      raise ValueError(
          f"--output={root}: its samples were made with stage {stage.name!r} at checkpoint step "
          f"{stored[stage.name]}, which is now at step {stage.step}; pass another --output or "
          "delete that directory (stored batches are reused, never resampled).")


def _check_pipeline_fields(pipeline: ml_collections.ConfigDict) -> None:
  for field in ("num_samples", "batch_size", "grid_samples"):
    value = pipeline.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise _bad(f"pipeline.{field}", f"{value!r}; allowed: a positive integer")
  if isinstance(pipeline.get("seed"), bool) or not isinstance(pipeline.get("seed"), int):
    raise _bad("pipeline.seed", f"{pipeline.get('seed')!r}; allowed: an integer")


def _branch_name(levels: tuple[float, ...]) -> str:
  return "-".join(f"s{level:g}" for level in levels) if levels else "all"


def _make_stage_sampler(stage: Stage) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """jitted (params, key_data, batch_index, labels, z_s, level, t_end) -> (x0 in [-1, 1], x_t)."""
  batch_sharding = sharding.batch_sharding(stage.mesh)
  conditioned = int(stage.config.cascade.low_resolution) > 0

  def run(params, key_data, batch_index, labels, z_s, level, t_end):
    key = jax.random.fold_in(jax.random.wrap_key_data(key_data), batch_index)
    extra = stage_lib.extra_inputs(z_s, level, stage.config) if conditioned else None
    out = generate.sample_output(stage.model, stage.config, params, key, labels,
                                 sampler=stage.sampler, steps=stage.steps,
                                 guidance=stage.guidance, t_end=t_end, extra_cond=extra)
    return out.x0, out.x_t

  return jax.jit(run, static_argnames=("t_end",),
                 out_shardings=(batch_sharding, batch_sharding))


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
  """batch_<i>.npz files per (stage, branch); loads what exists instead of sampling it again."""

  def __init__(self, root: epath.Path, write: bool):
    self.root = root
    self.write = write
    # What existed when the run started: every process then agrees on what to load and what to
    # sample (the chief writes as it goes).
    self.existing = {str(path) for path in root.glob("*/*/batch_*.npz")} if root.exists() else set()

  def path(self, stage: str, branch: str, batch_index: int) -> epath.Path:
    return self.root / stage / branch / f"batch_{batch_index:05d}.npz"

  def load(self, stage: str, branch: str, batch_index: int) -> dict[str, np.ndarray] | None:
    path = self.path(stage, branch, batch_index)
    if str(path) not in self.existing:
      return None
    with path.open("rb") as f:
      with np.load(f) as data:
        return {key: data[key] for key in data.files}

  def save(self, stage: str, branch: str, batch_index: int, arrays: dict[str, np.ndarray]) -> None:
    if not self.write:
      return
    path = self.path(stage, branch, batch_index)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    fileio.write_bytes_atomically(path, buffer.getvalue())  # A batch file is complete or absent.


def run(pipeline: ml_collections.ConfigDict, workdir: str, output: str = "") -> dict[str, Any]:
  """Samples the whole pipeline (and its sweep over levels); returns the summary it writes."""
  _check_pipeline_fields(pipeline)
  stages = load_stages(pipeline)
  restore_stages(stages, workdir)  # Fails clearly, before anything is written.
  root = epath.Path(output or str(epath.Path(workdir) / "cascade_samples"))
  _check_stored(root, stages)
  is_chief = jax.process_index() == 0
  store = _Store(root, write=is_chief)
  samplers_ = [_make_stage_sampler(stage) for stage in stages]
  base = stages[0].config
  num_samples = int(pipeline.num_samples)
  classes = str(pipeline.get("classes", ""))
  # Sample j has class j mod num_classes (as in evaluation: every prefix balanced), or the ids given.
  labels = (generate.class_labels(base, num_samples, classes) if classes
            else generate.cycled_labels(int(base.model.num_classes), num_samples))
  batch_size = generate.sampling_batch_size(int(pipeline.batch_size), num_samples, stages[0].mesh)
  num_batches = -(-num_samples // batch_size)
  root_key = jax.random.key(int(pipeline.seed))
  stage_keys = [np.asarray(jax.random.key_data(jax.random.fold_in(root_key, k)))
                for k in range(len(stages))]
  seconds = [0.0] * len(stages)
  branches: dict[str, list[str]] = {stage.name: [] for stage in stages}

  def sample(k: int, batch_index: int, batch_labels: np.ndarray, z_s, level: float,
             t_end: float) -> tuple[np.ndarray, np.ndarray]:
    stage = stages[k]
    start = time.perf_counter()
    mesh = stage.mesh
    x0, x_t = samplers_[k](stage.params, stage_keys[k], np.int32(batch_index),
                           _to_device(batch_labels, mesh),
                           None if z_s is None else _to_device(z_s, mesh),
                           _to_device(np.full((len(batch_labels),), level, np.float32), mesh),
                           t_end=float(t_end))
    result = _to_host(x0), _to_host(x_t)
    seconds[k] += time.perf_counter() - start
    return result

  def descend(k: int, batch_index: int, batch_labels: np.ndarray, path: tuple[float, ...],
              z_s, level: float) -> None:
    """Samples stage k on (z_s, level) and everything above it, for every level above."""
    stage = stages[k]
    above = stages[k + 1] if k + 1 < len(stages) else None
    if above is not None and above.truncated:
      handovers = []
      for next_level in above.levels:
        branch = _branch_name(path + (next_level,))  # Stopped at t = next_level.
        stored = store.load(stage.name, branch, batch_index)
        if stored is None:
          x0, state = sample(k, batch_index, batch_labels, z_s, level, t_end=next_level)
          stored = {"images": _to_uint8(x0), "labels": batch_labels, "state": state}
          store.save(stage.name, branch, batch_index, stored)
        _record(stage.name, branch)
        handovers.append((next_level, stored["state"].astype(np.float32)))
    else:
      branch = _branch_name(path)
      stored = store.load(stage.name, branch, batch_index)
      if stored is None:
        x0, _ = sample(k, batch_index, batch_labels, z_s, level, t_end=0.0)
        stored = {"images": _to_uint8(x0), "labels": batch_labels}
        store.save(stage.name, branch, batch_index, stored)
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
                         "sampler": stage.sampler, "steps": stage.steps,
                         "guidance": stage.guidance, "seconds": round(seconds[k], 2),
                         "branches": branches[stage.name]}
                        for k, stage in enumerate(stages)],
             "output": str(root)}
  if is_chief:
    grid_samples = min(int(pipeline.grid_samples), num_samples)
    for stage in stages:
      for branch in branches[stage.name]:
        order = np.argsort(labels[:grid_samples], kind="stable")  # One row per class.
        images = load_images(root, stage.name, branch, num_samples)[:grid_samples][order]
        shown = labels[:grid_samples][order]
        columns = int(np.sum(shown == shown[0]))
        generate.save_grid(images, str(root / stage.name / branch / "grid.png"),
                           columns=columns if 1 < columns < len(shown) else None)
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
  return summary


def load_images(root: epath.Path | str, stage: str, branch: str, num_samples: int,
                with_labels: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """The first num_samples uint8 images (and labels) of one (stage, branch), in batch order."""
  directory = epath.Path(root) / stage / branch
  images, labels = [], []
  for path in sorted(directory.glob("batch_*.npz")):
    with path.open("rb") as f, np.load(f) as data:
      images.append(data["images"])
      labels.append(data["labels"])
  if not images:
    raise ValueError(f"{directory}: no batch_*.npz files")
  images = np.concatenate(images)[:num_samples]
  return (images, np.concatenate(labels)[:num_samples]) if with_labels else images


def evaluate_branches(pipeline: ml_collections.ConfigDict, summary: dict[str, Any]
                      ) -> dict[str, dict[str, Any]]:
  """FID, precision/recall (and CAS) of every branch of the last stage; writes eval.json.

  Scored with the last stage's config.eval (reference images, Inception, CAS classifier), so the
  sweep over s* can be read off as one number per level.
  """
  # noqa: PLC0415 below -- evaluation modules load Inception and TFDS; only sampling needs none.
  from rin_diffusion.evaluation import evaluate  # noqa: PLC0415
  from rin_diffusion.evaluation import inception as inception_lib  # noqa: PLC0415

  last = summary["stages"][-1]
  config = load_stages(pipeline)[-1].config
  inception = inception_lib.load_inception(
      config.eval.inception_weights or None, cache_dir=config.eval.cache_dir or None)
  reference_stats = evaluate.load_reference(config, inception)
  classifier = evaluate.load_classifier(config) if config.eval.cas else None
  results = {}
  for branch in last["branches"]:
    images, labels = load_images(summary["output"], last["name"], branch,
                                 summary["num_samples"], with_labels=True)
    scores = evaluate.score_images(config, images, labels, inception=inception,
                                   reference_stats=reference_stats, classifier=classifier)
    results[branch] = {k: scores[k] for k in ("fid", "precision", "recall", "cas",
                                              "num_samples", "num_reference", "reference")}
    logging.info("cascade eval %s/%s: %s", last["name"], branch, results[branch])
  if jax.process_index() == 0:
    (epath.Path(summary["output"]) / "eval.json").write_text(json.dumps(results, indent=1))
  return results
