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
import hashlib
import io
import json
import os
import statistics
import sys
import threading
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import PIL.Image  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from absl import app, flags  # noqa: E402

from rin_diffusion import config_lib, flops, paper_configs  # noqa: E402
from rin_diffusion.data import grain_loader, pipeline  # noqa: E402

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
_GIL_BATCHES = flags.DEFINE_integer("gil_batches", 4, "Batches a one-worker loader builds for the GIL probe.")
_GIL_ROUNDS = flags.DEFINE_integer("gil_rounds", 3, "GIL probe rounds (each field: the median).")
_LOADERS = flags.DEFINE_list(
    "loaders", ["threads", "grain"],
    "config.dataset.loader values to time; 'threads' (the baseline) always, 'grain' if installed.")
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


class RinBenchJpegImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """ImageNet-like JPEG images ('train' only); `NUM_EXAMPLES` is read when the dataset is built.

  Not registered: the trainer's `tfds.builder(name, data_dir)` finds the prepared files, and grain
  workers, which re-run this script as their main module, do not register the name twice.
  """

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


def pipeline_config(data_dir: str, resolution: int, workers: int, batch: int,
                    loader: str = "threads"):
  config = config_lib.base_config()
  config.dataset.loader = loader
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
  over the timed batches per image: what an image costs in cores, whoever else uses them. With
  the grain loader the decoding happens in worker processes, so it is only what the trainer's
  process pays per image (`trainer_process_cpu_ms_per_image`).
  """
  iterator = pipeline.make_iterator(config)
  grain = config.dataset.loader == "grain"
  try:
    # Warm-up: opens the source, starts the workers; grain's workers also fill their buffers
    # (BUFFER_PER_PROCESS batches each), drained here so the timed batches are the steady state.
    buffered = grain_loader.BUFFER_PER_PROCESS * config.dataset.num_workers if grain else 0
    for _ in range(1 + buffered):
      batch = next(iterator)
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
      ("trainer_process_cpu_ms_per_image" if grain else "cpu_ms_per_image"):
          round(1e3 * cpu_s / (batches * config.batch_size), 3),
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


def _gil_probe(stop: threading.Event, threshold_s: float, out: list[tuple[float, int]]) -> None:
  """Spins in pure Python (which needs the GIL) and sums the gaps between its iterations that are
  longer than `threshold_s`, and counts them: the time another thread held the GIL (or the OS
  took the core), in how many stalls."""
  clock = time.perf_counter
  last, stalled, stalls = clock(), 0.0, 0
  while not stop.is_set():
    now = clock()
    if now - last > threshold_s:
      stalled += now - last
      stalls += 1
    last = now
  out.append((stalled, stalls))


def _probed(work, threshold_s: float) -> dict[str, float]:
  """Wall s, calling thread's and process's CPU s (the probe's included), and the probe's stalled
  s and stall count during work()."""
  stop, out = threading.Event(), []
  probe = threading.Thread(target=_gil_probe, args=(stop, threshold_s, out), daemon=True)
  probe.start()
  time.sleep(0.01)
  wall, cpu, process_cpu = time.perf_counter(), time.thread_time(), time.process_time()
  work()
  wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
  process_cpu = time.process_time() - process_cpu
  stop.set()
  probe.join()
  return {"wall": wall, "cpu": cpu, "process_cpu": process_cpu, "stalled": out[0][0],
          "stalls": out[0][1]}


def _release_loop(calls: int = 200, size: int = 2_000_000) -> None:
  """C calls that release the GIL for their whole work (hashlib on a large buffer) and hold it
  for almost nothing in between: what each GIL hand-over costs the probe, with ~0 true hold."""
  buffer = bytes(size)
  for _ in range(calls):
    hashlib.sha256(buffer)


def gil_share(config, batches: int, threshold_s: float = 20e-6) -> dict[str, Any]:
  """GIL time per image in the trainer's process while a one-worker loader builds `batches`.

  A probe thread spins in pure Python (which needs the GIL) on the second core while the main
  thread takes batches from the iterator (threads: one decoding thread; grain: one worker
  process). The probe stalls only while another thread of this process holds the GIL (the default
  5 ms switch interval hands it back and forth while both want it) or while the OS takes its core;
  the second is the same probe beside a sleep with the loader closed, and is subtracted, and the
  process's CPU time other than the probe's caps the result. Every
  hand-over also costs the probe thread wake-ups that it counts as held, so `held_ms_per_image`
  is an upper bound; `held_ms_per_image_low` subtracts, per stall, what a stall costs around C
  calls that hold the GIL for ~nothing (`_release_loop`, measured in the same run), which on
  known mixes of pure Python and GIL-free C comes out at or below the true hold. For threads it
  bounds how far they scale: N decoding threads cannot exceed 1000 / held images/s however many
  cores there are (`max_images_per_s_threads`, from the lower hold: the optimistic ceiling), and
  the training loop, which needs the same GIL to dispatch every step, waits behind them. Needs 2
  usable cores.
  """
  iterator = pipeline.make_iterator(config)
  try:
    next(iterator)  # Opens the files, starts the worker.

    def work():
      for _ in range(batches):
        next(iterator)

    loaded = _probed(work, threshold_s)
  finally:
    iterator.close()
  idle = _probed(lambda: time.sleep(loaded["wall"]), threshold_s)
  calibration = _probed(_release_loop, threshold_s)
  per_stall_s = max(calibration["stalled"], 0.0) / max(calibration["stalls"], 1)
  images = batches * config.batch_size
  # Holding the GIL takes a running thread: the process's CPU time other than the probe's own
  # (the probe runs whenever it is not stalled) caps it, which matters when the cores are
  # oversubscribed and the OS, not the GIL, stalls the probe (grain's worker beside it at 1024).
  others_cpu_s = max(loaded["process_cpu"] - (loaded["wall"] - loaded["stalled"]), 0.0)
  held_s = min(max(loaded["stalled"] - idle["stalled"], 0.0), others_cpu_s)
  held_ms = held_s * 1e3 / images
  low_ms = max(held_s - loaded["stalls"] * per_stall_s, 0.0) * 1e3 / images
  threads = config.dataset.loader == "threads"
  return {
      "loader": config.dataset.loader,
      "workers": config.dataset.num_workers,
      "images": images,
      "held_ms_per_image": round(held_ms, 4),
      "held_ms_per_image_low": round(low_ms, 4),
      "stalls_per_image": round(loaded["stalls"] / images, 2),
      "handover_us": round(per_stall_s * 1e6, 1),
      # What N decoding threads could reach at most on unlimited cores: between these two.
      "max_images_per_s_threads": round(1e3 / low_ms, 1) if low_ms and threads else None,
      "max_images_per_s_threads_pessimistic": (
          round(1e3 / held_ms, 1) if held_ms and threads else None),
      "wall_ms_per_image_with_probe": round(loaded["wall"] * 1e3 / images, 4),
      "main_thread_cpu_ms_per_image": round(loaded["cpu"] * 1e3 / images, 4),
      "process_cpu_ms_per_image_without_probe": round(others_cpu_s * 1e3 / images, 4),
      "probe_idle_stall_ms": round(idle["stalled"] * 1e3, 3),
  }


def median_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
  """Each numeric field's median over the rounds (others from the first); the held times too."""
  result = dict(rounds[0], rounds=len(rounds))
  for key, value in rounds[0].items():
    if isinstance(value, (int, float)) and not isinstance(value, bool) and all(
        r[key] is not None for r in rounds):
      result[key] = statistics.median(r[key] for r in rounds)
  result["held_ms_per_image_by_round"] = [r["held_ms_per_image"] for r in rounds]
  result["held_ms_per_image_low_by_round"] = [r["held_ms_per_image_low"] for r in rounds]
  return result


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


def _has_grain() -> bool:
  try:
    import grain  # noqa: F401, PLC0415
  except ImportError:
    log("grain is not installed: timing the threaded loader only")
    return False
  return True


def log(message: str) -> None:
  print(f"[input_pipeline] {message}", file=sys.stderr, flush=True)


def run(data_dir: str) -> dict[str, Any]:
  resolutions = [int(r) for r in _RESOLUTIONS.value]
  cpu_count = os.cpu_count() or 1
  workers = sorted({int(w) for w in (_WORKERS.value or [1, 2, cpu_count])})
  loaders = ["threads"] + (["grain"] if "grain" in _LOADERS.value and _has_grain() else [])
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
    gil = {}
    if len(os.sched_getaffinity(0)) >= 2:
      for loader in loaders:
        gil[loader] = median_rounds([
            gil_share(pipeline_config(data_dir, resolution, 1, _BATCH.value, loader),
                      _GIL_BATCHES.value) for _ in range(_GIL_ROUNDS.value)])
        log(f"{resolution}: GIL {gil[loader]}")
    measured, measured_grain = {}, {}
    for count in workers:
      if "threads" in loaders:
        measured[str(count)] = time_iterator(
            pipeline_config(data_dir, resolution, count, _BATCH.value), _BATCHES.value)
        log(f"{resolution}: {count} threads {measured[str(count)]}")
      if "grain" in loaders:
        measured_grain[str(count)] = time_iterator(
            pipeline_config(data_dir, resolution, count, _BATCH.value, "grain"), _BATCHES.value)
        log(f"{resolution}: {count} grain processes {measured_grain[str(count)]}")
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
        "measured_grain": measured_grain,
        "best_grain_images_per_s": max((m["images_per_s"] for m in measured_grain.values()),
                                       default=None),
        "gil": gil,
        # Whether decoding threads could feed the host at all, with unlimited cores.
        "threads_can_keep_up": (
            None if needed is None or not gil.get("threads", {}).get("max_images_per_s_threads")
            else gil["threads"]["max_images_per_s_threads"] >= needed),
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
