"""Decoded, resized images/s per host of the trainer's input pipeline, against what a TPU host needs.

Builds a small TFDS dataset of ImageNet-like JPEGs (array_record, random access, as the trainer reads
ImageNet), then for each resolution and decoding-thread count times `next()` on the trainer's own
iterator (`rin_diffusion.data.pipeline.make_iterator`), and splits one image's single-thread cost
into the source's decode (`source[i]`: record read, proto parse, JPEG decode), `preprocess_image`
(crop, bicubic resize, flip, float conversion) and `np.stack` into the batch. Prints one JSON line;
progress goes to stderr.

  timeout 600 .venv/bin/python benchmarks/input_pipeline.py
  timeout 600 .venv/bin/python benchmarks/input_pipeline.py --resolutions=256 --workers=1,2,4,8

What a host needs is assumed, not measured: global_batch / hosts / step_s, with step_s (unless
--step_s) the step time of configs/imagenet<R>.py at --mfu of the pod's bf16 peak:
  step_s = rin_diffusion.flops.train_flops_per_image x global_batch / (chips x peak x mfu),
so images/s per host = chips per host x peak x mfu / FLOPs per image. Pods (--pod): v5e-256 = 256
chips on 64 hosts (4 chips each), 197e12 bf16 FLOP/s per chip; v4-128 = 64 chips (128 TensorCores)
on 16 hosts (4 chips each), 275e12 per chip. Both pods' needs are reported. Cores a host would need
are extrapolated three ways, all assuming threads scale linearly (no GIL or memory-bandwidth limit):
from the 1-worker rate, from the single-thread split, and from CPU time per image.

Measured here, on whatever cores this machine has (shared ones make the numbers indicative only):
the data sits on local disk, in the page cache after the first pass, so storage and network reads
(GCS on a real pod) are not measured; JPEGs are synthetic (smooth random fields plus noise, ~115 KB
at 500x375, quality 90; 135 KB mean over the default sizes), so their decoding cost is similar to
ImageNet's but not equal. Large float32 batches (12.6 MB per image at 1024) are sensitive to how
fast the machine maps fresh memory (`memory` in the output); glibc's `MALLOC_*` variables, echoed
in `malloc_env`, change that (e.g. MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000
MALLOC_ARENA_MAX=1 keeps freed memory mapped).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import PIL.Image  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from absl import app, flags  # noqa: E402

from rin_diffusion import config_lib, flops, paper_configs  # noqa: E402
from rin_diffusion.data import pipeline  # noqa: E402

DATASET_NAME = "rin_bench_jpeg_images"
NUM_CLASSES = 10
JPEG_QUALITY = 90
NOISE_STD = 24.0  # Grey levels; with the two random fields gives ~115 KB at 500x375, quality 90.
# (chips, hosts, bf16 peak FLOP/s per chip).
PODS = {"v5e-256": (256, 64, 197e12), "v4-128": (64, 16, 275e12)}

_RESOLUTIONS = flags.DEFINE_list("resolutions", ["64", "256", "1024"], "Image sizes to time.")
_WORKERS = flags.DEFINE_list(
    "workers", [], "Decoding thread counts (config.dataset.num_workers); default 1, 2, cpu_count.")
_BATCH = flags.DEFINE_integer("batch", 64, "Images per timed batch (one process, so all local).")
_BATCHES = flags.DEFINE_integer("batches", 10, "Timed batches per (resolution, workers), after one.")
_EXAMPLES = flags.DEFINE_integer("examples", 256, "Images in the generated dataset.")
_SPLIT_IMAGES = flags.DEFINE_integer("split_images", 64, "Images in the single-thread cost split.")
_SPLIT_ROUNDS = flags.DEFINE_integer("split_rounds", 3, "Cost split rounds (the fastest is kept).")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", "", "Where to build (or reuse) the dataset; '' = a temporary directory.")
_GLOBAL_BATCH = flags.DEFINE_integer("global_batch", 1024, "Global training batch (the paper's).")
_POD = flags.DEFINE_enum("pod", "v5e-256", list(PODS), "Pod whose host needs are the headline.")
_HOSTS = flags.DEFINE_integer("hosts", 0, "Hosts of the pod (0: --pod's).")
_CHIPS = flags.DEFINE_integer("chips", 0, "Chips of the pod (0: --pod's).")
_PEAK = flags.DEFINE_float("peak_flops_per_chip", 0.0, "bf16 FLOP/s per chip (0: --pod's).")
_MFU = flags.DEFINE_float("mfu", 0.5, "Assumed model FLOPs utilisation for the step time.")
_STEP_S = flags.DEFINE_list(
    "step_s", [], "Step seconds, one for all resolutions or one per resolution; default: at --mfu.")


# ----------------------------------------------------------------------------------------------
# The dataset.


def _random_field(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
  """Uniform noise on a grid `cell` pixels apart, bicubically interpolated to height x width."""
  small = rng.integers(0, 256, size=(height // cell + 2, width // cell + 2, 3), dtype=np.uint8)
  smooth = PIL.Image.fromarray(small).resize((width, height), PIL.Image.Resampling.BICUBIC)
  return np.asarray(smooth, np.float32)


def _image_shape(rng: np.random.Generator) -> tuple[int, int]:
  """ImageNet-like: long side 500 three times in four, else 250..1000; 4:3 mostly, landscape 3/4."""
  long_side = 500 if rng.random() < 0.75 else int(rng.integers(250, 1001))
  aspect = float(rng.choice([4 / 3, 4 / 3, 4 / 3, 3 / 2, 1.0, 16 / 9]))
  short_side = int(round(long_side / aspect))
  return (short_side, long_side) if rng.random() < 0.75 else (long_side, short_side)


def bench_jpeg(index: int) -> bytes:
  """Example `index`'s JPEG: coarse and fine random fields plus Gaussian noise (not compressible)."""
  rng = np.random.default_rng([index, 20240])
  height, width = _image_shape(rng)
  pixels = (0.6 * _random_field(rng, height, width, 64) + 0.4 * _random_field(rng, height, width, 8)
            + rng.normal(0.0, NOISE_STD, (height, width, 3)))
  buffer = io.BytesIO()
  PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
      buffer, "JPEG", quality=JPEG_QUALITY)
  return buffer.getvalue()


class RinBenchJpegImages(tfds.core.GeneratorBasedBuilder):
  """ImageNet-like JPEG images ('train' only); `NUM_EXAMPLES` is read when the dataset is built."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Synthetic JPEGs for benchmarks/input_pipeline.py."}
  NUM_EXAMPLES = 256

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly: dataset_info_from_configs reads metadata files from the module's
    # directory, and this module is a script.
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(self.NUM_EXAMPLES)}

  def _generate_examples(self, count: int):
    for i in range(count):
      yield i, {"image": bench_jpeg(i), "label": i % NUM_CLASSES}


def prepare_dataset(data_dir: str, examples: int) -> dict[str, Any]:
  """Builds the dataset in `data_dir` unless it is there; returns its JPEG size statistics."""
  RinBenchJpegImages.NUM_EXAMPLES = examples
  builder = RinBenchJpegImages(data_dir=data_dir, file_format="array_record")
  start = time.perf_counter()
  with contextlib.redirect_stdout(sys.stderr):  # TFDS prints to stdout; stdout is the JSON line.
    builder.download_and_prepare()
  build_s = time.perf_counter() - start
  encoded = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
  jpeg_bytes, pixels = [], []
  for i in range(len(encoded)):
    data = encoded[i]["image"]
    jpeg_bytes.append(len(data))
    with PIL.Image.open(io.BytesIO(data)) as image:  # Reads the header only.
      pixels.append(image.size[0] * image.size[1])
  return {
      "name": DATASET_NAME,
      "examples": len(encoded),
      "build_s": round(build_s, 2),
      "mean_jpeg_kb": round(statistics.fmean(jpeg_bytes) / 1e3, 1),
      "mean_megapixels": round(statistics.fmean(pixels) / 1e6, 3),
      "jpeg_quality": JPEG_QUALITY,
  }


# ----------------------------------------------------------------------------------------------
# Timing.


def pipeline_config(data_dir: str, resolution: int, workers: int, batch: int):
  config = config_lib.base_config()
  config.batch_size = batch
  config.dataset.name = DATASET_NAME
  config.dataset.data_dir = data_dir
  config.dataset.image_size = resolution
  config.dataset.channels = 3
  config.dataset.num_classes = NUM_CLASSES
  config.dataset.random_flip = True
  config.dataset.num_workers = workers
  return config


def time_iterator(config, batches: int) -> dict[str, Any]:
  """Images/s of back-to-back `next()` (the consumer takes no time, so this is the pipeline's rate).

  `images_per_s` is from the median batch time (robust to other processes on shared cores),
  `images_per_s_mean` from the total; `cpu_ms_per_image` is this process's CPU time (all threads)
  over the timed batches per image: what an image costs in cores, whoever else uses them.
  """
  iterator = pipeline.make_iterator(config)
  try:
    batch = next(iterator)  # Warm-up: opens the source; starts prefetching the next batch.
    size = config.dataset.image_size
    assert batch["image"].shape == (config.batch_size, size, size, 3), batch["image"].shape
    times, cpu_start = [], time.process_time()
    for _ in range(batches):
      start = time.perf_counter()
      next(iterator)
      times.append(time.perf_counter() - start)
    cpu_s = time.process_time() - cpu_start
  finally:
    iterator.close()
  return {
      "images_per_s": round(config.batch_size / statistics.median(times), 1),
      "images_per_s_mean": round(batches * config.batch_size / sum(times), 1),
      "batch_ms_median": round(1e3 * statistics.median(times), 1),
      "cpu_ms_per_image": round(1e3 * cpu_s / (batches * config.batch_size), 3),
  }


def _ms_per_image(seconds: float, count: int) -> float:
  return round(1e3 * seconds / count, 3)


def cost_split(config, count: int, rounds: int) -> dict[str, Any]:
  """Single-thread mean ms per image of each phase, the fastest of `rounds` (shared cores)."""
  source = pipeline.make_source(config.dataset)
  count = min(count, len(source))
  source[0]  # Opens the files.
  results = [_cost_split_round(source, config, count) for _ in range(rounds)]
  fastest = {key: min(r[key] for r in results) for key in results[0]}
  total_ms = fastest["source_decode_ms"] + fastest["preprocess_ms"] + fastest["stack_ms"]
  return {
      "images": count,
      "rounds": rounds,
      **fastest,
      "total_ms": round(total_ms, 3),
      "decode_share": round(fastest["source_decode_ms"] / total_ms, 3),
      "preprocess_share": round(fastest["preprocess_ms"] / total_ms, 3),
      "stack_share": round(fastest["stack_ms"] / total_ms, 3),
  }


def _cost_split_round(source, config, count: int) -> dict[str, float]:
  """Decode, preprocess_image, np.stack of `count` images, as one thread of get_batch does them.

  Results are kept alive as a batch keeps them (not freed and reused image after image), so large
  outputs pay for fresh memory as they do in the iterator: at 1024 one float32 image is 12.6 MB.
  """
  start = time.perf_counter()
  images = [source[i]["image"] for i in range(count)]
  decode_s = time.perf_counter() - start
  start = time.perf_counter()
  outputs = [pipeline.preprocess_image(image, config.dataset, flip=bool(i % 2))
             for i, image in enumerate(images)]
  preprocess_s = time.perf_counter() - start
  start = time.perf_counter()
  np.stack(outputs)
  stack_s = time.perf_counter() - start
  del outputs
  size = config.dataset.image_size
  resized = np.zeros((size, size, 3), np.uint8)
  start = time.perf_counter()
  floats = [resized.astype(np.float32) / 127.5 - 1.0 for _ in range(count)]  # Its last line.
  to_float_s = time.perf_counter() - start
  del floats
  return {
      "source_decode_ms": _ms_per_image(decode_s, count),
      "preprocess_ms": _ms_per_image(preprocess_s, count),
      "of_which_to_float_ms": _ms_per_image(to_float_s, count),
      "stack_ms": _ms_per_image(stack_s, count),
  }


def memory_probe(megabytes: int = 256, rounds: int = 3) -> dict[str, Any]:
  """GB/s of writing freshly allocated memory (page faults) vs copying into memory already mapped.

  Float32 images at 1024 are 12.6 MB each: where first touches are slow (a VM that maps guest
  memory lazily, as the machine this was written on), the big arrays of the pipeline pay for it.
  """
  count = (megabytes << 20) // 4
  source, warm = np.ones(count, np.float32), np.ones(count, np.float32)
  first_touch, warm_copy = [], []
  for _ in range(rounds):
    start = time.perf_counter()
    fresh = np.empty(count, np.float32)
    fresh.fill(1.0)
    first_touch.append(4 * count / (time.perf_counter() - start) / 1e9)
    del fresh
    start = time.perf_counter()
    np.copyto(warm, source)
    warm_copy.append(2 * 4 * count / (time.perf_counter() - start) / 1e9)  # Read + write.
  return {
      "megabytes": megabytes,
      "first_touch_gb_per_s": [round(v, 2) for v in first_touch],
      "warm_copy_gb_per_s": round(max(warm_copy), 2),
  }


# ----------------------------------------------------------------------------------------------
# What a host needs.


def pod_shape(name: str, override: bool) -> tuple[int, int, float]:
  chips, hosts, peak = PODS[name]
  if override:
    chips, hosts, peak = _CHIPS.value or chips, _HOSTS.value or hosts, _PEAK.value or peak
  return chips, hosts, peak


def train_flops_or_none(resolution: int) -> float | None:
  path = paper_configs.config_path(resolution)
  return flops.train_flops_per_image(paper_configs.load_config(path)) if os.path.isfile(path) else None


def host_need(flops_per_image: float | None, step_s: float | None, pod: str,
              override: bool) -> dict[str, Any]:
  """Images/s a host must deliver: global_batch / hosts / step_s (step_s at --mfu unless given)."""
  chips, hosts, peak = pod_shape(pod, override)
  global_batch = _GLOBAL_BATCH.value
  if step_s is None:
    if flops_per_image is None:
      return {"pod": pod, "needed_images_per_s_per_host": None}
    step_s = flops_per_image * global_batch / (chips * peak * _MFU.value)
    source = f"{_MFU.value:g} MFU of {chips} x {peak:.3g} FLOP/s"
  else:
    source = "--step_s"
  return {
      "pod": pod, "chips": chips, "hosts": hosts, "peak_flops_per_chip": peak,
      "step_s": float(f"{step_s:.4g}"), "step_s_source": source,
      "needed_images_per_s_per_host": round(global_batch / hosts / step_s, 1),
  }


def step_seconds(count: int) -> list[float | None]:
  values = [float(v) for v in _STEP_S.value]
  if not values:
    return [None] * count
  if len(values) == 1:
    return values * count
  if len(values) != count:
    raise app.UsageError(f"--step_s: give one value or one per resolution ({count}).")
  return values


# ----------------------------------------------------------------------------------------------


def log(message: str) -> None:
  print(f"[input_pipeline] {message}", file=sys.stderr, flush=True)


def run(data_dir: str) -> dict[str, Any]:
  resolutions = [int(r) for r in _RESOLUTIONS.value]
  cpu_count = os.cpu_count() or 1
  workers = sorted({int(w) for w in (_WORKERS.value or [1, 2, cpu_count])})
  log(f"building {_EXAMPLES.value} JPEGs in {data_dir}")
  dataset = prepare_dataset(data_dir, _EXAMPLES.value)
  log(f"dataset: {dataset}")
  load_before = os.getloadavg()
  memory = memory_probe()
  log(f"memory: {memory}")
  entries = []
  for resolution, step_s in zip(resolutions, step_seconds(len(resolutions))):
    flops_per_image = train_flops_or_none(resolution)
    split = cost_split(pipeline_config(data_dir, resolution, 0, _BATCH.value), _SPLIT_IMAGES.value,
                       _SPLIT_ROUNDS.value)
    log(f"{resolution}: single thread {split}")
    measured = {}
    for count in workers:
      measured[str(count)] = time_iterator(
          pipeline_config(data_dir, resolution, count, _BATCH.value), _BATCHES.value)
      log(f"{resolution}: {count} workers {measured[str(count)]}")
    best_workers = max(measured, key=lambda w: measured[w]["images_per_s"])
    best = measured[best_workers]["images_per_s"]
    need = host_need(flops_per_image, step_s, _POD.value, override=True)
    needed = need["needed_images_per_s_per_host"]
    per_worker = measured["1"]["images_per_s"] if "1" in measured else None
    single_thread_ms = split["total_ms"]
    cpu_ms = min(m["cpu_ms_per_image"] for m in measured.values())
    other = [host_need(flops_per_image, None, p, override=False) for p in PODS if p != _POD.value]
    entries.append({
        "resolution": resolution,
        "train_flops_per_image": None if flops_per_image is None else float(f"{flops_per_image:.4g}"),
        "measured": measured,
        "best_images_per_s": best,
        "best_workers": int(best_workers),
        **need,
        "needed_over_measured": None if needed is None else round(needed / best, 2),
        "per_worker_images_per_s": per_worker,
        "cores_needed_linear": (None if needed is None or not per_worker
                                else round(needed / per_worker, 1)),
        "cores_needed_from_split": (None if needed is None
                                    else round(needed * single_thread_ms / 1e3, 1)),
        "cpu_ms_per_image": cpu_ms,
        "cores_needed_from_cpu_time": None if needed is None else round(needed * cpu_ms / 1e3, 1),
        "single_thread": split,
        "other_pods": [{k: o[k] for k in ("pod", "needed_images_per_s_per_host")} for o in other],
    })
  load_after = os.getloadavg()
  try:
    import cv2  # noqa: F401, PLC0415 -- only to say which decoder TFDS used.
    decoder = "opencv"
  except ImportError:
    decoder = "PIL"
  return {
      "benchmark": "input_pipeline",
      "batch": _BATCH.value,
      "timed_batches": _BATCHES.value,
      "global_batch": _GLOBAL_BATCH.value,
      "mfu_assumed": _MFU.value,
      "dataset": dataset,
      "resolutions": entries,
      "cpu_count": cpu_count,
      "cores_usable": len(os.sched_getaffinity(0)),
      "loadavg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
      "memory": memory,
      "malloc_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")},
      "tfds_image_decoder": decoder,
      "pillow": PIL.__version__,
      "tfds": tfds.__version__,
  }


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if _DATA_DIR.value:
    result = run(_DATA_DIR.value)
  else:
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="rin_input_pipeline_") as data_dir:
      result = run(data_dir)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
