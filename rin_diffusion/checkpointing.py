"""Orbax checkpoints: async saves, retention, fallback past unreadable checkpoints, init_from.

A checkpoint holds three items: `state` (step, params, opt_state, ema_params, rng, counters), `data`
(the input pipeline's position, so a resumed run sees exactly the batches an uninterrupted one
would) and `config` (for humans and for `--mode=sample`). Restores always go through an abstract
target built for the *current* mesh, so a checkpoint restores onto any device count or mesh.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath


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
  return ocp.CheckpointManager(
      checkpoint_dir(workdir),
      options=options,
      item_names=("state", "data", "config"))


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


def restore_latest(manager: ocp.CheckpointManager,
                   abstract_state: Any) -> tuple[dict[str, Any], int] | None:
  """Restores the newest readable checkpoint onto `abstract_state`'s shardings.

  An unreadable newest checkpoint (truncated, corrupted, half-written) is moved to
  `checkpoints_unreadable/` with a warning naming it, and the previous one is tried.
  Returns (state, data_position), or None when there is no readable checkpoint.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              data=ocp.args.JsonRestore(),
          ))
    except Exception as error:  # noqa: BLE001 -- any failure to read means "skip this one".
      path = epath.Path(manager.directory) / str(step)
      moved_to = _move_aside(manager, step)
      logging.warning(
          "Checkpoint %s is unreadable (%s: %s); moved it to %s and trying the previous one.",
          path, type(error).__name__, str(error).splitlines()[0][:300], moved_to)
      continue
    position = int(restored["data"]["position"])
    return restored["state"], position
  return None


def restore_params_from(workdir: str, which: str, abstract_params: Any) -> Any:
  """Parameters ('ema' or 'params') of another run's latest checkpoint, for config.init_from."""
  if which not in ("ema", "params"):
    raise ValueError(f"config.init_from.params={which!r}; allowed: 'ema', 'params'.")
  directory = checkpoint_dir(workdir)
  with ocp.CheckpointManager(directory, item_names=("state", "data", "config")) as manager:
    step = manager.latest_step()
    if step is None:
      raise ValueError(f"config.init_from.workdir={workdir!r} holds no checkpoint in {directory}.")
    key = "ema_params" if which == "ema" else "params"
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  params = restored["state"][key]
  expected = jax.tree.structure(abstract_params)
  if jax.tree.structure(params) != expected:
    raise ValueError(
        f"config.init_from.workdir={workdir!r}: its parameters do not match this config's model "
        f"(tree {jax.tree.structure(params)} vs {expected}).")
  shapes = [(a.shape, b.shape) for a, b in zip(jax.tree.leaves(params),
                                               jax.tree.leaves(abstract_params)) if a.shape != b.shape]
  if shapes:
    raise ValueError(f"config.init_from.workdir={workdir!r}: parameter shapes differ: {shapes[:3]}")
  params = jax.device_put(params, jax.tree.map(lambda a: a.sharding, abstract_params))
  logging.info("Initialised %s from %s step %d.", which, directory, step)
  return restored["state"][key]
