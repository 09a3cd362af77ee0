"""CDM LSUN cascade, stage 2: unconditional 64 -> 128 super-resolution, Gaussian augmentation.

  python -m rin_diffusion.main --config=configs/cdm/lsun_64_128.py \
      --workdir=gs://BUCKET/cdm/lsun_bedroom/sr128
  python -m rin_diffusion.main --config=configs/cdm/lsun_64_128.py:church \
      --workdir=gs://BUCKET/cdm/lsun_church/sr128
  python -m rin_diffusion.main --config=configs/cdm/lsun_64_128.py:runlocal --workdir=/tmp/lsun128

The noise-scheduling paper's 128 network and recipe (Table 1/2 row 128: patch 4, 1024 x 512
tokens, 128 x 768 latents, blocks 6,6,6,6; LAMB 2e-3, 250K steps, batch 1024, b = 0.6,
gamma = 1 - t), unconditional (127 learned latents + time), plus the 64x64 image upsampled
bicubically and concatenated to x_t (+ 24,576 stem parameters) and gamma(s) as one extra latent
token (+ 738,816): 214,822,448 parameters.

Augmentation (CDM section 4.5, Table 5: non-truncated Gaussian conditioning augmentation): each
example's 64x64 image is noised at s ~ U(0, 0.5) with the LSUN base's inference process
('cosine', b = 1); the pipeline sweeps s* on re-noised final base images. CDM reports no s range
for LSUN; s_max is the ImageNet 32 -> 64 choice (stage_configs). Data: 'lsun/bedroom', or
'lsun/church_outdoor' with `church` (the same settings in CDM).

CDM (Appendix B.2): U-Net 64 channels, mult 1,2,4,6,8, 3 res blocks, attention at 8, 16, 32, head
dim 64; Adam 2e-4, batch 1024, 220K steps, dropout 0.1, EMA 0.9999; cosine, fixed variances, simple
loss, continuous noise conditioning, 256 cosine sampling steps (configs/cdm/unet_lsun_64_128.py).

Args: see rin_diffusion/cascade/stage_configs.py (runlocal, church, b=, schedule=, steps=, batch=,
lr=, decay=).
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  return stage_configs.lsun_stage("sr128", arg)
