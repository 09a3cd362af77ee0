"""Random-access image sources and deterministic, resumable, per-process batches.

The batch for step `s` is a pure function of (seed, s, global batch size): global example slot
p = s * global_batch + j (j < global_batch) reads example permutation(seed, epoch)[p % n] with
epoch = p // n, and its left-right flip is drawn from a generator seeded by (seed, p). Nothing
depends on the process layout, the number of decoding threads or prefetching, so process k of K
takes slots j in [k * local, (k + 1) * local) and the K local batches concatenate to the one-process
batch. Resuming is `BatchIterator(maker, start_step=saved_position)`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import ml_collections
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from rin_diffusion.data import fashion_mnist, grain_loader, synthetic_imagenet

# Datasets whose images are smaller than `image_size` are zero-padded (centred) instead of being
# upsampled: Fashion-MNIST 28x28 -> 32x32 puts 2 black pixels on each side.
PAD_DATASETS = ("fashion_mnist", fashion_mnist.NAME)
# Tags that keep the permutation and flip random streams apart for the same seed.
_PERMUTATION_STREAM = 0
_FLIP_STREAM = 1
# config.dataset.loader: decoding threads in this process, or grain worker processes.
LOADERS = ("threads", "grain")


class RandomAccessSource(Protocol):
  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> dict[str, Any]: ...


class DatasetNotReadyError(FileNotFoundError):
  """A TFDS dataset is not prepared in data_dir, or not in a random-access (array_record) format."""


def validate_dataset_config(dataset_config: ml_collections.ConfigDict) -> None:
  """Raises one ValueError naming the first bad `config.dataset` field, its value and what is allowed."""
  dc = dataset_config
  for field in ("name", "split"):
    value = dc[field]
    if not isinstance(value, str) or not value:
      raise ValueError(f"config.dataset.{field}={value!r}: must be a non-empty string.")
  checks = (
      ("image_size", lambda v: v > 0, "a positive integer"),
      ("channels", lambda v: v in (1, 3), "1 or 3"),
      ("num_classes", lambda v: v >= 0, "an integer >= 0 (0: unconditional)"),
      ("num_workers", lambda v: v >= 0,
       "an integer >= 0 (threads, or grain processes; 0: decode in the calling thread)"),
  )
  for field, ok, allowed in checks:
    value = dc[field]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not ok(value):
      raise ValueError(f"config.dataset.{field}={value!r}: must be {allowed}.")
  loader = dc.get("loader", "threads")
  if loader not in LOADERS:
    raise ValueError(f"config.dataset.loader={loader!r}: must be one of {LOADERS}.")
  for field in ("data_dir", "manual_dir"):
    _check_directory(f"config.dataset.{field}", dc[field])


def _check_directory(name: str, path: Any) -> None:
  """A local directory path ('' = default) must not run into a file; it need not exist yet."""
  if not isinstance(path, str):
    raise ValueError(f"{name}={path!r}: must be a directory path ('' = the default).")
  if not path or "://" in path:
    return
  existing = os.path.abspath(os.path.expanduser(path))
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f"{name}={path!r}: {existing} is a file, not a directory; pass a directory.")


# ----------------------------------------------------------------------------------------------
# Sources.


def to_uint8_hwc(image: Any) -> np.ndarray:
  """An already-decoded array (HW or HWC) or encoded image bytes (PNG, JPEG, ...) -> uint8 HWC."""
  if isinstance(image, (bytes, bytearray, memoryview, np.bytes_)):
    with PIL.Image.open(io.BytesIO(bytes(image))) as pil:
      if pil.mode not in ("L", "RGB"):
        pil = pil.convert("L" if pil.mode in ("1", "I", "I;16", "F") else "RGB")
      image = np.asarray(pil)
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"Expected an HW, HWx1 or HWx3 image; got shape {image.shape}.")
  if image.dtype != np.uint8:
    raise ValueError(f"Expected uint8 images; got {image.dtype}.")
  return image


class TfdsSource:
  """Wraps a TFDS random-access data source: [i] -> {'image': uint8 HWC, 'label': int}.

  The label is 0 for unconditional configs (num_classes 0) and for datasets without a 'label'.
  """

  def __init__(self, data_source: Sequence[dict[str, Any]], num_classes: int, description: str):
    self.data_source = data_source
    self.num_classes = num_classes
    self.description = description

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self.data_source[int(index)]
    label = 0
    if self.num_classes and "label" in example:
      label = int(example["label"])
      if not 0 <= label < self.num_classes:
        raise ValueError(
            f"{self.description}: example {index} has label {label}, outside "
            f"config.dataset.num_classes={self.num_classes}.")
    return {"image": to_uint8_hwc(example["image"]), "label": label}

  def __repr__(self) -> str:
    return f"TfdsSource({self.description}, {len(self)} examples)"


def _not_ready_message(name: str, data_dir: str, reason: str) -> str:
  where = data_dir or "the TFDS default data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
  return (
      f"config.dataset.name={name!r}: {reason} in {where}. Random access needs the dataset prepared "
      f"in array_record format, e.g. `tfds build {name} --data_dir=DIR --file_format=array_record` "
      "(add `--manual_dir=DIR` for datasets such as imagenet2012 whose files you download by hand), "
      "then pass `--config.dataset.data_dir=DIR`.")


def _check_split(builder, split: str) -> None:
  try:
    builder.info.splits[split]
  except (KeyError, ValueError) as e:
    raise ValueError(
        f"config.dataset.split={split!r}: not a split of {builder.name!r}; allowed: "
        f"{sorted(builder.info.splits)} (TFDS slicing such as 'train[:10%]' also works).") from e


def make_source(dataset_config: ml_collections.ConfigDict) -> TfdsSource:
  """A random-access source for `config.dataset`: len(src), src[i] -> {'image', 'label'}.

  'fashion_mnist' is the local builder (prepared from the raw idx files on first use, never
  downloading) and 'synthetic_imagenet2012' the generated stand-in for imagenet2012 (written on
  first use); any other name is a TFDS dataset that must already be prepared in array_record
  format in `config.dataset.data_dir` ('' = TFDS default).
  """
  validate_dataset_config(dataset_config)
  name, split = dataset_config.name, dataset_config.split
  data_dir = dataset_config.data_dir
  if name in PAD_DATASETS:
    builder = fashion_mnist.prepare(data_dir, dataset_config.manual_dir)
  elif name == synthetic_imagenet.NAME:
    builder = synthetic_imagenet.prepare(data_dir)
  else:
    try:
      builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise ValueError(
          f"config.dataset.name={name!r}: unknown dataset; allowed: 'fashion_mnist' (built in), "
          f"{synthetic_imagenet.NAME!r} (generated) or "
          "a TFDS dataset name such as 'imagenet2012', 'lsun/church_outdoor' or 'celeb_a' (a "
          f"registered builder, or one prepared in config.dataset.data_dir={data_dir!r}).") from e
    if not builder.is_prepared():
      raise DatasetNotReadyError(_not_ready_message(name, data_dir, "not prepared"))
  _check_split(builder, split)
  if "image" not in builder.info.features:
    raise ValueError(
        f"config.dataset.name={name!r}: has no 'image' feature (features: "
        f"{sorted(builder.info.features)}).")
  try:
    data_source = builder.as_data_source(split)
  except NotImplementedError as e:
    file_format = builder.info.file_format.value if builder.info.file_format else None
    raise DatasetNotReadyError(
        _not_ready_message(name, data_dir, f"prepared as {file_format!r}, not array_record")) from e
  except FileNotFoundError as e:
    raise DatasetNotReadyError(_not_ready_message(name, data_dir, f"files missing ({e})")) from e
  return TfdsSource(data_source, dataset_config.num_classes, f"{name}:{split}")


# ----------------------------------------------------------------------------------------------
# Preprocessing.


def preprocess_image(
    image: np.ndarray, dataset_config: ml_collections.ConfigDict, flip: bool,
    size: int | None = None) -> np.ndarray:
  """uint8 HWC -> float32 (size, size, channels) in [-1, 1]; size defaults to image_size.

  A super-resolution stage's low-resolution image is this same function at its `size`, so the
  pair (x, z) comes from one crop, one canvas and one flip.
  Fashion-MNIST no larger than the canvas (config.dataset.pad_to, else image_size): zero-padded,
  centred on it (black: -1 after scaling), then resized to `size` as below if they differ.
  Otherwise: the largest centred square crop, resized to `size` with PIL's BICUBIC
  (reducing_gap=None) on uint8. PIL rather than tf.image.resize(bicubic, antialias=True): the same
  Keys a=-0.5 cubic kernel with its support widened by the downscale factor (i.e. antialiased, as
  in the reference), but no TF dependency, PIL releases the GIL so decoding threads run in
  parallel, and the uint8 result (rounded, clipped) keeps the data exactly in [-1, 1]; the price is
  a quantisation error of at most half a grey level.
  Grey images are repeated to 3 channels when config.dataset.channels is 3; RGB with channels 1 is
  an error. `flip` mirrors left-right.
  """
  size = int(size or dataset_config.image_size)
  channels = dataset_config.channels
  canvas = int(dataset_config.get("pad_to", 0) or dataset_config.image_size)
  image = to_uint8_hwc(image)
  if image.shape[-1] == 3 and channels == 1:
    raise ValueError(
        f"config.dataset.channels=1 but {dataset_config.name!r} images are RGB; allowed: 3 "
        "(grey images can be repeated to 3 channels, not the reverse).")
  height, width = image.shape[:2]
  if dataset_config.name in PAD_DATASETS and height <= canvas and width <= canvas:
    top, left = (canvas - height) // 2, (canvas - width) // 2
    image = np.pad(image, ((top, canvas - height - top), (left, canvas - width - left), (0, 0)))
  else:
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[top:top + side, left:left + side]
  if image.shape[0] != size:
    pil = PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    pil = pil.resize((size, size), PIL.Image.Resampling.BICUBIC, reducing_gap=None)
    image = np.asarray(pil).reshape(size, size, image.shape[-1])
  if flip:
    image = image[:, ::-1]
  if channels == 3 and image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image.astype(np.float32) / 127.5 - 1.0


# ----------------------------------------------------------------------------------------------
# Deterministic batches.


def _seed_words(seed: int) -> int:
  return int(seed) % (1 << 64)  # SeedSequence wants non-negative integers.


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order in which epoch `epoch` visits the examples: a permutation of range(num_examples)."""
  rng = np.random.default_rng([_seed_words(seed), _PERMUTATION_STREAM, int(epoch)])
  return rng.permutation(num_examples)


def slot_flip(seed: int, slot: int) -> bool:
  """Whether global example slot `slot` is flipped (probability 1/2; independent of layout)."""
  return bool(np.random.default_rng([_seed_words(seed), _FLIP_STREAM, int(slot)]).random() < 0.5)


class BatchMaker:
  """The pure function step -> this process's slice of the deterministic global batch `step`.

  `maker(step)` -> {'image': float32 (local_batch, H, W, C), 'label': int32 (local_batch,)} (plus
  'low_res' for a super-resolution stage). It holds no threads, so it pickles into the worker
  processes of a multi-process loader; `maker(step, pool)` decodes the images on a thread pool.
  """

  def __init__(
      self,
      source: RandomAccessSource,
      dataset_config: ml_collections.ConfigDict,
      global_batch_size: int,
      seed: int,
      process_index: int = 0,
      process_count: int = 1,
      low_resolution: int = 0,
  ):
    validate_dataset_config(dataset_config)
    if global_batch_size <= 0:
      raise ValueError(f"config.batch_size={global_batch_size}: must be a positive integer.")
    if process_count <= 0 or not 0 <= process_index < process_count:
      raise ValueError(
          f"process_index={process_index}, process_count={process_count}: need "
          "0 <= process_index < process_count.")
    if global_batch_size % process_count:
      raise ValueError(
          f"config.batch_size={global_batch_size} must be divisible by the process count "
          f"({process_count}).")
    self.source = source
    self.dataset_config = dataset_config
    self.global_batch_size = int(global_batch_size)
    self.local_batch_size = self.global_batch_size // process_count
    self.seed = int(seed)
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.num_examples = len(source)
    if self.num_examples == 0:
      raise ValueError(f"config.dataset: the source {source!r} has no examples.")
    self.low_resolution = int(low_resolution)
    self._new_permutation_cache()

  def _new_permutation_cache(self) -> None:
    self._permutations: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._lock = threading.Lock()

  # A lock does not pickle; each worker process builds its own cache.
  def __getstate__(self) -> dict[str, Any]:
    return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_permutations")}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._new_permutation_cache()

  def _permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      if epoch not in self._permutations:
        self._permutations[epoch] = epoch_permutation(self.seed, epoch, self.num_examples)
        while len(self._permutations) > 3:  # Enough for a batch straddling two epochs + prefetch.
          self._permutations.popitem(last=False)
      return self._permutations[epoch]

  def slots(self, step: int) -> np.ndarray:
    """This process's global example slots for `step`."""
    first = step * self.global_batch_size + self.process_index * self.local_batch_size
    return np.arange(first, first + self.local_batch_size, dtype=np.int64)

  def indices_and_flips(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(example indices, flip flags) of this process's slice of batch `step`."""
    slots = self.slots(step)
    epochs, offsets = np.divmod(slots, self.num_examples)
    indices = np.empty_like(slots)
    for epoch in np.unique(epochs):
      mask = epochs == epoch
      indices[mask] = self._permutation(int(epoch))[offsets[mask]]
    if self.dataset_config.random_flip:
      flips = np.array([slot_flip(self.seed, p) for p in slots], dtype=bool)
    else:
      flips = np.zeros(len(slots), dtype=bool)
    return indices, flips

  def _load(self, index_and_flip: tuple[int, bool]) -> dict[str, Any]:
    index, flip = index_and_flip
    example = self.source[int(index)]
    item = {"image": preprocess_image(example["image"], self.dataset_config, flip),
            "label": int(example["label"])}
    if self.low_resolution:
      item["low_res"] = preprocess_image(example["image"], self.dataset_config, flip,
                                         size=self.low_resolution)
    return item

  def __call__(self, step: int,
               pool: concurrent.futures.Executor | None = None) -> dict[str, np.ndarray]:
    indices, flips = self.indices_and_flips(int(step))
    items = list(zip(indices.tolist(), flips.tolist()))
    loaded = [self._load(item) for item in items] if pool is None else list(
        pool.map(self._load, items))
    batch = {
        "image": np.stack([item["image"] for item in loaded]),
        "label": np.asarray([item["label"] for item in loaded], dtype=np.int32),
    }
    if self.low_resolution:
      batch["low_res"] = np.stack([item["low_res"] for item in loaded])
    return batch


class BatchIterator:
  """Yields this process's slice of the deterministic global batch for steps start_step, +1, ...

  `next(it)` -> BatchMaker's batch of the next step. `position` is the step the next `next()`
  returns; save it and pass it back as `start_step`. The following batch is prepared in a
  background thread while the caller uses the current one, its images decoded by
  `config.dataset.num_workers` threads; what a step contains never depends on that, on
  `num_workers` or on the process layout.
  """

  def __init__(self, maker: BatchMaker, start_step: int = 0):
    if start_step < 0:
      raise ValueError(f"start_step={start_step}: must be >= 0.")
    self.maker = maker
    self.source = maker.source
    self.local_batch_size = maker.local_batch_size
    self.low_resolution = maker.low_resolution
    self._position = int(start_step)
    workers = self.num_workers = int(maker.dataset_config.num_workers)
    self._decode_pool = (
        concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="decode")
        if workers > 0 else None)
    self._prefetch_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prefetch")
    self._pending: tuple[int, concurrent.futures.Future] | None = None

  def __repr__(self) -> str:
    return (f"BatchIterator({self.num_workers} decoding threads, {self.source!r}, "
            f"{self.local_batch_size} examples per step)")

  @property
  def position(self) -> int:
    return self._position

  def indices_and_flips(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    return self.maker.indices_and_flips(step)

  def get_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's slice of batch `step`; a pure function of (seed, step, batch size, layout)."""
    return self.maker(step, self._decode_pool)

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    step, pending, self._pending = self._position, self._pending, None
    if pending is not None and pending[0] == step:
      batch = pending[1].result()
    else:
      batch = self.get_batch(step)
    self._position = step + 1
    if self._prefetch_pool is not None:
      self._pending = (step + 1, self._prefetch_pool.submit(self.get_batch, step + 1))
    return batch

  def close(self) -> None:
    """Stops the background threads (an in-flight prefetch is finished and dropped)."""
    self._pending = None
    for pool in (self._prefetch_pool, self._decode_pool):
      if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
    self._prefetch_pool = self._decode_pool = None

  def __enter__(self) -> BatchIterator:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def first_examples(source: RandomAccessSource, dataset_config: ml_collections.ConfigDict,
                   count: int, low_resolution: int = 0) -> dict[str, np.ndarray]:
  """Examples 0 .. count - 1 of `source`, unflipped (fixed inputs for sample grids)."""
  count = min(int(count), len(source))
  examples = [source[index] for index in range(count)]
  batch = {
      "image": np.stack([preprocess_image(e["image"], dataset_config, False) for e in examples]),
      "label": np.asarray([int(e["label"]) for e in examples], np.int32),
  }
  if low_resolution:
    batch["low_res"] = np.stack([preprocess_image(e["image"], dataset_config, False,
                                                  size=low_resolution) for e in examples])
  return batch


def make_iterator(
    config: ml_collections.ConfigDict,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    *,
    source: RandomAccessSource | None = None,
) -> BatchIterator | grain_loader.GrainBatchIterator:
  """Batches `source` (default: make_source(config.dataset)) with config.batch_size and seed.

  A BatchIterator, or with config.dataset.loader 'grain' a grain_loader.GrainBatchIterator (same
  interface, same batches). A super-resolution stage (config.cascade.low_resolution > 0) also gets
  'low_res', float32 (local_batch, low, low, C): the same example through the same preprocessing
  at that size.
  """
  if source is None:
    source = make_source(config.dataset)
  cascade = config.get("cascade")
  maker = BatchMaker(source, config.dataset, config.batch_size, config.seed, process_index,
                     process_count, int(cascade.low_resolution) if cascade is not None else 0)
  if config.dataset.get("loader", "threads") == "grain":
    return grain_loader.GrainBatchIterator(maker, start_step, config.dataset.num_workers)
  return BatchIterator(maker, start_step)
