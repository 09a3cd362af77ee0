"""CDM's imagenet 256x256 cascade with CDM's own U-Nets: base32 + sr64 + sr256 (CDM's 256 pipeline).

  python -m rin_diffusion.cascade --mode=train --pipeline=configs/cdm/pipeline_unet_imagenet_256.py \
      --workdir=gs://BUCKET/cdm_unet
  python -m rin_diffusion.cascade --pipeline=configs/cdm/pipeline_unet_imagenet_256.py --workdir=gs://BUCKET/cdm_unet

Each stage samples with its own recipe (stage_configs.UNET_RECIPES): 4000 learned-variance steps at
32 and 64, 100 steps at 128 and 256, 256 steps on LSUN; no guidance. Args as the RIN pipelines'
(stage_configs.pipeline_config): 'truncated', 'level=<s>', 'runlocal'.
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  return stage_configs.pipeline_config("imagenet", 256, arg, network="unet")
