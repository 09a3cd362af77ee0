r"""Sample quality per denoiser call: FID, precision and recall of one checkpoint per (sampler,
calls, time grid, guidance) cell; one JSON line per cell.

  python -m rin_diffusion.tools.nfe_table --config=configs/fashion_mnist.py \
      --workdir=workdir/fashion_mnist --samplers=ddim,dpmpp_2m,heun,ddpm_small \
      --calls=8,12,16,25,50 --num_samples=1000

Each cell runs the most steps whose denoiser calls (samplers.calls_per_run: 'heun' makes about two
per step) fit in the budget, and records the calls actually made. --time_grids='' (default) gives
each sampler its default grid (samplers.DEFAULT_TIME_GRID); e.g. --time_grids=uniform_t,logsnr,edm
crosses them all. The samples and scores are evaluate.make_evaluator's (--mode=eval's): the same
labels (sample j has class j mod num_classes), Inception, reference statistics and seed for every
cell, so the cells differ only by the sampler. CAS is off (config.eval.cas is ignored).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from rin_diffusion import checkpointing, config_lib, samplers, schedules, sharding, train
from rin_diffusion.evaluation import evaluate
from rin_diffusion.evaluation import inception as inception_lib


def _define_flags() -> dict[str, flags.FlagHolder]:
  """The command line's flags, defined only when it runs: absl's registry is global, and tests
  import this module beside other tools that define --config."""
  return {
      "config": config_flags.DEFINE_config_file("config", None, "Config file (path[:arg])."),
      "workdir": flags.DEFINE_string("workdir", None,
                                     "Trainer workdir (its EMA parameters are scored)."),
      "samplers": flags.DEFINE_list("samplers", ["ddim", "dpmpp_2m", "heun"],
                                    "Samplers to compare."),
      "calls": flags.DEFINE_list("calls", ["8", "12", "16", "25", "50"],
                                 "Denoiser-call budgets."),
      "time_grids": flags.DEFINE_list("time_grids", [""],
                                      "Time grids ('' = the sampler's default)."),
      "guidance": flags.DEFINE_list("guidance", [],
                                    "Guidance weights (default: config's fid_guidance)."),
      "num_samples": flags.DEFINE_integer("num_samples", 1000, "Samples per cell."),
      "seed": flags.DEFINE_integer("seed", 0, "Sampling seed (the same for every cell)."),
  }


_FLAGS: dict[str, flags.FlagHolder] = {}


def cell_steps(config: ml_collections.ConfigDict, sampler: str, calls: int,
               time_grid: str) -> int:
  """The most steps of `sampler` on `time_grid` ('' = default) within `calls` denoiser calls."""
  return samplers.steps_for_calls(
      sampler, calls, gamma_fn=schedules.gamma_fn(config.diffusion.infer_schedule),
      time_grid=time_grid or None, input_scale=float(config.diffusion.input_scale))


def table(config: ml_collections.ConfigDict, model: nn.Module, params: Any,
          mesh: jax.sharding.Mesh, *, sampler_names: Sequence[str], calls: Sequence[int],
          time_grids: Sequence[str] = ("",), guidances: Sequence[float] = (),
          num_samples: int, seed: int = 0, inception: Any = None,
          reference_stats: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
  """Yields one record per cell: sampler, time_grid, guidance, calls (made), calls_budget, steps,
  fid, fid_protocol, precision, recall, num_samples, sampling_s."""
  config = ml_collections.ConfigDict(config.to_dict())  # The cells set fields on a copy.
  config.eval.cas = False
  inception = inception or inception_lib.load_inception(
      config.eval.inception_weights or None, cache_dir=config.eval.cache_dir or None)
  reference_stats = reference_stats or evaluate.load_reference(config, inception)
  gamma_fn = schedules.gamma_fn(config.diffusion.infer_schedule)
  input_scale = float(config.diffusion.input_scale)
  for guidance in guidances or (float(config.sampling.fid_guidance),):
    for sampler in sampler_names:
      for time_grid in time_grids:
        config.sampling.time_grid = time_grid
        config_lib.validate(config)  # Names a bad sampler or grid before any sampling.
        grid = time_grid or samplers.DEFAULT_TIME_GRID[sampler]
        for budget in calls:
          steps = cell_steps(config, sampler, budget, time_grid)
          evaluator = evaluate.make_evaluator(
              config, model, mesh, inception=inception, reference_stats=reference_stats,
              sampler=sampler, steps=steps, guidance=guidance)
          result = evaluator(params, num_samples=num_samples, seed=seed)
          yield {
              "sampler": sampler, "time_grid": grid, "guidance": float(guidance),
              "calls": samplers.calls_per_run(sampler, steps, gamma_fn=gamma_fn, time_grid=grid,
                                              input_scale=input_scale),
              "calls_budget": int(budget), "steps": int(steps), "fid": result["fid"],
              "fid_protocol": result["fid_protocol"],
              "precision": result["precision"], "recall": result["recall"],
              "num_samples": int(num_samples), "seed": int(seed),
              "sampling_s": result["timings"]["sampling_s"],
          }


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}: every option is a --flag=value.")
  given = {name: holder.value for name, holder in _FLAGS.items()}
  config = given["config"]
  mesh = sharding.make_mesh(config.mesh)
  model, _, _, abstract_state, _ = train.build(config, mesh)
  params = checkpointing.restore_params_from(given["workdir"], "ema", abstract_state["params"],
                                             config, source="--workdir")
  for line in table(config, model, params, mesh, sampler_names=given["samplers"],
                    calls=[int(c) for c in given["calls"]],
                    time_grids=given["time_grids"] or [""],
                    guidances=[float(g) for g in given["guidance"]],
                    num_samples=given["num_samples"], seed=given["seed"]):
    if jax.process_index() == 0:
      print(json.dumps(line), flush=True)


if __name__ == "__main__":
  _FLAGS.update(_define_flags())
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
