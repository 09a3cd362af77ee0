"""The CAS classifier: trains on the data source, caches, and scores labelled images."""

from __future__ import annotations

import gzip
import os
import struct

import jax
import numpy as np
import pytest
import trainer_utils as tu

from rin_diffusion.data import fashion_mnist
from rin_diffusion.evaluation import classifier as classifier_lib


def _write_idx(path: str, array: np.ndarray) -> None:
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def _patterned(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """28x28 noise (0..80) with a bright bar whose row and column band depend on the class."""
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(count) % 10).astype(np.uint8)
  images = rng.integers(0, 80, size=(count, 28, 28), dtype=np.uint8)
  for image, label in zip(images, labels):
    row = 3 + 2 * int(label)
    left = 2 if label % 2 else 14
    image[row:row + 2, left:left + 12] = 255
  return images, labels


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("patterned")
  raw = root / "raw"
  raw.mkdir()
  arrays = {"train": _patterned(640, 0), "test": _patterned(200, 1)}
  for split, (images, labels) in arrays.items():
    images_name, labels_name = fashion_mnist.RAW_FILES[split]
    _write_idx(str(raw / images_name), images)
    _write_idx(str(raw / labels_name), labels)
  config = tu.tiny_config(str(root / "unused"))
  config.dataset.manual_dir = str(raw)
  config.dataset.data_dir = str(root / "tfds")
  return config.dataset, arrays


def test_load_split_pads_like_the_training_pipeline(dataset):
  dataset_config, arrays = dataset
  images, labels = classifier_lib.load_split(dataset_config, "test")
  raw_images, raw_labels = arrays["test"]
  assert images.shape == (200, 32, 32, 1) and images.dtype == np.uint8
  # The builder may store examples in any order: match them by content.
  order = {raw.tobytes(): i for i, raw in enumerate(raw_images)}
  matched = [order[image[2:30, 2:30, 0].tobytes()] for image in images]
  np.testing.assert_array_equal(labels, raw_labels[matched])
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  assert not images[:, border].any()  # Zero (black) padding, 2 pixels on every side.


def test_trains_caches_and_cas_equals_accuracy(dataset, tmp_path, monkeypatch):
  dataset_config, _ = dataset
  cache = str(tmp_path / "cache")
  trained = classifier_lib.load_or_train(dataset_config, cache)
  assert trained.trained and os.path.exists(trained.path)
  assert trained.test_accuracy >= 0.95, trained.test_accuracy

  # The second call loads the cache; training would fail the test.
  monkeypatch.setattr(classifier_lib, "train", lambda *a, **k: pytest.fail("retrained"))
  cached = classifier_lib.load_or_train(dataset_config, cache)
  assert not cached.trained and cached.test_accuracy == pytest.approx(trained.test_accuracy)
  for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(cached.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # CAS of real labelled images is the classifier's accuracy on them, overall and per class;
  # the predictions here come from the network directly (no batching or padding).
  images, labels = classifier_lib.load_split(dataset_config, "test")
  labels = labels.copy()
  labels[:7] = (labels[:7] + 1) % 10  # Some wrong labels, so that the accuracy is not 1.
  score = classifier_lib.classification_accuracy_score(cached, images, labels)
  logits = classifier_lib.Cnn(10).apply({"params": cached.params}, images)
  predicted = np.argmax(np.asarray(logits), axis=-1)
  assert score["cas"] == pytest.approx(np.mean(predicted == labels))
  assert score["cas"] < 1.0
  for c in range(10):
    assert score["cas_per_class"][c] == pytest.approx(np.mean(predicted[labels == c] == c))


def test_cache_key_names_dataset_size_and_version(dataset):
  dataset_config, _ = dataset
  name = os.path.basename(classifier_lib.cache_path(dataset_config, "/c"))
  assert name == f"cas_classifier_v{classifier_lib.VERSION}_fashion_mnist_32x32x1_10classes.npz"


def test_accuracy_per_class_with_a_missing_class():
  overall, per_class = classifier_lib.accuracy(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 4)
  assert overall == 0.75 and per_class == [1.0, 1.0, 0.5, None]
