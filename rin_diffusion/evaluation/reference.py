"""Inception statistics of real images, computed once and cached: the other side of FID and P/R.

  ref = reference_statistics("fashion_mnist:test", image_size=32, num_images=1000,
                             inception=load_inception(), cache_dir=None)
  ref["mu"], ref["sigma"], ref["features"], ref["num_images"], ref["description"]

`source` is either an `.npz` of uint8 images (key 'images', else its first array; (N, H, W, C) or
(N, H, W)) or a TFDS `dataset:split` read through the project's data pipeline (`fashion_mnist` is
the built-in offline Fashion-MNIST; other names must be prepared in array_record format in
`data_dir`). With `image_size`, every image gets the training preprocessing of
`data.pipeline.preprocess_image` (Fashion-MNIST zero-padded, anything else centre-cropped and
PIL-bicubic resized), so the reference sees real images exactly as the model was trained on them;
with None they are used as stored. When the source holds more than `num_images` images, a fixed
random subset (seed 0) is used. The cache file is keyed by everything the statistics depend on:
the source (split, data_dir, manual_dir, its size; for an .npz the file's size and modification
time), image size, pad_to, number of images, low-pass factor, the Inception weights' sha1, and
hashes of the code that preprocesses the images and of the Inception network and resize
(`code_versions`), so changed code or settings never reuse a stale file.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np
from etils import epath
from PIL import Image

from rin_diffusion import fileio
from rin_diffusion.evaluation import inception as inception_lib
from rin_diffusion.evaluation import metrics, versioning

# Features kept for precision/recall (a fixed random subset when there are more).
MAX_STORED_FEATURES = 10_000
_CACHE_FORMAT = 2  # 2: code versions, pad_to and manual_dir in the key.
_CHUNK_BATCHES = 8  # Images are read and resized this many Inception batches at a time.


def split_source(source: str) -> tuple[str, str]:
  """'name:split' -> (name, split), splitting at the last ':' outside [...] so that TFDS slices
  ('fashion_mnist:train[:10%]') and versions ('celeb_a:2.1.0:train') survive."""
  depth, cut = 0, -1
  for i, char in enumerate(source):
    depth += (char == "[") - (char == "]")
    if char == ":" and depth == 0:
      cut = i
  if cut <= 0 or cut == len(source) - 1:
    raise ValueError(
        f"reference {source!r}: expected an existing .npz file of images or a TFDS "
        "'dataset:split' such as 'fashion_mnist:test' or 'imagenet2012:validation'.")
  return source[:cut], source[cut + 1:]


def _subset(total: int, num_images: int) -> np.ndarray:
  if num_images >= total:
    return np.arange(total)
  return np.sort(np.random.default_rng(0).choice(total, num_images, replace=False))


def _to_uint8(image: np.ndarray, dataset_config: ml_collections.ConfigDict | None) -> np.ndarray:
  from rin_diffusion.data import pipeline  # noqa: PLC0415 -- imports TFDS.

  image = pipeline.to_uint8_hwc(image)
  if dataset_config is None:
    return image
  dataset_config.channels = image.shape[-1]
  scaled = pipeline.preprocess_image(image, dataset_config, flip=False)
  return np.round((scaled + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


def _dataset_config(name: str, split: str, image_size: int, data_dir: str,
                    manual_dir: str, pad_to: int = 0) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name=name, split=split, image_size=image_size, channels=3, num_classes=0,
      random_flip=False, num_workers=0, data_dir=data_dir, manual_dir=manual_dir, pad_to=pad_to))


def _open_source(source: str, image_size: int | None, data_dir: str, manual_dir: str
                 ) -> tuple[int, Callable[[int], Any], str, dict[str, Any], str]:
  """-> (number of images, index -> raw image, pipeline dataset name, cache key, description)."""
  if source.endswith(".npz") or os.path.isfile(source):
    if not os.path.isfile(source):
      raise ValueError(f"reference {source!r}: the .npz file does not exist.")
    with np.load(source) as data:
      if not data.files:
        raise ValueError(f"reference {source!r}: the .npz holds no arrays.")
      key = "images" if "images" in data.files else data.files[0]
      images = data[key]
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (
        images.ndim == 4 and images.shape[-1] not in (1, 3)):
      raise ValueError(
          f"reference {source!r}: array {key!r} must be uint8 (N, H, W, C) with C in (1, 3) or "
          f"(N, H, W); got {images.dtype} {images.shape}.")
    stat = os.stat(source)
    cache_key = {"npz": os.path.abspath(source), "size": stat.st_size, "mtime": stat.st_mtime}
    return len(images), images.__getitem__, "npz", cache_key, f"{source}[{key!r}]"

  from rin_diffusion.data import pipeline  # noqa: PLC0415 -- imports TFDS.

  name, split = split_source(source)
  dataset_config = _dataset_config(name, split, image_size or 1, data_dir, manual_dir)
  data_source = pipeline.make_source(dataset_config)

  def read(index: int) -> np.ndarray:
    return data_source[index]["image"]

  cache_key = {"dataset": name, "split": split, "data_dir": data_dir, "manual_dir": manual_dir,
               "size": len(data_source)}
  return len(data_source), read, name, cache_key, f"TFDS {name}:{split}"


def low_pass(images: np.ndarray, factor: int) -> np.ndarray:
  """uint8 (N, H, W, C) images averaged over factor x factor blocks (PIL box) and resized back
  (bilinear): what remains of them below 1 / factor of their resolution. factor 1: unchanged."""
  if factor == 1:
    return images
  images = np.asarray(images)
  height, width = images.shape[1:3]
  if height % factor or width % factor:
    raise ValueError(f"--lowpass={factor}: must divide the image size {height}x{width}.")
  out = np.empty_like(images)
  for n, image in enumerate(images):
    for c in range(image.shape[-1]):
      small = Image.fromarray(image[..., c]).resize((width // factor, height // factor), Image.BOX)
      out[n, ..., c] = np.asarray(small.resize((width, height), Image.BILINEAR))
  return out


def real_images(source: str, *, image_size: int, num_images: int, data_dir: str = "",
                manual_dir: str = "", pad_to: int = 0) -> np.ndarray:
  """uint8 (N, H, W, C) real images of a TFDS 'dataset:split' or an .npz, preprocessed as in
  training (the same seed-0 subset a reference of that size uses)."""
  total, read, pipeline_name, _, _ = _open_source(source, image_size, data_dir, manual_dir)
  dataset_config = _dataset_config(pipeline_name, "", image_size, data_dir, manual_dir, pad_to)
  return np.stack([_to_uint8(read(int(i)), dataset_config) for i in _subset(total, num_images)])


@functools.cache  # The code does not change while a process runs.
def code_versions() -> dict[str, str]:
  """Hashes of the code behind cached statistics: the training preprocessing applied to real
  images here, and the Inception network with its resize."""
  from rin_diffusion.data import pipeline  # noqa: PLC0415 -- imports TFDS.

  return {"preprocessing": versioning.source_hash(pipeline.preprocess_image, pipeline.to_uint8_hwc,
                                                  _to_uint8, _subset, low_pass),
          "inception": inception_lib.code_version()}


def _cache_file(directory: str, key: dict[str, Any]) -> epath.Path:
  digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  name = key.get("dataset") or os.path.basename(str(key.get("npz")))
  readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{name}_{key.get('split', '')}")[:48]
  file_name = f"reference_{readable}_{key['image_size']}_{key['num_images']}_{digest}.npz"
  return epath.Path(directory) / file_name


def reference_statistics(source: str, *, image_size: int | None, num_images: int,
                         inception: inception_lib.InceptionModel, cache_dir: str | None,
                         data_dir: str = "", manual_dir: str = "", pad_to: int = 0,
                         batch_size: int = 32, lowpass: int = 1) -> dict[str, Any]:
  """Inception statistics of `num_images` real images of `source` (cached; see the module doc).

  lowpass > 1 applies `low_pass` to every image first (a diagnostic: FID of the coarse content).

  Returns {'mu' (2048,), 'sigma' (2048, 2048) float64, 'features' (<= MAX_STORED_FEATURES, 2048)
  float32 pool3 features for precision/recall, 'num_images', 'description'}.
  """
  if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or (
      num_images < 2):
    raise ValueError(f"num_images={num_images!r}: must be an integer >= 2.")
  if image_size is not None and (not isinstance(image_size, (int, np.integer)) or image_size < 1):
    raise ValueError(f"image_size={image_size!r}: must be a positive integer or None.")
  total, read, pipeline_name, key, description = _open_source(
      source, image_size, data_dir, manual_dir)
  indices = _subset(total, num_images)
  if len(indices) < 2:
    raise ValueError(f"reference {source!r}: holds {total} images; need at least 2.")
  key.update(image_size=image_size, num_images=len(indices), inception=inception.weights_sha1,
             max_features=MAX_STORED_FEATURES, format=_CACHE_FORMAT, pad_to=int(pad_to or 0),
             lowpass=int(lowpass), code=code_versions())
  if lowpass != 1:
    description += f", low-passed by {lowpass}"
  description = (f"{description}, {len(indices)} of {total} images, "
                 + (f"preprocessed to {image_size}x{image_size} as in training"
                    if image_size else "as stored"))
  path = _cache_file(cache_dir or inception_lib.default_cache_dir(), key)
  if path.exists():
    with np.load(io.BytesIO(path.read_bytes())) as data:
      cached = {k: data[k] for k in data.files}
    if str(cached.get("key")) == json.dumps(key, sort_keys=True):
      logging.info("Reference statistics from %s.", path)
      return {"mu": cached["mu"], "sigma": cached["sigma"], "features": cached["features"],
              "num_images": int(cached["num_images"]), "description": description}

  dataset_config = None
  if image_size is not None:
    dataset_config = _dataset_config(pipeline_name, "", image_size, data_dir, manual_dir, pad_to)
  start_time, features = time.time(), []
  chunk = batch_size * _CHUNK_BATCHES
  for start in range(0, len(indices), chunk):
    images = [_to_uint8(read(int(i)), dataset_config) for i in indices[start:start + chunk]]
    if lowpass != 1:
      images = list(low_pass(np.stack(images), lowpass))
    features.append(inception.compute(images, batch_size=batch_size)["pool3"])
    done = min(len(indices), start + chunk)
    logging.info("Reference %s: %d/%d images through Inception (%.0f s).", source, done,
                 len(indices), time.time() - start_time)
  features = np.concatenate(features)
  mu, sigma = metrics.feature_statistics(features)
  if len(features) > MAX_STORED_FEATURES:
    features = features[_subset(len(features), MAX_STORED_FEATURES)]
  buffer = io.BytesIO()
  np.savez(buffer, mu=mu, sigma=sigma, features=features, num_images=len(indices),
           key=np.asarray(json.dumps(key, sort_keys=True)))
  fileio.write_bytes_atomically(path, buffer.getvalue())
  return {"mu": mu, "sigma": sigma, "features": features, "num_images": len(indices),
          "description": description}
