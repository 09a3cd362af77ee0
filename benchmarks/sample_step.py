"""Time of one sampler step (one denoiser evaluation, two with guidance) at a config's batch.

The sampler is a jax.lax.scan over its steps, so one step is timed as a difference: the jitted
sampler of config.sampling.sampler with 1 step and with --long_steps steps (each the median of
--repeats calls after warm-up), per step (t_long - t_1) / (long_steps - 1). That removes what a
call does once (the noise draw, the output, dispatch). Parameters are a random initialisation: the
cost does not depend on their values. Prints one JSON line: seconds per step, images/s through one
step, FLOPs per image and step (analytic, rin_diffusion.flops, and XLA's), the achieved FLOP/s and
its fraction of the matmul peak measured first in this process, compile time and peak memory.

  python benchmarks/sample_step.py --config=configs/fashion_mnist.py
  python benchmarks/sample_step.py --config=configs/imagenet64.py:runlocal --config.batch_size=8 \
      --config.sampling.guidance=3
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import train_step as common  # noqa: E402
from absl import app, flags  # noqa: E402
from matmul_peak import measure_matmul_peak, median_call_seconds  # noqa: E402

from rin_diffusion import flops, generate, sharding, train  # noqa: E402
from rin_diffusion.cascade import stage  # noqa: E402


def _compile_sampler(config: ml_collections.ConfigDict, model, mesh, steps: int, args: tuple):
  """The jitted sampler of `steps` steps, compiled for `args`; and its compile time."""
  conditioning = stage.conditioning_or_none(config)
  sampling = config.sampling

  def sample(params, key, labels, low_res):
    extra = (conditioning.grid({"low_res": low_res}, jax.random.fold_in(key, 1))
             if conditioning else None)
    return generate.sample_output(model, config, params, key, labels, sampler=sampling.sampler,
                                  steps=steps, guidance=float(sampling.guidance),
                                  extra_cond=extra).x0

  start = time.perf_counter()
  compiled = jax.jit(sample, out_shardings=sharding.batch_sharding(mesh)).lower(*args).compile()
  return compiled, time.perf_counter() - start


def time_sampling_step(config: ml_collections.ConfigDict, long_steps: int, repeats: int,
                       warmup: int = 1) -> dict[str, Any]:
  """Seconds per sampler step at config.batch_size, XLA's FLOPs per image and step, memory."""
  if long_steps < 2:
    raise ValueError(f"long_steps={long_steps}: the difference needs at least 2 steps.")
  mesh = sharding.make_mesh(config.mesh)
  model, _, init_fn, _, _ = train.build(config, mesh)
  params = init_fn(int(config.seed))["ema_params"]  # The rest of the state is freed.
  batch = int(config.batch_size)
  mcfg = config.model
  labels = jnp.asarray(generate.class_labels(config, batch))
  low = int(config.cascade.low_resolution) or 1  # A 1x1 placeholder outside a cascade.
  low_res = jnp.zeros((batch, low, low, int(mcfg.channels)), jnp.float32)
  labels, low_res = jax.device_put((labels, low_res), sharding.batch_sharding(mesh))
  args = (params, jax.random.key(0), labels, low_res)
  results = {}
  for steps in (1, long_steps):
    compiled, compile_s = _compile_sampler(config, model, mesh, steps, args)
    results[steps] = {"compile_s": compile_s, "xla_flops": flops.xla_flops(compiled) / batch,
                      "seconds": median_call_seconds(compiled, args, repeats, warmup),
                      **common.xla_memory(compiled)}
  short, long = results[1], results[long_steps]
  step_s = (long["seconds"] - short["seconds"]) / (long_steps - 1)
  # If this XLA's cost analysis counts every trip of a loop, the difference of the two programs is
  # one step; if it counts the body once, the 1-step program is.
  trips_counted = common.xla_counts_loop_trips()
  xla_step = ((long["xla_flops"] - short["xla_flops"]) / (long_steps - 1) if trips_counted
              else short["xla_flops"])
  return {"step_s": step_s, "images_per_s": batch / step_s, "xla_flops_per_image": xla_step,
          "xla_counts_loop_trips": trips_counted, "call_s_1_step": short["seconds"],
          f"call_s_{long_steps}_steps": long["seconds"], "compile_s": long["compile_s"],
          "compile_s_1_step": short["compile_s"],
          **{k: long[k] for k in ("xla_temp_bytes", "xla_argument_bytes",
                                  "xla_temp_plus_argument_bytes")}}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  repeats = flags.FLAGS.repeats
  if repeats < common.MIN_TIMED:
    raise app.UsageError(f"--repeats={repeats}: the median needs at least {common.MIN_TIMED}.")
  config = common.load_config()
  peak = measure_matmul_peak(jnp.dtype(config.model.dtype))
  result = time_sampling_step(config, flags.FLAGS.long_steps, repeats, flags.FLAGS.warmup)
  analytic = common.analytic_or_none(flops.sample_step_flops_per_image, config)
  xla = result.pop("xla_flops_per_image")
  step_s, images_per_s = result.pop("step_s"), result.pop("images_per_s")
  guidance = float(config.sampling.guidance)
  guided = guidance != 0 and int(config.model.num_classes) > 0  # As generate.sample_output.
  print(json.dumps({
      "benchmark": "sample_step",
      **common.config_spec(sys.argv),
      "architecture": config.model.architecture,
      "batch_size": int(config.batch_size),
      "sampler": config.sampling.sampler,
      "guidance": guidance,
      "network_evaluations_per_step": 2 if guided else 1,
      "model_dtype": config.model.dtype,
      **common.environment(),
      "long_steps": flags.FLAGS.long_steps,
      "repeats": repeats,
      "step_ms": round(1000 * step_s, 3),
      "images_per_s_per_step": round(images_per_s, 2),
      "analytic_flops_per_image_per_step": common.sig(analytic),
      "xla_flops_per_image_per_step": common.sig(xla),
      "xla_over_analytic": round(xla / analytic, 4) if analytic else None,
      **common.throughput_fields({"analytic": analytic, "xla": xla}, images_per_s, peak),
      **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()},
      **common.process_memory(),
  }))


if __name__ == "__main__":
  common.define_flags()
  flags.DEFINE_integer("repeats", common.MIN_TIMED,
                       f"Timed calls of each sampler program (at least {common.MIN_TIMED}).")
  flags.DEFINE_integer("long_steps", 11, "Steps of the long program (the short one has 1).")
  flags.DEFINE_integer("warmup", 1, "Untimed calls after compilation, per program.")
  app.run(main)
