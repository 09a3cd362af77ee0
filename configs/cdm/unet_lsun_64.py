"""CDM LSUN cascade, stage 1: the unconditional 64x64 base, CDM's U-Net (Appendix B.2).

  python -m rin_diffusion.main --config=configs/cdm/unet_lsun_64.py --workdir=gs://BUCKET/cdm_unet/base64
  python -m rin_diffusion.main --config=configs/cdm/unet_lsun_64.py:runlocal --workdir=/tmp/base64

U-Net 128 channels, mult 1,2,3,4, 3 res blocks, attention at 8, 16, 32 (head dim 64), dropout
0.1; Adam 3e-4, batch 2048, 100K steps, EMA 0.9999; cosine, continuous noise conditioning, fixed
variances, simple loss; sampled with 256 cosine steps. Bedroom; 'church' for LSUN church.
Choices Appendix B leaves open: rin_diffusion/cascade/stage_configs.py (apply_unet_recipe).
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  return stage_configs.unet_stage("lsun", "base64", arg)
