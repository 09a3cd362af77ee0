"""CDM LSUN 128x128 cascade: the unconditional 64x64 base (base64) and 64 -> 128 (sr128).

  python -m rin_diffusion.cascade --mode=train --pipeline=configs/cdm/pipeline_lsun_128.py \
      --workdir=gs://BUCKET/cdm/lsun_bedroom
  python -m rin_diffusion.cascade --pipeline=configs/cdm/pipeline_lsun_128.py:church \
      --workdir=gs://BUCKET/cdm/lsun_church

Non-truncated Gaussian conditioning augmentation as in CDM section 4.5: base64 runs once to t = 0
and its images are re-noised at each s* = 0, 0.0625, ..., 0.375, 0.5. DDPM, 1000 steps at both
stages (CDM: 256 cosine steps), unconditional (no guidance).

Args (comma-separated): 'church' (LSUN church_outdoor instead of bedroom; its own workdir),
'truncated' (base64 stops at t = s*), 'level=<s>' (one s*), 'runlocal' (runlocal stage configs,
8 samples, 4 steps, s* in 0, 0.25).
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  return stage_configs.pipeline_config("lsun", 128, arg)
