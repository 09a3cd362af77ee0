"""A checkpoint that does not fit the config is bad input, not damage; only damage is quarantined.

Resuming (or sampling) with a config whose state has other arrays than the checkpoint's must stop
with one error naming the differing config fields and arrays, before anything is moved or written.
A checkpoint that cannot be read is still moved to checkpoints_unreadable/ and the previous one used
(the end-to-end version of that is in test_scale.py).
"""

from __future__ import annotations

import logging
import os
import shutil

import chex
import jax
import orbax.checkpoint as ocp
import pytest
import trainer_utils as tu

from rin_diffusion import checkpointing, sharding, train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
  """A finished 2-step run (model.tape_dim 32) with checkpoints at steps 1 and 2."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  config = tu.tiny_config(data_root, total_steps=2, checkpoint_every_steps=1)
  train.train_and_evaluate(config, workdir)
  return workdir, config


@pytest.fixture
def workdir(trained, tmp_path):
  """A private copy of the trained run, for tests that might (wrongly) change it."""
  copy = str(tmp_path / "run")
  shutil.copytree(trained[0], copy)
  return copy


def _saved_state(workdir: str, step: int):
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                             item_names=("state", "data", "config")) as manager:
    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


def test_other_model_size_stops_before_anything_changes(data_root, workdir):
  before = tu.snapshot(workdir)
  config = tu.tiny_config(data_root, total_steps=4, checkpoint_every_steps=1, model__tape_dim=64)
  with pytest.raises(checkpointing.IncompatibleCheckpointError) as error:
    train.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert "\n" not in message
  assert f"the checkpoint {workdir}/checkpoints/2 does not fit this config" in message
  assert "model.tape_dim: checkpoint 32, this run 64" in message
  # The first read's key projection maps the interface width (tape_dim) to 2 heads of
  # min(tape_dim, latent_dim 32) / 2 = 16: (32, 2, 16) in the checkpoint, (64, 2, 16) now.
  assert ("params.block_0_read.mha.key.kernel: checkpoint (32, 2, 16) float32, this run "
          "(64, 2, 16) float32") in message
  assert "total_steps" in message.split("Other config fields that differ")[1]  # Listed, not blamed.
  assert "use another --workdir" in message
  assert "init_from" not in message  # The parameters differ too: init_from would not help.
  # Not taken for damage: nothing moved, no metrics line, no events file, no new checkpoint.
  assert tu.snapshot(workdir) == before


def test_other_optimizer_state_suggests_init_from(data_root, workdir):
  before = tu.snapshot(workdir)
  config = tu.tiny_config(data_root, total_steps=4, optimizer__weight_decay=0.0)
  with pytest.raises(checkpointing.IncompatibleCheckpointError) as error:
    train.train_and_evaluate(config, workdir)
  message = str(error.value)
  # weight decay 0 drops a transformation from the chain: same parameters, other optimizer state.
  assert "optimizer.weight_decay: checkpoint 0.01, this run 0.0" in message
  assert "opt_state." in message and "params." not in message.split("State entries that differ")[1]
  assert f"--config.init_from.workdir={workdir}" in message
  assert tu.snapshot(workdir) == before


def test_fields_that_do_not_shape_the_state_resume(data_root, workdir, caplog):
  config = tu.tiny_config(data_root, total_steps=3, checkpoint_every_steps=3, log_every_steps=3,
                          keep_checkpoints=5)
  with caplog.at_level(logging.WARNING):
    state = train.train_and_evaluate(config, workdir)
  # Resumed, and said so with each changed field and both values.
  warnings = [r.getMessage() for r in caplog.records if "Resuming step 2" in r.getMessage()]
  assert len(warnings) == 1
  assert "total_steps: checkpoint 2, this run 3" in warnings[0]
  assert "keep_checkpoints: checkpoint" in warnings[0]
  assert int(state["step"]) == 3
  assert [r["step"] for r in tu.read_metrics(workdir)] == [1, 2, 3]
  assert not os.path.exists(os.path.join(workdir, "checkpoints_unreadable"))


def _restore_latest(config, workdir):
  mesh = sharding.make_mesh(config.mesh)
  _, _, _, abstract_state, _ = train.build(config, mesh)
  manager = checkpointing.make_manager(workdir, config)
  try:
    return checkpointing.restore_latest(manager, abstract_state, config)
  finally:
    manager.close()


def test_truncated_arrays_are_quarantined_and_the_previous_checkpoint_used(trained, workdir):
  _, config = trained
  for root, _, names in os.walk(os.path.join(workdir, "checkpoints", "2", "state")):
    for name in names:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 16 and name not in ("_METADATA", "_sharding"):
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
  state, position = _restore_latest(config, workdir)
  assert position == 1 and int(state["step"]) == 1
  # Exactly checkpoint 1 of the untouched run (the raw restore has lists where optax has tuples).
  saved = _saved_state(trained[0], 1)
  kept = ("step", "params", "ema_params", "rng", "nonfinite_steps")
  chex.assert_trees_all_equal({k: jax.device_get(state[k]) for k in kept},
                              {k: saved[k] for k in kept})
  chex.assert_trees_all_equal(jax.tree.leaves(jax.device_get(state["opt_state"])),
                              jax.tree.leaves(saved["opt_state"]))
  moved = os.listdir(os.path.join(workdir, "checkpoints_unreadable"))
  assert len(moved) == 1 and moved[0].startswith("2.")
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1"]


def test_unreadable_metadata_is_damage_not_a_mismatch(trained, workdir):
  _, config = trained
  with open(os.path.join(workdir, "checkpoints", "2", "state", "_METADATA"), "w") as f:
    f.write("{not json")
  state, position = _restore_latest(config, workdir)
  assert position == 1 and int(state["step"]) == 1
  assert os.listdir(os.path.join(workdir, "checkpoints_unreadable"))[0].startswith("2.")


def test_command_line_resume_and_sample_with_another_model(data_root, trained):
  workdir, _ = trained
  before = tu.snapshot(workdir)
  flags = tu.data_flags(data_root) + tu.TINY_FLAGS + ["--config.model.tape_dim=64"]
  line = tu.error_line(tu.run_main(workdir, flags + ["--config.total_steps=4"]))
  assert "model.tape_dim: checkpoint 32, this run 64" in line
  assert "nothing was restored or changed" in line and "another --workdir" in line
  line = tu.error_line(tu.run_main(workdir, flags + ["--mode=sample", "--num_samples=4"]))
  assert f"--workdir={workdir}: the parameters of checkpoint" in line
  assert "model.tape_dim: checkpoint 32, this run 64" in line
  assert ("ema_params.block_0_read.mha.key.kernel: checkpoint (32, 2, 16) float32, this run "
          "(64, 2, 16) float32") in line
  assert tu.snapshot(workdir) == before
