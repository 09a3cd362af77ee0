"""The noise-scheduling paper's ImageNet tables as data, and the builder of configs/imagenet*.py.

Chen 2023, "On the Importance of Noise Scheduling for Diffusion Models" (shared/papers), Tables 1-5.
The numbers are typed in once, here; the config files, the sweeps (configs/sweeps/), the table
printer (`python -m rin_diffusion.tools.paper_tables`) and the tests all read them from this module.

Every `configs/imagenet<R>.py` is `get_config(arg) = imagenet_config(R, arg)`. `arg` is a
comma-separated list of tokens (the part after ':' in `--config=configs/imagenet64.py:ARG`):

  runlocal            CPU-sized model with the same structure (same number of blocks, same
                      MLP ratios; tape_dim 32, latent_dim 64, 16 latents, 1 layer per block,
                      4 heads), batch 8, 20 steps, tiny log/checkpoint/sample intervals, 4 sampling
                      steps. The dataset stays the configured one (imagenet2012 at that size).
  synthetic           dataset.name 'synthetic_imagenet2012' instead of 'imagenet2012': a small
                      generated stand-in with imagenet2012's features (JPEG images of varied sizes,
                      1000-class labels), written in array_record into config.dataset.data_dir
                      ('' = the TFDS default) on first use (rin_diffusion/data/synthetic_imagenet.py).
                      With runlocal, the ImageNet smoke run on any machine:
                      --config=configs/imagenet64.py:runlocal,synthetic --config.total_steps=2
  patch8              patch size 8 at 64 and 128 (the other version of the paper's Table 1 lists
                      8x8 patches there, and Table 5 says "patch size of 8" for the 64px model).
                      Only for 64 and 128: from 256 up the default already is patch 8.
  release             imagenet64 only: ImageNet-64 as released with the reference code
                      (pix2seq configs/config_diffusion_imagenet64.py): patch 8, blocks 4,4,4,4
                      (4 blocks of 4 latent layers), 157.78 M parameters.
  b=<float>           diffusion.input_scale (the paper's input scale b).
  schedule=<gamma>    diffusion.train_schedule: 'linear' (alias '1-t'), 'cosine@s,e,tau',
                      'sigmoid@s,e,tau', 'cosine' (see rin_diffusion/schedules.py).
  steps=<int>         total_steps.
  batch=<int>         batch_size (global).
  lr=<float>          optimizer.learning_rate.
  decay=<spec>        optimizer.decay: 'cosine@rho', 'cosine_hold@rho', 'cosine' or 'constant'
                      (see optim.learning_rate_schedule; checked by validate()).

Order: release/patch8 first, then runlocal and synthetic, then the key=value tokens, so an
explicit value always wins (e.g. 'runlocal,steps=100'). A token may appear once. Anything else
raises ValueError naming the token and listing the allowed ones. Note: tokens are separated by ',', so a schedule with
arguments must be the last token: 'runlocal,schedule=sigmoid@0,3,0.5' (everything after
'schedule=' is taken as the schedule).

Shared by all six configs (paper section 3.1 and Table 2; reference = pix2seq, spec-rin section 5):
LAMB b1 0.9, b2 0.999, eps 1e-8, weight decay 0.01; self-conditioning rate 0.9; EMA 0.9999;
batch 1024; warm-up 10k steps; sampling with DDPM (large variance), 1000 steps, the reference's
offset 'cosine' inference schedule; FID without guidance (Table 5: "neither cascades nor guidance"),
sample grids with guidance 3 (section 3.5); x_t normalised by its empirical per-example std
(`normalize_input='empirical'`, the reference's `normalize_noisy_input`; the paper's text also
mentions the analytic factor 1/sqrt((b^2-1) gamma + 1), available as 'analytic').

Paper vs reference code, and what is chosen (spec-rin section 9):
* LR decay "Cosine (first 70%)" (Table 2) is the reference's truncated cosine 'cosine@0.7'
  (spec A1): the cosine half-period is stretched to (total - warmup) / 0.7 steps, so training ends
  70 % of the way down, at 0.206x the base LR, with no constant tail. The paper's wording could
  also be read as "decay over the first 70 %, then hold": `decay=cosine_hold@0.7` is a cosine to
  0 over the first 70 % of the post-warm-up steps, then a learning rate of 0 for the last 30 %.
* Patch size at 64 and 128: 4 (the .md version of the paper, and the spec); 8 with `patch8` (the
  .html version of Table 1, and Table 5's "patch size of 8"). The parameter counts do not tell
  them apart (214.43 / 214.48 M at 64, 214.83 / 214.58 M at 128).
* ImageNet-64 as released by the reference code is smaller (p8, 4x4 layers): `release` (spec A2).
* 256: Table 1 says b = 0.5, but the best 1-t cell of Table 4 at 256 (FID 3.52, the number Table 5
  reports) is b = 0.4 (b = 0.5 gives 5.07). The config follows Table 1; `b=0.4` gives Table 4's
  best.
* 512: cosine@0.2,1,1 with b = 0.2 (Table 1; its footnote says 1-t "should work as well").
* Warm-up (10k) is not in the paper's tables; it is the reference's value.
* Label dropout is 0 up to 512 (Table 2), yet the paper's sample grids use guidance 3 (section
  3.5 says so explicitly for 512); the unconditional branch then sees an all-zero one-hot that
  training never showed it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections

from rin_diffusion import config_lib

RESOLUTIONS = (64, 128, 256, 512, 768, 1024)
# The `synthetic` token's dataset: data.synthetic_imagenet.NAME, spelled out because configs load
# without TFDS (tests/test_synthetic_imagenet.py checks that the two agree).
SYNTHETIC_DATASET = "synthetic_imagenet2012"
# Flag tokens of every resolution; VARIANTS adds patch8 / release where they exist.
_FLAG_TOKENS = ("runlocal", "synthetic")

# Table 1 (model hyper-parameters). tokens / latents are (count, width); the token count is
# (image_size / patch)^2 and follows from the patch size; latents include the time and class tokens.
TABLE1: dict[int, dict[str, Any]] = {
    64: dict(patch=4, tokens=(256, 512), latents=(128, 768), blocks=(6, 6, 6, 6), heads=16,
             params_m=214, input_scale=1.0, schedule="1-t"),
    128: dict(patch=4, tokens=(1024, 512), latents=(128, 768), blocks=(6, 6, 6, 6), heads=16,
              params_m=215, input_scale=0.6, schedule="1-t"),
    256: dict(patch=8, tokens=(1024, 512), latents=(256, 768), blocks=(6,) * 6, heads=16,
              params_m=319, input_scale=0.5, schedule="1-t"),
    512: dict(patch=8, tokens=(4096, 512), latents=(256, 768), blocks=(6,) * 6, heads=16,
              params_m=320, input_scale=0.2, schedule="cosine@0.2,1,1"),
    768: dict(patch=8, tokens=(9216, 512), latents=(256, 768), blocks=(8,) * 6, heads=16,
              params_m=408, input_scale=0.1, schedule="1-t"),
    1024: dict(patch=8, tokens=(16384, 512), latents=(256, 768), blocks=(8,) * 6, heads=16,
               params_m=412, input_scale=0.1, schedule="1-t"),
}

# Table 1 rows of the other version of the paper (.html) for 64 and 128 (patch 8, same Params), and
# the reference code's released ImageNet-64 (spec-rin 2.8; its parameter count is the spec's
# closed-form count of that architecture, not a number printed in the paper).
VARIANTS: dict[tuple[int, str], dict[str, Any]] = {
    (64, "patch8"): dict(patch=8, tokens=(64, 512), blocks=(6, 6, 6, 6), params_m=214,
                         source="paper (.html) Table 1"),
    (128, "patch8"): dict(patch=8, tokens=(256, 512), blocks=(6, 6, 6, 6), params_m=215,
                          source="paper (.html) Table 1"),
    (64, "release"): dict(patch=8, tokens=(64, 512), blocks=(4, 4, 4, 4), params_m=157.78,
                          source="reference code (spec-rin 2.8)"),
}

# Table 2 (training hyper-parameters). decay: the paper's words -> our optimizer.decay spec.
TABLE2: dict[int, dict[str, Any]] = {
    64: dict(steps=150_000, batch=1024, lr=2e-3, decay="Cosine (first 70%)", label_dropout=0.0),
    128: dict(steps=250_000, batch=1024, lr=2e-3, decay="Cosine (first 70%)", label_dropout=0.0),
    256: dict(steps=250_000, batch=1024, lr=2e-3, decay="Cosine (first 70%)", label_dropout=0.0),
    512: dict(steps=1_000_000, batch=1024, lr=1e-3, decay="Constant", label_dropout=0.0),
    768: dict(steps=1_000_000, batch=1024, lr=1e-3, decay="Constant", label_dropout=0.1),
    1024: dict(steps=910_000, batch=1024, lr=1e-3, decay="Constant", label_dropout=0.1),
}
DECAY_SPECS = {"Cosine (first 70%)": "cosine@0.7", "Constant": "constant"}
SCHEDULE_SPECS = {"1-t": "linear"}  # The paper's gamma(t) names -> ours; others are already specs.

# Table 5, "RIN + our strategy" rows (FID / IS on 50K samples, 1000 DDPM steps, no guidance), as
# aligned in the .html version of the paper (the .md version shifts the 128-1024 rows by one).
TABLE5: dict[int, dict[str, float]] = {
    64: dict(fid=2.04, inception_score=55.8),
    128: dict(fid=3.50, inception_score=120.4),
    256: dict(fid=3.52, inception_score=186.2),
    512: dict(fid=3.95, inception_score=216.0),
    768: dict(fid=5.60, inception_score=196.2),
    1024: dict(fid=8.72, inception_score=163.9),
}

# Table 3: FID per training schedule at input scale 1, for 64 / 128 / 256.
# (paper label, our schedule spec, {resolution: FID}). The "cosine (s=0, e=1, tau=1; i.e. cosine)"
# row is Algorithm 1's cosine@0,1,1, not the reference's offset inference 'cosine' (nearly equal).
TABLE3: tuple[tuple[str, str, dict[int, float]], ...] = (
    ("1-t", "linear", {64: 2.04, 128: 4.51, 256: 7.21}),
    ("cosine (s=0, e=1, tau=1)", "cosine@0,1,1", {64: 2.71, 128: 7.28, 256: 21.6}),
    ("cosine (s=0.2, e=1, tau=1)", "cosine@0.2,1,1", {64: 2.15, 128: 4.9, 256: 12.3}),
    ("cosine (s=0.2, e=1, tau=2)", "cosine@0.2,1,2", {64: 2.84, 128: 5.64, 256: 5.61}),
    ("cosine (s=0.2, e=1, tau=3)", "cosine@0.2,1,3", {64: 3.3, 128: 4.64, 256: 6.24}),
    ("sigmoid (s=-3, e=3, tau=0.9)", "sigmoid@-3,3,0.9", {64: 2.09, 128: 5.83, 256: 7.19}),
    ("sigmoid (s=-3, e=3, tau=1.1)", "sigmoid@-3,3,1.1", {64: 2.03, 128: 4.89, 256: 7.23}),
    ("sigmoid (s=0, e=3, tau=0.3)", "sigmoid@0,3,0.3", {64: 4.93, 128: 6.07, 256: 5.74}),
    ("sigmoid (s=0, e=3, tau=0.5)", "sigmoid@0,3,0.5", {64: 3.12, 128: 5.71, 256: 4.28}),
    ("sigmoid (s=0, e=3, tau=0.7)", "sigmoid@0,3,0.7", {64: 3.34, 128: 3.91, 256: 5.49}),
    ("sigmoid (s=0, e=3, tau=0.9)", "sigmoid@0,3,0.9", {64: 2.29, 128: 4.42, 256: 5.48}),
    ("sigmoid (s=0, e=3, tau=1.1)", "sigmoid@0,3,1.1", {64: 2.36, 128: 4.39, 256: 7.15}),
)
TABLE3_RESOLUTIONS = (64, 128, 256)

# Table 4: FID per input scale b, for gamma = cosine@0.2,1,1 and 1-t, at 64 / 128 / 256.
# TABLE4[b][resolution] = (FID with cosine@0.2,1,1, FID with 1-t).
TABLE4_SCHEDULES = ("cosine@0.2,1,1", "linear")
TABLE4_RESOLUTIONS = (64, 128, 256)
TABLE4: dict[float, dict[int, tuple[float, float]]] = {
    0.3: {64: (5.1, 6.77), 128: (5.63, 5.25), 256: (3.7, 3.58)},
    0.4: {64: (4.0, 3.79), 128: (4.65, 6.89), 256: (4.01, 3.52)},
    0.5: {64: (3.76, 3.79), 128: (4.14, 3.9), 256: (5.12, 5.07)},
    0.6: {64: (3.42, 2.8), 128: (3.97, 3.5), 256: (5.54, 5.54)},
    0.7: {64: (2.4, 2.49), 128: (4.78, 5.34), 256: (7.93, 5.72)},
    0.8: {64: (2.36, 2.43), 128: (6.28, 5.35), 256: (4.52, 7.52)},
    0.9: {64: (2.31, 2.23), 128: (4.89, 3.86), 256: (5.51, 6.69)},
    1.0: {64: (2.15, 2.04), 128: (4.9, 4.51), 256: (12.3, 7.21)},
}

# key=value tokens of `get_config(arg)`: key -> (config field, parser).
_KEY_VALUE_TOKENS = {
    "b": ("diffusion.input_scale", float),
    "schedule": ("diffusion.train_schedule", lambda v: SCHEDULE_SPECS.get(v, v)),
    "steps": ("total_steps", int),
    "batch": ("batch_size", int),
    "lr": ("optimizer.learning_rate", float),
    "decay": ("optimizer.decay", str),
}


def config_path(resolution: int) -> str:
  """The repo-relative path of the config file for `resolution`."""
  return f"configs/imagenet{resolution}.py"


def allowed_tokens(resolution: int) -> list[str]:
  """The `get_config(arg)` tokens accepted for `resolution`."""
  flags = [*_FLAG_TOKENS] + [name for (res, name) in VARIANTS if res == resolution]
  return flags + [f"{key}=<value>" for key in _KEY_VALUE_TOKENS]


def _parse_arg(resolution: int, arg: str) -> tuple[set[str], dict[str, str]]:
  """Splits `arg` into flag tokens and key=value tokens; raises ValueError on anything unknown."""
  flags: set[str] = set()
  values: dict[str, str] = {}
  where = f"{config_path(resolution)}:{arg}"
  allowed = ", ".join(allowed_tokens(resolution))
  tokens = [t.strip() for t in arg.split(",")] if arg.strip() else []
  i = 0
  while i < len(tokens):
    token = tokens[i]
    if "=" in token:
      key, value = (s.strip() for s in token.split("=", 1))
      if key not in _KEY_VALUE_TOKENS:
        raise ValueError(
            f"{where}: unknown override {key!r} in token {token!r}; allowed: {allowed}.")
      if key == "schedule":  # Schedules contain commas: the rest of the string is the schedule.
        value = ",".join([value] + tokens[i + 1:])
        i = len(tokens)
      if key in values:
        raise ValueError(f"{where}: {key!r} is given twice.")
      if not value:
        raise ValueError(f"{where}: token {token!r} has no value; allowed: {allowed}.")
      values[key] = value
    elif token in _FLAG_TOKENS or (resolution, token) in VARIANTS:
      if token in flags:
        raise ValueError(f"{where}: {token!r} is given twice.")
      flags.add(token)
    else:
      raise ValueError(f"{where}: unknown token {token!r}; allowed: {allowed}.")
    i += 1
  if {"patch8", "release"} <= flags:
    raise ValueError(f"{where}: 'patch8' and 'release' exclude each other ('release' is patch 8).")
  return flags, values


def _set_dotted(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


# How each Table-1 config fits a slice at the paper's batch (1024, data parallel as shipped),
# measured by compiling its train step ahead of time with libtpu's TPU compiler:
#   python -m rin_diffusion.tools.plan --config=configs/imagenet<R>.py --topology=v4-128 \
#       [--config.model.dtype=bfloat16 --config.model.remat=True]
# (docs/performance.md; 5.5-8 minutes each). 1024 in float32 without remat is
# refused by the compiler on v5e-256 and left 2-3 GiB at 512/768 on v4-128, so it runs in bfloat16
# activations (parameters, optimizer state, softmax and the loss stay float32) with full remat.
FITTING_PLANS = {
    64: dict(slice="v4-128", dtype="float32", remat=False, peak_gib=6.71, hbm_gib=32),
    128: dict(slice="v4-128", dtype="float32", remat=False, peak_gib=8.70, hbm_gib=32),
    256: dict(slice="v4-128", dtype="float32", remat=False, peak_gib=19.54, hbm_gib=32),
    512: dict(slice="v4-128", dtype="float32", remat=False, peak_gib=29.06, hbm_gib=32),
    768: dict(slice="v4-128", dtype="float32", remat=False, peak_gib=29.71, hbm_gib=32),
    1024: dict(slice="v4-128", dtype="bfloat16", remat=True, peak_gib=21.23, hbm_gib=32),
}


def plan_overrides(resolution: int) -> list[str]:
  """The trainer flags that make configs/imagenet<resolution>.py fit its FITTING_PLANS slice."""
  plan = FITTING_PLANS[resolution]
  flags = []
  if plan["dtype"] != "float32":
    flags.append(f"--config.model.dtype={plan['dtype']}")
  if plan["remat"]:
    flags.append("--config.model.remat=True")
  return flags


def imagenet_config(resolution: int, arg: str = "") -> ml_collections.ConfigDict:
  """The paper's class-conditional ImageNet config at `resolution`, with `arg`'s tokens applied."""
  if resolution not in TABLE1:
    raise ValueError(f"resolution={resolution!r}: allowed: {', '.join(map(str, RESOLUTIONS))}.")
  flags, values = _parse_arg(resolution, arg)
  t1, t2 = TABLE1[resolution], TABLE2[resolution]

  c = config_lib.base_config()
  c.total_steps = t2["steps"]
  c.batch_size = t2["batch"]
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5_000
  c.sample_every_steps = 10_000

  c.dataset.name = "imagenet2012"
  c.dataset.split = "train"
  c.dataset.image_size = resolution
  c.dataset.channels = 3
  c.dataset.num_classes = 1000
  c.dataset.random_flip = True
  # Worker processes rather than threads: at 64 and 256 a pod host needs more images/s than
  # decoding threads that share the trainer's GIL can give (benchmarks/input_pipeline.py).
  c.dataset.loader = "grain"

  m = c.model
  m.image_size = resolution
  m.channels = 3
  m.num_classes = 1000
  m.patch_size = t1["patch"]
  m.tape_dim = t1["tokens"][1]
  m.latent_slots, m.latent_dim = t1["latents"]
  m.blocks = tuple(t1["blocks"])
  m.latent_mlp_ratio = 4
  m.tape_mlp_ratio = 4
  m.latent_heads = t1["heads"]
  m.rw_heads = t1["heads"]
  m.drop_units = m.drop_path = m.drop_att = 0.0
  m.tape_pos = "learned"  # The paper's parameter counts need learned interface embeddings.

  d = c.diffusion
  d.train_schedule = SCHEDULE_SPECS.get(t1["schedule"], t1["schedule"])
  d.infer_schedule = "cosine"
  d.input_scale = t1["input_scale"]
  d.normalize_input = "empirical"
  d.pred_type = "eps"
  d.loss_target = "eps"
  d.loss_weighting = "constant"
  d.self_cond_rate = 0.9
  d.label_dropout = t2["label_dropout"]

  o = c.optimizer
  o.name = "lamb"
  o.learning_rate = t2["lr"]
  o.b1, o.b2, o.eps = 0.9, 0.999, 1e-8
  o.weight_decay = 0.01
  o.warmup_steps = 10_000
  o.decay = DECAY_SPECS[t2["decay"]]
  o.clip_norm = 0.0
  o.ema_decay = 0.9999
  o.ema_warmup = False

  s = c.sampling
  s.sampler = "ddpm"
  s.steps = 1000
  s.guidance = 3.0
  s.fid_guidance = 0.0

  for variant in ("release", "patch8"):
    if variant in flags:
      row = VARIANTS[(resolution, variant)]
      m.patch_size = row["patch"]
      m.blocks = tuple(row["blocks"])

  if "runlocal" in flags:
    # Same structure (block count, MLP ratios, patch size, image size), CPU-sized widths.
    m.tape_dim = 32
    m.latent_dim = 64
    m.latent_slots = 16  # 14 learned latents + time + class.
    m.blocks = (1,) * len(m.blocks)
    m.latent_heads = 4
    m.rw_heads = 4
    c.total_steps = 20
    c.batch_size = 8
    c.log_every_steps = 2
    c.checkpoint_every_steps = 10
    c.sample_every_steps = 20
    c.dataset.num_workers = 2
    o.warmup_steps = 5
    o.ema_decay = 0.99
    o.ema_warmup = True  # 20 steps: an un-warmed EMA would still be the initialisation.
    s.steps = 4
    s.num_samples = 8
  if "synthetic" in flags:
    c.dataset.name = SYNTHETIC_DATASET  # Same features as imagenet2012, generated on first use.

  for key, raw in values.items():
    field, parse = _KEY_VALUE_TOKENS[key]
    try:
      value = parse(raw)
    except ValueError:
      raise ValueError(
          f"{config_path(resolution)}:{arg}: {key}={raw!r} is not a valid {parse.__name__} "
          f"(sets config.{field}).") from None
    _set_dotted(c, field, value)
  if "runlocal" not in flags:
    # A run is complete with its table cell: FID-50k (the paper's protocol) at the last step.
    c.eval_every_steps = c.total_steps
  return c


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads 'path/to/config.py[:arg]' the way `--config=` does (ml_collections config_flags).

  The file is imported by path and its `get_config()` is called with `arg` when one is given.
  """
  path, sep, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"config file {path!r} does not exist (from {spec!r}).")
  name = "rin_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if sep else module.get_config()
