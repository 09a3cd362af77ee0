"""Sampling images from a RIN: the denoise function, jitted samplers (one batch, or many images in
sharded global batches), grids.

The denoise function is where the network meets the diffusion math: it applies the same input
normalisation as training (the "first layer of the network") and passes the class condition.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from PIL import Image

from rin_diffusion import diffusion, networks, samplers, schedules, sharding


def make_denoise_fn(model: nn.Module, params: Any, diffusion_config: ml_collections.ConfigDict,
                    self_condition: bool = True) -> samplers.DenoiseFn:
  """denoise(x_t, gamma, cond, hidden) -> (raw prediction, hidden) with inference-mode params.

  cond: {'class_onehot'?, 'extra_channels'?, 'extra_gammas'?} (train.Conditioning's keys).

  self_condition=False hands the network zero latents at every step (what training shows it in the
  1 - self_cond_rate of examples without self-conditioning): a diagnostic of the carried latents.
  """
  input_scale = float(diffusion_config.input_scale)
  mode = diffusion_config.normalize_input

  def denoise(x_t, gamma, cond, hidden):
    x_in = diffusion.normalize_input(x_t, gamma, input_scale, mode)
    if "extra_channels" in cond:  # A super-resolution stage's upsampled low-resolution image.
      x_in = jnp.concatenate([x_in, cond["extra_channels"]], axis=-1)
    if not self_condition and hidden is not None:
      hidden = jnp.zeros_like(hidden)
    return model.apply({"params": params}, x_in, gamma, cond.get("class_onehot"), hidden,
                       cond.get("extra_gammas"), train=False)

  return denoise


def class_labels(config: ml_collections.ConfigDict, num_samples: int, classes: str = "") -> np.ndarray:
  """Labels for a grid: the given comma-separated ids, else one row per class in turn."""
  num_classes = int(config.model.num_classes)
  if classes:
    allowed = (f"allowed: '' (every class in turn) or comma-separated class ids in "
               f"[0, {max(num_classes, 1)}), e.g. '0,5,7'")
    try:
      ids = [int(c) for c in str(classes).split(",") if c.strip()]
    except ValueError:
      raise ValueError(f"config.sampling.classes={classes!r}: {allowed}.") from None
    bad = [c for c in ids if not 0 <= c < max(num_classes, 1)]
    if bad or not ids:
      what = f"ids {bad} out of range" if bad else "no class ids"
      raise ValueError(f"config.sampling.classes={classes!r}: {what}; {allowed}.")
  else:
    ids = list(range(max(num_classes, 1)))
  per_class = -(-num_samples // len(ids))
  return np.repeat(np.asarray(ids, np.int32), per_class)[:num_samples]


class SamplingSetup(NamedTuple):
  """What every run of a sampler over a batch starts from (sample_output, cascade trajectories)."""
  noise: jax.Array  # The state at t_start.
  sample_key: jax.Array  # The sampler's own draws.
  cond: dict[str, jax.Array]
  null_cond: dict[str, jax.Array]  # extra_cond without the class: guidance drops only the class.
  denoise_fn: samplers.DenoiseFn
  sampler_kwargs: dict[str, Any]  # samplers.sample's settings from the config and the guidance.


def sampling_setup(model: nn.Module, config: ml_collections.ConfigDict, params: Any,
                   key: jax.Array, labels: jax.Array, *, sampler: str, guidance: float,
                   extra_cond: dict[str, jax.Array] | None = None,
                   noise: jax.Array | None = None) -> SamplingSetup:
  """The start noise (drawn from `key` unless given), the conditions, the denoise function (the
  mean half only of a learned-variance network, except for 'ddpm_learned') and the sampler's
  settings for a batch of N labels."""
  dcfg = config.diffusion
  mcfg = config.model
  num_classes = int(mcfg.num_classes)
  batch = labels.shape[0]
  noise_key, sample_key = jax.random.split(key)
  if noise is None:
    noise = jax.random.normal(
        noise_key, (batch, mcfg.image_size, mcfg.image_size, mcfg.channels), jnp.float32)
  cond, null_cond = dict(extra_cond or {}), dict(extra_cond or {})
  if num_classes > 0:
    cond["class_onehot"] = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    null_cond["class_onehot"] = jnp.zeros((batch, num_classes), jnp.float32)
  denoise_fn = make_denoise_fn(model, params, dcfg, bool(config.sampling.self_condition))
  if dcfg.learned_variance and sampler != "ddpm_learned":
    channels = int(mcfg.channels)

    def denoise_fn(x_t, gamma, cond, hidden, full=denoise_fn):  # The mean half only.
      pred, hidden = full(x_t, gamma, cond, hidden)
      return pred[..., :channels], hidden

  sampler_kwargs = dict(
      gamma_fn=schedules.gamma_fn(dcfg.infer_schedule), sampler=sampler,
      input_scale=float(dcfg.input_scale), pred_type=dcfg.pred_type,
      guidance=guidance if num_classes > 0 else 0.0, td=float(config.sampling.td),
      guidance_interval=tuple(config.sampling.guidance_interval),
      time_grid=config.sampling.get("time_grid", "") or None)
  return SamplingSetup(noise, sample_key, cond, null_cond, denoise_fn, sampler_kwargs)


def sample_output(model: nn.Module, config: ml_collections.ConfigDict, params: Any,
                  key: jax.Array, labels: jax.Array, *, sampler: str, steps: int, guidance: float,
                  t_end: float = 0.0, extra_cond: dict[str, jax.Array] | None = None,
                  noise: jax.Array | None = None, t_start: float = 1.0) -> samplers.SampleOutput:
  """The sampler's output (x0-hat in [-1, 1] and the state at t_end) for the N labels.

  extra_cond (a super-resolution stage's inputs, train.Conditioning's keys) is part of the
  condition *and* of the null condition: guidance drops only the class. noise: the state at
  t_start (default: pure noise drawn from `key`, at t_start = 1). Traced inside a jit.
  """
  setup = sampling_setup(model, config, params, key, labels, sampler=sampler, guidance=guidance,
                         extra_cond=extra_cond, noise=noise)
  return samplers.sample(
      setup.denoise_fn, setup.noise, setup.sample_key, steps=steps, cond=setup.cond,
      null_cond=setup.null_cond, hidden_init=networks.zero_hidden(config, labels.shape[0]),
      t_end=t_end, t_start=t_start, **setup.sampler_kwargs)


def _sample_images(model: nn.Module, config: ml_collections.ConfigDict, params: Any, key: jax.Array,
                   labels: jax.Array, *, sampler: str, steps: int, guidance: float,
                   t_end: float = 0.0, extra_cond: dict[str, jax.Array] | None = None) -> jax.Array:
  """Images in [0, 1] of shape (N, H, W, C) for the N labels (traced inside a jit)."""
  out = sample_output(model, config, params, key, labels, sampler=sampler, steps=steps,
                      guidance=guidance, t_end=t_end, extra_cond=extra_cond)
  return jnp.clip(out.x0 * 0.5 + 0.5, 0.0, 1.0)


def make_sample_fn(model: nn.Module, config: ml_collections.ConfigDict, *, sampler: str,
                   steps: int, guidance: float, t_end: float = 0.0) -> Callable[..., jax.Array]:
  """A jitted sample(params, key, labels, extra_cond=None) -> images in [0, 1], (N, H, W, C)."""

  def sample(params, key, labels, extra_cond=None):
    return _sample_images(model, config, params, key, labels, sampler=sampler, steps=steps,
                          guidance=guidance, t_end=t_end, extra_cond=extra_cond)

  return jax.jit(sample)


# ----------------------------------------------------------------------------------------------
# Sampling at scale: many images in fixed-size global batches over every device and process.


class SampleBatch(NamedTuple):
  """One global batch's images on the host, cropped to the requested number of samples."""
  images: np.ndarray  # uint8 (n, H, W, C), the same rounding as to_uint8.
  labels: np.ndarray  # int32 (n,): the class each image was conditioned on.
  indices: np.ndarray  # int64 (n,): the rows' global sample indices, increasing.
  batch_index: int = 0  # Which global batch of batch_size samples these rows belong to.


def make_batched_sample_fn(model: nn.Module, config: ml_collections.ConfigDict,
                           mesh: jax.sharding.Mesh, *, sampler: str, steps: int,
                           guidance: float) -> Callable[..., jax.Array]:
  """A jitted sample(params, key_data, batch_index, labels) -> uint8 images over the batch axis.

  The key of global batch i is fold_in(key, i), so batch i's images depend only on (key, i, its
  labels, the batch size), never on the device count or on the other batches. The images are
  rounded to uint8 on the device (4x less to copy to the host).
  """

  def sample(params, key_data, batch_index, labels):
    key = jax.random.fold_in(jax.random.wrap_key_data(key_data), batch_index)
    images = _sample_images(model, config, params, key, labels, sampler=sampler, steps=steps,
                            guidance=guidance)
    return jnp.round(images * 255.0).astype(jnp.uint8)

  return jax.jit(sample, out_shardings=sharding.batch_sharding(mesh))


def sampling_batch_size(requested: int, num_samples: int, mesh: jax.sharding.Mesh) -> int:
  """The global batch: `requested`, or fewer when fewer samples are wanted (a device multiple)."""
  devices = mesh.devices.size
  if requested <= 0 or requested % devices:
    raise ValueError(
        f"config.eval_batch_size={requested} is not a positive multiple of the {devices} devices "
        f"of the mesh {dict(mesh.shape)}; use a multiple of {devices}.")
  return min(int(requested), -(-int(num_samples) // devices) * devices)


def _host_rows(images: jax.Array, gather: bool) -> tuple[np.ndarray, np.ndarray]:
  """(global row indices, rows) of a batch-sharded array: this process's rows, or all of them."""
  if gather or jax.process_count() == 1:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # noqa: PLC0415

      rows = np.asarray(multihost_utils.process_allgather(images, tiled=True))
    else:
      rows = np.asarray(jax.device_get(images))
    return np.arange(rows.shape[0]), rows
  shards = {}
  for shard in images.addressable_shards:  # One per local device; rows in any device order.
    start = shard.index[0].start or 0
    shards.setdefault(start, shard)
  starts = sorted(shards)
  rows = np.concatenate([np.asarray(shards[s].data) for s in starts])
  indices = np.concatenate([np.arange(s, s + shards[s].data.shape[0]) for s in starts])
  return indices, rows


def sample_batches(sample_fn: Callable[..., jax.Array], params: Any, key: jax.Array,
                   labels: np.ndarray, *, batch_size: int, mesh: jax.sharding.Mesh,
                   gather: bool = False,
                   batch_indices: Sequence[int] | None = None) -> Iterator[SampleBatch]:
  """Draws len(labels) images in global batches of `batch_size`; yields them on the host.

  `sample_fn` comes from make_batched_sample_fn. Every batch has the same shape (the last one is
  padded and cropped), so one compiled program serves them all. Batch i + 1 is dispatched before
  batch i is copied to the host, so at most two batches of images live on the devices and the
  host work on one overlaps the sampling of the next.

  Multi-process: with gather=False each process gets only the rows its devices computed (its
  addressable slice, with their global indices: evaluation computes features there and gathers the
  features, not the images); gather=True gives every process every row (for writing files).

  batch_indices: draw only these global batches (default all), e.g. those a resumed run lacks;
  batch i's images are the same whichever others are drawn.
  """
  labels = np.asarray(labels, np.int32)
  num_samples = labels.shape[0]
  if batch_size <= 0 or batch_size % mesh.devices.size:
    raise ValueError(f"sampling batch_size={batch_size}: must be a positive multiple of the "
                     f"{mesh.devices.size} devices of the mesh {dict(mesh.shape)}.")
  key_data = np.asarray(jax.random.key_data(key))
  label_sharding = sharding.batch_sharding(mesh)
  todo = list(range(-(-num_samples // batch_size)) if batch_indices is None else batch_indices)

  def launch(index: int) -> jax.Array:
    padded = np.zeros((batch_size,), np.int32)
    chunk = labels[index * batch_size:(index + 1) * batch_size]
    padded[:chunk.shape[0]] = chunk
    device_labels = jax.make_array_from_callback(
        (batch_size,), label_sharding, lambda slices: padded[slices])
    return sample_fn(params, key_data, np.int32(index), device_labels)

  pending = launch(todo[0]) if todo else None
  for position, index in enumerate(todo):
    current, pending = pending, (launch(todo[position + 1]) if position + 1 < len(todo) else None)
    rows, images = _host_rows(current, gather)
    del current
    indices = index * batch_size + rows
    keep = indices < num_samples
    yield SampleBatch(images=images[keep], labels=labels[indices[keep]], indices=indices[keep],
                      batch_index=index)


def sample_all(sample_fn: Callable[..., jax.Array], params: Any, key: jax.Array,
               labels: np.ndarray, *, batch_size: int, mesh: jax.sharding.Mesh) -> np.ndarray:
  """All len(labels) images as one uint8 host array on every process (for writing files)."""
  batches = [batch.images for batch in sample_batches(
      sample_fn, params, key, labels, batch_size=batch_size, mesh=mesh, gather=True)]
  return np.concatenate(batches)


def local_rows(mesh: jax.sharding.Mesh, batch_size: int) -> np.ndarray:
  """The rows of a global batch that this process's devices sample (what sample_batches yields it
  with gather=False), increasing."""
  slices = sharding.batch_sharding(mesh).addressable_devices_indices_map((batch_size,)).values()
  rows = set()
  for (rows_slice,) in slices:
    rows.update(range(*rows_slice.indices(batch_size)))
  return np.asarray(sorted(rows), np.int64)


def format_eta(seconds: float) -> str:
  """'1h02m03s', as the trainer prints its ETA."""
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


class Progress:
  """Logs '<what>: done/total <unit> (pct), rate/s, ETA' at most every `every_s` seconds, and when
  done: long evaluation and sampling work says how far it is, as training does.

  The rate counts from the first update on, so a first batch that includes compilation does not
  make the ETA of the rest too long. Only process 0 logs.
  """

  def __init__(self, what: str, total: int, unit: str = "images", every_s: float = 15.0):
    self.what, self.total, self.unit, self.every_s = what, int(total), unit, every_s
    self.done = 0
    self.first: tuple[float, int] | None = None  # (time, done) at the first update.
    self.last_log = time.time()

  def update(self, count: int) -> None:
    self.done += int(count)
    now = time.time()
    if self.first is None:
      self.first = (now, self.done)
    if now - self.last_log >= self.every_s or self.done >= self.total:
      self.last_log = now
      if jax.process_index() == 0:
        logging.info("%s", self.line(now))

  def line(self, now: float | None = None) -> str:
    now = time.time() if now is None else now
    text = (f"{self.what}: {self.done}/{self.total} {self.unit} "
            f"({100.0 * self.done / max(self.total, 1):.0f}%)")
    elapsed, counted = now - self.first[0], self.done - self.first[1]
    if counted > 0 and elapsed > 0:
      rate = counted / elapsed
      text += f", {rate:.3g} {self.unit}/s, ETA {format_eta((self.total - self.done) / rate)}"
    return text


def cycled_labels(num_classes: int, num_samples: int) -> np.ndarray:
  """Sample j is conditioned on class j mod num_classes (all zeros for unconditional models).

  Every class gets num_samples / num_classes samples (+-1), and any prefix is nearly balanced.
  """
  return (np.arange(num_samples) % max(int(num_classes), 1)).astype(np.int32)


def to_uint8(images: np.ndarray) -> np.ndarray:
  return np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def save_grid(images: np.ndarray, path: str, columns: int | None = None) -> None:
  """Writes (N, H, W, C) images (floats in [0, 1], or uint8) as one PNG grid with a 1-pixel gap."""
  images = images if images.dtype == np.uint8 else to_uint8(images)
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
