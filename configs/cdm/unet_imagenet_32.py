"""CDM ImageNet cascade, stage 1: the class-conditional 32x32 base, CDM's U-Net (Appendix B).

  python -m rin_diffusion.main --config=configs/cdm/unet_imagenet_32.py --workdir=gs://BUCKET/cdm_unet/base32
  python -m rin_diffusion.main --config=configs/cdm/unet_imagenet_32.py:runlocal --workdir=/tmp/base32

U-Net 256 channels, mult 1,2,3,4, 6 res blocks, attention at 8 and 16 (4 heads), dropout 0.1;
Adam 1e-4, batch 2048, 700K steps, EMA 0.9999; T = 4000 Improved-DDPM cosine, learned variances,
hybrid loss; sampled with all 4000 steps ('ddpm_learned').
Choices Appendix B leaves open: rin_diffusion/cascade/stage_configs.py (apply_unet_recipe).
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  return stage_configs.unet_stage("imagenet", "base32", arg)
