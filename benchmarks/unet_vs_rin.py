"""Train-step cost of CDM's U-Net against a RIN of similar size, timed in the same process.

Prints one JSON line: parameters, XLA's FLOP count of one train step per image, median step time
and images/s of each config, and the ratios U-Net / RIN of step time and of step time per
parameter. Defaults: the demo cascade's 16 -> 32
stage as a U-Net with learned variances (hybrid loss; 1.77 M parameters) and as the demo RIN with
its recipe (self-conditioning 0.9; 1.41 M), batch 64.

  python benchmarks/unet_vs_rin.py
  python benchmarks/unet_vs_rin.py --unet=configs/cdm/unet_imagenet_32.py:runlocal \
      --rin=configs/cdm/imagenet_32.py:runlocal --batch_size=8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
from train_step import time_steps  # noqa: E402

from rin_diffusion import paper_configs  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--unet", default="configs/cdm/fashion_mnist_16_32.py:unet")
  parser.add_argument("--rin", default="configs/cdm/fashion_mnist_16_32.py")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--batch_size", type=int, default=64)
  args = parser.parse_args()
  results = {}
  for name, spec in (("unet", args.unet), ("rin", args.rin)):
    config = paper_configs.load_config(spec)
    config.batch_size = args.batch_size
    results[name] = time_steps(config, args.steps)
  unet, rin = results["unet"], results["rin"]
  print(json.dumps({
      "benchmark": "unet_vs_rin",
      "unet_config": args.unet,
      "rin_config": args.rin,
      "batch_size": args.batch_size,
      "devices": jax.device_count(),
      "backend": jax.default_backend(),
      "machine": platform.processor() or platform.machine(),
      "unet_params": unet["params"],
      "rin_params": rin["params"],
      "unet_step_ms": round(unet["step_ms"], 2),
      "rin_step_ms": round(rin["step_ms"], 2),
      "unet_train_gflops_per_image": round(unet["gflops_per_image"], 3),
      "rin_train_gflops_per_image": round(rin["gflops_per_image"], 3),
      "unet_images_per_s": round(unet["images_per_s"], 2),
      "rin_images_per_s": round(rin["images_per_s"], 2),
      "step_time_ratio_unet_over_rin": round(unet["step_ms"] / rin["step_ms"], 3),
      "per_param_ratio_unet_over_rin": round(
          (unet["step_ms"] / unet["params"]) / (rin["step_ms"] / rin["params"]), 3),
  }))


if __name__ == "__main__":
  main()
