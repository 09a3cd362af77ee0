"""Two runs of one config side by side (benchmarks/precision_demo.sh: float32 against bfloat16).

  python benchmarks/compare_runs.py WORKDIR_A WORKDIR_B [--window=2000]

Prints one JSON line: each run's mean training loss per window of steps (from metrics.jsonl's
step_losses), the largest relative gap between the two curves over the last half of training
(where a late divergence would show), their non-finite step counts, and each run's final
evaluation record (FID, IS, precision/recall, CAS) with the ratio of FIDs (B over A).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def read_records(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def loss_per_window(records: list[dict], window: int) -> dict[int, float]:
  """Mean loss over steps (end - window, end] for each window end; the last record of a step wins."""
  losses: dict[int, float] = {}
  for record in records:
    if "step_losses" in record:
      first = record["step"] - len(record["step_losses"]) + 1
      for offset, loss in enumerate(record["step_losses"]):
        losses[first + offset] = loss
  if not losses:
    return {}
  last = max(losses)
  return {end: float(np.mean([losses[s] for s in range(end - window + 1, end + 1) if s in losses]))
          for end in range(window, last + 1, window)}


def final_eval(records: list[dict]) -> dict | None:
  evals = [r for r in records if r.get("mode") == "eval"]
  if not evals:
    return None
  keep = ("step", "fid", "is", "precision", "recall", "cas", "cas_real_ceiling",
          "accuracy_on_samples", "num_samples", "sampler", "steps", "guidance")
  return {k: evals[-1].get(k) for k in keep}


def compare(workdir_a: str, workdir_b: str, window: int) -> dict:
  runs = {}
  for label, workdir in (("a", workdir_a), ("b", workdir_b)):
    records = read_records(workdir)
    runs[label] = {"workdir": workdir, "loss_per_window": loss_per_window(records, window),
                   "nonfinite_steps": max((r.get("nonfinite_steps", 0) for r in records),
                                          default=0),
                   "final_eval": final_eval(records)}
  common = sorted(set(runs["a"]["loss_per_window"]) & set(runs["b"]["loss_per_window"]))
  late = common[len(common) // 2:]
  gaps = [abs(runs["b"]["loss_per_window"][s] / runs["a"]["loss_per_window"][s] - 1) for s in late]
  fids = [runs[k]["final_eval"] and runs[k]["final_eval"]["fid"] for k in ("a", "b")]
  return {"window": window, "runs": runs,
          "late_loss_max_relative_gap": float(max(gaps)) if gaps else None,
          "fid_ratio_b_over_a": float(fids[1] / fids[0]) if all(fids) else None}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdir_a")
  parser.add_argument("workdir_b")
  parser.add_argument("--window", type=int, default=2000)
  args = parser.parse_args()
  print(json.dumps(compare(args.workdir_a, args.workdir_b, args.window)))


if __name__ == "__main__":
  main()
