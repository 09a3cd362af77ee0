"""Inception statistics of real images, computed once and cached: the other side of FID and P/R.

  ref = reference_statistics("fashion_mnist:test", image_size=32, num_images=1000,
                             inception=load_inception(), cache_dir=None)
  ref["mu"], ref["sigma"], ref["features"], ref["num_images"], ref["description"]

`source` is either an `.npz` or a TFDS `dataset:split` read through the project's data pipeline
(`fashion_mnist` is
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

An `.npz` holds uint8 images (N, H, W, C) or (N, H, W) as 'images', else 'arr_0' (OpenAI's
reference batches, e.g. VIRTUAL_imagenet64_labeled.npz), else (a file without statistics) its
first array; and/or Inception statistics 'mu' (2048,) and 'sigma' (2048, 2048), as OpenAI's
batches hold them (`inspect_npz` checks all of it). Stored statistics are the FID's reference as they are
(`use_stored_statistics`), but OpenAI computed them with its TF graph, which resizes with its own
bilinear resize, not clean-fid's PIL bicubic: such an FID is a mixed protocol (`fid_protocol` says
so in every record). Precision/recall need features, so they come from the file's images through
our network; a file with statistics only has none, and the description says P/R are skipped.
The spatial statistics 'mu_s'/'sigma_s' (sFID) are not used: we do not compute sFID.
"""

from __future__ import annotations

import dataclasses
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

# How each side's pool3 statistics were made: through our preprocessing and network (clean-fid's
# PIL bicubic resize to 299, the TF-FID Inception), or read from an OpenAI reference batch.
CLEAN_FID = "clean-fid"
OPENAI_TF_GRAPH = "OpenAI TF graph (bilinear resize)"
IMAGE_KEYS = ("images", "arr_0")
STATISTICS_KEYS = ("mu", "sigma")
SPATIAL_STATISTICS_KEYS = ("mu_s", "sigma_s")  # sFID's; not implemented here.
_NPZ_ALLOWED = (
    "allowed: uint8 images (N, H, W, C) with C in (1, 3) or (N, H, W) as 'images' or 'arr_0', "
    f"and/or float Inception statistics 'mu' ({inception_lib.POOL3_DIM},) and 'sigma' "
    f"({inception_lib.POOL3_DIM}, {inception_lib.POOL3_DIM}), symmetric, as in OpenAI's "
    "reference batches")


def fid_protocol(reference_stats: dict[str, Any]) -> str:
  """How an FID of our samples against `reference_stats` was measured, for every FID record.

  Our samples always go through clean-fid's preprocessing and the TF-FID Inception; the reference
  did too unless its statistics were read from a file ('statistics_protocol'). The one place the
  wording lives: records, tools.fid and the docs all quote it.
  """
  reference_protocol = reference_stats.get("statistics_protocol", CLEAN_FID)
  if reference_protocol == CLEAN_FID:
    return CLEAN_FID
  return f"mixed: samples {CLEAN_FID}, reference statistics {reference_protocol}"


@dataclasses.dataclass(frozen=True)
class NpzContents:
  """What a reference .npz holds, checked: its image array (read lazily) and its statistics."""
  image_key: str | None
  image_shape: tuple[int, ...] | None
  mu: np.ndarray | None
  sigma: np.ndarray | None
  spatial_statistics: bool  # 'mu_s'/'sigma_s' present (sFID; unused).


def _npy_header(data: Any, key: str) -> tuple[tuple[int, ...], np.dtype]:
  """(shape, dtype) of one array of an open .npz, from its header: a 2 GB 'arr_0' is not read."""
  with data.zip.open(f"{key}.npy") as member:
    version = np.lib.format.read_magic(member)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read_header(member)
  return tuple(shape), np.dtype(dtype)


def _image_key(files: list[str]) -> str | None:
  """'images', else 'arr_0', else (a file without statistics) the first array."""
  for key in IMAGE_KEYS:
    if key in files:
      return key
  has_statistics = any(k in files for k in STATISTICS_KEYS + SPATIAL_STATISTICS_KEYS)
  return None if has_statistics or not files else files[0]


def _checked_statistic(source: str, key: str, value: np.ndarray) -> np.ndarray:
  dim = inception_lib.POOL3_DIM
  shape = (dim,) if key == "mu" else (dim, dim)
  problem = ""
  if not np.issubdtype(value.dtype, np.floating):
    problem = "must be floating point"
  elif value.shape != shape:
    problem = f"must have shape {shape} (pool3 statistics)"
  elif not np.all(np.isfinite(value)):
    problem = "must be finite"
  elif key == "sigma" and np.max(np.abs(value - value.T)) > 1e-6 * max(np.max(np.abs(value)),
                                                                        1e-30):
    problem = "must be a symmetric covariance matrix"
  if problem:
    raise ValueError(f"reference {source!r}: array {key!r} {problem}; got {value.dtype} "
                     f"{value.shape}; {_NPZ_ALLOWED}.")
  return value.astype(np.float64)


def inspect_npz(source: str) -> NpzContents:
  """The checked contents of a reference .npz (see the module doc); ValueError naming the file,
  the key, what it holds and what is allowed for anything else."""
  if not os.path.isfile(source):
    raise ValueError(f"reference {source!r}: the .npz file does not exist.")
  try:
    data = np.load(source)
  except (OSError, ValueError, EOFError) as error:
    raise ValueError(f"reference {source!r}: not a readable .npz ({error}).") from None
  with data:
    files = list(data.files)
    image_key = _image_key(files)
    present = [k for k in STATISTICS_KEYS if k in files]
    if image_key is None and not present:
      raise ValueError(f"reference {source!r}: holds neither images nor Inception statistics "
                       f"(arrays {files}); {_NPZ_ALLOWED}.")
    if len(present) == 1:
      missing = ({*STATISTICS_KEYS} - {*present}).pop()
      raise ValueError(f"reference {source!r}: has {present[0]!r} but no {missing!r}; "
                       f"{_NPZ_ALLOWED}.")
    image_shape = None
    if image_key is not None:
      image_shape, dtype = _npy_header(data, image_key)
      if dtype != np.uint8 or len(image_shape) not in (3, 4) or (
          len(image_shape) == 4 and image_shape[-1] not in (1, 3)):
        raise ValueError(f"reference {source!r}: array {image_key!r} holds {dtype} "
                         f"{image_shape}; {_NPZ_ALLOWED}.")
    mu = sigma = None
    if present:
      mu = _checked_statistic(source, "mu", data["mu"])
      sigma = _checked_statistic(source, "sigma", data["sigma"])
    spatial = any(k in files for k in SPATIAL_STATISTICS_KEYS)
  return NpzContents(image_key, image_shape, mu, sigma, spatial)


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


def is_npz(source: str) -> bool:
  """Whether a reference names an .npz file (else a TFDS 'dataset:split')."""
  return source.endswith(".npz") or os.path.isfile(source)


def _open_source(source: str, image_size: int | None, data_dir: str, manual_dir: str
                 ) -> tuple[int, Callable[[int], Any], str, dict[str, Any], str]:
  """-> (number of images, index -> raw image, pipeline dataset name, cache key, description)."""
  if is_npz(source):
    contents = inspect_npz(source)
    key = contents.image_key
    if key is None:
      raise ValueError(f"reference {source!r}: holds Inception statistics but no images; "
                       f"images are needed here; {_NPZ_ALLOWED}.")
    with np.load(source) as data:
      images = data[key]
    stat = os.stat(source)
    cache_key = {"npz": os.path.abspath(source), "size": stat.st_size, "mtime": stat.st_mtime,
                 "array": key}
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
                         batch_size: int = 32, lowpass: int = 1,
                         use_stored_statistics: bool = True) -> dict[str, Any]:
  """Inception statistics of `num_images` real images of `source` (cached; see the module doc).

  lowpass > 1 applies `low_pass` to every image first (a diagnostic: FID of the coarse content).
  An .npz with 'mu'/'sigma' gives those as the FID statistics (a mixed protocol, `fid_protocol`)
  unless use_stored_statistics=False, which recomputes them from its images (one protocol).

  Returns {'mu' (2048,), 'sigma' (2048, 2048) float64, 'features' (<= MAX_STORED_FEATURES, 2048)
  float32 pool3 features for precision/recall (none for a file of statistics only),
  'num_images' (behind the features), 'description', 'statistics_protocol' (CLEAN_FID or
  OPENAI_TF_GRAPH), 'notes' (what the records cannot say in a field)}.
  """
  if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or (
      num_images < 2):
    raise ValueError(f"num_images={num_images!r}: must be an integer >= 2.")
  if image_size is not None and (not isinstance(image_size, (int, np.integer)) or image_size < 1):
    raise ValueError(f"image_size={image_size!r}: must be a positive integer or None.")
  contents = inspect_npz(source) if is_npz(source) else None
  stored = contents is not None and contents.mu is not None and use_stored_statistics
  notes = []
  if contents is not None and contents.spatial_statistics:
    notes.append(f"reference {source}: 'mu_s'/'sigma_s' (spatial statistics for sFID) ignored: "
                 "sFID is not implemented.")
  if contents is not None and contents.image_key is None and not stored:
    raise ValueError(f"reference {source!r}: holds only 'mu'/'sigma', no images to recompute the "
                     "statistics from; allowed: use its stored statistics (drop "
                     "--recompute_reference_stats) or pass a file with 'arr_0' images.")
  if stored and lowpass != 1:
    raise ValueError(f"--lowpass={lowpass}: the stored 'mu'/'sigma' of {source!r} cannot be "
                     "low-passed; recompute them from its images (--recompute_reference_stats).")
  if stored and contents.image_key is None:
    notes.append(f"precision/recall: skipped: {source} holds only 'mu'/'sigma', no images "
                 "('arr_0') to compute reference features from.")
    return {"mu": contents.mu, "sigma": contents.sigma,
            "features": np.zeros((0, inception_lib.POOL3_DIM), np.float32), "num_images": 0,
            "description": (f"{source}: FID statistics 'mu'/'sigma' as stored "
                            f"({OPENAI_TF_GRAPH}); no images, precision/recall skipped"),
            "statistics_protocol": OPENAI_TF_GRAPH, "notes": notes}
  computed = _computed_statistics(
      source, image_size=image_size, num_images=num_images, inception=inception,
      cache_dir=cache_dir, data_dir=data_dir, manual_dir=manual_dir, pad_to=pad_to,
      batch_size=batch_size, lowpass=lowpass)
  computed.update(statistics_protocol=CLEAN_FID, notes=notes)
  if stored:
    notes.append(f"precision/recall: reference features from the images of {source} through "
                 f"our preprocessing and network ({CLEAN_FID}); the FID uses its stored "
                 "'mu'/'sigma'.")
    computed.update(
        mu=contents.mu, sigma=contents.sigma, statistics_protocol=OPENAI_TF_GRAPH,
        description=(f"{source}: FID statistics 'mu'/'sigma' as stored ({OPENAI_TF_GRAPH}); "
                     f"precision/recall features from {computed['description']}"))
  elif contents is not None and contents.mu is not None:
    notes.append(f"reference {source}: stored 'mu'/'sigma' ignored; recomputed from its images.")
    computed["description"] += ", stored 'mu'/'sigma' ignored"
  return computed


def _computed_statistics(source: str, *, image_size: int | None, num_images: int,
                         inception: inception_lib.InceptionModel, cache_dir: str | None,
                         data_dir: str, manual_dir: str, pad_to: int, batch_size: int,
                         lowpass: int) -> dict[str, Any]:
  """reference_statistics of the source's images through our preprocessing and network."""
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
