"""CDM ImageNet 64x64 cascade: the 32x32 base (base32) and 32 -> 64 (sr64), RIN denoisers.

  python -m rin_diffusion.cascade --mode=train --pipeline=configs/cdm/pipeline_imagenet_64.py \
      --workdir=gs://BUCKET/cdm              # trains <workdir>/base32, then <workdir>/sr64
  python -m rin_diffusion.cascade --pipeline=configs/cdm/pipeline_imagenet_64.py \
      --workdir=gs://BUCKET/cdm              # 10K samples per s*, FID with --num_samples=50000

The sweep over s* (CDM section 4.3): s* = 0, 0.0625, ..., 0.375 (CDM's s = 0, 250, ..., 1500 of
4000 steps) and 0.5, non-truncated: the base runs once to t = 0 and its images are re-noised at
each s*. Every stage samples as the FID recipe of both papers: DDPM, 1000 steps, no guidance.

Args (comma-separated): 'truncated' (the base stops at t = s* and hands over its state; one base
run per s*), 'level=<s>' (one s* instead of the sweep), 'runlocal' (runlocal stage configs, 8
samples, 4 steps, s* in 0, 0.25).
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  return stage_configs.pipeline_config("imagenet", 64, arg)
