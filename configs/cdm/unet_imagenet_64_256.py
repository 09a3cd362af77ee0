"""CDM ImageNet cascade, stage 3': 64 -> 256 super-resolution, CDM's SR3-style U-Net (Appendix B).

  python -m rin_diffusion.main --config=configs/cdm/unet_imagenet_64_256.py --workdir=gs://BUCKET/cdm_unet/sr256
  python -m rin_diffusion.main --config=configs/cdm/unet_imagenet_64_256.py:runlocal --workdir=/tmp/sr256

U-Net 128 channels, mult 1,2,4,4,8,8, 3 res blocks, attention at 16 (1 head), no dropout; Adam
1e-4, batch 1024, 500K steps, EMA 0.9999; trained on T = 2000 linear betas with continuous noise
conditioning, simple loss; sampled with 100 steps. Blur augmentation, sigma ~ U(0.4, 0.6).
Choices Appendix B leaves open: rin_diffusion/cascade/stage_configs.py (apply_unet_recipe).
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  return stage_configs.unet_stage("imagenet", "sr256", arg)
