"""Class-conditional ImageNet 128x128: the noise-scheduling paper's model (Chen 2023, Tables 1-2).

  python -m rin_diffusion.main --config=configs/imagenet128.py --workdir=gs://BUCKET/in128

Table 1: patch 4x4 -> 1024 x 512 interface tokens, 128 x 768 latents (126 learned + time + class),
blocks 6,6,6,6, 16 heads, 215 M parameters, input scale b = 0.6, gamma(t) = 1 - t ('linear').
Table 2: 250K steps, batch 1024, LAMB lr 2e-3, "Cosine (first 70%)" = 'cosine@0.7', no label
dropout.
Paper result (Table 5): FID 3.50, IS 120.4 (the b = 0.6, 1-t cell of Table 4 also reads 3.5).

Args (comma-separated, see rin_diffusion/paper_configs.py): runlocal, synthetic, patch8, b=<float>,
schedule=<gamma>, steps=<int>, batch=<int>, lr=<float>, decay=<spec>.

Paper vs reference code, and what is chosen here:
* Patch size: 4 (the .md version of the paper and the spec: 214.83 M vs "215M"). The .html version
  of Table 1 lists 8x8 patches and 256 x 512 tokens: `patch8` (214.58 M).
* The reference code has no 128px config; everything not in the paper's tables follows its
  ImageNet-64 config (warm-up 10k, EMA 0.9999, LAMB eps 1e-8, offset-cosine inference schedule).
* LR decay: the reference's truncated cosine (ends at 0.206x the base LR, no constant tail).
* b = 0.6 < 1: x_t is normalised by its empirical per-example std (reference), not analytically.
"""

from rin_diffusion import paper_configs


def get_config(arg: str = ""):
  return paper_configs.imagenet_config(128, arg)
