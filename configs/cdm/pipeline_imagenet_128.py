"""CDM ImageNet 128x128 cascade: base32, 32 -> 64 (sr64) and 64 -> 128 (sr128), RIN denoisers.

  python -m rin_diffusion.cascade --mode=train --pipeline=configs/cdm/pipeline_imagenet_128.py \
      --workdir=gs://BUCKET/cdm              # base32 and sr64 are shared with the 64 pipeline
  python -m rin_diffusion.cascade --pipeline=configs/cdm/pipeline_imagenet_128.py:level=0.25 \
      --workdir=gs://BUCKET/cdm

Every s* of sr64 costs a full 128x128 run of sr128, so the default sweep is CDM's best range only:
s* = 0.125, 0.1875, 0.25, 0.3125 (CDM's s = 500-1250 of 4000 steps), non-truncated; pick s* with
the 64 pipeline and pass it as 'level=<s>'. sr128 (blur-trained) takes the 64x64 images as they
are (level 0). Sampling: DDPM, 1000 steps, no guidance at every stage (CDM: 100 steps at 128 with
its own tuned schedule; not done here).

Args (comma-separated): 'truncated' (base32 stops at t = s*), 'level=<s>' (one s* for sr64),
'runlocal' (runlocal stage configs, 8 samples, 4 steps, s* in 0, 0.25).
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  return stage_configs.pipeline_config("imagenet", 128, arg)
