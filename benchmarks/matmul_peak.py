"""The machine's matmul peak, measured: FLOP/s of a jitted square matmul on the default device.

The reference for "fraction of peak" in train_step.py and sample_step.py, which call it in their
own process (same XLA flags, same thread pool, same contention) before timing the model. Each
candidate size is timed after warm-up (median of `repeats` calls); the fastest size is the peak.

  python benchmarks/matmul_peak.py                      # float32, sizes chosen per backend
  python benchmarks/matmul_peak.py --dtype=bfloat16 --size=4096
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

# A CPU reaches its peak by 1024-2048; an accelerator needs larger products to hide launch costs.
_DEFAULT_SIZES = {"cpu": (1024, 2048)}
_ACCELERATOR_SIZES = (2048, 4096, 8192)


def default_sizes() -> tuple[int, ...]:
  return _DEFAULT_SIZES.get(jax.default_backend(), _ACCELERATOR_SIZES)


def median_call_seconds(fn, args: tuple, repeats: int, warmup: int) -> float:
  """Median wall seconds of `fn(*args)` to completion, after `warmup` untimed calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _time_one_size(dtype, size: int, repeats: int, warmup: int) -> float:
  """Median seconds of one (size x size) @ (size x size) product on the default device."""
  a_key, b_key = jax.random.split(jax.random.key(0))
  a = jax.random.normal(a_key, (size, size), jnp.float32).astype(dtype)
  b = jax.random.normal(b_key, (size, size), jnp.float32).astype(dtype)
  return median_call_seconds(jax.jit(jnp.matmul), (a, b), repeats, warmup)


def measure_matmul_peak(dtype=jnp.float32, size: int | Sequence[int] | None = None,
                        repeats: int = 10, warmup: int = 2) -> dict:
  """{'flops_per_s', 'size', 'dtype', 'seconds', 'by_size', 'backend', 'device'} of the best size.

  size: one size, several (the best is kept), or None for default_sizes(). 2 n^3 FLOPs per product.
  """
  if repeats < 10:
    raise ValueError(f"repeats={repeats}: the peak is a median of at least 10 timed products.")
  dtype = jnp.dtype(dtype)
  sizes = default_sizes() if size is None else (
      (int(size),) if isinstance(size, int) else tuple(int(s) for s in size))
  by_size = {}
  for n in sizes:
    seconds = _time_one_size(dtype, n, repeats, warmup)
    by_size[n] = (2.0 * n ** 3 / seconds, seconds)
  best = max(by_size, key=lambda n: by_size[n][0])
  return {
      "flops_per_s": by_size[best][0],
      "size": best,
      "dtype": dtype.name,
      "seconds": by_size[best][1],
      "by_size": {str(n): round(f, 1) for n, (f, _) in by_size.items()},
      "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
  parser.add_argument("--size", type=int, action="append",
                      help="matrix size (repeatable; default: per backend)")
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  peak = measure_matmul_peak(args.dtype, args.size, args.repeats)
  print(json.dumps({"benchmark": "matmul_peak", **peak,
                    "tflops_per_s": round(peak["flops_per_s"] / 1e12, 4)}))


if __name__ == "__main__":
  main()
