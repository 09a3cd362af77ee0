"""CDM cascades (Ho et al. 2021) with RIN denoisers: the stage and pipeline configs of configs/cdm/.

Every stage is an ordinary run config (config_lib.base_config) built from the noise-scheduling
paper's RIN config at the stage's *output* resolution (`paper_configs.imagenet_config`): its
network (Table 1) and its training recipe (Table 2: LAMB, lr 2e-3, 'cosine@0.7', b, gamma = 1 - t,
steps, batch 1024, self-conditioning, DDPM 1000 sampling steps with the offset 'cosine' schedule).
On top of that come CDM's cascade settings (Appendix B, sections 3-5; spec-rin 8):

  ImageNet (class-conditional at every stage, random flips)
  stage   file                RIN network (Table 1)           low res  conditioning augmentation
  base32  imagenet_32.py      the 64 network, patch 2, at 32  -        -
  sr64    imagenet_32_64.py   the 64 network (patch 4)        32       Gaussian, s ~ U(0, 0.5)
  sr128   imagenet_64_128.py  the 128 network (patch 4)       64       blur p 0.5, sigma U(.4,.6)
  sr256   imagenet_64_256.py  the 256 network (patch 8)       64       blur p 0.5, sigma U(.4,.6)

  LSUN bedroom (unconditional; church: the `church` arg, the same settings on another dataset)
  base64  lsun_64.py          the 64 network                  -        -
  sr128   lsun_64_128.py      the 128 network                 64       Gaussian, s ~ U(0, 0.5)

Pipelines: ImageNet 64 = base32 + sr64; 128 = base32 + sr64 + sr128; 256 = base32 + sr64 + sr256;
LSUN 128 = base64 + sr128 (pipeline_*.py).

The 32x32 base: the noise-scheduling paper has no 32 config. It is the 64 network (256 x 512
interface tokens, 128 x 768 latents, blocks 6,6,6,6) with patch 2 instead of 4, so it has the same
256 interface tokens at 32 (only the stem and the head shrink), and the 64 recipe (Table 2 row 64,
b = 1).

A super-resolution (SR) stage sees the stage below's image z upsampled (bicubic) and concatenated
to x_t (model.extra_in_channels = 3: + p^2 3 d stem parameters); with Gaussian augmentation also
gamma(s) as one extra latent token (one more ScalarEmbedding, (D/4) D + D + D^2 + D = 738,816
parameters at D = 768). Class conditioning stays in the ImageNet SR stages (CDM Table 4(b)).

Gaussian augmentation (sr64, LSUN sr128), amortised over s ~ U(0, s_max): its forward process is
the stage below's *inference* process (cascade.aug_schedule / aug_input_scale = that stage's
diffusion.infer_schedule / input_scale: 'cosine', b = 1 for base32 and base64), so a truncated
base state z_s can be handed over unchanged. s_max = 0.5: CDM's s is a step of a 4000-step
Improved-DDPM cosine process, whose alpha-bar(s / 4000) is within 0.007 in t of our offset
'cosine' gamma(t) (both are cos^2 of nearly the same argument). Its best levels for 32 -> 64 were
s = 500-750 (truncated) and 750-1250 (non-truncated), i.e. t = 0.13-0.19 and 0.19-0.32 here;
s_max = 0.5 (CDM step ~1985) covers both with room to see the quality fall again past them (CDM:
non-monotonic in s on generated inputs), without spending the amortised model on levels that
wipe out z (gamma(0.5) = 0.5). The same for LSUN, where CDM gives no s range.
Blur augmentation (sr128, sr256): half of the examples (per example), a 3x3 Gaussian with
sigma ~ U(0.4, 0.6), at low resolution before upsampling; no blur and no level token at sampling.
CDM reports the sigma range for 64 -> 256 (its Table 4(a)); 64 -> 128 uses the same.

CDM's own networks and diffusion settings (Appendix B; U-Nets) vs what is kept here:

  stage         U-Net: ch, mult, blocks, attn res, heads  batch  Adam  steps  drop  diffusion
  IN base32     256, 1,2,3,4, 6, 8+16, 4 heads            2048   1e-4  700k   0.1   A
  IN 32->64     256, 1,2,3,4, 5, 8+16, 4 heads            2048   1e-4  400k   0.1   A
  IN 64->128    128, 1,2,4,8,8, 3, 16, 1 head             1024   1e-4  500k   0.0   B
  IN 64->256    128, 1,2,4,4,8,8, 3, 16, 1 head           1024   1e-4  500k   0.0   B
  LSUN base64   128, 1,2,3,4, 3, 8+16+32, head dim 64     2048   3e-4  100k   0.1   C
  LSUN 64->128  64, 1,2,4,6,8, 3, 8+16+32, head dim 64    1024   2e-4  220k   0.1   C
  A: T = 4000, cosine, learned variances, hybrid loss. B: trained with T = 2000 linear, simple
  loss, continuous noise conditioning; sampled with 100 linear steps. C: cosine, fixed variances,
  simple loss, continuous noise conditioning; sampled with 256 cosine steps. EMA 0.9999 always.

  Ours: RIN (Table 1 of the output resolution), LAMB lr 2e-3 (warm-up 10k, cosine@0.7, wd 0.01),
  batch 1024, 150k steps (base32, sr64, LSUN base64) or 250k (128, 256), no dropout, EMA 0.9999,
  gamma = 1 - t with b = 1 (32, 64), 0.6 (128), 0.5 (256), eps prediction, self-conditioning 0.9,
  sampling DDPM 1000 steps 'cosine'.

  CDM's own: the same stages with CDM's U-Nets and recipes A-C exactly as written
  (`unet_stage`, configs/cdm/unet_*.py and pipeline_unet_*.py; see UNET_RECIPES and
  apply_unet_recipe for what Appendix B leaves open). Counts (`param_table --cascade`): base32
  792,251,910; sr64 718,437,126; sr128 575,283,203; sr256 634,046,467; LSUN base64 122,906,243;
  LSUN sr128 126,257,795.

Parameter counts (exact, `param_table.count_params`; tests/test_cdm_configs.py checks them against
the closed form): base32 214,396,940; sr64 215,197,232; sr128 214,851,632; sr256 319,131,840;
LSUN base64 213,665,840; LSUN sr128 214,822,448.

Stage args (after ':' in --config=configs/cdm/<stage>.py:ARG): 'runlocal' and the key=value tokens
of paper_configs (b=, schedule=, steps=, batch=, lr=, decay=), applied to this stage only (the
augmentation process stays the stage below's default inference process: set
cascade.aug_input_scale too if the stage below is trained with another b); LSUN also 'church'.
'patch8' and 'release' are refused: the stage fixes its network.

Data: ImageNet is TFDS 'imagenet2012' (prepared by hand, array_record). LSUN is TFDS
'lsun/bedroom' or 'lsun/church_outdoor' (there is no 'lsun/church'); its builder downloads the
LMDB archives and needs tensorflow-io to read them, neither of which this package installs or does:
prepare it elsewhere with `tfds build lsun/bedroom --file_format=array_record` and point
config.dataset.data_dir at it. Its images carry no label (unconditional: num_classes 0).
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from rin_diffusion import paper_configs

# Gaussian conditioning augmentation: s ~ U(0, GAUSSIAN_LEVEL_MAX) per example (see above).
GAUSSIAN_LEVEL_MAX = 0.5
BLUR_PROB = 0.5
BLUR_SIGMA = (0.4, 0.6)
# The sweep over s* of a Gaussian stage: CDM's grid of s = 0, 250, ..., 1500 of 4000 steps as a
# fraction of the process, and s_max. It brackets CDM's best ranges (t = 0.13-0.19 truncated,
# 0.19-0.32 non-truncated) and both sides of them.
SWEEP_LEVELS = (0.0, 0.0625, 0.125, 0.1875, 0.25, 0.3125, 0.375, 0.5)
# Below a 128 or 256 stage, every s* costs a full high-resolution run: only CDM's best ranges.
BEST_RANGE_LEVELS = (0.125, 0.1875, 0.25, 0.3125)
RUNLOCAL_LEVELS = (0.0, 0.25)

# Stage name -> output resolution, Table-1 network, low resolution (0: base), augmentation, and
# the stage below (whose inference process is the augmentation process).
IMAGENET_STAGES: dict[str, dict[str, Any]] = {
    "base32": dict(resolution=32, network=64, low_resolution=0, augmentation="none", below=None),
    "sr64": dict(resolution=64, network=64, low_resolution=32, augmentation="gaussian",
                 below="base32"),
    "sr128": dict(resolution=128, network=128, low_resolution=64, augmentation="blur",
                  below="sr64"),
    "sr256": dict(resolution=256, network=256, low_resolution=64, augmentation="blur",
                  below="sr64"),
}
LSUN_STAGES: dict[str, dict[str, Any]] = {
    "base64": dict(resolution=64, network=64, low_resolution=0, augmentation="none", below=None),
    "sr128": dict(resolution=128, network=128, low_resolution=64, augmentation="gaussian",
                  below="base64"),
}
LSUN_SCENES = {"bedroom": "lsun/bedroom", "church": "lsun/church_outdoor"}

# Repo-relative config files (commands run from the repo root).
STAGE_FILES = {
    ("imagenet", "base32"): "configs/cdm/imagenet_32.py",
    ("imagenet", "sr64"): "configs/cdm/imagenet_32_64.py",
    ("imagenet", "sr128"): "configs/cdm/imagenet_64_128.py",
    ("imagenet", "sr256"): "configs/cdm/imagenet_64_256.py",
    ("lsun", "base64"): "configs/cdm/lsun_64.py",
    ("lsun", "sr128"): "configs/cdm/lsun_64_128.py",
}
# (dataset, final resolution) -> the stages of the pipeline, in order.
PIPELINES = {
    ("imagenet", 64): ("base32", "sr64"),
    ("imagenet", 128): ("base32", "sr64", "sr128"),
    ("imagenet", 256): ("base32", "sr64", "sr256"),
    ("lsun", 128): ("base64", "sr128"),
}


def _stage_table(dataset: str) -> dict[str, dict[str, Any]]:
  return IMAGENET_STAGES if dataset == "imagenet" else LSUN_STAGES


def _split_arg(dataset: str, name: str, arg: str) -> tuple[str, str]:
  """(scene, the tokens for paper_configs); refuses the network variants."""
  where = f"{STAGE_FILES[(dataset, name)]}:{arg}"
  tokens = [t.strip() for t in arg.split(",")] if arg.strip() else []
  for token in tokens:
    if token in ("patch8", "release"):
      raise ValueError(f"{where}: {token!r} changes the network, which the CDM stage fixes; "
                       "allowed: runlocal, b=, schedule=, steps=, batch=, lr=, decay="
                       f"{', church' if dataset == 'lsun' else ''}.")
  scene = "bedroom"
  if dataset == "lsun" and "church" in tokens:
    if tokens.count("church") > 1:
      raise ValueError(f"{where}: 'church' is given twice.")
    scene = "church"
    tokens.remove("church")
  return scene, ",".join(tokens)


def _stage(dataset: str, name: str, arg: str) -> ml_collections.ConfigDict:
  table = _stage_table(dataset)
  if name not in table:
    raise ValueError(f"{dataset} stage {name!r}: allowed: {', '.join(table)}.")
  row = table[name]
  scene, paper_arg = _split_arg(dataset, name, arg)
  c = paper_configs.imagenet_config(row["network"], paper_arg)
  resolution = row["resolution"]
  if resolution != row["network"]:  # base32: the 64 network with the same number of tokens.
    c.model.patch_size = c.model.patch_size * resolution // row["network"]
  c.dataset.image_size = c.model.image_size = resolution

  if dataset == "lsun":
    c.dataset.name = LSUN_SCENES[scene]
    c.dataset.num_classes = c.model.num_classes = 0  # The latent slot of the class is learned.
    c.sampling.guidance = 0.0  # Nothing to guide.
    c.diffusion.label_dropout = 0.0

  low = row["low_resolution"]
  if low:
    below = _stage(dataset, row["below"], "church" if scene == "church" else "")
    cascade = c.cascade
    cascade.low_resolution = low
    cascade.upsample = "bicubic"
    cascade.aug_schedule = below.diffusion.infer_schedule
    cascade.aug_input_scale = below.diffusion.input_scale
    gaussian = row["augmentation"] == "gaussian"
    cascade.aug_level_max = GAUSSIAN_LEVEL_MAX if gaussian else 0.0
    cascade.blur_prob = BLUR_PROB if row["augmentation"] == "blur" else 0.0
    cascade.blur_sigma = BLUR_SIGMA
    # Grids condition on real low-resolution images, whose quality only falls with s (CDM
    # Table 3(b)): level 0 shows the stage itself.
    cascade.sample_level = 0.0
    c.model.extra_in_channels = c.model.channels
    c.model.num_extra_tokens = 1 if gaussian else 0
    c.eval_every_steps = 0  # Evaluated as a whole cascade (python -m rin_diffusion.cascade).
  return c


def imagenet_stage(name: str, arg: str = "") -> ml_collections.ConfigDict:
  """ImageNet stage `name` ('base32', 'sr64', 'sr128', 'sr256') with `arg`'s tokens."""
  return _stage("imagenet", name, arg)


def lsun_stage(name: str, arg: str = "") -> ml_collections.ConfigDict:
  """LSUN stage `name` ('base64', 'sr128'); bedroom, or church with the 'church' token."""
  return _stage("lsun", name, arg)


def pipeline_config(dataset: str, resolution: int, arg: str = "",
                    network: str = "rin") -> ml_collections.ConfigDict:
  """The pipeline for `resolution` (see PIPELINES) as read by cascade.pipeline.load_stages.

  arg tokens: 'truncated' (the Gaussian stage receives the stage below's state at t = s*),
  'runlocal' (runlocal stage configs, 8 samples, 4 steps, levels RUNLOCAL_LEVELS), 'level=<s>'
  (the Gaussian stage at this one s* instead of a sweep), and for LSUN 'church'. network 'unet':
  CDM's U-Net stages (UNET_STAGE_FILES), each sampled with its own recipe's sampler and steps.
  """
  prefix = "pipeline_unet_" if network == "unet" else "pipeline_"
  where = f"{prefix}{dataset}_{resolution}.py:{arg}"
  if (dataset, resolution) not in PIPELINES:
    raise ValueError(f"{where}: no such pipeline; allowed: {sorted(PIPELINES)}.")
  flags = {"truncated", "runlocal"} | ({"church"} if dataset == "lsun" else set())
  tokens = [t.strip() for t in arg.split(",")] if arg.strip() else []
  given, level = set(), None
  for token in tokens:
    key, is_value, value = token.partition("=")
    if key in given:
      raise ValueError(f"{where}: {key!r} is given twice.")
    given.add(key)
    if key == "level" and is_value:
      try:
        level = float(value)
      except ValueError:
        raise ValueError(f"{where}: {token!r}: the level is not a number.") from None
    elif token not in flags:
      raise ValueError(f"{where}: unknown token {token!r}; allowed: {', '.join(sorted(flags))}, "
                       "level=<s>.")
  runlocal = "runlocal" in given
  stage_arg = ",".join(t for t in ("runlocal", "church") if t in given)
  table = _stage_table(dataset)
  names = PIPELINES[(dataset, resolution)]
  if level is not None:
    levels = (level,)
  elif runlocal:
    levels = RUNLOCAL_LEVELS
  else:
    levels = SWEEP_LEVELS if len(names) == 2 else BEST_RANGE_LEVELS

  p = ml_collections.ConfigDict()
  p.num_samples = 8 if runlocal else 10_000  # CDM selects s* on 10K-sample FIDs; 50K to report.
  p.batch_size = 8 if runlocal else 1024
  p.grid_samples = 8 if runlocal else 64
  p.seed = 0
  p.classes = ""
  stages = []
  files = UNET_STAGE_FILES if network == "unet" else STAGE_FILES
  for name in names:
    config = files[(dataset, name)] + (f":{stage_arg}" if stage_arg else "")
    if network == "unet":  # CDM's sampling per stage (UNET_STAGES' recipe), no guidance.
      recipe = UNET_RECIPES[UNET_STAGES[(dataset, name)]["recipe"]]
      sampler, steps = recipe["sampler"], recipe["sampling_steps"]
    else:  # FID samples as in the noise-scheduling paper: DDPM (large variance), 1000 steps.
      sampler, steps = "ddpm", 1000
    entry = dict(name=name, config=config, sampler=sampler, steps=4 if runlocal else steps,
                 guidance=0.0)
    row = table[name]
    if row["augmentation"] == "gaussian":
      entry.update(levels=levels, truncated="truncated" in given)
    elif row["low_resolution"]:
      entry.update(levels=(0.0,), truncated=False)  # Blur: nothing at sampling.
    stages.append(entry)
  p.stages = stages
  return p


# ----------------------------------------------------------------------------------------------
# CDM's own U-Net stages (Appendix B, exactly as written; spec-rin 8.5). The data and augmentation
# settings are those of the RIN stages above; network, optimizer and diffusion are CDM's.

# Recipes: A (ImageNet 32 and 32 -> 64): T = 4000 Improved-DDPM cosine, learned variances, hybrid
# loss, sampled over all 4000 steps (CDM section 4.1: "4000 diffusion timesteps"). B (ImageNet 128,
# 256): trained on T = 2000 DDPM-linear betas with continuous noise conditioning (SR3: t ~ U(0, 1),
# sqrt(alpha-bar) uniform within a segment), simple loss; sampled with 100 steps. CDM tuned its
# 100-step linear schedule by search and does not give it: here the 100 steps are uniform on the
# training process (Improved DDPM's respacing). C (LSUN): Improved DDPM's cosine as a continuous
# schedule, cosine@s/(1+s),1,1 with s = 0.008 (= cos^2((t + s)/(1 + s) pi/2) / cos^2(s/(1+s) pi/2)),
# continuous noise conditioning, simple loss, fixed variances; sampled with 256 steps of it.
# Every recipe predicts eps (DDPM / Improved DDPM / SR3), with b = 1 and no input normalisation.
_IDDPM_COSINE = f"cosine@{0.008 / 1.008!r},1,1"
UNET_RECIPES: dict[str, dict[str, Any]] = {
    "A": dict(schedule="iddpm_cosine@4000", timesteps=4000, learned_variance=True,
              sampler="ddpm_learned", sampling_steps=4000),
    "B": dict(schedule="ddpm_linear@2000", timesteps=0, learned_variance=False,
              sampler="ddpm", sampling_steps=100),
    "C": dict(schedule=_IDDPM_COSINE, timesteps=0, learned_variance=False,
              sampler="ddpm", sampling_steps=256),
}
# (dataset, stage) -> the U-Net (config.unet fields), training and recipe of Appendix B.
UNET_STAGES: dict[tuple[str, str], dict[str, Any]] = {
    ("imagenet", "base32"): dict(
        unet=dict(base_channels=256, channel_mult=(1, 2, 3, 4), num_res_blocks=6,
                  attention_resolutions=(8, 16), num_heads=4, head_dim=0, dropout=0.1),
        batch=2048, lr=1e-4, steps=700_000, recipe="A"),
    ("imagenet", "sr64"): dict(
        unet=dict(base_channels=256, channel_mult=(1, 2, 3, 4), num_res_blocks=5,
                  attention_resolutions=(8, 16), num_heads=4, head_dim=0, dropout=0.1),
        batch=2048, lr=1e-4, steps=400_000, recipe="A"),
    ("imagenet", "sr128"): dict(
        unet=dict(base_channels=128, channel_mult=(1, 2, 4, 8, 8), num_res_blocks=3,
                  attention_resolutions=(16,), num_heads=1, head_dim=0, dropout=0.0),
        batch=1024, lr=1e-4, steps=500_000, recipe="B"),
    ("imagenet", "sr256"): dict(
        unet=dict(base_channels=128, channel_mult=(1, 2, 4, 4, 8, 8), num_res_blocks=3,
                  attention_resolutions=(16,), num_heads=1, head_dim=0, dropout=0.0),
        batch=1024, lr=1e-4, steps=500_000, recipe="B"),
    ("lsun", "base64"): dict(
        unet=dict(base_channels=128, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
                  attention_resolutions=(8, 16, 32), num_heads=0, head_dim=64, dropout=0.1),
        batch=2048, lr=3e-4, steps=100_000, recipe="C"),
    ("lsun", "sr128"): dict(
        unet=dict(base_channels=64, channel_mult=(1, 2, 4, 6, 8), num_res_blocks=3,
                  attention_resolutions=(8, 16, 32), num_heads=0, head_dim=64, dropout=0.1),
        batch=1024, lr=2e-4, steps=220_000, recipe="C"),
}
UNET_STAGE_FILES = {key: path.replace("configs/cdm/", "configs/cdm/unet_")
                    for key, path in STAGE_FILES.items()}


def apply_unet_recipe(c: ml_collections.ConfigDict, unet_fields: dict[str, Any], recipe: str,
                      *, below_infer_schedule: str | None = None) -> None:
  """Turns stage config `c` into a U-Net stage with one of UNET_RECIPES (in place).

  CDM's choices where Appendix B is silent: the U-Net style is DDPM / Improved DDPM ('ddpm') at
  32 and 64 and SR3 ('sr3') above (CDM section 4.1); Adam without warm-up, decay or clipping
  (Improved DDPM's); EMA 0.9999 from the start; no classifier-free guidance (CDM uses none, so no
  label dropout); the noise level enters as gamma = alpha-bar (CDM conditions the SR3 stages on
  alpha-bar; for the discrete stages gamma is a one-to-one function of the step).
  """
  row = UNET_RECIPES[recipe]
  c.model.architecture = "unet"
  for field, value in unet_fields.items():
    c.unet[field] = value
  c.unet.style = "sr3" if c.model.image_size >= 128 else "ddpm"
  c.unet.noise_embedding = "gamma"
  opt = c.optimizer
  opt.name = "adam"
  opt.weight_decay = 0.0
  opt.warmup_steps = 0
  opt.decay = "constant"
  opt.clip_norm = 0.0
  opt.ema_decay = 0.9999
  opt.ema_warmup = False
  d = c.diffusion
  d.train_schedule = d.infer_schedule = row["schedule"]
  d.timesteps = row["timesteps"]
  d.learned_variance = row["learned_variance"]
  d.input_scale, d.normalize_input = 1.0, "none"
  d.pred_type, d.loss_target, d.loss_weighting = "eps", "eps", "constant"
  d.self_cond_rate, d.label_dropout = 0.0, 0.0
  sampling = c.sampling
  sampling.sampler = sampling.fid_sampler = row["sampler"]
  sampling.steps = sampling.fid_steps = row["sampling_steps"]
  sampling.guidance = sampling.fid_guidance = 0.0
  if below_infer_schedule is not None and c.cascade.aug_level_max > 0:
    # The augmentation process is the stage below's inference process (truncated handover); for
    # the ImageNet 32 -> 64 stage it is the 4000-step cosine, so s is CDM's step s * 4000.
    c.cascade.aug_schedule = below_infer_schedule
    c.cascade.aug_input_scale = 1.0


def unet_stage(dataset: str, name: str, arg: str = "") -> ml_collections.ConfigDict:
  """CDM's U-Net stage `name` of `dataset` as Appendix B writes it. arg: 'runlocal' (a CPU-sized
  U-Net of the same structure, 4 sampling steps), and for LSUN 'church'."""
  key = (dataset, name)
  if key not in UNET_STAGES:
    raise ValueError(f"{dataset} U-Net stage {name!r}: allowed: "
                     f"{', '.join(n for d, n in UNET_STAGES if d == dataset)}.")
  tokens = [t.strip() for t in arg.split(",")] if arg.strip() else []
  allowed = {"runlocal"} | ({"church"} if dataset == "lsun" else set())
  unknown = [t for t in tokens if t not in allowed]
  if unknown or len(set(tokens)) != len(tokens):
    raise ValueError(f"{UNET_STAGE_FILES[key]}:{arg}: unknown or repeated tokens {tokens}; "
                     f"allowed: {', '.join(sorted(allowed))}, once each.")
  row = UNET_STAGES[key]
  c = _stage(dataset, name, arg)  # Data and augmentation settings of the RIN stage.
  below = _stage_table(dataset)[name]["below"]
  below_schedule = (UNET_RECIPES[UNET_STAGES[(dataset, below)]["recipe"]]["schedule"]
                    if below else None)
  apply_unet_recipe(c, dict(row["unet"]), row["recipe"], below_infer_schedule=below_schedule)
  if "runlocal" not in tokens:
    c.batch_size, c.optimizer.learning_rate, c.total_steps = row["batch"], row["lr"], row["steps"]
  else:  # The same structure, CPU-sized; _stage's runlocal batch and steps.
    c.unet.base_channels = 32
    c.unet.num_res_blocks = 1
    c.unet.head_dim = 16 if c.unet.head_dim else 0
    c.sampling.steps = c.sampling.fid_steps = 4
  return c


_FASHION_MNIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
                              "configs", "fashion_mnist.py")


def fashion_mnist_stage(arg: str = "") -> ml_collections.ConfigDict:
  """The offline demo cascade's common stage: configs/fashion_mnist.py[:tiny] at half its steps.

  The single-stage demo's network and recipe (v loss, local stem and output kernels, batch 4,
  AdamW, EMA), each stage trained for half the demo's 68,000 steps, so that both stages together
  cost what the single-stage demo costs (each stage has the demo's 64 interface tokens; the
  16 -> 32 stage adds one input channel and one latent token). Sampling (ddpm_small 25, guidance
  3) is the pipeline's (configs/cdm/pipeline_fashion_mnist.py); evaluation is of the cascade as a
  whole (python -m rin_diffusion.cascade --evaluate), never in the stage's training loop.

  arg: comma-separated 'tiny' (tests) and 'unet' (a small U-Net with CDM's recipe A: learned
  variances, hybrid loss, T = 4000, Adam; FASHION_MNIST_UNET).
  """
  tokens = [t.strip() for t in arg.split(",")] if arg.strip() else []
  unknown = [t for t in tokens if t not in ("tiny", "unet")]
  if unknown:
    raise ValueError(f"fashion_mnist stage arg {arg!r}: unknown tokens {unknown}; allowed: "
                     "'tiny', 'unet'.")
  tiny = "tiny" in tokens
  c = paper_configs.load_config(f"{_FASHION_MNIST}:tiny" if tiny else _FASHION_MNIST)
  if not tiny:
    c.total_steps = c.total_steps // 2
    # Every quarter of the run: the ablations (docs/cascade.md) compare stages at equal steps.
    c.checkpoint_every_steps = c.total_steps // 4
  if "unet" in tokens:
    apply_unet_recipe(c, FASHION_MNIST_UNET["tiny" if tiny else "demo"], "A")
    c.optimizer.learning_rate = 2e-4 if not tiny else 1e-3
    c.optimizer.ema_decay = 0.999
    c.optimizer.ema_warmup = True
    c.sampling.sampler = c.sampling.fid_sampler = "ddpm_learned"
    c.sampling.guidance = c.sampling.fid_guidance = 0.0
    c.sampling.steps = c.sampling.fid_steps = 4 if tiny else 100
  c.sample_every_steps = c.total_steps
  c.eval_every_steps = 0  # The cascade is evaluated as a whole (python -m rin_diffusion.cascade).
  return c


# The demo cascade's U-Nets (the 'unet' token): DDPM-style, attention at 8x8 (visited at 16 and 32).
# The demo one is near the demo RIN's size: 1.77 M parameters at 16 -> 32 against the RIN's 1.41 M.
FASHION_MNIST_UNET = {
    "demo": dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                 attention_resolutions=(8,), num_heads=4, head_dim=0, dropout=0.1,
                 norm_groups=8),
    "tiny": dict(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                 attention_resolutions=(8,), num_heads=2, head_dim=0, dropout=0.0, norm_groups=8),
}
