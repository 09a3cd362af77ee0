"""Train-step throughput of a config, with the self-conditioning cost as the in-script baseline.

Prints one JSON line: median step time and images/s of the full recipe (two passes, rate 0.9), of
the same step with self-conditioning off (one pass), and their ratio; compile time apart.

  python benchmarks/train_step.py --config=configs/fashion_mnist.py --steps=20
  python benchmarks/train_step.py --config=configs/imagenet64.py:runlocal --batch_size=8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from rin_diffusion import paper_configs, sharding, train  # noqa: E402


def time_steps(config, steps: int) -> dict[str, float]:
  """Median train-step time of `config` (a super-resolution stage gets its low-res inputs)."""
  mesh = sharding.make_mesh(config.mesh)
  model, tx, init_fn, _, state_shardings = train.build(config, mesh)
  state = init_fn(int(config.seed))
  size, channels = config.model.image_size, config.model.channels
  batch = {
      "image": jnp.zeros((config.batch_size, size, size, channels), jnp.float32),
      "label": jnp.zeros((config.batch_size,), jnp.int32),
  }
  conditioning = None
  low = int(config.cascade.low_resolution)
  if low:
    from rin_diffusion.cascade import stage  # noqa: PLC0415 -- only for cascade stages.

    conditioning = stage.conditioning(config)
    batch["low_res"] = jnp.zeros((config.batch_size, low, low, channels), jnp.float32)
  batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  step_fn = jax.jit(train.make_train_step(model, tx, config, conditioning),
                    in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                    out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
  start = time.perf_counter()
  step_fn = step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = step_fn.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # A list in older jax versions.
  state, metrics = step_fn(state, batch)  # Warm-up.
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return {"compile_s": compile_s, "step_ms": 1000 * median,
          "images_per_s": config.batch_size / median,
          "params": sum(x.size for x in jax.tree.leaves(state["params"])),
          "gflops_per_image": (cost or {}).get("flops", float("nan")) / config.batch_size / 1e9}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/fashion_mnist.py")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--batch_size", type=int, default=0)
  args = parser.parse_args()
  config = paper_configs.load_config(args.config)
  if args.batch_size:
    config.batch_size = args.batch_size
  recipe = time_steps(config, args.steps)
  baseline_config = config.copy_and_resolve_references()
  baseline_config.diffusion.self_cond_rate = 0.0
  baseline = time_steps(baseline_config, args.steps)
  print(json.dumps({
      "benchmark": "train_step",
      "config": args.config,
      "batch_size": config.batch_size,
      "devices": jax.device_count(),
      "backend": jax.default_backend(),
      "machine": platform.processor() or platform.machine(),
      "recipe_step_ms": round(recipe["step_ms"], 2),
      "recipe_images_per_s": round(recipe["images_per_s"], 2),
      "no_self_cond_step_ms": round(baseline["step_ms"], 2),
      "self_cond_cost_ratio": round(recipe["step_ms"] / baseline["step_ms"], 3),
      "compile_s": round(recipe["compile_s"], 2),
  }))


if __name__ == "__main__":
  main()
