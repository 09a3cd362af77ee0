"""Sampling images from a RIN: the denoise function, a jitted sampler an eval loop can call, grids.

The denoise function is where the network meets the diffusion math: it applies the same input
normalisation as training (the "first layer of the network") and passes the class condition.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from PIL import Image

from rin_diffusion import diffusion, samplers, schedules
from rin_diffusion import model as model_lib


def make_denoise_fn(model: nn.Module, params: Any, diffusion_config: ml_collections.ConfigDict,
                    ) -> samplers.DenoiseFn:
  """denoise(x_t, gamma, cond, hidden) -> (raw prediction, hidden) with inference-mode params."""
  input_scale = float(diffusion_config.input_scale)
  mode = diffusion_config.normalize_input

  def denoise(x_t, gamma, cond, hidden):
    x_in = diffusion.normalize_input(x_t, gamma, input_scale, mode)
    return model.apply({"params": params}, x_in, gamma, cond.get("class_onehot"), hidden,
                       cond.get("extra_gammas"), train=False)

  return denoise


def class_labels(config: ml_collections.ConfigDict, num_samples: int, classes: str = "") -> np.ndarray:
  """Labels for a grid: the given comma-separated ids, else one row per class in turn."""
  num_classes = int(config.model.num_classes)
  if classes:
    try:
      ids = [int(c) for c in str(classes).split(",") if c.strip()]
    except ValueError:
      raise ValueError(f"sampling classes={classes!r}: expected comma-separated integers.") from None
    bad = [c for c in ids if not 0 <= c < max(num_classes, 1)]
    if bad or not ids:
      raise ValueError(f"sampling classes={classes!r}: ids must be in [0, {num_classes}).")
  else:
    ids = list(range(max(num_classes, 1)))
  per_class = -(-num_samples // len(ids))
  return np.repeat(np.asarray(ids, np.int32), per_class)[:num_samples]


def make_sample_fn(model: nn.Module, config: ml_collections.ConfigDict, *, sampler: str,
                   steps: int, guidance: float, t_end: float = 0.0) -> Callable[..., jax.Array]:
  """A jitted sample(params, key, labels) -> images in [0, 1] of shape (N, H, W, C)."""
  dcfg = config.diffusion
  mcfg = config.model
  gamma_fn = schedules.gamma_fn(dcfg.infer_schedule)
  num_classes = int(mcfg.num_classes)

  def sample(params, key, labels):
    batch = labels.shape[0]
    noise_key, sample_key = jax.random.split(key)
    noise = jax.random.normal(
        noise_key, (batch, mcfg.image_size, mcfg.image_size, mcfg.channels), jnp.float32)
    if num_classes > 0:
      cond = {"class_onehot": jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)}
      null_cond = {"class_onehot": jnp.zeros((batch, num_classes), jnp.float32)}
    else:
      cond, null_cond = {}, {}
    out = samplers.sample(
        make_denoise_fn(model, params, dcfg), noise, sample_key, gamma_fn=gamma_fn, steps=steps,
        sampler=sampler, input_scale=float(dcfg.input_scale), pred_type=dcfg.pred_type, cond=cond,
        null_cond=null_cond, guidance=guidance if num_classes > 0 else 0.0,
        td=float(config.sampling.td), hidden_init=model_lib.zero_hidden(mcfg, batch), t_end=t_end)
    return jnp.clip(out.x0 * 0.5 + 0.5, 0.0, 1.0)

  return jax.jit(sample)


def to_uint8(images: np.ndarray) -> np.ndarray:
  return np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def save_grid(images: np.ndarray, path: str, columns: int | None = None) -> None:
  """Writes (N, H, W, C) images in [0, 1] as one PNG grid with a 1-pixel gap."""
  images = to_uint8(images)
  count, height, width, channels = images.shape
  columns = columns or int(np.ceil(np.sqrt(count)))
  rows = -(-count // columns)
  grid = np.full((rows * (height + 1) + 1, columns * (width + 1) + 1, channels), 255, np.uint8)
  for index, image in enumerate(images):
    row, col = divmod(index, columns)
    top, left = 1 + row * (height + 1), 1 + col * (width + 1)
    grid[top:top + height, left:left + width] = image
  buffer = io.BytesIO()
  Image.fromarray(grid[..., 0] if channels == 1 else grid).save(buffer, format="PNG")
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buffer.getvalue())
