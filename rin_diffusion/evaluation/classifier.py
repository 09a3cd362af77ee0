"""Classifier metrics of labelled samples: the true CAS, its real-data ceiling, accuracy on samples.

  scorer = load_scorer(config.dataset, cache_dir)    # loads the test split and a real classifier
  scores = scorer(sample_images, sample_labels)      # {'cas', 'cas_real_ceiling', ...}

* `cas`: the Classification Accuracy Score of Ravuri & Vinyals (2019), the one CDM (Ho et al. 2021)
  reports: a classifier is trained on the generated samples, with the labels they were conditioned
  on as targets, and its accuracy is measured on the real test split. It is high only when the
  samples carry what a classifier needs to recognise real images of every class: diversity within a
  class counts, and one good image per class repeated scores little.
* `cas_real_ceiling`: the same network and training (same number of steps) on equally many real
  training images with the same class counts, tested on the same split: the CAS that real data of
  that size reaches, the scale's top. It does not depend on the samples, so it is computed once per
  class count and cached.
* `accuracy_on_samples`: a classifier trained once on the whole real training split classifies the
  samples against their conditioning labels (the "GAN-test" of Shmelkov et al. 2018). It rewards
  recognisable samples but not diversity: a model that draws one perfect image per class scores
  100 %. It is kept beside the CAS as a diagnostic, never under that name.

All classifiers are one small CNN (`Cnn`) that sees images exactly as the sampler writes them (uint8
HWC, scaled to [0, 1] inside the network); real images go through the project's data source and its
training preprocessing (Fashion-MNIST zero-padded to the model's image size), so real and generated
images share one representation. The real classifier's parameters and the ceilings are cached in
the cache directory, keyed by every setting that changes them and by a hash of the code that makes
them (`code_version`), so a changed network, training or preprocessing never reuses a stale file.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from rin_diffusion import fileio
from rin_diffusion.evaluation import versioning

# The datasets the classifiers are built for (configs with eval.cas=True must use one of them).
DATASETS = ("fashion_mnist", "fashion_mnist_local")
VERSION = 2  # Bump for a change the code hash cannot see (a new meaning of a cached number).
EPOCHS = 8  # The real classifier behind accuracy_on_samples: 8 passes over the training split.
BATCH_SIZE = 128
LEARNING_RATE = 2e-3
# A CAS classifier trains for CAS_EPOCHS passes over its images but at least CAS_MIN_STEPS steps,
# so that 1,000 samples (the demo) still get a converged classifier (300 steps: about 5 s on a CPU)
# and 50,000 get the real classifier's 8 epochs.
CAS_EPOCHS = 8
CAS_MIN_STEPS = 300
SEED = 0
_EVAL_BATCH = 500  # Fixed, so that classifying any number of images compiles one program.


class Cnn(nn.Module):
  """Patch convolutions (4x4 stride 4, then 2x2 stride 2) and a two-layer head; uint8 NHWC in.

  Non-overlapping patches make every layer one matrix multiply, which a CPU runs about ten times
  faster than the same-size 3x3 convolutions, at about the same accuracy on centred images.
  """
  num_classes: int
  widths: tuple[int, int] = (64, 128)
  hidden: int = 256

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = images.astype(jnp.float32) / 255.0 - 0.5
    x = nn.relu(nn.Conv(self.widths[0], (4, 4), strides=4, padding="VALID")(x))
    x = nn.relu(nn.Conv(self.widths[1], (2, 2), strides=2, padding="VALID")(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(0.2, deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.hidden)(x))
    x = nn.Dropout(0.3, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


class Classifier(NamedTuple):
  params: Any
  num_classes: int
  test_accuracy: float  # On the real test split, when it was trained.
  train_seconds: float  # Loading the data and training, when it was trained.
  path: str  # The cache file.
  trained: bool  # False when the parameters came from the cache.


@functools.cache  # The code does not change while a process runs.
def code_version() -> str:
  """A hash of the code behind every cached classifier number: network, training, data."""
  from rin_diffusion.data import pipeline  # noqa: PLC0415 -- imports TFDS.

  return versioning.source_hash(Cnn, train, load_split, pipeline.preprocess_image,
                                pipeline.to_uint8_hwc)


def _dataset_key(dataset_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The dataset settings that change which real images a classifier sees, and how."""
  dc = dataset_config
  return {"name": dc.name, "image_size": int(dc.image_size), "channels": int(dc.channels),
          "num_classes": int(dc.num_classes), "pad_to": int(dc.get("pad_to", 0) or 0),
          "data_dir": str(dc.get("data_dir", "")), "manual_dir": str(dc.get("manual_dir", ""))}


def _digest(key: dict[str, Any]) -> str:
  return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_key(dataset_config: ml_collections.ConfigDict, *, epochs: int = EPOCHS,
              test_split: str = "test") -> dict[str, Any]:
  """Everything the real classifier's parameters (and its test accuracy) depend on."""
  return {**_dataset_key(dataset_config), "epochs": int(epochs), "batch_size": BATCH_SIZE,
          "learning_rate": LEARNING_RATE, "seed": SEED, "test_split": test_split,
          "version": VERSION, "code": code_version()}


def cache_path(dataset_config: ml_collections.ConfigDict, cache_dir: str, *, epochs: int = EPOCHS,
               test_split: str = "test") -> str:
  dc = dataset_config
  key = cache_key(dataset_config, epochs=epochs, test_split=test_split)
  name = (f"real_classifier_v{VERSION}_{dc.name}_{dc.image_size}x{dc.image_size}x{dc.channels}_"
          f"{dc.num_classes}classes_{_digest(key)}.npz")
  return os.path.join(cache_dir, name)


def load_split(dataset_config: ml_collections.ConfigDict, split: str,
               ) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images (N, size, size, C), int32 labels) of a split, preprocessed as for training."""
  from rin_diffusion.data import pipeline  # noqa: PLC0415 -- imports TFDS.

  dc = ml_collections.ConfigDict(dataset_config.to_dict())
  dc.split = split
  source = pipeline.make_source(dc)
  images = np.empty((len(source), dc.image_size, dc.image_size, dc.channels), np.uint8)
  labels = np.empty((len(source),), np.int32)
  for index in range(len(source)):
    example = source[index]
    # preprocess_image maps uint8 v to v / 127.5 - 1 exactly; undo that to keep uint8 pixels.
    scaled = pipeline.preprocess_image(example["image"], dc, flip=False)
    images[index] = np.round((scaled + 1.0) * 127.5).astype(np.uint8)
    labels[index] = example["label"]
  return images, labels


def cas_train_steps(num_images: int) -> int:
  """Optimizer steps of a CAS classifier on `num_images` images (see CAS_EPOCHS)."""
  return max(CAS_MIN_STEPS, CAS_EPOCHS * num_images // BATCH_SIZE)


def train(images: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int = EPOCHS,
          steps: int | None = None, batch_size: int = BATCH_SIZE,
          learning_rate: float = LEARNING_RATE, seed: int = SEED) -> Any:
  """Adam with a cosine decay; returns the parameters.

  Trains for `steps` steps (default: `epochs` passes), each batch drawn in order from a fresh
  shuffle of the images per pass; fewer images than one batch are drawn with replacement.
  """
  model = Cnn(num_classes)
  rng = np.random.default_rng(seed)
  params = model.init(jax.random.key(seed), jnp.zeros((1, *images.shape[1:]), jnp.uint8))["params"]
  steps_per_epoch = max(len(images) // batch_size, 1)
  total_steps = int(steps or epochs * steps_per_epoch)
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, total_steps))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batch_images, batch_labels, key):
    def loss_fn(params):
      logits = model.apply({"params": params}, batch_images, train=True, rngs={"dropout": key})
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch_labels).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  key = jax.random.key(seed + 1)
  order = rng.permutation(len(images))
  for index in range(total_steps):
    position = index % steps_per_epoch
    if index and position == 0:
      order = rng.permutation(len(images))
    rows = order[position * batch_size:(position + 1) * batch_size]
    if len(rows) < batch_size:  # Fewer examples than one batch: sample with replacement.
      rows = rng.choice(len(images), batch_size)
    params, opt_state = step(params, opt_state, images[rows], labels[rows],
                             jax.random.fold_in(key, index))
  return params


def make_predict_fn(num_classes: int) -> Callable[[Any, np.ndarray], np.ndarray]:
  """predict(params, uint8 images) -> int32 predicted classes, in fixed-size batches."""
  model = Cnn(num_classes)
  apply = jax.jit(lambda params, x: jnp.argmax(model.apply({"params": params}, x), axis=-1))

  def predict(params, images: np.ndarray) -> np.ndarray:
    predictions = []
    for start in range(0, len(images), _EVAL_BATCH):
      chunk = images[start:start + _EVAL_BATCH]
      padded = np.zeros((_EVAL_BATCH, *images.shape[1:]), np.uint8)
      padded[:len(chunk)] = chunk
      predictions.append(np.asarray(apply(params, padded))[:len(chunk)])
    return (np.concatenate(predictions) if predictions else np.zeros((0,), np.int64)
            ).astype(np.int32)

  return predict


def accuracy(predicted: np.ndarray, labels: np.ndarray, num_classes: int,
             ) -> tuple[float, list[float | None]]:
  """Overall accuracy and the accuracy per class (None for a class with no examples)."""
  predicted, labels = np.asarray(predicted), np.asarray(labels)
  correct = predicted == labels
  per_class = [float(np.mean(correct[labels == c])) if np.any(labels == c) else None
               for c in range(num_classes)]
  return float(np.mean(correct)) if len(labels) else float("nan"), per_class


def check_labels(labels: np.ndarray, num_classes: int, count: int) -> np.ndarray:
  """int32 labels, one per image, each in [0, num_classes); else a ValueError naming the problem."""
  labels = np.asarray(labels)
  if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels: need {count} integer class labels, one per image; got "
                     f"{labels.dtype} {labels.shape}.")
  if count and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels: must lie in [0, {num_classes}); got {labels.min()}..{labels.max()}.")
  return labels.astype(np.int32)


def train_and_test(images: np.ndarray, labels: np.ndarray, test_images: np.ndarray,
                   test_labels: np.ndarray, num_classes: int, *, steps: int | None = None,
                   ) -> tuple[float, list[float | None]]:
  """Accuracy (overall, per class) on the test images of a Cnn trained on the labelled images
  for `steps` steps (default: cas_train_steps(len(images)))."""
  steps = cas_train_steps(len(images)) if steps is None else steps
  params = train(images, labels, num_classes, steps=steps)
  return accuracy(make_predict_fn(num_classes)(params, test_images), test_labels, num_classes)


def matching_subset(train_labels: np.ndarray, labels: np.ndarray, num_classes: int,
                    seed: int = SEED) -> np.ndarray:
  """Indices of training images with the same class counts as `labels` (seed-fixed, sorted)."""
  rng = np.random.default_rng(seed)
  chosen = []
  for c, count in enumerate(np.bincount(labels, minlength=num_classes)):
    members = np.flatnonzero(train_labels == c)
    if count > len(members):
      raise ValueError(f"cas_real_ceiling: the samples hold {count} images of class {c}; the real "
                       f"training split has only {len(members)}.")
    chosen.append(rng.permutation(members)[:count])
  return np.sort(np.concatenate(chosen))


# ----------------------------------------------------------------------------------------------
# The real classifier (accuracy_on_samples): trained once on the training split, cached.


def _save(params: Any, path: str, metadata: dict[str, Any]) -> None:
  flat = {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  buffer = io.BytesIO()
  np.savez(buffer, **flat, **{f"meta:{k}": np.asarray(v) for k, v in metadata.items()})
  fileio.write_bytes_atomically(path, buffer.getvalue())


def _load(path: str, template: Any) -> tuple[Any, dict[str, Any]]:
  with np.load(io.BytesIO(epath.Path(path).read_bytes())) as data:
    arrays = dict(data)
  leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for leaf_path, leaf in leaves_with_paths:
    value = arrays[jax.tree_util.keystr(leaf_path)]
    if value.shape != leaf.shape:
      raise ValueError(f"{path}: parameter {jax.tree_util.keystr(leaf_path)} has shape "
                       f"{value.shape}, expected {leaf.shape}; delete the file to retrain.")
    leaves.append(jnp.asarray(value))
  metadata = {k[len("meta:"):]: v.item() for k, v in arrays.items() if k.startswith("meta:")}
  return jax.tree_util.tree_unflatten(treedef, leaves), metadata


def load_or_train(dataset_config: ml_collections.ConfigDict, cache_dir: str, *,
                  epochs: int = EPOCHS, test_split: str = "test") -> Classifier:
  """The cached real classifier for this dataset and its settings, trained (and cached) first."""
  num_classes = int(dataset_config.num_classes)
  if num_classes <= 0:
    raise ValueError("config.eval.cas=True needs labels: config.dataset.num_classes is 0.")
  path = cache_path(dataset_config, cache_dir, epochs=epochs, test_split=test_split)
  key = json.dumps(cache_key(dataset_config, epochs=epochs, test_split=test_split), sort_keys=True)
  shape = (1, dataset_config.image_size, dataset_config.image_size, dataset_config.channels)
  if epath.Path(path).exists():
    template = jax.eval_shape(
        lambda: Cnn(num_classes).init(jax.random.key(0), jnp.zeros(shape, jnp.uint8))["params"])
    params, metadata = _load(path, template)
    if metadata.get("key") == key:  # A digest collision or a hand-copied file: retrain.
      logging.info("Real classifier loaded from %s (test accuracy %.4f).", path,
                   metadata.get("test_accuracy", float("nan")))
      return Classifier(params, num_classes, float(metadata.get("test_accuracy", float("nan"))),
                        float(metadata.get("train_seconds", float("nan"))), path, trained=False)
  start = time.time()
  train_images, train_labels = load_split(dataset_config, "train")
  params = train(train_images, train_labels, num_classes, epochs=epochs)
  train_seconds = time.time() - start
  test_images, test_labels = load_split(dataset_config, test_split)
  test_accuracy, _ = accuracy(make_predict_fn(num_classes)(params, test_images), test_labels,
                              num_classes)
  logging.info("Real classifier: trained on %d images in %.1f s, test accuracy %.4f; cached in "
               "%s.", len(train_images), train_seconds, test_accuracy, path)
  if jax.process_index() == 0:
    _save(params, path, {"test_accuracy": test_accuracy, "train_seconds": train_seconds,
                         "num_train": len(train_images), "key": key})
  return Classifier(params, num_classes, test_accuracy, train_seconds, path, trained=True)


def accuracy_on_samples(classifier: Classifier, images: np.ndarray, labels: np.ndarray,
                        predict_fn: Callable[[Any, np.ndarray], np.ndarray] | None = None,
                        ) -> dict[str, Any]:
  """The real classifier's accuracy on the samples against their conditioning labels (GAN-test).

  {'accuracy_on_samples': overall, 'accuracy_on_samples_per_class': per class}. Not the CAS.
  """
  predict_fn = predict_fn or make_predict_fn(classifier.num_classes)
  overall, per_class = accuracy(predict_fn(classifier.params, images), labels,
                                classifier.num_classes)
  return {"accuracy_on_samples": overall, "accuracy_on_samples_per_class": per_class}


# ----------------------------------------------------------------------------------------------
# All three metrics of one set of labelled samples.


class SampleScorer:
  """scorer(images, labels) -> {'cas', 'cas_per_class', 'cas_train_steps', 'cas_real_ceiling',
  'accuracy_on_samples', 'accuracy_on_samples_per_class'}.

  Holds the real test split and the real classifier (loaded once); `ceiling(labels, steps)` gives
  the real-data ceiling for samples with those labels, remembered per class count so that an
  evaluation every few thousand steps trains it once. Tests pass in-memory stand-ins.
  """

  def __init__(self, real_classifier: Classifier, test_images: np.ndarray,
               test_labels: np.ndarray, ceiling: Callable[[np.ndarray, int], float]):
    self.real_classifier = real_classifier
    self.num_classes = real_classifier.num_classes
    self.test_images = test_images
    self.test_labels = test_labels
    self._ceiling = ceiling
    self._ceilings: dict[tuple[tuple[int, ...], int], float] = {}
    self._predict = make_predict_fn(self.num_classes)

  def ceiling(self, labels: np.ndarray, steps: int) -> float:
    counts = tuple(int(n) for n in np.bincount(labels, minlength=self.num_classes))
    if (counts, steps) not in self._ceilings:
      self._ceilings[counts, steps] = float(self._ceiling(labels, steps))
    return self._ceilings[counts, steps]

  def __call__(self, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    images = np.asarray(images)
    labels = check_labels(labels, self.num_classes, len(images))
    steps = cas_train_steps(len(images))
    cas, cas_per_class = train_and_test(images, labels, self.test_images, self.test_labels,
                                        self.num_classes, steps=steps)
    return {"cas": cas, "cas_per_class": cas_per_class, "cas_train_steps": steps,
            "cas_real_ceiling": self.ceiling(labels, steps),
            **accuracy_on_samples(self.real_classifier, images, labels, self._predict)}


def _ceiling_path(cache_dir: str, key: dict[str, Any]) -> epath.Path:
  return epath.Path(cache_dir) / f"cas_real_ceiling_{key['name']}_{_digest(key)}.json"


def make_ceiling_fn(dataset_config: ml_collections.ConfigDict, cache_dir: str,
                    test_images: np.ndarray, test_labels: np.ndarray, *,
                    test_split: str = "test") -> Callable[[np.ndarray, int], float]:
  """ceiling(labels, steps): test accuracy of a Cnn trained for `steps` steps on real training
  images with the class counts of `labels`; cached as JSON, keyed by the counts, the settings and
  the code version. The training split is read only when a ceiling is not cached."""
  num_classes = int(dataset_config.num_classes)

  def ceiling(labels: np.ndarray, steps: int) -> float:
    key = {**_dataset_key(dataset_config), "counts": np.bincount(
        labels, minlength=num_classes).tolist(), "steps": int(steps), "batch_size": BATCH_SIZE,
           "learning_rate": LEARNING_RATE, "seed": SEED, "test_split": test_split,
           "version": VERSION, "code": code_version()}
    path = _ceiling_path(cache_dir, key)
    if path.exists():
      cached = json.loads(path.read_text())
      if cached.get("key") == key:
        return float(cached["cas_real_ceiling"])
    start = time.time()
    train_images, train_labels = load_split(dataset_config, "train")
    rows = matching_subset(train_labels, labels, num_classes)
    value, _ = train_and_test(train_images[rows], train_labels[rows], test_images, test_labels,
                              num_classes, steps=steps)
    logging.info("CAS real-data ceiling: %.4f (%d real training images, %d steps, %.1f s); cached "
                 "in %s.", value, len(rows), steps, time.time() - start, path)
    if jax.process_index() == 0:
      fileio.write_bytes_atomically(
          str(path), json.dumps({"cas_real_ceiling": value, "key": key}).encode())
    return value

  return ceiling


def load_scorer(dataset_config: ml_collections.ConfigDict, cache_dir: str, *,
                test_split: str = "test") -> SampleScorer:
  """The SampleScorer of a dataset: its real test split, cached real classifier and ceilings."""
  real_classifier = load_or_train(dataset_config, cache_dir, test_split=test_split)
  test_images, test_labels = load_split(dataset_config, test_split)
  return SampleScorer(real_classifier, test_images, test_labels,
                      make_ceiling_fn(dataset_config, cache_dir, test_images, test_labels,
                                      test_split=test_split))
