"""Classification accuracy score (CAS): a small CNN trained once on the real data, applied to samples.

CAS (Ravuri & Vinyals 2019, as used for conditional diffusion models) is the accuracy of a
classifier trained on real images when it classifies class-conditional *samples* against the labels
they were conditioned on: high when every sample looks like its class. Here the classifier is
trained on the real training split of the run's dataset (through the project's data source and its
preprocessing: Fashion-MNIST zero-padded to the model's image size) and reported on the real test
split; it sees images exactly as the sampler writes them (uint8 HWC, scaled to [0, 1] inside the
network), so real and generated images go through one representation.

The trained parameters are cached as an .npz in the cache directory, keyed by the dataset, image
size, channels, class count and VERSION (bump it when the network or its training changes); a
second call loads them instead of training.
"""

from __future__ import annotations

import io
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

# The datasets the classifier is built for (configs with eval.cas=True must use one of them).
DATASETS = ("fashion_mnist", "fashion_mnist_local")
VERSION = 1
EPOCHS = 8
BATCH_SIZE = 128
LEARNING_RATE = 2e-3
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


def cache_path(dataset_config: ml_collections.ConfigDict, cache_dir: str) -> str:
  dc = dataset_config
  name = (f"cas_classifier_v{VERSION}_{dc.name}_{dc.image_size}x{dc.image_size}x{dc.channels}_"
          f"{dc.num_classes}classes.npz")
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


def train(images: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int = EPOCHS,
          batch_size: int = BATCH_SIZE, learning_rate: float = LEARNING_RATE, seed: int = 0,
          ) -> Any:
  """Adam with a cosine decay over `epochs` shuffled passes; returns the parameters."""
  model = Cnn(num_classes)
  rng = np.random.default_rng(seed)
  params = model.init(jax.random.key(seed), jnp.zeros((1, *images.shape[1:]), jnp.uint8))["params"]
  steps_per_epoch = max(len(images) // batch_size, 1)
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch))
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
  for epoch in range(epochs):
    order = rng.permutation(len(images))
    for index in range(steps_per_epoch):
      rows = order[index * batch_size:(index + 1) * batch_size]
      if len(rows) < batch_size:  # Fewer examples than one batch: sample with replacement.
        rows = rng.choice(len(images), batch_size)
      params, opt_state = step(params, opt_state, images[rows], labels[rows],
                               jax.random.fold_in(key, epoch * steps_per_epoch + index))
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


def _save(params: Any, path: str, metadata: dict[str, float]) -> None:
  flat = {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  buffer = io.BytesIO()
  np.savez(buffer, **flat, **{f"meta:{k}": np.asarray(v) for k, v in metadata.items()})
  fileio.write_bytes_atomically(path, buffer.getvalue())


def _load(path: str, template: Any) -> tuple[Any, dict[str, float]]:
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
  metadata = {k[len("meta:"):]: float(v) for k, v in arrays.items() if k.startswith("meta:")}
  return jax.tree_util.tree_unflatten(treedef, leaves), metadata


def load_or_train(dataset_config: ml_collections.ConfigDict, cache_dir: str, *,
                  epochs: int = EPOCHS, test_split: str = "test") -> Classifier:
  """The cached classifier for this dataset and size, training (and caching) it on first use."""
  num_classes = int(dataset_config.num_classes)
  if num_classes <= 0:
    raise ValueError("config.eval.cas=True needs labels: config.dataset.num_classes is 0.")
  path = cache_path(dataset_config, cache_dir)
  shape = (1, dataset_config.image_size, dataset_config.image_size, dataset_config.channels)
  if epath.Path(path).exists():
    template = jax.eval_shape(
        lambda: Cnn(num_classes).init(jax.random.key(0), jnp.zeros(shape, jnp.uint8))["params"])
    params, metadata = _load(path, template)
    logging.info("CAS classifier loaded from %s (test accuracy %.4f).", path,
                 metadata.get("test_accuracy", float("nan")))
    return Classifier(params, num_classes, metadata.get("test_accuracy", float("nan")),
                      metadata.get("train_seconds", float("nan")), path, trained=False)
  start = time.time()
  train_images, train_labels = load_split(dataset_config, "train")
  params = train(train_images, train_labels, num_classes, epochs=epochs)
  train_seconds = time.time() - start
  test_images, test_labels = load_split(dataset_config, test_split)
  test_accuracy, _ = accuracy(make_predict_fn(num_classes)(params, test_images), test_labels,
                              num_classes)
  logging.info("CAS classifier: trained on %d images in %.1f s, test accuracy %.4f; cached in %s.",
               len(train_images), train_seconds, test_accuracy, path)
  if jax.process_index() == 0:
    _save(params, path, {"test_accuracy": test_accuracy, "train_seconds": train_seconds,
                         "num_train": len(train_images)})
  return Classifier(params, num_classes, test_accuracy, train_seconds, path, trained=True)


def classification_accuracy_score(classifier: Classifier, images: np.ndarray, labels: np.ndarray,
                                  predict_fn: Callable[[Any, np.ndarray], np.ndarray] | None = None,
                                  ) -> dict[str, Any]:
  """{'cas': accuracy against the conditioning labels, 'cas_per_class': per class}."""
  predict_fn = predict_fn or make_predict_fn(classifier.num_classes)
  overall, per_class = accuracy(predict_fn(classifier.params, images), labels,
                                classifier.num_classes)
  return {"cas": overall, "cas_per_class": per_class}
