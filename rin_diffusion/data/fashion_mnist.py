"""Fashion-MNIST as a local TFDS dataset, built from Debian's `dataset-fashion-mnist` idx files.

TFDS's own `fashion_mnist` downloads; this builder (`fashion_mnist_local`) never touches the
network. It reads the four idx `.gz` files from a local directory (by default where
`apt-get install dataset-fashion-mnist` puts them) and writes `array_record` files, so
`builder.as_data_source(split)` gives random access with plain numpy (no TF needed: both features
are Tensor-like).
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
NAME = "fashion_mnist_local"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# split -> (images file, labels file); the names the Debian package (and Zalando) use.
RAW_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class RawFilesNotFoundError(FileNotFoundError):
  """The Fashion-MNIST idx files are not where we looked."""


def missing_files_message(raw_dir: str, missing: list[str]) -> str:
  return (
      f"Fashion-MNIST raw files not found: looked in {raw_dir!r} for {', '.join(missing)}. "
      "Either install them with `apt-get install dataset-fashion-mnist` (they go to "
      f"{DEBIAN_DIR}), or pass `--config.dataset.manual_dir=DIR` (a directory holding the raw "
      "idx .gz files), or `--config.dataset.data_dir=DIR` (a TFDS data_dir in which "
      f"{NAME!r} is already prepared).")


def raw_file_paths(raw_dir: str = "") -> dict[str, tuple[str, str]]:
  """split -> (images path, labels path) in `raw_dir` ('' = the Debian default); checks existence.

  Raises RawFilesNotFoundError (a FileNotFoundError) naming the directory and the ways out.
  """
  raw_dir = os.fspath(raw_dir) or DEBIAN_DIR
  paths = {s: tuple(os.path.join(raw_dir, f) for f in names) for s, names in RAW_FILES.items()}
  missing = [os.path.basename(p) for pair in paths.values() for p in pair if not os.path.isfile(p)]
  if missing:
    raise RawFilesNotFoundError(missing_files_message(raw_dir, missing))
  return paths


def read_idx(path: str) -> np.ndarray:
  """Reads an idx file (optionally gzipped): magic 0x0000TTNN (type TT, NN dims), big-endian sizes."""
  opener = gzip.open if os.fspath(path).endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as error:  # Truncated or not gzip at all.
    raise ValueError(f"{path}: cannot be read as an idx file ({type(error).__name__}: {error}); "
                     "reinstall dataset-fashion-mnist or replace the file.") from None
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise ValueError(f"{path}: not an idx file (magic bytes {data[:4].hex()!r}).")
  ndim = data[3]
  shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
  dtype = np.dtype(_IDX_DTYPES[data[2]])
  offset = 4 + 4 * ndim
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(data) - offset != expected:
    raise ValueError(
        f"{path}: idx header says shape {shape} ({expected} bytes) but {len(data) - offset} "
        "bytes follow.")
  return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def read_split(raw_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, 28, 28, 1), labels int64 (N,)) of one split read from the idx files."""
  images_path, labels_path = raw_file_paths(raw_dir)[split]
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise ValueError(
        f"Fashion-MNIST {split}: images {images.shape} and labels {labels.shape} do not match "
        "(expected (N, 28, 28) and (N,)).")
  if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
    raise ValueError(f"Fashion-MNIST {split}: labels outside [0, {len(CLASS_NAMES)}).")
  return images.astype(np.uint8)[..., None], labels.astype(np.int64)


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (Zalando, MIT) from local idx files. `prepare` writes it as array_record."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Built from Debian's dataset-fashion-mnist idx files."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"`apt-get install dataset-fashion-mnist` (files go to {DEBIAN_DIR}), or put "
      f"{', '.join(n for pair in RAW_FILES.values() for n in pair)} in a directory and pass it as "
      "the manual_dir.")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            # Raw bytes: no int64 upcast on disk, and numpy-only decoding.
            "image": tfds.features.Tensor(
                shape=(28, 28, 1), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def _split_generators(self, dl_manager):
    try:
      raw_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError:  # No manual_dir given (or it is empty): the Debian location.
      raw_dir = DEBIAN_DIR
    raw_file_paths(raw_dir)  # One clear error before TFDS starts writing anything.
    return {split: self._generate_examples(raw_dir, split) for split in RAW_FILES}

  def _generate_examples(self, raw_dir: str, split: str):
    images, labels = read_split(raw_dir, split)
    for i in range(len(images)):
      yield i, {"image": images[i], "label": labels[i]}


def prepare(data_dir: str = "", manual_dir: str = "") -> FashionMnistLocal:
  """Returns the builder for `data_dir` ('' = TFDS default), preparing it from `manual_dir` if needed.

  `manual_dir` ('' = the Debian location) is only read when the dataset is not prepared yet, so an
  already-prepared data_dir works without the raw files. Never downloads.
  """
  builder = FashionMnistLocal(data_dir=data_dir or None)  # Reads the format of a prepared copy.
  if not builder.is_prepared():
    raw_dir = manual_dir or DEBIAN_DIR
    raw_file_paths(raw_dir)
    builder = FashionMnistLocal(data_dir=data_dir or None, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=raw_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return builder
