"""CDM ImageNet cascade, stage 1: the class-conditional 32x32 base, with a RIN denoiser.

  python -m rin_diffusion.main --config=configs/cdm/imagenet_32.py --workdir=gs://BUCKET/cdm/base32
  python -m rin_diffusion.main --config=configs/cdm/imagenet_32.py:runlocal --workdir=/tmp/base32

The noise-scheduling paper has no 32 config: this is its 64 network (Table 1: 128 x 768 latents,
blocks 6,6,6,6, 16 heads, learned interface positions) with patch 2 instead of 4, so the 32 image
still gives 256 x 512 interface tokens (only the stem and the head shrink): 214,396,940
parameters (the 64 network: 214,433,840). Its recipe is Table 2's 64 row: LAMB lr 2e-3,
cosine@0.7, 150K steps, batch 1024, b = 1, gamma = 1 - t; DDPM 1000 steps with the offset
'cosine' schedule, which is also the augmentation process of the 32 -> 64 stage above it.

CDM (Appendix B): U-Net 256 channels, mult 1,2,3,4, 6 res blocks, attention at 8 and 16, 4 heads;
Adam 1e-4, batch 2048, 700K steps, dropout 0.1, EMA 0.9999, random flips; T = 4000 cosine, learned
variances, hybrid loss (configs/cdm/unet_imagenet_32.py). CDM's FID at 32: 1.11 (train statistics).

Args: see rin_diffusion/cascade/stage_configs.py (runlocal, b=, schedule=, steps=, batch=, lr=,
decay=).
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  return stage_configs.imagenet_stage("base32", arg)
