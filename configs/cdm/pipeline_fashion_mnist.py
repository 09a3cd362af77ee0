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


def _count(text: str) -> int | None:
  return int(text) if text.isdigit() else None


def _weight(text: str) -> float | None:
  return float(text) if text.replace(".", "", 1).isdigit() else None


# The 'key=value' args and the parser of each value (None: not allowed).
_VALUED_ARGS = {"at": _count, "srw": _weight, "basew": _weight, "basegi": _interval,
                "basesteps": _count}


def get_config(arg: str = ""):
  tokens, values = set(), {}
  bad = False
  for token in filter(None, arg.split(",")):
    key, has_value, text = token.partition("=")
    if not has_value:
      tokens.add(token)
      continue
    parse = _VALUED_ARGS.get(key)
    value = parse(text) if parse else None
    # One value per key: 'at=1,at=2' is refused, a repeated 'at=1' is the same arg.
    bad = bad or value is None or values.get(key, value) != value
    values[key] = value
  if bad or tokens - {"truncated", "tiny", "unet", "noaug", "blur"} or {"noaug", "blur"} <= tokens:
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
  if "at" in values:
    sr["checkpoint_step"] = values["at"]
  if "srw" in values:
    sr["guidance"] = values["srw"]
  base = p.stages[0]
  if "basew" in values:
    base["guidance"] = values["basew"]
  base_overrides = {}
  if "basegi" in values:
    base_overrides["sampling.guidance_interval"] = values["basegi"]
  if "basesteps" in values:
    base_steps = values["basesteps"]
    base["name"] = f"base16_{base_steps}"
    base_overrides.update({"total_steps": base_steps, "sample_every_steps": base_steps,
                           "checkpoint_every_steps": max(base_steps // 4, 1)})
  if base_overrides:
    base["overrides"] = base_overrides
  p.input_samples = ""  # Or 'real:test' / a shard directory (--input_samples): stand-in base.
  return p
