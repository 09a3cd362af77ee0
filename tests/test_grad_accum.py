"""Gradient accumulation (config.grad_accum_steps): the same training as the whole batch, with the
activation memory of one microbatch."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trainer_utils as tu

from rin_diffusion import paper_configs, sharding, train

STEPS = 4
UNET = os.path.join(tu.REPO, "configs", "cdm", "fashion_mnist_16.py") + ":tiny,unet"


def _run(root: str, name: str, accum: int, spec: str | None = None, devices: int = 2):
  if spec is None:
    config = tu.tiny_config(root, total_steps=STEPS, checkpoint_every_steps=STEPS)
  else:
    config = paper_configs.load_config(spec)
    manual_dir, data_dir = tu.fake_fashion_mnist(root)
    config.dataset.manual_dir, config.dataset.data_dir = manual_dir, data_dir
    config.total_steps, config.checkpoint_every_steps = STEPS, STEPS
    config.optimizer.decay = "constant"
  config.sample_every_steps = 0
  config.grad_accum_steps = accum
  config.mesh.data, config.mesh.fsdp = devices, 1
  workdir = os.path.join(root, name)
  state = train.train_and_evaluate(config, workdir, devices=jax.devices()[:devices])
  return tu.step_losses(workdir), jax.device_get(state["params"])


@pytest.mark.parametrize("network, accum", [("rin", 4), ("unet", 2)])
def test_accumulated_steps_equal_the_whole_batch(network, accum, tmp_path):
  """Batch 8 on 2 devices: microbatches of 2 (RIN) or 4 (U-Net) train as batch 8 does.

  The RIN recipe has label dropout and self-conditioning (both drawn for the whole batch); the
  U-Net has learned variances (the hybrid loss). Neither tiny config uses dropout.
  """
  spec = UNET if network == "unet" else None
  root = str(tmp_path)
  whole_losses, whole_params = _run(root, "whole", 1, spec)
  losses, params = _run(root, "accum", accum, spec)
  assert sorted(losses) == sorted(whole_losses) == list(range(1, STEPS + 1))
  for step, loss in whole_losses.items():
    assert abs(losses[step] - loss) <= 1e-5 * abs(loss), (step, losses[step], loss)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, value), expected in zip(flat, jax.tree.leaves(whole_params)):
    name = jax.tree_util.keystr(path)
    if "['key']['bias']" in name:  # Zero true gradient: Adam amplifies round-off (test_scale).
      continue
    # Adam's m / (sqrt(v) + eps) also magnifies the round-off of near-zero gradients elsewhere:
    # allow 5 % of one step at the tiny configs' learning rate of 1e-3.
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=5e-5, err_msg=name)


def test_accumulation_cuts_the_step_s_temporary_memory(tmp_path):
  """XLA's own memory plan of the compiled step: 4 microbatches need far less scratch memory."""
  temp = {}
  for accum in (1, 4):
    config = tu.tiny_config(str(tmp_path), batch_size=64)
    config.grad_accum_steps = accum
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    model, tx, _, abstract_state, _ = train.build(config, mesh)
    size = config.model.image_size
    batch = {"image": jax.ShapeDtypeStruct((64, size, size, 1), jnp.float32),
             "label": jax.ShapeDtypeStruct((64,), jnp.int32)}
    step = jax.jit(train.make_train_step(model, tx, config), donate_argnums=0)
    analysis = step.lower(abstract_state, batch).compile().memory_analysis()
    if analysis is None:
      pytest.skip("this jax backend has no memory analysis")
    temp[accum] = analysis.temp_size_in_bytes
  assert temp[4] < 0.6 * temp[1], temp


def test_microbatches_that_do_not_split_over_the_devices_are_refused(tmp_path):
  config = tu.tiny_config(str(tmp_path))  # Batch 8.
  config.grad_accum_steps = 3
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:2])
  with pytest.raises(ValueError, match=r"config.grad_accum_steps=3: config.batch_size=8 is not "
                     r"divisible by 3 microbatches x 2 devices"):
    sharding.check_batch_divisible(8, mesh, 3)
  config.grad_accum_steps = 0
  with pytest.raises(ValueError, match=r"config.grad_accum_steps=0: must be a positive integer"):
    train.train_and_evaluate(config, str(tmp_path / "never"))
  assert not os.path.exists(tmp_path / "never")
