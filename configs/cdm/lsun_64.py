"""CDM LSUN cascade, stage 1: the unconditional 64x64 base (LSUN bedroom; church with `church`).

  python -m rin_diffusion.main --config=configs/cdm/lsun_64.py \
      --workdir=gs://BUCKET/cdm/lsun_bedroom/base64
  python -m rin_diffusion.main --config=configs/cdm/lsun_64.py:church \
      --workdir=gs://BUCKET/cdm/lsun_church/base64
  python -m rin_diffusion.main --config=configs/cdm/lsun_64.py:runlocal --workdir=/tmp/lsun64

The noise-scheduling paper's 64 network and recipe (Table 1/2 row 64: patch 4, 256 x 512 tokens,
128 x 768 latents, blocks 6,6,6,6; LAMB 2e-3, 150K steps, batch 1024, b = 1, gamma = 1 - t),
unconditional: no class projection and the class token's slot is one more learned latent
(127 learned + time): 213,665,840 parameters. No guidance.

Data: TFDS 'lsun/bedroom' ('church': 'lsun/church_outdoor'; CDM uses the same settings for both),
centre crop and antialiased bicubic resize to 64, random flips. Not prepared by this package: see
rin_diffusion/cascade/stage_configs.py.

CDM (Appendix B.2): U-Net 128 channels, mult 1,2,3,4, 3 res blocks, attention at 8, 16, 32, head
dim 64; Adam 3e-4, batch 2048, 100K steps, dropout 0.1, EMA 0.9999; cosine, fixed variances, simple
loss, continuous noise conditioning, sampled with 256 cosine steps (configs/cdm/unet_lsun_64.py).

Args: see rin_diffusion/cascade/stage_configs.py (runlocal, church, b=, schedule=, steps=, batch=,
lr=, decay=).
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  return stage_configs.lsun_stage("base64", arg)
