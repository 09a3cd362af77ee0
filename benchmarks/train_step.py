"""Train-step throughput of a config, with the self-conditioning cost as the in-script baseline.

Prints one JSON line: median step time and images/s of the full recipe (two passes, rate 0.9), of
the same step with self-conditioning off (one pass), and their ratio; compile time apart. Also the
model FLOPs per image counted two ways (XLA's cost analysis of the compiled step; the analytic
matmul count of rin_diffusion.flops), the achieved FLOP/s and its fraction of the matmul peak
measured first in this same process (benchmarks/matmul_peak.py), and peak memory. The config and
its overrides are given as to `python -m rin_diffusion.main`:

  python benchmarks/train_step.py --config=configs/fashion_mnist.py --steps=20
  python benchmarks/train_step.py --config=configs/imagenet64.py:runlocal --config.batch_size=8
  python benchmarks/train_step.py --config=configs/imagenet64.py --config.batch_size=4 \
      --dot_ceiling --profile_steps=2   # Where the step's time goes (benchmarks/README.md).
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dot_ceiling  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402
from matmul_peak import measure_matmul_peak  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from rin_diffusion import config_lib, flops, sharding, train  # noqa: E402
from rin_diffusion.cascade import stage  # noqa: E402

MIN_TIMED = 10  # Every reported time is the median of at least this many timed runs.


def define_flags() -> None:
  """--config (with --config.a.b=value overrides, as rin_diffusion.main) and --batch_size.

  A function, not module-level definitions, so that other benchmarks can import this module.
  """
  config_flags.DEFINE_config_file("config", "configs/fashion_mnist.py",
                                  "Config file (path[:arg]); override fields with --config.a.b=v.",
                                  lock_config=True)
  flags.DEFINE_integer("batch_size", 0, "Shorthand for --config.batch_size (0: the config's).")


def load_config() -> ml_collections.ConfigDict:
  """The parsed --config with its overrides and --batch_size, validated like the trainer's."""
  config = flags.FLAGS.config
  if flags.FLAGS.batch_size:
    config.batch_size = flags.FLAGS.batch_size
  config_lib.validate(config)
  return config


def config_spec(argv: list[str]) -> dict[str, Any]:
  """What was benchmarked: the --config argument and the overrides given on the command line."""
  spec = "configs/fashion_mnist.py"
  for i, arg in enumerate(argv):
    if arg.startswith(("--config=", "-config=")):
      spec = arg.split("=", 1)[1]
    elif arg in ("--config", "-config") and i + 1 < len(argv):
      spec = argv[i + 1]
  overrides = [arg.lstrip("-") for arg in argv
               if arg.startswith(("--config.", "-config.")) or arg.startswith("--batch_size=")]
  return {"config": spec, "overrides": overrides}


def xla_counts_loop_trips() -> bool:
  """Whether this XLA's cost analysis multiplies a loop body by its trip count (probed on a scan
  of 8x8 matmuls: older versions count the body once)."""
  x = jnp.ones((8, 8), jnp.float32)

  def loop_flops(length: int) -> float:
    scan = lambda x: jax.lax.scan(lambda c, _: (c @ c, None), x, None, length=length)[0]  # noqa: E731
    return flops.xla_flops(jax.jit(scan).lower(x).compile())

  return loop_flops(4) > 1.5 * loop_flops(2)


def xla_memory(compiled) -> dict[str, int | None]:
  """XLA's static memory plan of a compiled program, in bytes (None where the backend has none)."""
  try:
    memory = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError, jax.errors.JaxRuntimeError):
    memory = None
  if memory is None:
    return {"xla_temp_bytes": None, "xla_argument_bytes": None, "xla_temp_plus_argument_bytes": None}
  temp, argument = int(memory.temp_size_in_bytes), int(memory.argument_size_in_bytes)
  return {"xla_temp_bytes": temp, "xla_argument_bytes": argument,
          "xla_temp_plus_argument_bytes": temp + argument}


def process_memory() -> dict[str, int | None]:
  """Peak resident set of this process and, on accelerators, the largest device's peak use."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  rss *= 1 if sys.platform == "darwin" else 1024  # Bytes on macOS, KiB on Linux.
  device_peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
  device_peaks = [p for p in device_peaks if p is not None]
  return {"peak_rss_bytes": int(rss), "device_peak_bytes": max(device_peaks, default=None)}


def analytic_or_none(count_fn, config: ml_collections.ConfigDict) -> float | None:
  """rin_diffusion.flops' count, or None for a U-Net (which it does not cover)."""
  try:
    return float(count_fn(config))
  except NotImplementedError:
    return None


def throughput_fields(flops_per_image: dict[str, float | None], images_per_s: float,
                      peak: dict[str, Any]) -> dict[str, Any]:
  """Achieved FLOP/s (analytic count if there is one, else XLA's) and its fraction of the peak.

  The peak is one device's matmul peak times the device count: the step runs on every device.
  """
  source = "analytic" if flops_per_image["analytic"] is not None else "xla"
  achieved = flops_per_image[source] * images_per_s
  total_peak = peak["flops_per_s"] * jax.device_count()
  return {
      "achieved_flops_per_s": sig(achieved),
      "achieved_flops_source": source,
      "matmul_peak_flops_per_s": sig(peak["flops_per_s"]),
      "matmul_peak_size": peak["size"],
      "matmul_peak_dtype": peak["dtype"],
      "peak_fraction": round(achieved / total_peak, 4),
  }


def sig(value: float | None, digits: int = 4) -> float | None:
  """`value` to `digits` significant digits (FLOP counts span 1e6 to 1e15)."""
  return None if value is None else float(f"{value:.{digits}g}")


def time_steps(config, steps: int, warmup: int = 1, profile_steps: int = 0,
               dot_ceiling_too: bool = False, model_flops_per_image: float | None = None,
               skip_by: str = "select") -> dict[str, Any]:
  """Median train-step time of `config` (a super-resolution stage gets its low-res inputs).

  `skip_by`: train.make_train_step's.

  With `dot_ceiling_too`, also the step's own matmuls timed alone (dot_ceiling.measure), against
  `model_flops_per_image` x batch.
  """
  mesh = sharding.make_mesh(config.mesh)
  model, tx, init_fn, _, state_shardings = train.build(config, mesh)
  state = init_fn(int(config.seed))
  batch = {name: jax.device_put(jnp.zeros(spec.shape, spec.dtype), spec.sharding)
           for name, spec in train.batch_spec(config, mesh).items()}
  conditioning = stage.conditioning_or_none(config)
  step_fn = train.jit_train_step(model, tx, config, mesh, state_shardings, conditioning, skip_by)
  start = time.perf_counter()
  step_fn = step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  # Gradient accumulation runs the network in a jax.lax.map, whose body XLA may count once.
  accum = int(config.grad_accum_steps)
  accum = 1 if accum == 1 or xla_counts_loop_trips() else accum
  flops_per_image = flops.xla_flops(step_fn) * accum / config.batch_size
  memory = xla_memory(step_fn)
  for _ in range(warmup):
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  profile = op_time_shares(step_fn, state, batch, profile_steps) if profile_steps else None
  ceiling = None
  if dot_ceiling_too:
    model_flops = model_flops_per_image * config.batch_size if model_flops_per_image else None
    ceiling = dot_ceiling.measure(step_fn, model_flops)
  return {"op_profile": profile, "dot_ceiling": ceiling, "compile_s": compile_s,
          "step_ms": 1000 * median,
          "images_per_s": config.batch_size / median, "timed_steps": len(times),
          "params": sum(x.size for x in jax.tree.leaves(state["params"])),
          "xla_flops_per_image": flops_per_image, "xla_flops_grad_accum_factor": accum,
          "gflops_per_image": flops_per_image / 1e9, **memory}


# Coarse kinds of XLA ops, by name: matmul kernels (XLA:CPU's YNNPACK/XNNPACK/oneDNN fusions and
# dots, GPU GEMMs and convolutions), copies and transposes (layout changes), and the rest
# (elementwise and reduction fusions: norms, softmax, GELU, the optimizer).
_MATMUL_WORDS = ("dot", "ynn", "xnn", "onednn", "gemm", "cublas", "convolution", "matmul")
_COPY_WORDS = ("copy", "transpose")


def op_kind(category: str) -> str:
  lower = category.lower()
  if any(word in lower for word in _MATMUL_WORDS):
    return "matmul"
  if any(word in lower for word in _COPY_WORDS):
    return "copy_or_transpose"
  return "other"


def op_scopes(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> where jax traced it: 'forward' (under the gradient's jvp: the network
  and the loss), 'backward' (its transpose), 'outside_grad' (the rest of the step: the optimizer,
  EMA and non-finite guard, the data's noise and schedule)."""
  scopes = {}
  for match in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"", hlo_text,
                           re.MULTILINE):
    name, op_name = match.groups()
    scopes[name] = ("backward" if "transpose(jvp(" in op_name else
                    "forward" if "jvp(" in op_name else "outside_grad")
  return scopes


def op_time_shares(step_fn, state, batch, steps: int) -> dict[str, Any]:
  """Where a step's op time goes: `steps` steps traced with jax.profiler, every XLA op event's
  duration summed by op name without its numeric suffix ('ynn_fusion.301' -> 'ynn_fusion'), by
  coarse kind, and by scope (op_scopes; 'unattributed' for ops without jax metadata, e.g. copies
  XLA inserts). Durations add over threads (CPU) or streams, so shares, not times, compare."""
  import collections  # noqa: PLC0415
  import glob  # noqa: PLC0415
  import tempfile  # noqa: PLC0415

  scopes = op_scopes(step_fn.as_text())

  with tempfile.TemporaryDirectory(prefix="train_step_profile_") as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(steps):
        state, metrics = step_fn(state, batch)
        jax.block_until_ready(metrics)
    path = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)
  by_category: collections.Counter[str] = collections.Counter()
  by_scope: collections.Counter[str] = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      # XLA:CPU runs ops on its Eigen threads; accelerators report them on "XLA Ops" lines.
      if not (line.name.startswith("tf_XLAEigen") or line.name == "XLA Ops"):
        continue
      for event in line.events:
        if event.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):  # Scheduling, not ops.
          continue
        by_category[re.sub(r"[.\d]+$", "", event.name)] += event.duration_ns
        by_scope[scopes.get(event.name, "unattributed")] += event.duration_ns
  total = sum(by_category.values()) or 1
  by_kind: collections.Counter[str] = collections.Counter()
  for category, ns in by_category.items():
    by_kind[op_kind(category)] += ns
  return {
      "traced_steps": steps,
      "op_ms_per_step": round(total / 1e6 / steps, 2),
      "kind_shares": {k: round(v / total, 3) for k, v in by_kind.most_common()},
      "scope_shares": {k: round(v / total, 3) for k, v in by_scope.most_common()},
      "top_op_shares": {k: round(v / total, 3) for k, v in by_category.most_common(12)},
  }


def environment() -> dict[str, Any]:
  return {"devices": jax.device_count(), "backend": jax.default_backend(),
          "device_kind": jax.devices()[0].device_kind,
          "machine": platform.processor() or platform.machine(), "jax": jax.__version__}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  steps = flags.FLAGS.steps
  if steps < MIN_TIMED:
    raise app.UsageError(f"--steps={steps}: the median needs at least {MIN_TIMED} timed steps.")
  config = load_config()
  # Measured first, while nothing else of this process holds the cores or the device.
  peak = measure_matmul_peak(jnp.dtype(config.model.dtype))
  analytic = analytic_or_none(flops.train_flops_per_image, config)
  skip_by = flags.FLAGS.skip_by
  recipe = time_steps(config, steps, flags.FLAGS.warmup, flags.FLAGS.profile_steps,
                      flags.FLAGS.dot_ceiling, analytic, skip_by)
  other_skip_by = other = None
  if flags.FLAGS.compare_skip_by:
    other_skip_by = next(way for way in train.SKIP_BY if way != skip_by)
    other = time_steps(config, steps, flags.FLAGS.warmup, skip_by=other_skip_by)
  baseline = None
  if float(config.diffusion.self_cond_rate) > 0:  # Else (a U-Net) the recipe is the baseline.
    baseline_config = config.copy_and_resolve_references()
    baseline_config.diffusion.self_cond_rate = 0.0
    baseline = time_steps(baseline_config, steps, flags.FLAGS.warmup, skip_by=skip_by)
  xla = recipe["xla_flops_per_image"]
  print(json.dumps({
      "benchmark": "train_step",
      **config_spec(sys.argv),
      "architecture": config.model.architecture,
      "batch_size": config.batch_size,
      "grad_accum_steps": int(config.grad_accum_steps),
      "model_dtype": config.model.dtype,
      **environment(),
      "params": recipe["params"],
      "timed_steps": recipe["timed_steps"],
      "recipe_step_ms": round(recipe["step_ms"], 2),
      "recipe_images_per_s": round(recipe["images_per_s"], 2),
      "images_per_s": round(recipe["images_per_s"], 2),
      "no_self_cond_step_ms": round(baseline["step_ms"], 2) if baseline else None,
      "no_self_cond_images_per_s": round(baseline["images_per_s"], 2) if baseline else None,
      "self_cond_cost_ratio": (round(recipe["step_ms"] / baseline["step_ms"], 3)
                               if baseline else None),
      "skip_by": skip_by,
      "other_skip_by": other_skip_by,
      "other_skip_by_step_ms": round(other["step_ms"], 2) if other else None,
      "other_skip_by_temp_bytes": other["xla_temp_bytes"] if other else None,
      "skip_by_speedup": round(other["step_ms"] / recipe["step_ms"], 3) if other else None,
      "compile_s": round(recipe["compile_s"], 2),
      "xla_flops_per_image": sig(xla),
      "xla_flops_grad_accum_factor": recipe["xla_flops_grad_accum_factor"],
      "analytic_flops_per_image": sig(analytic),
      "xla_over_analytic": round(xla / analytic, 4) if analytic else None,
      **throughput_fields({"analytic": analytic, "xla": xla}, recipe["images_per_s"], peak),
      "xla_temp_bytes": recipe["xla_temp_bytes"],
      "xla_argument_bytes": recipe["xla_argument_bytes"],
      "xla_temp_plus_argument_bytes": recipe["xla_temp_plus_argument_bytes"],
      **process_memory(),
      "op_profile": recipe["op_profile"],
      "dot_ceiling": recipe["dot_ceiling"],
  }))


if __name__ == "__main__":
  define_flags()
  flags.DEFINE_integer("steps", MIN_TIMED, f"Timed steps per variant (at least {MIN_TIMED}).")
  flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation, per variant.")
  flags.DEFINE_integer("profile_steps", 0, "Steps of the recipe to trace for `op_profile` "
                       "(after the timed ones; 0: none).")
  flags.DEFINE_bool("dot_ceiling", False, "Also time the recipe step's own matmuls alone "
                    "(benchmarks/dot_ceiling.py) for `dot_ceiling`.")
  flags.DEFINE_enum("skip_by", "select", train.SKIP_BY, "How the step skips a non-finite "
                    "update (train.make_train_step; the trainer selects).")
  flags.DEFINE_bool("compare_skip_by", False, "Also time the recipe with the other `skip_by`, in "
                    "this process: `other_skip_by_step_ms` and `skip_by_speedup`.")
  app.run(main)
