"""The offline demo cascade: a 16x16 base and a 16 -> 32 stage on Fashion-MNIST.

  python -m rin_diffusion.cascade --mode=train --pipeline=configs/cdm/pipeline_fashion_mnist.py \
      --workdir=workdir/cascade
  python -m rin_diffusion.cascade --pipeline=configs/cdm/pipeline_fashion_mnist.py \
      --workdir=workdir/cascade --evaluate   # 200 samples per level s*, grids, .npz, FID/CAS

Args: 'truncated' hands the base's state at t = s* to the SR stage instead of re-noising its
final image; 'tiny' uses the tiny stage configs (tests); 'unet' CDM-style U-Net stages with learned
variances (stage_configs.FASHION_MNIST_UNET).
"""

import ml_collections


def get_config(arg: str = ""):
  tokens = set(filter(None, arg.split(",")))
  unknown = tokens - {"truncated", "tiny", "unet"}
  if unknown:
    raise ValueError(f"pipeline_fashion_mnist.py: unknown args {sorted(unknown)}; allowed: "
                     "'truncated', 'tiny', 'unet'")
  stage_arg = ",".join(t for t in ("tiny", "unet") if t in tokens)
  suffix = f":{stage_arg}" if stage_arg else ""
  p = ml_collections.ConfigDict()
  # 200 samples per level: enough to rank the levels by FID and CAS in a few minutes on 2 cores
  # (FID of 200 samples is biased upwards; compare levels, not papers).
  p.num_samples = 200 if "tiny" not in tokens else 8
  p.batch_size = 100 if "tiny" not in tokens else 8
  p.grid_samples = 100
  p.seed = 0
  p.classes = ""
  steps = 50 if "tiny" not in tokens else 3
  # The U-Nets: Improved DDPM's strided sampling with the learned variances, 100 of 4000 steps,
  # no guidance (trained without label dropout, as in CDM).
  sampler, guidance = ("ddpm_learned", 0.0) if "unet" in tokens else ("ddim", 1.0)
  if "unet" in tokens and "tiny" not in tokens:
    steps = 100
  p.stages = [
      dict(name="base16", config=f"configs/cdm/fashion_mnist_16.py{suffix}", sampler=sampler,
           steps=steps, guidance=guidance),
      dict(name="sr32", config=f"configs/cdm/fashion_mnist_16_32.py{suffix}", sampler=sampler,
           steps=steps, guidance=guidance, truncated="truncated" in tokens,
           levels=(0.0, 0.1, 0.2, 0.3, 0.5)),
  ]
  return p
