"""The classifier metrics: the true CAS (trained on samples, tested on real data), its real-data
ceiling, and accuracy_on_samples (a real classifier applied to samples); training, caching, keys."""

from __future__ import annotations

import gzip
import json
import os
import struct

import jax
import numpy as np
import pytest
import trainer_utils as tu

from rin_diffusion.data import fashion_mnist, pipeline
from rin_diffusion.evaluation import classifier as classifier_lib
from rin_diffusion.evaluation import versioning


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


def test_real_classifier_trains_caches_and_scores_accuracy_on_samples(dataset, tmp_path,
                                                                     monkeypatch):
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

  # accuracy_on_samples of real labelled images is the classifier's accuracy on them, overall and
  # per class; the predictions here come from the network directly (no batching or padding).
  images, labels = classifier_lib.load_split(dataset_config, "test")
  labels = labels.copy()
  labels[:7] = (labels[:7] + 1) % 10  # Some wrong labels, so that the accuracy is not 1.
  score = classifier_lib.accuracy_on_samples(cached, images, labels)
  logits = classifier_lib.Cnn(10).apply({"params": cached.params}, images)
  predicted = np.argmax(np.asarray(logits), axis=-1)
  assert score["accuracy_on_samples"] == pytest.approx(np.mean(predicted == labels))
  assert score["accuracy_on_samples"] < 1.0
  for c in range(10):
    assert score["accuracy_on_samples_per_class"][c] == pytest.approx(
        np.mean(predicted[labels == c] == c))


def test_cache_key_holds_every_setting_and_the_code_version(dataset):
  dataset_config, _ = dataset
  name = os.path.basename(classifier_lib.cache_path(dataset_config, "/c"))
  assert name.startswith(
      f"real_classifier_v{classifier_lib.VERSION}_fashion_mnist_32x32x1_10classes_")
  paths = {classifier_lib.cache_path(dataset_config, "/c")}
  for field, value in (("pad_to", 40), ("data_dir", "/elsewhere"), ("manual_dir", "/raw2")):
    changed = dataset_config.copy_and_resolve_references()
    changed[field] = value
    paths.add(classifier_lib.cache_path(changed, "/c"))
  paths.add(classifier_lib.cache_path(dataset_config, "/c", epochs=3))
  paths.add(classifier_lib.cache_path(dataset_config, "/c", test_split="train"))
  assert len(paths) == 6
  # Changed network, training or preprocessing code: another hash, another file.
  assert classifier_lib.cache_key(dataset_config)["code"] == classifier_lib.code_version()
  assert classifier_lib.code_version() == versioning.source_hash(
      classifier_lib.Cnn, classifier_lib.train, classifier_lib.load_split,
      pipeline.preprocess_image, pipeline.to_uint8_hwc)


def test_source_hash_changes_with_the_code():
  def scale(x):
    return 2 * x

  first = versioning.source_hash(scale)

  def scale(x):  # noqa: F811 -- the same name, other code.
    return 3 * x

  assert versioning.source_hash(scale) != first
  assert versioning.source_hash((1, 2)) != versioning.source_hash((1, 3))


def test_accuracy_per_class_with_a_missing_class():
  overall, per_class = classifier_lib.accuracy(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 4)
  assert overall == 0.75 and per_class == [1.0, 1.0, 0.5, None]


def _padded_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
  images_path, labels_path = fashion_mnist.raw_file_paths()[split]
  images = fashion_mnist.read_idx(images_path)
  images = np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None]  # As training pads them.
  return images, fashion_mnist.read_idx(labels_path).astype(np.int32)


@pytest.mark.skipif(
    not os.path.isdir(fashion_mnist.DEBIAN_DIR),
    reason=f"{fashion_mnist.DEBIAN_DIR} is absent (apt-get install dataset-fashion-mnist)")
def test_cas_rewards_diversity_that_accuracy_on_samples_misses():
  """Real Fashion-MNIST as "samples": 1,000 different training images against one image per class
  repeated 100 times. A real classifier finds both sets perfectly recognisable; the true CAS
  (train on the samples, test on real images) sees that the repeated set teaches nothing."""
  train_images, train_labels = _padded_fashion_mnist("train")
  test_images, test_labels = _padded_fashion_mnist("test")
  test_images, test_labels = test_images[:2000], test_labels[:2000]
  rng = np.random.default_rng(0)
  diverse = rng.permutation(len(train_images))[:1000]
  single = np.array([np.flatnonzero(train_labels == c)[0] for c in range(10)])
  repeated = np.repeat(single, 100)
  steps = 150  # Half of cas_train_steps(1000), to keep the test at seconds; the gap is as wide.
  cas_diverse, _ = classifier_lib.train_and_test(train_images[diverse], train_labels[diverse],
                                                 test_images, test_labels, 10, steps=steps)
  cas_repeated, _ = classifier_lib.train_and_test(train_images[repeated], train_labels[repeated],
                                                  test_images, test_labels, 10, steps=steps)
  assert cas_diverse > 0.7, cas_diverse
  assert cas_repeated < 0.6, cas_repeated
  assert cas_diverse - cas_repeated > 0.15

  # The old metric: a classifier trained on (these and other) real images calls both sets ~100 %.
  known = np.union1d(diverse, single)
  real = classifier_lib.Classifier(
      classifier_lib.train(train_images[known], train_labels[known], 10, steps=steps), 10,
      float("nan"), 0.0, "", trained=True)
  on_repeated = classifier_lib.accuracy_on_samples(real, train_images[repeated],
                                                   train_labels[repeated])
  assert on_repeated["accuracy_on_samples"] >= 0.9


def test_scorer_reports_cas_ceiling_and_accuracy_on_samples_and_caches_the_ceiling(
    dataset, tmp_path, monkeypatch):
  dataset_config, _ = dataset
  cache = str(tmp_path / "cache")
  monkeypatch.setattr(classifier_lib, "CAS_MIN_STEPS", 60)  # Seconds, not minutes.
  scorer = classifier_lib.load_scorer(dataset_config, cache)
  train_images, train_labels = classifier_lib.load_split(dataset_config, "train")
  samples, labels = train_images[:200], train_labels[:200]
  scores = scorer(samples, labels)
  assert set(scores) == {"cas", "cas_per_class", "cas_train_steps", "cas_real_ceiling",
                         "accuracy_on_samples", "accuracy_on_samples_per_class"}
  assert scores["cas_train_steps"] == 60
  assert 0.9 <= scores["cas"] <= 1.0 and 0.9 <= scores["cas_real_ceiling"] <= 1.0
  assert scores["accuracy_on_samples"] >= 0.95
  # The ceiling: trained on real images with the samples' class counts, tested on the test split.
  rows = classifier_lib.matching_subset(train_labels, labels, 10)
  np.testing.assert_array_equal(np.bincount(train_labels[rows], minlength=10),
                                np.bincount(labels, minlength=10))
  expected, _ = classifier_lib.train_and_test(train_images[rows], train_labels[rows],
                                              scorer.test_images, scorer.test_labels, 10,
                                              steps=60)
  assert scores["cas_real_ceiling"] == pytest.approx(expected)
  # A second scorer (a restarted run) reads the ceiling from the cache: no training of it.
  again = classifier_lib.load_scorer(dataset_config, cache)
  monkeypatch.setattr(classifier_lib, "load_split",
                      lambda *a, **k: pytest.fail("the ceiling should come from the cache"))
  assert again.ceiling(labels, 60) == scores["cas_real_ceiling"]


def test_matching_subset_and_label_checks():
  train_labels = np.array([0, 1, 1, 2, 2, 2])
  rows = classifier_lib.matching_subset(train_labels, np.array([2, 2, 1]), 3)
  assert sorted(train_labels[rows].tolist()) == [1, 2, 2]
  with pytest.raises(ValueError, match="2 images of class 0"):
    classifier_lib.matching_subset(train_labels, np.array([0, 0]), 3)
  with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
    classifier_lib.check_labels(np.array([0, 10]), 10, 2)
  with pytest.raises(ValueError, match="need 3 integer class labels"):
    classifier_lib.check_labels(np.array([0, 1]), 10, 3)


class _PixelInception:
  """A stand-in Inception for tools.fid: pool3 = the first 8 pixels, no logits."""
  source, has_logits = "stand-in pixels", False

  def compute(self, images, batch_size=32):
    del batch_size
    pool3 = np.asarray(images, np.float32).reshape(len(images), -1)[:, :8]
    return {"pool3": pool3, "logits": None, "logits_unbiased": None}


def test_fid_tool_cas_reads_labels_and_prints_the_three_scores(dataset, tmp_path, monkeypatch,
                                                               capsys):
  from rin_diffusion.evaluation import inception as inception_lib  # noqa: PLC0415
  from rin_diffusion.evaluation import reference  # noqa: PLC0415
  from rin_diffusion.tools import fid as fid_tool  # noqa: PLC0415

  dataset_config, _ = dataset
  monkeypatch.setattr(classifier_lib, "CAS_MIN_STEPS", 30)
  monkeypatch.setattr(inception_lib, "load_inception", lambda *a, **k: _PixelInception())
  features = np.random.default_rng(0).normal(size=(50, 8))
  monkeypatch.setattr(reference, "reference_statistics", lambda *a, **k: {
      "mu": features.mean(0), "sigma": np.cov(features.T), "features": features,
      "num_images": 50, "description": "stand-in"})
  images, labels = classifier_lib.load_split(dataset_config, "train")
  path = str(tmp_path / "samples.npz")
  np.savez(path, images=images[:100], labels=labels[:100])
  flags = [f"--cache_dir={tmp_path / 'cache'}", f"--data_dir={dataset_config.data_dir}",
           f"--manual_dir={dataset_config.manual_dir}"]
  assert fid_tool.main([path, "fashion_mnist:test", "--cas", *flags]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for key in ("cas", "cas_real_ceiling", "accuracy_on_samples"):
    assert 0.0 <= result[key] <= 1.0, (key, result[key])
  assert len(result["cas_per_class"]) == 10 and result["cas_train_steps"] == 30
  assert result["cas_test_split"] == "fashion_mnist:test"
  # Without labels, or against a dataset the classifiers are not built for: one error line.
  np.savez(path, images=images[:100])
  assert fid_tool.main([path, "fashion_mnist:test", "--cas", *flags]) == 2
  assert "hold no 'labels'" in capsys.readouterr().err
  assert fid_tool.main([path, "imagenet2012:validation", "--cas", *flags]) == 2
  assert "--cas: the reference 'imagenet2012:validation'" in capsys.readouterr().err
