"""CDM ImageNet cascade, stage 2: 32 -> 64 super-resolution with Gaussian conditioning augmentation.

  python -m rin_diffusion.main --config=configs/cdm/imagenet_32_64.py --workdir=gs://BUCKET/cdm/sr64
  python -m rin_diffusion.main --config=configs/cdm/imagenet_32_64.py:runlocal --workdir=/tmp/sr64

The noise-scheduling paper's 64 network and recipe (Table 1/2 row 64: patch 4, 256 x 512 tokens,
128 x 768 latents, blocks 6,6,6,6; LAMB 2e-3, 150K steps, batch 1024, b = 1, gamma = 1 - t),
class-conditional, plus the 32x32 image (same crop, same flip, PIL bicubic down to 32) upsampled
bicubically and concatenated to x_t (+ 4*4*3*512 = 24,576 stem parameters) and gamma(s) of its
augmentation level as one extra latent token (+ one ScalarEmbedding, 738,816): 215,197,232
parameters.

Augmentation (CDM section 3.2-3.3, 4.3): each example's 32x32 image is noised at
s ~ U(0, 0.5) with the base's inference process ('cosine', b = 1), so the pipeline can sweep s*
after training and can hand over the base's truncated state. CDM's best s were 500-750
(truncated) and 750-1250 (non-truncated) of 4000 steps, t = 0.13-0.19 and 0.19-0.32 here; see
stage_configs for s_max = 0.5. In-loop grids condition on real 32x32 images at s = 0.

CDM (Appendix B): U-Net 256 channels, mult 1,2,3,4, 5 res blocks, attention at 8 and 16, 4 heads;
Adam 1e-4, batch 2048, 400K steps, dropout 0.1, EMA 0.9999; T = 4000 cosine, learned variances,
hybrid loss (configs/cdm/unet_imagenet_32_64.py). CDM's 64x64 pipeline FID: 1.48.

Args: see rin_diffusion/cascade/stage_configs.py (runlocal, b=, schedule=, steps=, batch=, lr=,
decay=).
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  return stage_configs.imagenet_stage("sr64", arg)
