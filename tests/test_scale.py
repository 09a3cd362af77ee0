"""Scale-out: sharded == unsharded, many processes, exact resume, preemption, checkpoint fallback.

All on CPU with 8 simulated devices (tests/conftest.py); multi-process runs use
`jax.distributed.initialize` with a localhost coordinator.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import trainer_utils as tu

from rin_diffusion import checkpointing, sharding, train

STEPS = 5


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def reference_run(data_root, tmp_path_factory):
  """5 steps on one device: the losses every layout must reproduce."""
  workdir = str(tmp_path_factory.mktemp("one_device"))
  config = tu.tiny_config(data_root, total_steps=STEPS, checkpoint_every_steps=STEPS)
  config.mesh.data = 1
  state = train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  return workdir, tu.step_losses(workdir), jax.device_get(state["params"])


@pytest.fixture(scope="module")
def fsdp_run(data_root, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("data4_fsdp2"))
  config = tu.tiny_config(data_root, total_steps=STEPS, checkpoint_every_steps=STEPS)
  config.mesh.data, config.mesh.fsdp = 4, 2
  state = train.train_and_evaluate(config, workdir)
  return workdir, config, state


def _assert_losses_close(losses, reference, rtol=1e-5):
  assert sorted(losses) == sorted(reference)
  for step, loss in reference.items():
    assert abs(losses[step] - loss) <= rtol * abs(loss), (step, losses[step], loss)


def test_fsdp_mesh_matches_one_device_and_shards_params(reference_run, fsdp_run):
  _, reference, reference_params = reference_run
  workdir, _, state = fsdp_run
  _assert_losses_close(tu.step_losses(workdir), reference)
  specs = [leaf.sharding.spec for leaf in jax.tree.leaves(state["params"])]
  sharded = [spec for spec in specs if "fsdp" in jax.tree.leaves(tuple(spec))]
  assert len(sharded) >= len(specs) // 3, specs  # Kernels are split over 'fsdp' ...
  assert all("data" not in jax.tree.leaves(tuple(spec)) for spec in specs)  # ... never 'data'.
  shards = {leaf.addressable_shards[0].data.shape != leaf.shape
            for leaf in jax.tree.leaves(state["params"])}
  assert True in shards
  # Parameters agree too, except attention *key* biases: softmax is invariant to them, so their
  # true gradient is exactly 0 and Adam's m / (sqrt(v) + eps) turns float round-off (which
  # depends on the reduction order) into lr-sized steps. They cannot change any output.
  params = jax.tree_util.tree_flatten_with_path(jax.device_get(state["params"]))[0]
  for (path, value), expected in zip(params, jax.tree.leaves(reference_params)):
    name = jax.tree_util.keystr(path)
    if "['key']['bias']" not in name:
      np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-6, err_msg=name)


def test_data_parallel_mesh_matches_one_device(reference_run, data_root, tmp_path):
  _, reference, _ = reference_run
  config = tu.tiny_config(data_root, total_steps=STEPS, checkpoint_every_steps=STEPS)
  config.mesh.data, config.mesh.fsdp = 8, 1
  train.train_and_evaluate(config, str(tmp_path))
  _assert_losses_close(tu.step_losses(str(tmp_path)), reference)


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def test_two_processes_match_one_process(reference_run, data_root, tmp_path):
  _, reference, _ = reference_run
  port = _free_port()
  flags = tu.data_flags(data_root) + tu.TINY_FLAGS + [
      f"--config.total_steps={STEPS}", f"--config.checkpoint_every_steps={STEPS}",
      f"--coordinator_address=localhost:{port}", "--num_processes=2"]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  workdir = str(tmp_path / "run")
  procs = [subprocess.Popen(tu.main_command(workdir, flags + [f"--process_id={i}"]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tu.REPO, env=env) for i in range(2)]
  outputs = [proc.communicate(timeout=600)[0] for proc in procs]
  for proc, output in zip(procs, outputs):
    assert proc.returncode == 0, output[-3000:]
  _assert_losses_close(tu.step_losses(workdir), reference)


def _wait_for(predicate, proc, timeout=300.0, what=""):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    if proc.poll() is not None:
      raise AssertionError(f"process exited ({proc.returncode}) before {what}: "
                           f"{proc.stdout.read()[-3000:]}")
    time.sleep(0.05)
  raise AssertionError(f"timed out waiting for {what}")


def _checkpoint_steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(name) for name in os.listdir(path) if name.isdigit()) if os.path.isdir(
      path) else []


def _restore_params(workdir, step):
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                             item_names=("state", "data", "config")) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return restored["state"]


def _long_run(workdir, data_root, extra=()):
  flags = tu.data_flags(data_root) + tu.TINY_FLAGS + [
      "--config.total_steps=100000", "--config.checkpoint_every_steps=4", *extra]
  return subprocess.Popen(tu.main_command(workdir, flags), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, cwd=tu.REPO)


def test_sigkill_then_restart_equals_uninterrupted(data_root, tmp_path):
  killed = str(tmp_path / "killed")
  proc = _long_run(killed, data_root)
  _wait_for(lambda: 8 in _checkpoint_steps(killed), proc, what="checkpoint 8")
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  total = max(_checkpoint_steps(killed)) + 4
  flags = tu.data_flags(data_root) + tu.TINY_FLAGS + [f"--config.total_steps={total}",
                                                       "--config.checkpoint_every_steps=4"]
  resumed = tu.run_main(killed, flags)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from" in resumed.stderr

  straight = str(tmp_path / "straight")
  result = tu.run_main(straight, flags)
  assert result.returncode == 0, result.stderr[-3000:]

  straight_losses = tu.step_losses(straight)
  killed_losses = tu.step_losses(killed)
  assert sorted(straight_losses) == list(range(1, total + 1))
  # Bit-identical on CPU: same programs, same per-step keys (fold_in(rng, step)), same batches.
  assert killed_losses == straight_losses
  final_straight = _restore_params(straight, total)
  final_resumed = _restore_params(killed, total)
  for key in ("params", "ema_params", "opt_state"):
    same = jax.tree.map(np.array_equal, final_straight[key], final_resumed[key])
    assert all(jax.tree.leaves(same)), key


def test_sigterm_saves_and_exits_preempted_then_resumes(data_root, tmp_path):
  workdir = str(tmp_path / "run")
  proc = _long_run(workdir, data_root)
  metrics = os.path.join(workdir, "metrics.jsonl")
  _wait_for(lambda: os.path.exists(metrics) and len(tu.read_metrics(workdir)) >= 3, proc,
            what="step 3")
  signalled_at_step = tu.read_metrics(workdir)[-1]["step"]
  start = time.time()
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=120)[0]
  elapsed = time.time() - start
  # Not 0: a launcher must not take a preempted run for a finished one (exit_status.PREEMPTED).
  assert proc.returncode == 75, output[-3000:]
  assert "preempted at step" in output
  last_step = tu.read_metrics(workdir)[-1]["step"]
  # Stops at the next step boundary (a few tiny steps may already be queued) ...
  assert signalled_at_step <= last_step <= signalled_at_step + 5
  assert max(_checkpoint_steps(workdir)) == last_step  # ... with a durable checkpoint there.
  assert elapsed < 30, elapsed
  flags = tu.data_flags(data_root) + tu.TINY_FLAGS + [f"--config.total_steps={last_step + 2}"]
  result = tu.run_main(workdir, flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert [r["step"] for r in tu.read_metrics(workdir)][-2:] == [last_step + 1, last_step + 2]


@pytest.mark.parametrize("mesh_shape", [(1, 1), (2, 4)])
def test_checkpoint_from_8_devices_restores_on_other_meshes(fsdp_run, mesh_shape):
  workdir, config, state = fsdp_run
  config = config.copy_and_resolve_references()
  config.mesh.data, config.mesh.fsdp = mesh_shape
  devices = jax.devices()[:mesh_shape[0] * mesh_shape[1]]
  mesh = sharding.make_mesh(config.mesh, devices)
  _, _, _, abstract_state, _ = train.build(config, mesh)
  manager = checkpointing.make_manager(workdir, config)
  restored, position = checkpointing.restore_latest(manager, abstract_state)
  manager.close()
  assert position == STEPS
  for leaf in jax.tree.leaves(restored["params"]):
    assert leaf.sharding.mesh.devices.size == len(devices)
  same = jax.tree.map(np.array_equal, jax.device_get(restored), jax.device_get(state))
  assert all(jax.tree.leaves(same))
  if mesh_shape == (2, 4):
    specs = [leaf.sharding.spec for leaf in jax.tree.leaves(restored["params"])]
    assert any("fsdp" in jax.tree.leaves(tuple(spec)) for spec in specs)


def test_corrupt_latest_checkpoint_falls_back_to_previous(data_root, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  config = tu.tiny_config(data_root, total_steps=4, checkpoint_every_steps=2)
  train.train_and_evaluate(config, workdir)
  reference_losses = tu.step_losses(workdir)
  # Truncate every array file of the latest checkpoint's state.
  latest = os.path.join(workdir, "checkpoints", "4", "state")
  truncated = 0
  for root, _, names in os.walk(latest):
    for name in names:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 16:
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
        truncated += 1
  assert truncated
  with caplog.at_level(logging.WARNING):
    state = train.train_and_evaluate(config, workdir)
  assert int(state["step"]) == 4
  warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
  assert warnings and os.path.join("checkpoints", "4") in warnings[0]
  # Nothing is deleted: the unreadable checkpoint is kept aside for inspection.
  assert os.listdir(os.path.join(workdir, "checkpoints_unreadable"))
  # Steps 3-4 were redone from checkpoint 2 and reproduce the original losses exactly.
  assert tu.step_losses(workdir) == reference_losses


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(data_root, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  good = tu.tiny_config(data_root, total_steps=2, checkpoint_every_steps=2)
  train.train_and_evaluate(good, workdir)
  before = _restore_params(workdir, 2)
  bad = tu.tiny_config(data_root, total_steps=8, checkpoint_every_steps=2)
  bad.optimizer.learning_rate = 1e30
  bad.optimizer.warmup_steps = 0
  # The error must not leave the run's input workers or its SIGTERM handler behind.
  closed = []
  make_iterator = train.pipeline.make_iterator

  def recording_make_iterator(*args, **kwargs):
    batches = make_iterator(*args, **kwargs)
    close = batches.close
    batches.close = lambda: (closed.append(True), close())
    return batches

  monkeypatch.setattr(train.pipeline, "make_iterator", recording_make_iterator)
  handler_before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(train.NonFiniteLossError, match="last good checkpoint"):
    train.train_and_evaluate(bad, workdir)
  assert closed == [True]
  assert signal.getsignal(signal.SIGTERM) is handler_before
  latest = max(_checkpoint_steps(workdir))
  after = _restore_params(workdir, latest)
  for leaf in jax.tree.leaves(after["params"]):
    assert np.all(np.isfinite(leaf))
  assert 2 in _checkpoint_steps(workdir)
  same = jax.tree.map(np.array_equal, before["params"], _restore_params(workdir, 2)["params"])
  assert all(jax.tree.leaves(same))


def test_nonfinite_loss_skip_policy_counts_and_continues(data_root, tmp_path):
  workdir = str(tmp_path / "run")
  config = tu.tiny_config(data_root, total_steps=6, checkpoint_every_steps=6)
  config.optimizer.learning_rate = 1e30
  config.optimizer.warmup_steps = 0
  config.nonfinite_loss = "skip"
  state = train.train_and_evaluate(config, workdir)
  assert int(state["step"]) == 6
  assert int(state["nonfinite_steps"]) > 0
  assert tu.read_metrics(workdir)[-1]["nonfinite_steps"] == int(state["nonfinite_steps"])
  for leaf in jax.tree.leaves(jax.device_get(state["params"])):
    assert np.all(np.isfinite(leaf))


def test_init_from_starts_a_new_run_from_another_runs_ema(fsdp_run, data_root, tmp_path):
  source_workdir, _, source_state = fsdp_run
  config = tu.tiny_config(data_root, total_steps=1, checkpoint_every_steps=1)
  config.init_from.workdir = source_workdir
  config.init_from.params = "ema"
  config.optimizer.learning_rate = 0.0
  state = train.train_and_evaluate(config, str(tmp_path / "run"))
  # With a zero learning rate the params stay at the source run's EMA parameters.
  same = jax.tree.map(np.allclose, jax.device_get(state["params"]),
                      jax.device_get(source_state["ema_params"]))
  assert all(jax.tree.leaves(same))
