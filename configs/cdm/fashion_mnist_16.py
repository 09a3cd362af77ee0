"""Offline demo cascade, stage 1 of 2: a class-conditional 16x16 Fashion-MNIST base.

  python -m rin_diffusion.main --config=configs/cdm/fashion_mnist_16.py --workdir=workdir/cascade/base16
  make demo-cascade    # trains this stage and the 16 -> 32 stage, then samples the cascade

The images are the demo's padded 32x32 canvas resized to 16x16 (`dataset.pad_to = 32`), so this
base generates exactly what the 16 -> 32 stage is conditioned on in training. Patch 2 keeps the
demo's 64 interface tokens. `:tiny` shrinks everything for tests; `:unet` (or `:tiny,unet`)
trains a small U-Net with CDM's recipe A instead (stage_configs.fashion_mnist_stage).
"""

from rin_diffusion.cascade import stage_configs


def get_config(arg: str = ""):
  c = stage_configs.fashion_mnist_stage(arg)
  c.dataset.image_size = c.model.image_size = 16
  c.dataset.pad_to = 32
  c.model.patch_size = 4 if "tiny" in arg else 2
  c.eval.cas = False
  return c
