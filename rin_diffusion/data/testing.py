"""Tiny synthetic datasets for tests (TFDS builders must live in an importable module).

`RinTestImages` ('rin_test_images'): RGB images of varied, mostly non-square sizes stored as PNG
`tfds.features.Image` (like ImageNet), with a few known images for checking crop and resize.
Also `write_fake_fashion_mnist`: a small Fashion-MNIST in idx .gz format.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import tensorflow_datasets as tfds

TEST_IMAGES_NAME = "rin_test_images"
TEST_IMAGES_CLASSES = 5
CONSTANT_INDEX = 0  # 40x60, every pixel CONSTANT_VALUE.
CONSTANT_VALUE = 100
WIDE_CENTRE_INDEX = 1  # 48x80: the centred 48x48 square white, the side bands black.
TALL_CENTRE_INDEX = 2  # 90x50: the centred 50x50 square white, the top and bottom bands black.


def _test_image(index: int) -> np.ndarray:
  if index == CONSTANT_INDEX:
    return np.full((40, 60, 3), CONSTANT_VALUE, np.uint8)
  if index == WIDE_CENTRE_INDEX:
    image = np.zeros((48, 80, 3), np.uint8)
    image[:, 16:64] = 255
    return image
  if index == TALL_CENTRE_INDEX:
    image = np.zeros((90, 50, 3), np.uint8)
    image[20:70] = 255
    return image
  rng = np.random.default_rng(index)
  height, width = rng.integers(20, 100, size=2)
  return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


class RinTestImages(tfds.core.GeneratorBasedBuilder):
  """Synthetic RGB images of varied sizes: 12 train, 4 test; labels index % 5.

  Pass file_format='array_record' when preparing it for random access.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Synthetic test data."}
  SPLIT_SIZES = {"train": 12, "test": 4}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=TEST_IMAGES_CLASSES),
            "index": tfds.features.Scalar(dtype=np.int64),  # TFDS stores examples shuffled.
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {
        "train": self._generate_examples(0, self.SPLIT_SIZES["train"]),
        "test": self._generate_examples(100, self.SPLIT_SIZES["test"]),
    }

  def _generate_examples(self, first: int, count: int):
    for i in range(first, first + count):
      yield i, {"image": _test_image(i), "label": i % TEST_IMAGES_CLASSES, "index": i}


def test_image(index: int) -> np.ndarray:
  """The image RinTestImages stores as train example `index` (test example `index - 100`)."""
  return _test_image(index)


def _write_idx_gz(path: str, array: np.ndarray) -> None:
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_fake_fashion_mnist(
    directory: str, num_train: int = 64, num_test: int = 16, seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Writes Fashion-MNIST-format idx .gz files; returns split -> (images (N, 28, 28), labels)."""
  from rin_diffusion.data import fashion_mnist

  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  arrays = {}
  for split, count in (("train", num_train), ("test", num_test)):
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    rng.shuffle(labels)
    images_name, labels_name = fashion_mnist.RAW_FILES[split]
    _write_idx_gz(os.path.join(directory, images_name), images)
    _write_idx_gz(os.path.join(directory, labels_name), labels)
    arrays[split] = (images, labels)
  return arrays
