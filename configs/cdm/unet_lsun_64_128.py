"""CDM LSUN cascade, stage 2: 64 -> 128 super-resolution, CDM's U-Net (Appendix B.2).

  python -m rin_diffusion.main --config=configs/cdm/unet_lsun_64_128.py --workdir=gs://BUCKET/cdm_unet/sr128
  python -m rin_diffusion.main --config=configs/cdm/unet_lsun_64_128.py:runlocal --workdir=/tmp/sr128

U-Net 64 channels, mult 1,2,4,6,8, 3 res blocks, attention at 8, 16, 32 (head dim 64), dropout
0.1; Adam 2e-4, batch 1024, 220K steps, EMA 0.9999; as the LSUN base, with non-truncated Gaussian
conditioning augmentation (CDM section 5) on the base's process.
Choices Appendix B leaves open: rin_diffusion/cascade/stage_configs.py (apply_unet_recipe).
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  return stage_configs.unet_stage("lsun", "sr128", arg)
