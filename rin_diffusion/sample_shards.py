r"""Sample shards: many images written as they are drawn, by every process, resumably.

  OUTPUT/index.json                    the run's settings (process 0 writes it; a rerun checks it)
  OUTPUT/shard_<process>_<batch>.npz   uint8 `images` (n, H, W, C), int32 `labels`, int64 `indices`
                                       (global sample indices): that process's rows of that batch
  OUTPUT/png/<index>_class<label>.png  with png=True, one file per image
  OUTPUT/grid.png                      up to 10 images of every class, one row per class

Each process writes the rows its own devices sampled (generate.sample_batches with gather=False)
and holds one batch at a time, so memory does not grow with the number of samples; shards are
written atomically (fileio), after the batch's PNGs. A rerun with the same settings skips the
batches whose shards are complete on every process (images are a function of the key, the batch
index, its labels and the batch size only: the result is the one an uninterrupted run writes) and
redoes a missing, partial or corrupt one; a rerun with other settings refuses, naming the field.

Readers (`iter_batches`, `load`): tools.fid, `main --mode=eval --samples=OUTPUT` and the cascade's
load_images. They need every process's shards in one directory: a shared filesystem or bucket
(gs://), or the hosts' directories copied together.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from etils import epath
from PIL import Image

from rin_diffusion import fileio, generate

MANIFEST = "index.json"
FORMAT = "rin_diffusion sample shards v1"
GRID_IMAGES = 100  # The grid shows at most this many images ...
GRID_PER_CLASS = 10  # ... up to this many per class, one row per class (10 classes or fewer).


def shard_path(directory: epath.PathLike, process: int, batch: int) -> epath.Path:
  return epath.Path(directory) / f"shard_{process:03d}_{batch:06d}.npz"


def png_path(directory: epath.PathLike, index: int, label: int) -> epath.Path:
  return epath.Path(directory) / "png" / f"{index:06d}_class{label}.png"


def is_shard_dir(path: str) -> bool:
  """Whether `path` is a directory of sample shards (it has an index.json)."""
  return (epath.Path(path) / MANIFEST).is_file()


def read_manifest(directory: epath.PathLike) -> dict[str, Any] | None:
  path = epath.Path(directory) / MANIFEST
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError:
    return None  # A damaged manifest: written again (the shards are checked one by one).


def manifest_mismatch(directory: epath.PathLike, manifest: dict[str, Any]) -> str | None:
  """The error line when `directory` holds samples made with other settings than `manifest`."""
  saved = read_manifest(directory)
  if saved is None:
    return None
  for field in sorted(set(saved) | set(manifest)):
    have, want = saved.get(field, "absent"), manifest.get(field, "absent")
    if have != want:
      return (f"{epath.Path(directory) / MANIFEST}: these samples were made with {field}="
              f"{json.dumps(have)}, this run has {field}={json.dumps(want)}; rerun with the same "
              "settings to resume, or pass another --output.")
  return None


def _encode_npz(**arrays: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


def _read_shard(path: epath.Path) -> dict[str, np.ndarray] | None:
  """A shard's arrays, or None when it is missing or unreadable."""
  try:
    with path.open("rb") as f, np.load(f) as data:
      return {key: data[key] for key in ("images", "labels", "indices")}
  except Exception:  # noqa: BLE001 -- any failure to read means "redo this batch".
    return None


def _shard_complete(path: epath.Path, indices: np.ndarray, labels: np.ndarray,
                    image_shape: tuple[int, ...]) -> bool:
  """Whether the shard at `path` holds exactly the rows `indices` with their `labels`."""
  shard = _read_shard(path)
  return (shard is not None and shard["images"].dtype == np.uint8
          and shard["images"].shape == (len(indices), *image_shape)
          and np.array_equal(shard["indices"], indices)
          and np.array_equal(shard["labels"], labels[indices]))


def _all_processes(flags: np.ndarray) -> np.ndarray:
  """The elementwise AND of a boolean array over every process."""
  if jax.process_count() == 1:
    return flags
  from jax.experimental import multihost_utils  # noqa: PLC0415

  return np.all(np.asarray(multihost_utils.process_allgather(flags.astype(np.int32))), axis=0)


def _remove_temporaries(directory: epath.Path, process: int) -> None:
  """This process's half-written shards of a killed run (fileio's temporary files)."""
  for path in directory.glob(f"shard_{process:03d}_*.npz.tmp-*"):
    path.unlink(missing_ok=True)


def _write_pngs(directory: epath.Path, images: np.ndarray, labels: np.ndarray,
                indices: np.ndarray) -> None:
  # Written before the batch's shard, so a complete shard means its PNGs are there too.
  for image, label, index in zip(images, labels, indices):
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    png_path(directory, int(index), int(label)).write_bytes(buffer.getvalue())


def write(sample_fn: Callable[..., jax.Array], params: Any, key: jax.Array, labels: np.ndarray,
          *, batch_size: int, mesh: jax.sharding.Mesh, directory: str, manifest: dict[str, Any],
          image_shape: tuple[int, int, int], png: bool = False) -> dict[str, int]:
  """Samples len(labels) images into `directory` (see the module docstring); every process calls it.

  `sample_fn` comes from generate.make_batched_sample_fn; `manifest` describes the run (sampler,
  steps, guidance, seed, checkpoint, labels...); the sample count, batch size, process count, image
  shape and png are added to it. Raises ValueError when `directory` holds samples made with other
  settings. Returns {'batches', 'sampled', 'skipped'} (batch counts).
  """
  labels = np.asarray(labels, np.int32)
  num_samples = len(labels)
  directory_path = epath.Path(directory)
  manifest = json.loads(json.dumps({  # As it reads back: tuples become lists.
      "format": FORMAT, **manifest, "num_samples": num_samples, "batch_size": int(batch_size),
      "num_processes": jax.process_count(), "image_shape": list(image_shape), "png": bool(png)}))
  process = jax.process_index()
  problem = manifest_mismatch(directory_path, manifest)  # Where this process sees a manifest.
  if not _all_processes(np.asarray([problem is None]))[0]:
    raise ValueError(problem or f"{directory}: another process found samples made with other "
                     "settings (see its log); rerun with the same settings or another --output.")
  directory_path.mkdir(parents=True, exist_ok=True)
  if png:
    (directory_path / "png").mkdir(parents=True, exist_ok=True)
  if process == 0:
    fileio.write_bytes_atomically(directory_path / MANIFEST,
                                  json.dumps(manifest, indent=1).encode())
  _remove_temporaries(directory_path, process)

  rows = generate.local_rows(mesh, batch_size)
  num_batches = -(-num_samples // batch_size)

  def local_indices(batch: int) -> np.ndarray:
    indices = batch * batch_size + rows
    return indices[indices < num_samples]

  local_done = np.asarray([_shard_complete(shard_path(directory_path, process, b),
                                           local_indices(b), labels, image_shape)
                           for b in range(num_batches)], bool)
  done = _all_processes(local_done)
  todo = [b for b in range(num_batches) if not done[b]]
  if num_batches - len(todo):
    logging.info("%s: %d of %d batches are on disk already; sampling the other %d.", directory,
                 num_batches - len(todo), num_batches, len(todo))

  grid = GridPicker(labels)
  for b in range(num_batches):  # The grid's images from batches already on disk.
    if done[b] and grid.wants(labels[local_indices(b)]):
      shard = _read_shard(shard_path(directory_path, process, b))
      grid.offer(shard["images"], shard["labels"], shard["indices"])

  remaining = sum(min(batch_size, num_samples - b * batch_size) for b in todo)
  progress = generate.Progress(f"Sampling into {directory}", remaining)
  for batch in generate.sample_batches(sample_fn, params, key, labels, batch_size=batch_size,
                                       mesh=mesh, batch_indices=todo):
    if png:
      _write_pngs(directory_path, batch.images, batch.labels, batch.indices)
    fileio.write_bytes_atomically(
        shard_path(directory_path, process, batch.batch_index),
        _encode_npz(images=batch.images, labels=batch.labels, indices=batch.indices))
    grid.offer(batch.images, batch.labels, batch.indices)
    progress.update(min(batch_size, num_samples - batch.batch_index * batch_size))

  images, columns = grid.gathered()
  if process == 0 and len(images):
    generate.save_grid(images, str(directory_path / "grid.png"), columns=columns)
  return {"batches": num_batches, "sampled": len(todo), "skipped": num_batches - len(todo)}


class GridPicker:
  """Chooses the grid's images while they stream by, holding only those (at most GRID_IMAGES).

  With 10 classes or fewer: the first GRID_PER_CLASS images of every class, one row per class;
  with more: the first image of each of the first GRID_IMAGES classes; with one class (an
  unconditional model): its first GRID_IMAGES images. 'First' is by global sample index.
  """

  def __init__(self, labels: np.ndarray):
    classes = [int(c) for c in np.unique(labels)]
    if len(classes) == 1:
      self.per_class = min(GRID_IMAGES, len(labels))
      self.columns: int | None = int(np.ceil(np.sqrt(self.per_class)))
    elif len(classes) <= GRID_PER_CLASS:
      self.per_class = min(GRID_PER_CLASS, int(np.bincount(labels).max()))
      self.columns = None  # The most images a class got: set when the grid is built.
    else:
      self.per_class, self.columns = 1, GRID_PER_CLASS
    self.classes = classes[:GRID_IMAGES // self.per_class]
    self.kept: dict[int, list[tuple[int, np.ndarray]]] = {c: [] for c in self.classes}

  def wants(self, labels: np.ndarray) -> bool:
    return any(len(self.kept.get(int(c), ())) < self.per_class for c in np.unique(labels)
               if int(c) in self.kept)

  def offer(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    for image, label, index in zip(images, labels, indices):
      kept = self.kept.get(int(label))
      if kept is not None and len(kept) < self.per_class:
        kept.append((int(index), np.array(image)))

  def gathered(self) -> tuple[np.ndarray, int | None]:
    """(images in grid order, columns) from every process's picks; every process calls it."""
    picks = [(c, i, image) for c, kept in self.kept.items() for i, image in kept]
    if jax.process_count() > 1:
      picks = self._gather(picks)
    by_class: dict[int, list[tuple[int, np.ndarray]]] = {c: [] for c in self.classes}
    for label, index, image in sorted(picks, key=lambda p: p[1]):
      if len(by_class[label]) < self.per_class:
        by_class[label].append((index, image))
    if self.columns is not None:  # One class, or one image per class: a plain square-ish grid.
      images = [image for c in self.classes for _, image in by_class[c]]
      return (np.stack(images) if images else np.zeros((0,))), self.columns
    columns = max(len(kept) for kept in by_class.values())
    rows = []
    for c in self.classes:  # One row per class; a short row is padded with white cells.
      row = [image for _, image in by_class[c]]
      if row:
        rows += row + [np.full_like(row[0], 255)] * (columns - len(row))
    return (np.stack(rows) if rows else np.zeros((0,))), columns

  def _gather(self, picks: list[tuple[int, int, np.ndarray]]) -> list[tuple[int, int, np.ndarray]]:
    from jax.experimental import multihost_utils  # noqa: PLC0415

    capacity = self.per_class * len(self.classes)
    shape = next((image.shape for _, _, image in picks), None)
    shapes = multihost_utils.process_allgather(np.asarray(shape or (0, 0, 0), np.int64))
    shape = tuple(int(n) for n in np.max(np.asarray(shapes), axis=0))
    table = {"label": np.zeros((capacity,), np.int32), "index": np.full((capacity,), -1, np.int64),
             "image": np.zeros((capacity, *shape), np.uint8)}
    for row, (label, index, image) in enumerate(picks):
      table["label"][row], table["index"][row], table["image"][row] = label, index, image
    gathered = {k: np.asarray(v).reshape(-1, *np.asarray(v).shape[2:])
                for k, v in multihost_utils.process_allgather(table).items()}
    return [(int(label), int(index), image) for label, index, image
            in zip(gathered["label"], gathered["index"], gathered["image"]) if index >= 0]


# ----------------------------------------------------------------------------------------------
# Readers.


def _incomplete(directory: epath.Path, what: str) -> ValueError:
  return ValueError(
      f"{directory}: {what}: the sampling stopped before the end (rerun the same command to "
      "finish it), or its processes wrote to disks of their own (copy every host's shards into "
      "one directory).")


def iter_batches(directory: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """(uint8 images, labels, indices) of every global batch in order, one batch in memory at a time.

  Raises ValueError unless every shard of every process is there and readable.
  """
  path = epath.Path(directory)
  manifest = read_manifest(path)
  if manifest is None or manifest.get("format") != FORMAT:
    raise ValueError(f"{directory}: not a directory of sample shards (no readable {MANIFEST}; "
                     "`main --mode=sample` writes one).")
  num_samples, batch_size = int(manifest["num_samples"]), int(manifest["batch_size"])
  for batch in range(-(-num_samples // batch_size)):
    shards = []
    for process in range(int(manifest["num_processes"])):
      shard = _read_shard(shard_path(path, process, batch))
      if shard is None:
        raise _incomplete(path, f"{shard_path(path, process, batch).name} is missing or unreadable")
      shards.append(shard)
    indices = np.concatenate([s["indices"] for s in shards])
    order = np.argsort(indices, kind="stable")
    expected = np.arange(batch * batch_size, min((batch + 1) * batch_size, num_samples))
    if not np.array_equal(indices[order], expected):
      raise _incomplete(path, f"the shards of batch {batch} do not hold its samples")
    yield (np.concatenate([s["images"] for s in shards])[order],
           np.concatenate([s["labels"] for s in shards])[order], indices[order])


def load(directory: str) -> tuple[np.ndarray, np.ndarray]:
  """All (uint8 images (N, H, W, C), labels (N,)) of a shard directory, in sample order."""
  images, labels = [], []
  for batch_images, batch_labels, _ in iter_batches(directory):
    images.append(batch_images)
    labels.append(batch_labels)
  return np.concatenate(images), np.concatenate(labels)


def manifest_of(directory: str) -> dict[str, Any]:
  """The manifest of a shard directory (ValueError when there is none)."""
  manifest = read_manifest(directory)
  if manifest is None:
    raise ValueError(f"{directory}: no readable {MANIFEST}: not a directory of sample shards.")
  return manifest

