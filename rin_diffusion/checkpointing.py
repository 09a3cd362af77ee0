"""Orbax checkpoints: async saves, retention, fallback past unreadable checkpoints, init_from.

A checkpoint holds three items: `state` (step, params, opt_state, ema_params, rng, counters), `data`
(the input pipeline's position, so a resumed run sees exactly the batches an uninterrupted one
would) and `config` (for humans and for `--mode=sample`). Restores always go through an abstract
target built for the *current* mesh, so a checkpoint restores onto any device count or mesh.

Before any restore, the checkpoint's array metadata (paths, shapes, dtypes) is compared with the
state this config builds. A mismatch is bad input, not damage: it raises IncompatibleCheckpointError
(naming the config fields that differ from the checkpoint's saved config) and touches nothing. Only
a checkpoint that cannot be read is moved aside to `checkpoints_unreadable/`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from rin_diffusion import config_fields

# config.init_from.params -> the state entry it names (config_lib takes the allowed values here).
INIT_FROM_PARAMS = {"ema": "ema_params", "params": "params"}
# How many differing config fields and arrays an IncompatibleCheckpointError lists.
_MAX_LISTED = 8
# Config fields that can change the state's arrays (parameters, optimizer state).
_STATE_FIELDS = ("model.", "unet.", "optimizer.")


class IncompatibleCheckpointError(ValueError):
  """A readable checkpoint whose arrays do not fit this config's state: bad input, not damage."""


def checkpoint_dir(workdir: str) -> epath.Path:
  """Where a run's checkpoints live; works for local paths and gs:// buckets alike."""
  return epath.Path(workdir).absolute() / "checkpoints" if "://" not in str(workdir) else (
      epath.Path(workdir) / "checkpoints")


def make_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  keep_every = int(config.get("keep_every_steps", 0) or 0)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=int(config.keep_checkpoints),
      keep_period=keep_every if keep_every > 0 else None,
      enable_async_checkpointing=True,
      # Incomplete saves (a kill mid-write) are left in tmp dirs; clear them on start.
      cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_handlers=_item_handlers())


def best_checkpoint_dir(workdir: str) -> epath.Path:
  """Where the in-loop evaluation keeps the checkpoint with the lowest FID (evaluate.py)."""
  return checkpoint_dir(workdir).parent / "checkpoints_best"


def open_reader(workdir: str, directory: epath.Path | None = None) -> ocp.CheckpointManager | None:
  """A read-only manager of `workdir`'s checkpoints (or of `directory`), or None when there are
  none yet.

  It creates, cleans and writes nothing (unlike make_manager's, which clears half-written saves on
  start), so the checks of restore_latest happen before the workdir changes at all.
  """
  directory = checkpoint_dir(workdir) if directory is None else epath.Path(directory)
  if not directory.is_dir():
    return None
  # checkpoints_best/ holds one more item, the evaluation record.
  handlers = {**_item_handlers(), "eval": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False, read_only=True),
      item_handlers=handlers)


def close(manager: ocp.CheckpointManager) -> None:
  """Closes `manager` once its start-up clean-up of half-written saves is done too.

  Orbax's close() does not wait for that background thread, which then fails noisily at
  interpreter exit when a run ends right after it started (a finished run restarted, say).
  """
  await_cleanup = getattr(manager, "_maybe_await_cleanup_tmp_directory", None)
  if await_cleanup is not None:
    await_cleanup()
  manager.close()


def _item_handlers() -> dict[str, ocp.CheckpointHandler]:
  # Explicit handlers (not just item names) make `item_metadata` return the state's array metadata.
  return {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
          "config": ocp.JsonCheckpointHandler()}


def save(manager: ocp.CheckpointManager, state: dict[str, Any], data_position: int,
         config: ml_collections.ConfigDict) -> None:
  """Starts an async save of `state` at its step (returns before the write is durable)."""
  step = int(jax.device_get(state["step"]))
  manager.save(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave({"position": int(data_position), "step": step}),
          config=ocp.args.JsonSave(config.to_dict()),
      ),
      force=True,
  )


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _move_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Renames an unreadable checkpoint out of the manager's way; nothing is deleted."""
  source = epath.Path(manager.directory) / str(step)
  target_dir = epath.Path(manager.directory).parent / "checkpoints_unreadable"
  target = target_dir / f"{step}.{int(time.time())}"
  if jax.process_index() == 0 and source.exists():
    target_dir.mkdir(parents=True, exist_ok=True)
    source.rename(target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415

    multihost_utils.sync_global_devices(f"rin_diffusion_move_aside_{step}")
  manager.reload()
  return target


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   config: ml_collections.ConfigDict | None = None,
                   ) -> tuple[dict[str, Any], int] | None:
  """Restores the newest readable checkpoint onto `abstract_state`'s shardings.

  The newest checkpoint's metadata is read first: arrays that do not match `abstract_state` (tree,
  shapes, dtypes) raise IncompatibleCheckpointError, naming the fields of `config` that differ from
  the checkpoint's saved config, before anything is moved or written. An unreadable checkpoint
  (truncated, corrupted, half-written) is moved to `checkpoints_unreadable/` with a warning naming
  it, and the previous one is tried. Returns (state, data_position), or None when there is no
  readable checkpoint.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      saved = _state_metadata(manager, step)
    except Exception as error:  # noqa: BLE001 -- unreadable metadata: a damaged checkpoint.
      _quarantine(manager, step, error)
      continue
    problems = array_mismatches(saved, abstract_state)
    if problems:
      raise _incompatible(manager, step, problems, config,
                          params_match=not any(p.startswith("params.") for p in problems))
    try:
      restored = manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              data=ocp.args.JsonRestore(),
          ))
    except Exception as error:  # noqa: BLE001 -- any failure to read means "skip this one" ...
      if "tree structures do not match" in str(error):  # ... unless Orbax says it is a mismatch.
        raise _incompatible(manager, step, [str(error).splitlines()[0]], config,
                            params_match=False) from None
      _quarantine(manager, step, error)
      continue
    differences = config_differences(_saved_config(manager, step), config)
    if differences:
      # Legitimate (a longer run, another learning rate), but a user who reruns an old workdir
      # after the defaults changed would otherwise not know that the run mixes two configs.
      logging.warning("Resuming step %d of %s under a config that differs from the one it was "
                      "saved with: %s.", step, manager.directory,
                      _listed(_changes(differences)))
    position = int(restored["data"]["position"])
    return restored["state"], position
  return None


def _quarantine(manager: ocp.CheckpointManager, step: int, error: Exception) -> None:
  path = epath.Path(manager.directory) / str(step)
  moved_to = _move_aside(manager, step)
  logging.warning(
      "Checkpoint %s is unreadable (%s: %s); moved it to %s and trying the previous one.",
      path, type(error).__name__, (str(error).splitlines() or [""])[0][:300], moved_to)


def _state_metadata(manager: ocp.CheckpointManager, step: int) -> Any:
  """The tree of array metadata (shape, dtype) of checkpoint `step`'s state; reads no arrays."""
  metadata = manager.item_metadata(step)["state"]
  if metadata is None:
    raise ValueError(f"checkpoint {step} has no state metadata")
  return metadata


def _saved_config(manager: ocp.CheckpointManager, step: int) -> dict[str, Any] | None:
  try:
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  except Exception:  # noqa: BLE001 -- the config only explains a mismatch; it is optional.
    return None


def _path_name(path: tuple[Any, ...]) -> str:
  """'params.stem_conv.kernel' for dict keys, namedtuple fields and sequence indices alike."""
  names = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
    else:
      names.append(str(key))
  return ".".join(names)


def _is_empty(node: Any) -> bool:
  return node is None or (isinstance(node, (tuple, list, dict)) and not node)


def _array_specs(tree: Any) -> dict[str, str]:
  """path -> '(shape) dtype', and 'empty' for empty nodes: optax's EmptyState() in a state, None
  in checkpoint metadata. They hold no arrays but are part of the tree structure a restore needs."""
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_empty)[0]
  return {_path_name(path): "empty" if _is_empty(leaf) else
          f"{tuple(leaf.shape)} {np.dtype(leaf.dtype).name}" for path, leaf in leaves}


def array_mismatches(saved: Any, expected: Any) -> list[str]:
  """'path: checkpoint (shape) dtype, this run (shape) dtype' for each array that differs.

  `saved` is a checkpoint's metadata tree, `expected` the abstract tree this run restores onto;
  dicts, namedtuples and lists compare by their key paths. Parameters are listed first.
  """
  saved_specs, expected_specs = _array_specs(saved), _array_specs(expected)
  problems = []
  for path in sorted(set(saved_specs) | set(expected_specs),
                     key=lambda p: (not p.startswith("params."), p)):
    have = saved_specs.get(path, "absent")
    want = expected_specs.get(path, "absent")
    if have != want:
      problems.append(f"{path}: checkpoint {have}, this run {want}")
  return problems


def config_differences(saved: Mapping[str, Any] | None,
                       config: ml_collections.ConfigDict | None) -> dict[str, tuple[str, str]]:
  """field -> (value in the checkpoint's saved config, value in `config`), for fields that differ.

  Values are reprs; a field missing on one side reads 'absent'.
  """
  if saved is None or config is None:
    return {}
  have = config_fields.flatten(saved)
  want = config_fields.flatten(json.loads(json.dumps(config.to_dict())))  # Tuples become lists, as saved.
  show = lambda side, k: repr(side[k]) if k in side else "absent"  # noqa: E731
  return {k: (show(have, k), show(want, k)) for k in sorted(set(have) | set(want))
          if show(have, k) != show(want, k)}


def _listed(items: list[str], separator: str = "; ") -> str:
  more = f"{separator}and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
  return separator.join(items[:_MAX_LISTED]) + more


def _changes(differences: dict[str, tuple[str, str]],
             fields: list[str] | None = None) -> list[str]:
  """'field: checkpoint A, this run B' for each of `fields` (default: every differing field)."""
  return [f"{k}: checkpoint {differences[k][0]}, this run {differences[k][1]}"
          for k in (differences if fields is None else fields)]


def _explain(differences: dict[str, tuple[str, str]]) -> str:
  """The config differences, those that can change the state's arrays first and with values."""
  shaping = _changes(differences, [k for k in differences if k.startswith(_STATE_FIELDS)])
  others = [k for k in differences if not k.startswith(_STATE_FIELDS)]
  text = ""
  if shaping:
    text += f"Model/optimizer config fields that differ from the checkpoint's: {_listed(shaping)}. "
  if others:
    text += f"Other config fields that differ: {_listed(others, ', ')}. "
  return text


def _incompatible(manager: ocp.CheckpointManager, step: int, problems: list[str],
                  config: ml_collections.ConfigDict | None, *,
                  params_match: bool) -> IncompatibleCheckpointError:
  directory = epath.Path(manager.directory)
  workdir = directory.parent
  differences = config_differences(_saved_config(manager, step), config)
  remedy = "To train this config from scratch, use another --workdir"
  if params_match:
    remedy += (f"; to start a new run from its parameters, use another --workdir with "
               f"--config.init_from.workdir={workdir}")
  if differences:
    remedy += "; to resume it, rerun with the checkpoint's values"
  return IncompatibleCheckpointError(
      f"the checkpoint {directory / str(step)} does not fit this config, so nothing was restored "
      f"or changed. {_explain(differences)}State entries that differ ({len(problems)}): "
      f"{_listed(problems[:3])}. {remedy}.")


# --checkpoint of --mode=sample/eval -> the directory of the run it reads.
CHECKPOINT_CHOICES = {"latest": checkpoint_dir, "best": best_checkpoint_dir}


def restore_params_from(workdir: str, which: str, abstract_params: Any,
                        config: ml_collections.ConfigDict | None = None,
                        source: str = "config.init_from.workdir") -> Any:
  """Parameters ('ema' or 'params') of `workdir`'s latest checkpoint, on abstract_params' shardings.

  For config.init_from and for sampling (`source` names the flag in errors). Checks the checkpoint's
  metadata against `abstract_params` first; reads, never writes or moves anything.
  """
  return restore_chosen_params(workdir, which, abstract_params, config, source)[0]


def restore_chosen_params(workdir: str, which: str, abstract_params: Any,
                          config: ml_collections.ConfigDict | None = None,
                          source: str = "--workdir", *, checkpoint: str = "latest",
                          step: int | None = None) -> tuple[Any, int]:
  """(parameters, the step they were saved at) of a chosen checkpoint of `workdir`.

  checkpoint: 'latest' reads checkpoints/, 'best' checkpoints_best/ (the lowest FID of the in-loop
  evaluation); step: that step of the directory (default its newest). A missing step raises
  ValueError naming the steps that exist. Reads, never writes or moves anything.
  """
  if which not in INIT_FROM_PARAMS:
    raise ValueError(f"config.init_from.params={which!r}; allowed: "
                     f"{', '.join(map(repr, INIT_FROM_PARAMS))}.")
  if checkpoint not in CHECKPOINT_CHOICES:
    raise ValueError(f"--checkpoint={checkpoint}: allowed: {', '.join(CHECKPOINT_CHOICES)}.")
  directory = CHECKPOINT_CHOICES[checkpoint](workdir)
  advice = ("the in-loop evaluation (config.eval_every_steps) keeps it; use --checkpoint=latest"
            if checkpoint == "best" else "point it at a run that has saved a checkpoint")
  what = "no best checkpoint" if checkpoint == "best" else "no checkpoint"
  reader = open_reader(workdir, directory)
  if reader is None:
    raise ValueError(f"{source}={workdir}: holds {what} ({directory} does not exist); {advice}.")
  with reader as manager:
    steps = sorted(manager.all_steps())
    if not steps:
      raise ValueError(f"{source}={workdir}: holds {what} ({directory} is empty); {advice}.")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise ValueError(f"--checkpoint_step={step}: {directory} has no such checkpoint; it holds "
                       f"step{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))}.")
    key = INIT_FROM_PARAMS[which]
    try:
      saved = _state_metadata(manager, step)[key]
    except Exception as error:  # noqa: BLE001 -- reported as what it is: an unreadable checkpoint.
      raise ValueError(f"{source}={workdir}: checkpoint {directory / str(step)} is unreadable "
                       f"({type(error).__name__}: {error}).") from None
    problems = array_mismatches({key: saved}, {key: abstract_params})
    if problems:
      differences = config_differences(_saved_config(manager, step), config)
      raise IncompatibleCheckpointError(
          f"{source}={workdir}: the parameters of checkpoint {directory / str(step)} do not fit "
          f"this config's model. {_explain(differences)}State entries that differ "
          f"({len(problems)}): {_listed(problems[:3])}. Pass the config that checkpoint was "
          "trained with.")
    # Only these parameters, straight onto their shardings: every other entry is a placeholder
    # (read nothing). Without a target, Orbax refuses a checkpoint saved by another topology.
    target = jax.tree.map(lambda _: ocp.PLACEHOLDER, dict(_state_metadata(manager, step)))
    target[key] = abstract_params
  # Standard handlers take no placeholders; the PyTree handler reads the same files and does.
  with ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False, read_only=True),
      item_handlers={"state": ocp.PyTreeCheckpointHandler()}) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))))
  logging.info("Loaded %s parameters from %s step %d.", which, directory, step)
  return restored["state"][key], int(step)
