"""CDM ImageNet cascade, stage 2: 32 -> 64 super-resolution, CDM's U-Net (Appendix B).

  python -m rin_diffusion.main --config=configs/cdm/unet_imagenet_32_64.py --workdir=gs://BUCKET/cdm_unet/sr64
  python -m rin_diffusion.main --config=configs/cdm/unet_imagenet_32_64.py:runlocal --workdir=/tmp/sr64

U-Net 256 channels, mult 1,2,3,4, 5 res blocks, attention at 8 and 16 (4 heads), dropout 0.1;
Adam 1e-4, batch 2048, 400K steps, EMA 0.9999; T = 4000 Improved-DDPM cosine, learned variances,
hybrid loss. Gaussian conditioning augmentation with the base's process ('iddpm_cosine@4000'), s
~ U(0, 0.5) in t, i.e. CDM's step s in 0..2000 of 4000, its level added to the class embedding.
Choices Appendix B leaves open: rin_diffusion/cascade/stage_configs.py (apply_unet_recipe).
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  return stage_configs.unet_stage("imagenet", "sr64", arg)
