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
cell, so the cells differ only by the sampler. --cas adds the true CAS (a classifier trained on the
cell's samples, tested on the real test split) beside its real-data ceiling.

Calls are denoiser calls per sample; with guidance each call evaluates the network on the
conditional and the unconditional input (`network_evals` = 2 x calls). --output=FILE.jsonl keeps
the cells as they finish, and a rerun skips the cells FILE already holds (same checkpoint and
settings), so a long table can be stopped and resumed. The last lines are the table in Markdown.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
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
                                    "Samplers to compare, of " + ", ".join(samplers.SAMPLERS) + "."),
      "calls": flags.DEFINE_list("calls", ["8", "12", "16", "25", "50"],
                                 "Denoiser-call budgets."),
      "time_grids": flags.DEFINE_list("time_grids", [""],
                                      "Time grids ('' = the sampler's default)."),
      "guidance": flags.DEFINE_list("guidance", [],
                                    "Guidance weights (default: config's fid_guidance)."),
      "num_samples": flags.DEFINE_integer("num_samples", 1000, "Samples per cell."),
      "seed": flags.DEFINE_integer("seed", 0, "Sampling seed (the same for every cell)."),
      "cas": flags.DEFINE_bool("cas", False, "Also the true CAS and its real-data ceiling."),
      "output": flags.DEFINE_string("output", "", "A .jsonl file the cells are appended to; "
                                    "cells it holds already are not computed again."),
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
          reference_stats: dict[str, Any] | None = None, cas: bool = False,
          skip: Callable[[dict[str, Any]], bool] = lambda cell: False
          ) -> Iterator[dict[str, Any]]:
  """Yields one record per cell: sampler, time_grid, guidance, calls (made), network_evals,
  calls_budget, steps, fid, fid_protocol, precision, recall (with cas: cas, cas_real_ceiling,
  accuracy_on_samples), num_samples, sampling_s. Cells for which skip(cell key) holds are not
  computed (cell_key: sampler, time_grid, guidance, calls_budget, num_samples, seed, cas)."""
  config = ml_collections.ConfigDict(config.to_dict())  # The cells set fields on a copy.
  config.eval.cas = bool(cas)
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
          key = cell_key(sampler, grid, guidance, budget, num_samples, seed, cas)
          if skip(key):
            continue
          steps = cell_steps(config, sampler, budget, time_grid)
          evaluator = evaluate.make_evaluator(
              config, model, mesh, inception=inception, reference_stats=reference_stats,
              sampler=sampler, steps=steps, guidance=guidance)
          result = evaluator(params, num_samples=num_samples, seed=seed)
          made = samplers.calls_per_run(sampler, steps, gamma_fn=gamma_fn, time_grid=grid,
                                        input_scale=input_scale)
          yield {
              **key, "calls": made, "network_evals": made * (2 if guidance > 0 else 1),
              "steps": int(steps), "fid": result["fid"], "fid_protocol": result["fid_protocol"],
              "precision": result["precision"], "recall": result["recall"],
              **({name: result.get(name) for name in (
                  "cas", "cas_real_ceiling", "accuracy_on_samples")} if cas else {}),
              "sampling_s": result["timings"]["sampling_s"],
          }


def cell_key(sampler: str, time_grid: str, guidance: float, calls_budget: int, num_samples: int,
             seed: int, cas: bool) -> dict[str, Any]:
  """What identifies a cell of one checkpoint's table."""
  return {"sampler": sampler, "time_grid": time_grid, "guidance": float(guidance),
          "calls_budget": int(calls_budget), "num_samples": int(num_samples), "seed": int(seed),
          "cas": bool(cas)}


def markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
  """The cells as a Markdown table, sorted by guidance, sampler and calls."""
  def number(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"

  lines = ["| sampler | time grid | guidance | calls | steps | FID | precision | recall | CAS | "
           "CAS ceiling |", "|---|---|---|---|---|---|---|---|---|---|"]
  for row in sorted(rows, key=lambda r: (r["guidance"], r["sampler"], r["time_grid"],
                                         r["calls"])):
    lines.append(f"| {row['sampler']} | {row['time_grid']} | {row['guidance']:g} | "
                 f"{row['calls']} | {row['steps']} | {number(row['fid'], 1)} | "
                 f"{number(row['precision'])} | {number(row['recall'])} | "
                 f"{number(row.get('cas'))} | {number(row.get('cas_real_ceiling'))} |")
  return lines


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}: every option is a --flag=value.")
  given = {name: holder.value for name, holder in _FLAGS.items()}
  config = given["config"]
  mesh = sharding.make_mesh(config.mesh)
  model, _, _, abstract_state, _ = train.build(config, mesh)
  params, step = checkpointing.restore_chosen_params(
      given["workdir"], "ema", abstract_state["params"], config, source="--workdir")
  done = []
  output = given["output"]
  if output and os.path.exists(output):
    with open(output) as f:
      done = [json.loads(line) for line in f if line.strip()]
    done = [row for row in done if row.get("checkpoint_step") == step]
  keys = [cell_key(row["sampler"], row["time_grid"], row["guidance"], row["calls_budget"],
                   row["num_samples"], row["seed"], row["cas"]) for row in done]
  rows = list(done)
  for line in table(config, model, params, mesh, sampler_names=given["samplers"],
                    calls=[int(c) for c in given["calls"]],
                    time_grids=given["time_grids"] or [""],
                    guidances=[float(g) for g in given["guidance"]],
                    num_samples=given["num_samples"], seed=given["seed"], cas=given["cas"],
                    skip=lambda key: key in keys):
    line["checkpoint_step"] = int(step)
    rows.append(line)
    if jax.process_index() == 0:
      print(json.dumps(line), flush=True)
      if output:
        with open(output, "a") as f:
          f.write(json.dumps(line) + "\n")
  if jax.process_index() == 0:
    print("\n".join(markdown(rows)))


if __name__ == "__main__":
  _FLAGS.update(_define_flags())
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
