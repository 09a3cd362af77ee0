"""CDM ImageNet cascade, stage 3 of the 256 pipeline: 64 -> 256 super-resolution with blur.

  python -m rin_diffusion.main --config=configs/cdm/imagenet_64_256.py \
      --workdir=gs://BUCKET/cdm/sr256
  python -m rin_diffusion.main --config=configs/cdm/imagenet_64_256.py:runlocal --workdir=/tmp/sr256

The noise-scheduling paper's 256 network and recipe (Table 1/2 row 256: patch 8, 1024 x 512
tokens, 256 x 768 latents, blocks 6 x 6; LAMB 2e-3, 250K steps, batch 1024, b = 0.5,
gamma = 1 - t), class-conditional, plus the 64x64 image upsampled bicubically (x4) and
concatenated to x_t (+ 8*8*3*512 = 98,304 stem parameters; no level token): 319,131,840
parameters.

Augmentation (CDM sections 3.1, 4.4, Table 4(a)): half of the examples get their 64x64 image
blurred with a 3x3 Gaussian, sigma ~ U(0.4, 0.6), before upsampling; no Gaussian noise, no blur at
sampling. The augmentation process fields hold the 32 -> 64 stage's inference process ('cosine',
b = 1) for consistency.

CDM (Appendix B): U-Net 128 channels, mult 1,2,4,4,8,8, 3 res blocks, attention at 16, 1 head; Adam
1e-4, batch 1024, 500K steps, no dropout, EMA 0.9999; trained with T = 2000 linear, simple loss,
continuous noise conditioning, sampled with 100 steps (configs/cdm/unet_imagenet_64_256.py). CDM's
256 pipeline FID: 4.88.

Args: see rin_diffusion/cascade/stage_configs.py (runlocal, b=, schedule=, steps=, batch=, lr=,
decay=).
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  return stage_configs.imagenet_stage("sr256", arg)
