"""The offline demo cascade: a 16x16 base and a 16 -> 32 stage on Fashion-MNIST.

  python -m rin_diffusion.cascade --mode=train --pipeline=configs/cdm/pipeline_fashion_mnist.py \
      --workdir=workdir/cascade
  python -m rin_diffusion.cascade --pipeline=configs/cdm/pipeline_fashion_mnist.py \
      --workdir=workdir/cascade --evaluate   # 200 samples per level s*, grids, .npz, FID/CAS

Args (comma-separated): 'truncated' hands the base's state at t = s* to the SR stage instead of
re-noising its final image; 'tiny' uses the tiny stage configs (tests); 'unet' CDM-style U-Net
stages with learned variances (stage_configs.FASHION_MNIST_UNET). The ablations of docs/cascade.md
swap the 16 -> 32 stage for one trained otherwise, in its own workdir: 'noaug' without Gaussian
conditioning augmentation (sr32_noaug, sampled at s* = 0 only: it never saw a noised input),
'blur' with CDM's blur augmentation added (sr32_blur: half of the examples, sigma ~ U(0.4, 0.6)).
'at=N' samples the 16 -> 32 stage's checkpoint of step N (the ablations compare equal steps);
'srw=W' samples it with guidance W instead of the base's; 'basew=W' samples the base with guidance W
(the single-stage demo's 3 costs the 16x16 base its diversity: docs/cascade.md); 'basegi=LO:HI'
guides the base only at LO < t <= HI (Kynkaanniemi et al. 2024's limited interval);
'basesteps=N' trains (and samples) a base of N steps in its own workdir base16_N.
"""

import ml_collections


def _interval(text: str) -> tuple[float, float] | None:
  """'LO:HI' -> (LO, HI) with 0 <= LO < HI <= 1, else None."""
  try:
    lo, hi = (float(v) for v in text.split(":"))
  except ValueError:
    return None
  return (lo, hi) if 0.0 <= lo < hi <= 1.0 else None


def get_config(arg: str = ""):
  tokens = set(filter(None, arg.split(",")))
  at = [t for t in tokens if t.startswith("at=")]
  srw = [t for t in tokens if t.startswith("srw=")]
  basew = [t for t in tokens if t.startswith("basew=")]
  basegi = [t for t in tokens if t.startswith("basegi=")]
  basesteps = [t for t in tokens if t.startswith("basesteps=")]
  tokens -= set(at) | set(srw) | set(basew) | set(basegi) | set(basesteps)
  unknown = tokens - {"truncated", "tiny", "unet", "noaug", "blur"}
  if unknown or len(at) > 1 or len(srw) > 1 or len(basew) > 1 or {"noaug", "blur"} <= tokens or any(
      not t.split("=")[1].isdigit() for t in at + basesteps) or len(basesteps) > 1 or any(
      not t.split("=")[1].replace(".", "", 1).isdigit() for t in srw + basew) or any(
      not _interval(t[7:]) for t in basegi):
    raise ValueError(f"pipeline_fashion_mnist.py: args {arg!r}; allowed: 'truncated', 'tiny', "
                     "'unet', one of 'noaug' and 'blur', 'at=STEP', 'srw=GUIDANCE', "
                     "'basew=GUIDANCE', 'basegi=LO:HI' (0 <= LO < HI <= 1) and 'basesteps=N'")
  stage_arg = ",".join(t for t in ("tiny", "unet") if t in tokens)
  suffix = f":{stage_arg}" if stage_arg else ""
  p = ml_collections.ConfigDict()
  # The single-stage demo's evaluation scale: 1,000 samples (100 per class) against 2,000 training
  # images at 32x32, so the cascade's FID and CAS read against the demo's.
  p.num_samples = 1000 if "tiny" not in tokens else 8
  p.batch_size = 100 if "tiny" not in tokens else 8
  p.grid_samples = 100
  p.seed = 0
  p.classes = ""
  # The single-stage demo's sampler at both stages: ancestral ddpm_small, 25 steps, guidance 3.
  # The U-Nets: Improved DDPM's strided sampling with the learned variances, 100 of 4000 steps,
  # no guidance (trained without label dropout, as in CDM). Tiny: a few DDIM steps (tests).
  if "unet" in tokens:
    sampler, guidance, steps = "ddpm_learned", 0.0, 4 if "tiny" in tokens else 100
  elif "tiny" in tokens:
    sampler, guidance, steps = "ddim", 1.0, 3
  else:
    sampler, guidance, steps = "ddpm_small", 3.0, 25
  p.stages = [
      dict(name="base16", config=f"configs/cdm/fashion_mnist_16.py{suffix}", sampler=sampler,
           steps=steps, guidance=guidance),
      dict(name="sr32", config=f"configs/cdm/fashion_mnist_16_32.py{suffix}", sampler=sampler,
           steps=steps, guidance=guidance, truncated="truncated" in tokens,
           levels=(0.0, 0.1, 0.2, 0.3)),
  ]
  sr = p.stages[1]
  if "noaug" in tokens:
    sr.update(name="sr32_noaug", levels=(0.0,),
              overrides={"cascade.aug_level_max": 0.0, "model.num_extra_tokens": 0})
  if "blur" in tokens:
    sr.update(name="sr32_blur", overrides={"cascade.blur_prob": 0.5})
  if at:
    sr["checkpoint_step"] = int(at[0][3:])
  if srw:
    sr["guidance"] = float(srw[0][4:])
  if basew:
    p.stages[0]["guidance"] = float(basew[0][6:])
  base = p.stages[0]
  base["overrides"] = {}
  if basegi:
    base["overrides"]["sampling.guidance_interval"] = _interval(basegi[0][7:])
  if basesteps:
    steps = int(basesteps[0][10:])
    base["name"] = f"base16_{steps}"
    base["overrides"].update({"total_steps": steps, "checkpoint_every_steps": max(steps // 4, 1),
                              "sample_every_steps": steps})
  p.input_samples = ""  # Or 'real:test' / a shard directory (--input_samples): stand-in base.
  return p
