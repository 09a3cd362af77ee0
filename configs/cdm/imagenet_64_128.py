"""CDM ImageNet cascade, stage 3 of the 128 pipeline: 64 -> 128 super-resolution with blur.

  python -m rin_diffusion.main --config=configs/cdm/imagenet_64_128.py \
      --workdir=gs://BUCKET/cdm/sr128
  python -m rin_diffusion.main --config=configs/cdm/imagenet_64_128.py:runlocal --workdir=/tmp/sr128

The noise-scheduling paper's 128 network and recipe (Table 1/2 row 128: patch 4, 1024 x 512
tokens, 128 x 768 latents, blocks 6,6,6,6; LAMB 2e-3, 250K steps, batch 1024, b = 0.6,
gamma = 1 - t), class-conditional, plus the 64x64 image upsampled bicubically and concatenated to
x_t (+ 4*4*3*512 = 24,576 stem parameters; no level token): 214,851,632 parameters.

Augmentation (CDM sections 3.1, 4.4): half of the examples get their 64x64 image blurred with a
3x3 Gaussian, sigma ~ U(0.4, 0.6) (CDM's best range, reported for 64 -> 256), before upsampling;
no Gaussian noise (CDM found it unhelpful at 128 and 256), no blur at sampling. The augmentation
process fields hold the 32 -> 64 stage's inference process ('cosine', b = 1) for consistency;
at s = 0 they only scale z by b and back.

CDM (Appendix B): U-Net 128 channels, mult 1,2,4,8,8, 3 res blocks, attention at 16, 1 head; Adam
1e-4, batch 1024, 500K steps, no dropout, EMA 0.9999; trained with T = 2000 linear, simple loss,
continuous noise conditioning, sampled with 100 steps (configs/cdm/unet_imagenet_64_128.py). CDM's
128 pipeline FID: 3.52.

Args: see rin_diffusion/cascade/stage_configs.py (runlocal, b=, schedule=, steps=, batch=, lr=,
decay=).
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  return stage_configs.imagenet_stage("sr128", arg)
