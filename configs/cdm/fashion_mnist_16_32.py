"""Offline demo cascade, stage 2 of 2: Fashion-MNIST 16 -> 32 super-resolution.

  python -m rin_diffusion.main --config=configs/cdm/fashion_mnist_16_32.py --workdir=workdir/cascade/sr32

Conditioned on the class and on the 16x16 image (the same example through the same preprocessing
at 16: the padded 32 canvas resized), upsampled bicubically and concatenated to x_t. Gaussian
conditioning augmentation as in CDM's 32 -> 64 stage: each example is noised at s ~ U(0, 0.5) with
the base's inference process (cosine, b = 1), and gamma(s) enters as one extra latent token, so
the pipeline can sweep s* (and hand over the base's truncated state) after training. `:tiny`
shrinks everything for tests; `:unet` (or `:tiny,unet`) trains a small U-Net with CDM's recipe A.
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  c = stage_configs.fashion_mnist_stage(arg)
  c.eval.cas = True  # Scores the cascade's 32x32 output (--evaluate); never run in the loop.
  c.cascade.low_resolution = 16
  c.cascade.upsample = "bicubic"
  c.cascade.aug_level_max = 0.5
  c.cascade.aug_schedule = c.diffusion.infer_schedule  # The base's (same recipe): 'cosine', b = 1.
  c.cascade.aug_input_scale = c.diffusion.input_scale
  c.cascade.sample_level = 0.0
  c.model.extra_in_channels = c.model.channels
  c.model.num_extra_tokens = 1
  return c
