"""Mixed precision: config.model.dtype = 'bfloat16' computes activations and matmuls in bf16 while
parameters, optimizer state and the loss stay float32, and its training loss tracks float32's."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trainer_utils

from rin_diffusion import paper_configs, train

CONFIGS = {
    "rin": os.path.join(trainer_utils.REPO, "configs", "fashion_mnist.py") + ":tiny",
    "unet": os.path.join(trainer_utils.REPO, "configs", "cdm", "fashion_mnist_16.py") + ":tiny,unet",
}
STEPS = 6


@pytest.mark.parametrize("network", sorted(CONFIGS))
def test_bfloat16_loss_tracks_float32_with_float32_state(network, tmp_path):
  manual_dir, data_dir = trainer_utils.fake_fashion_mnist(str(tmp_path))
  losses, states = {}, {}
  for dtype in ("float32", "bfloat16"):
    c = paper_configs.load_config(CONFIGS[network])
    c.dataset.manual_dir, c.dataset.data_dir = manual_dir, data_dir
    c.total_steps, c.checkpoint_every_steps, c.sample_every_steps = STEPS, STEPS, 0
    c.optimizer.decay = "constant"
    c.model.dtype = dtype
    workdir = str(tmp_path / dtype)
    states[dtype] = train.train_and_evaluate(c, workdir, devices=jax.devices()[:1])
    losses[dtype] = trainer_utils.step_losses(workdir)
  state = states["bfloat16"]
  for part in ("params", "opt_state", "ema_params"):
    floats = {leaf.dtype for leaf in jax.tree.leaves(state[part])
              if jnp.issubdtype(leaf.dtype, jnp.floating)}
    assert floats == {jnp.dtype(jnp.float32)}, (part, floats)
  assert sorted(losses["float32"]) == sorted(losses["bfloat16"]) == list(range(1, STEPS + 1))
  full = np.array([losses["float32"][s] for s in range(1, STEPS + 1)])
  half = np.array([losses["bfloat16"][s] for s in range(1, STEPS + 1)])
  # The same batches, noise and keys: only rounding differs. bf16 keeps 8 bits of mantissa
  # (relative 4e-3 per operation), a few percent after six updates at most; another random stream
  # (t and noise per example) or an overflowing cast would move these per-step losses far more.
  np.testing.assert_allclose(half, full, rtol=0.05)
  assert not np.array_equal(half, full)  # bf16 really ran.
