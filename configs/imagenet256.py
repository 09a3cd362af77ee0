"""Class-conditional ImageNet 256x256: the noise-scheduling paper's model (Chen 2023, Tables 1-2).

  python -m rin_diffusion.main --config=configs/imagenet256.py --workdir=gs://BUCKET/in256

Table 1: patch 8x8 -> 1024 x 512 interface tokens, 256 x 768 latents (254 learned + time + class),
blocks 6,6,6,6,6,6, 16 heads, 319 M parameters, input scale b = 0.5, gamma(t) = 1 - t ('linear').
Table 2: 250K steps, batch 1024, LAMB lr 2e-3, "Cosine (first 70%)" = 'cosine@0.7', no label
dropout.
Paper result (Table 5): FID 3.52, IS 186.2.

Args (comma-separated, see rin_diffusion/paper_configs.py): runlocal, synthetic, b=<float>,
schedule=<gamma>, steps=<int>, batch=<int>, lr=<float>, decay=<spec>. (Patch 8 is already the
default here.)

Paper vs reference code, and what is chosen here:
* Input scale: Table 1 says b = 0.5, but Table 4's b = 0.5, 1-t cell reads FID 5.07 and the 3.52 of
  Table 5 is Table 4's b = 0.4 cell. This config follows Table 1 (b = 0.5); `b=0.4` gives the
  Table 4 optimum.
* The reference code has no 256px config; everything not in the paper's tables follows its
  ImageNet-64 config (warm-up 10k, EMA 0.9999, LAMB eps 1e-8, offset-cosine inference schedule).
* LR decay: the reference's truncated cosine (ends at 0.206x the base LR, no constant tail).
* b < 1: x_t is normalised by its empirical per-example std (reference), not analytically.
"""

from rin_diffusion import paper_configs


def get_config(arg: str = ""):
  return paper_configs.imagenet_config(256, arg)
