"""The config contract shared by every config under configs/.

Configs are data: each file's `get_config(arg)` starts from `base_config()` and overrides fields.
`validate()` turns bad values into one clear error naming the field, the value and what is allowed.
"""

from __future__ import annotations

import math

import ml_collections

from rin_diffusion import config_fields


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by all configs (the noise-scheduling paper's common hyper-parameters)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 150_000
  c.batch_size = 1024  # Global, over all processes and devices.
  # The network runs over this many microbatches of the batch in turn, each forward recomputed in
  # the backward pass: activation memory of one microbatch, the same update as the whole batch (up
  # to float reassociation; dropout masks are drawn per microbatch), about one more forward pass.
  c.grad_accum_steps = 1
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5_000
  c.sample_every_steps = 10_000
  c.keep_checkpoints = 3  # The last N checkpoints are kept ...
  c.keep_every_steps = 0  # ... plus a permanent one every M steps (0: none).
  c.nonfinite_loss = "stop"  # 'stop' the run, or 'skip' the update and count it.
  # init_from: start a new run from another run's parameters ('ema' or 'params').
  c.init_from = ml_collections.ConfigDict({"workdir": "", "params": "ema"})

  # Device mesh: sizes per axis, -1 for "all remaining devices".
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
  # Logical axis name -> mesh axis (or None). Parameters carry logical names in the model.
  c.sharding_rules = (
      ("batch", ("data", "fsdp")),
      ("embed", "fsdp"),
      ("mlp", None),
      ("heads", None),
      ("kv", None),
      ("tokens", None),
      ("vocab", None),
  )

  c.dataset = ml_collections.ConfigDict()
  # A TFDS name, 'fashion_mnist' (built in from local files) or 'synthetic_imagenet2012' (generated).
  c.dataset.name = "imagenet2012"
  c.dataset.split = "train"
  c.dataset.data_dir = ""  # TFDS data_dir ('' = TFDS default, or $TFDS_DATA_DIR).
  c.dataset.manual_dir = ""  # Raw files for builders that need them ('' = builder default).
  c.dataset.image_size = 64
  c.dataset.channels = 3
  c.dataset.num_classes = 1000  # 0: unconditional.
  c.dataset.random_flip = True
  # Who builds a host's batches: 'threads' (num_workers decoding threads in the trainer's process)
  # or 'grain' (num_workers grain worker processes, each building whole batches: no GIL shared
  # with the training loop). Both give the same batches, bit for bit.
  c.dataset.loader = "threads"
  c.dataset.num_workers = 8  # Decoding threads, or worker processes with loader 'grain'.
  # Zero-padded datasets (Fashion-MNIST): the canvas the image is centred on before it is resized
  # to image_size (0: image_size itself). A cascade's base at 16 with pad_to 32 sees exactly the
  # low-resolution images of the 16 -> 32 stage (the padded 32 image, resized).
  c.dataset.pad_to = 0

  c.model = ml_collections.ConfigDict()
  # 'rin', or 'unet' (CDM's U-Nets: the fields of config.unet; the RIN-only fields below are then
  # unused). image_size, channels, extra_in_channels, num_extra_tokens, num_classes and dtype are
  # shared by both.
  c.model.architecture = "rin"
  c.model.image_size = 64
  c.model.channels = 3  # Output channels (and input channels, before extra_in_channels).
  c.model.extra_in_channels = 0  # Cascade: channels of the upsampled low-resolution image.
  c.model.num_extra_tokens = 0  # Cascade: scalar conditioning tokens (augmentation level gamma).
  c.model.num_classes = 1000  # 0: no class token.
  c.model.patch_size = 4
  c.model.tape_dim = 512  # Interface width d.
  c.model.latent_slots = 128  # L, including the time and class tokens.
  c.model.latent_dim = 768  # D.
  c.model.blocks = (6, 6, 6, 6)  # Latent self-attention layers per block.
  c.model.latent_mlp_ratio = 4
  c.model.tape_mlp_ratio = 4
  c.model.latent_heads = 16
  c.model.rw_heads = 16
  c.model.drop_units = 0.0
  c.model.drop_path = 0.0
  c.model.drop_att = 0.0
  c.model.tape_pos = "learned"  # 'learned' or 'sincos'.
  # Std of the learned latents' truncated-normal init (the reference's 0.02). The learned latents
  # differ from each other only through this table: see docs/demo_diagnosis.md for short budgets.
  c.model.latent_pos_init_std = 0.02
  c.model.xattn_kv_ln = False
  c.model.tape_conv = False  # Residual depthwise 3x3 conv on the interface per block (not RIN's).
  c.model.tape_self_attn = False  # Self-attention among interface tokens per block (not RIN's).
  # Not RIN's either: the patch embedding also sees stem_overlap pixels of each neighbouring patch,
  # and the output projection reads an out_kernel x out_kernel neighbourhood of tokens.
  c.model.stem_overlap = 0
  c.model.out_kernel = 1
  c.model.time_scaling = 1000.0
  c.model.dtype = "float32"  # Activation dtype: 'float32' or 'bfloat16'.
  # Rematerialisation: recompute each block in the backward pass instead of keeping its
  # activations (RIN: latent layers, read and write units; U-Net: res and attention blocks).
  # remat_policy: what a block still keeps, 'full' (only its inputs), 'dots' (matmul outputs) or
  # 'dots_no_batch' (weight matmuls, not attention's); it changes memory and speed, not results.
  c.model.remat = False
  c.model.remat_policy = "full"

  # The U-Net denoiser (rin_diffusion/unet.py; Improved DDPM / SR3 style), used when
  # model.architecture = 'unet'. Its output has 2 x channels with diffusion.learned_variance.
  c.unet = ml_collections.ConfigDict()
  c.unet.base_channels = 128
  c.unet.channel_mult = (1, 2, 3, 4)
  c.unet.num_res_blocks = 3
  c.unet.attention_resolutions = (16, 8)  # Pixel resolutions that get self-attention.
  c.unet.num_heads = 4  # 0: use head_dim.
  c.unet.head_dim = 0  # 0: use num_heads.
  c.unet.dropout = 0.0
  c.unet.norm_groups = 32
  c.unet.style = "ddpm"  # 'ddpm' (conv up/downsampling) or 'sr3' (BigGAN resblock resampling).
  c.unet.noise_embedding = "gamma"  # 'gamma' or 'logsnr', embedded continuously.
  c.unet.time_scaling = 1000.0

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.train_schedule = "linear"  # gamma(t) for training.
  c.diffusion.infer_schedule = "cosine"  # gamma(t) for sampling (the reference's offset cosine).
  c.diffusion.input_scale = 1.0  # b.
  c.diffusion.normalize_input = "empirical"  # 'empirical', 'analytic' or 'none'.
  c.diffusion.pred_type = "eps"  # What the network predicts: 'eps', 'x0' or 'v'.
  c.diffusion.loss_target = "eps"  # Which MSE is minimised: 'eps', 'x0' or 'v'.
  c.diffusion.loss_weighting = "constant"  # 'constant', 'snr', 'truncated_snr' or 'min_snr'.
  c.diffusion.min_snr_gamma = 5.0
  c.diffusion.self_cond_rate = 0.9
  c.diffusion.label_dropout = 0.0
  # 0: continuous time, t ~ U(0, 1). T > 0: the discrete process t in {1/T, ..., 1} (Improved DDPM;
  # with a table schedule such as 'iddpm_cosine@T', gamma(i / T) = alpha-bar_i).
  c.diffusion.timesteps = 0
  # Improved DDPM's learned variances (rin_diffusion/learned_variance.py): the network's second C
  # channels interpolate the log-variance; loss = the MSE above + vlb_weight L_vlb (hybrid loss).
  # Needs timesteps = T of a table train_schedule, pred_type 'eps' and input_scale 1; the
  # 'ddpm_learned' sampler uses the variance (the others sample with the mean half only).
  c.diffusion.learned_variance = False
  c.diffusion.vlb_weight = 0.001

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "lamb"  # 'lamb', 'adamw' or 'adam' (CDM's; no weight decay).
  c.optimizer.learning_rate = 2e-3
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.01
  c.optimizer.warmup_steps = 10_000
  # After the linear warm-up (optim.learning_rate_schedule): 'cosine@rho', the reference's truncated
  # cosine (ends at (1 + cos(pi rho)) / 2 of the base rate, 0.206x for 0.7); 'cosine_hold@rho',
  # cosine to 0 over the first rho of the post-warm-up steps, then 0; 'cosine' (= 'cosine@1', ends
  # at 0); 'constant'.
  c.optimizer.decay = "cosine@0.7"
  c.optimizer.clip_norm = 0.0  # 0: no gradient clipping (the reference LAMB path has none).
  c.optimizer.ema_decay = 0.9999
  c.optimizer.ema_warmup = False  # decay_t = min(decay, (1 + t) / (10 + t)) when on.

  # Cascade (CDM; rin_diffusion/cascade): a super-resolution stage is an ordinary run whose network
  # also sees the stage below's image z, augmented at low resolution, upsampled to image_size and
  # concatenated to x_t's channels (model.extra_in_channels = model.channels), and, with Gaussian
  # augmentation, gamma of the augmentation level as one extra latent token
  # (model.num_extra_tokens = 1). low_resolution 0: not a super-resolution stage.
  c.cascade = ml_collections.ConfigDict()
  c.cascade.low_resolution = 0
  c.cascade.upsample = "bicubic"  # 'nearest', 'bilinear' or 'bicubic'.
  # Gaussian conditioning augmentation, amortised over s ~ U(0, aug_level_max) per example (0: off).
  # Its forward process must be the stage below's *inference* process (its infer_schedule and
  # input_scale): truncated sampling hands over that process's state at t = s unchanged.
  c.cascade.aug_level_max = 0.0
  c.cascade.aug_schedule = "cosine"
  c.cascade.aug_input_scale = 1.0
  # Blur augmentation: per example with probability blur_prob, 3x3 Gaussian, sigma ~ U(blur_sigma).
  c.cascade.blur_prob = 0.0
  c.cascade.blur_sigma = (0.4, 0.6)
  # The level s of the in-loop sample grids, which condition on real low-resolution images.
  c.cascade.sample_level = 0.0

  c.sampling = ml_collections.ConfigDict()
  c.sampling.sampler = "ddpm"  # 'ddpm' (large variance), 'ddpm_small', 'ddim' or 'ddpm_learned'.
  c.sampling.steps = 1000
  c.sampling.guidance = 3.0  # Guidance weight for sample grids.
  # FID samples (evaluation): the reference's official eval sampler, DDPM (large variance) with
  # 1000 steps, without guidance (spec-rin 6.1 and A22).
  c.sampling.fid_sampler = "ddpm"
  c.sampling.fid_steps = 1000
  c.sampling.fid_guidance = 0.0  # Guidance weight for FID.
  c.sampling.td = 0.0
  # Time grid of every sampler here ('uniform_t', 'logsnr' or 'edm'; docs/samplers.md); '' gives
  # each sampler its default (samplers.DEFAULT_TIME_GRID: 'logsnr' for 'dpmpp_2m' and
  # 'dpmpp_2m_sde', else 'uniform_t').
  c.sampling.time_grid = ""
  # Guide only the steps with t_lo < t <= t_hi (grids and FID alike); (0, 1) guides every step.
  c.sampling.guidance_interval = (0.0, 1.0)
  # Carry the latents from one sampling step to the next (self-conditioning); False feeds zeros.
  c.sampling.self_condition = True
  c.sampling.num_samples = 64
  c.sampling.classes = ""  # Comma-separated class ids for grids; '' cycles through classes.

  # Evaluation (rin_diffusion/evaluation/evaluate.py): FID, IS, precision/recall, CAS of EMA samples.
  c.eval_every_steps = 0  # In-loop evaluation every N steps (0: off); keeps checkpoints_best/.
  c.eval_num_samples = 50_000
  c.eval_batch_size = 1024  # Global sampling batch (a multiple of the device count).
  c.eval = ml_collections.ConfigDict()
  c.eval.reference = ""  # An .npz of images, or a TFDS 'name:split'; '' = '<dataset.name>:train'.
  c.eval.num_reference = 50_000  # Reference images for the real statistics and precision/recall.
  c.eval.inception_weights = ""  # '' = the Inception loader's default weights.
  # Reference statistics, converted Inception weights and CAS classifiers; '' = the Inception
  # loader's default ($RIN_DIFFUSION_CACHE, else ~/.cache/rin_diffusion).
  c.eval.cache_dir = ""
  c.eval.cas = False  # Classification accuracy score (Fashion-MNIST only: a classifier is trained).
  return c


# Kept here for callers of config_lib.flatten; it lives below the modules that compare configs.
flatten = config_fields.flatten


def _choices() -> dict[str, tuple[str, ...]]:
  """Allowed values per field, taken from the modules that implement them."""
  # noqa below: deferred imports, since configs must load without jax.
  from rin_diffusion import checkpointing, diffusion, optim, samplers  # noqa: PLC0415
  from rin_diffusion import model as model_lib  # noqa: PLC0415
  from rin_diffusion.data import pipeline  # noqa: PLC0415

  return {
      "dataset.loader": pipeline.LOADERS,
      "diffusion.normalize_input": diffusion.NORMALIZE_MODES,
      "diffusion.pred_type": diffusion.PRED_TYPES,
      "diffusion.loss_target": diffusion.LOSS_TARGETS,
      "diffusion.loss_weighting": diffusion.WEIGHTINGS,
      "optimizer.name": optim.OPTIMIZERS,
      "model.architecture": ("rin", "unet"),
      "sampling.sampler": samplers.SAMPLERS,
      "sampling.fid_sampler": samplers.SAMPLERS,
      "nonfinite_loss": ("stop", "skip"),
      "init_from.params": tuple(checkpointing.INIT_FROM_PARAMS),
      "model.dtype": tuple(model_lib.DTYPES),
  }


# Numeric fields: (field, test, what is allowed). Bools are never numbers here.
_NUMBER_RANGES = (
    ("optimizer.learning_rate", lambda v: v >= 0, "a number >= 0 (the peak rate after warm-up)"),
    ("optimizer.b1", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("optimizer.b2", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("optimizer.eps", lambda v: v > 0, "a number > 0"),
    ("optimizer.weight_decay", lambda v: v >= 0, "a number >= 0 (0: no decay)"),
    ("optimizer.clip_norm", lambda v: v >= 0, "a number >= 0 (0: no clipping)"),
    ("optimizer.ema_decay", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("diffusion.input_scale", lambda v: v > 0, "a number > 0"),
    ("diffusion.min_snr_gamma", lambda v: v > 0, "a number > 0"),
    ("diffusion.self_cond_rate", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ("diffusion.label_dropout", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ("diffusion.vlb_weight", lambda v: v >= 0, "a number >= 0 (Improved DDPM: 0.001)"),
    ("sampling.guidance", lambda v: v >= 0, "a number >= 0 (0: no guidance)"),
)


def _get(config: ml_collections.ConfigDict, dotted: str):
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a config before anything is built or written; raises one ValueError per problem.

  Every message names the field, the value and what is allowed. Checks that need the device count
  (batch divisibility, mesh sizes) happen where the mesh is built.
  """
  # Deferred: configs must load without jax.
  from rin_diffusion import generate, networks, optim, samplers, schedules
  from rin_diffusion.data import grain_loader

  for field in ("total_steps", "batch_size", "log_every_steps", "checkpoint_every_steps",
                "grad_accum_steps"):
    value = config[field]
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"config.{field}={value!r}: must be a positive integer.")
  for field in ("sample_every_steps", "keep_every_steps", "seed"):
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      note = "" if field == "seed" else " (0 disables)"
      raise ValueError(f"config.{field}={value!r}: must be an integer >= 0{note}.")
  value = config.keep_checkpoints
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"config.keep_checkpoints={value!r}: must be an integer >= 1.")
  for field, allowed in _choices().items():
    value = _get(config, field)
    if value not in allowed:
      raise ValueError(f"config.{field}={value!r} is not allowed; allowed: {', '.join(allowed)}.")
  if config.dataset.loader == "grain":
    grain_loader.check_installed()
  for field in ("diffusion.train_schedule", "diffusion.infer_schedule"):
    try:
      schedules.gamma_fn(_get(config, field))
    except ValueError as error:
      raise ValueError(f"config.{field}: {error}") from None
  for field, ok, allowed in _NUMBER_RANGES:
    value = _get(config, field)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        or not ok(value)):
      raise ValueError(f"config.{field}={value!r}: must be {allowed}.")
  value = config.optimizer.warmup_steps
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f"config.optimizer.warmup_steps={value!r}: must be an integer >= 0.")
  optim.learning_rate_schedule(config)  # Raises on a malformed config.optimizer.decay.
  samplers.check_time_grid(config.sampling.steps, config.sampling.td)  # Raises on bad steps or td.
  samplers.check_guidance_interval(config.sampling.guidance_interval)
  value = config.sampling.get("time_grid", "")  # Configs older than the field mean ''.
  if value not in ("", *samplers.TIME_GRIDS):
    raise ValueError(f"config.sampling.time_grid={value!r} is not allowed; allowed: '' (the "
                     f"sampler's default), {', '.join(samplers.TIME_GRIDS)}.")
  for field in ("sampler", "fid_sampler"):
    if config.sampling[field] in samplers.END_TO_END_SAMPLERS and config.sampling.td != 0:
      raise ValueError(f"config.sampling.td={config.sampling.td!r}: must be 0 with "
                       f"config.sampling.{field}={config.sampling[field]!r} (its steps meet end "
                       "to end).")
  value = config.sampling.num_samples
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"config.sampling.num_samples={value!r}: must be a positive integer.")
  generate.class_labels(config, value, config.sampling.classes)  # Raises on bad class ids.
  _validate_eval(config)
  for field in ("image_size", "channels", "num_classes"):
    data_value, model_value = config.dataset[field], config.model[field]
    if data_value != model_value:
      raise ValueError(
          f"config.dataset.{field}={data_value!r} differs from config.model.{field}={model_value!r};"
          " they must agree.")
  networks.from_config(config)  # Raises on inconsistent architecture fields.
  _validate_discrete(config)
  _validate_cascade(config)


def _validate_discrete(config: ml_collections.ConfigDict) -> None:
  """diffusion.timesteps and learned variances against the schedule, network and sampler."""
  from rin_diffusion import samplers, schedules  # noqa: PLC0415

  dcfg = config.diffusion
  timesteps = dcfg.timesteps
  if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 0:
    raise ValueError(f"config.diffusion.timesteps={timesteps!r}: must be an integer >= 0 (0: "
                     "continuous time).")
  if config.model.architecture == "unet" and dcfg.self_cond_rate != 0:
    raise ValueError(f"config.diffusion.self_cond_rate={dcfg.self_cond_rate!r}: must be 0 with "
                     "config.model.architecture='unet' (a U-Net has no latents to carry).")
  if not isinstance(dcfg.learned_variance, bool):
    raise ValueError(f"config.diffusion.learned_variance={dcfg.learned_variance!r}: must be True "
                     "or False.")
  if not dcfg.learned_variance:
    allowed = samplers.samplers_for(False)
    for field in ("sampler", "fid_sampler"):
      if config.sampling[field] not in allowed:
        raise ValueError(f"config.sampling.{field}={config.sampling[field]!r} needs "
                         "config.diffusion.learned_variance=True; allowed without it: "
                         f"{', '.join(map(repr, allowed))}.")
    return
  table_timesteps = (len(schedules.alpha_bar_table(dcfg.train_schedule)) - 1
                     if schedules.is_table(dcfg.train_schedule) else None)
  if timesteps == 0 or table_timesteps != timesteps:
    raise ValueError(
        f"config.diffusion.learned_variance=True needs a discrete process: "
        f"config.diffusion.timesteps=T > 0 and config.diffusion.train_schedule "
        f"'iddpm_cosine@T' or 'ddpm_linear@T' with the same T; got timesteps={timesteps!r}, "
        f"train_schedule={dcfg.train_schedule!r}.")
  requirements = (
      ("config.model.architecture", config.model.architecture, "unet"),
      ("config.diffusion.pred_type", dcfg.pred_type, "eps"),
      ("config.diffusion.input_scale", dcfg.input_scale, 1.0),
      ("config.diffusion.infer_schedule", dcfg.infer_schedule, dcfg.train_schedule),
  )
  for field, value, required in requirements:
    if value != required:
      raise ValueError(f"{field}={value!r}: learned variances need {required!r} (the decoder and "
                       "the variance bounds are those of the discrete process on data in [-1, 1]).")


UPSAMPLE_METHODS = ("nearest", "bilinear", "bicubic")  # config.cascade.upsample (jax.image.resize)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validate_cascade(config: ml_collections.ConfigDict) -> None:
  """config.cascade, and the model and data fields a super-resolution stage must agree with."""
  from rin_diffusion import schedules  # noqa: PLC0415

  cascade, model = config.cascade, config.model
  pad_to = config.dataset.pad_to
  if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 0:
    raise ValueError(f"config.dataset.pad_to={pad_to!r}: must be an integer >= 0 (0: image_size).")
  low = cascade.low_resolution
  if isinstance(low, bool) or not isinstance(low, int) or low < 0:
    raise ValueError(f"config.cascade.low_resolution={low!r}: must be an integer >= 0 (0: not a "
                     "super-resolution stage).")
  if low == 0:
    for field in ("extra_in_channels", "num_extra_tokens"):
      if model[field]:
        raise ValueError(
            f"config.model.{field}={model[field]!r} but config.cascade.low_resolution=0: only a "
            "super-resolution stage has extra inputs; set config.cascade.low_resolution or 0 here.")
    return
  size = int(model.image_size)
  if low > size or size % low:
    raise ValueError(f"config.cascade.low_resolution={low}: must divide config.model.image_size="
                     f"{size} (allowed: {', '.join(str(size // k) for k in (2, 4, 8) if size % k == 0)}"
                     ", ...).")
  if cascade.upsample not in UPSAMPLE_METHODS:
    raise ValueError(f"config.cascade.upsample={cascade.upsample!r} is not allowed; allowed: "
                     f"{', '.join(UPSAMPLE_METHODS)}.")
  for field in ("aug_level_max", "blur_prob", "sample_level"):
    value = cascade[field]
    if not _is_number(value) or not 0.0 <= value <= 1.0:
      raise ValueError(f"config.cascade.{field}={value!r}: must be a number in [0, 1].")
  if not _is_number(cascade.aug_input_scale) or not cascade.aug_input_scale > 0:
    raise ValueError(f"config.cascade.aug_input_scale={cascade.aug_input_scale!r}: must be a "
                     "number > 0 (the input scale b of the stage below).")
  try:
    schedules.gamma_fn(cascade.aug_schedule)
  except ValueError as error:
    raise ValueError(f"config.cascade.aug_schedule: {error}") from None
  sigma = tuple(cascade.blur_sigma) if isinstance(cascade.blur_sigma, (tuple, list)) else None
  if (sigma is None or len(sigma) != 2 or not all(_is_number(v) for v in sigma)
      or not 0.0 < sigma[0] <= sigma[1]):
    raise ValueError(f"config.cascade.blur_sigma={cascade.blur_sigma!r}: must be (min, max) with "
                     "0 < min <= max, e.g. (0.4, 0.6).")
  if model.extra_in_channels != model.channels:
    raise ValueError(
        f"config.model.extra_in_channels={model.extra_in_channels!r}: a super-resolution stage "
        f"(config.cascade.low_resolution={low}) concatenates the upsampled image, so it must equal "
        f"config.model.channels={model.channels!r}.")
  tokens = 1 if cascade.aug_level_max > 0 else 0
  if model.num_extra_tokens != tokens:
    raise ValueError(
        f"config.model.num_extra_tokens={model.num_extra_tokens!r}: must be {tokens} with "
        f"config.cascade.aug_level_max={cascade.aug_level_max!r} (one token for the Gaussian "
        "augmentation level, none without it).")
  if cascade.sample_level > cascade.aug_level_max:
    raise ValueError(f"config.cascade.sample_level={cascade.sample_level!r}: must be at most "
                     f"config.cascade.aug_level_max={cascade.aug_level_max!r} (levels it was "
                     "trained on).")
  if config.eval_every_steps:
    raise ValueError(
        f"config.eval_every_steps={config.eval_every_steps!r}: must be 0 for a super-resolution "
        "stage; its samples depend on the stage below, so evaluate the whole cascade with "
        "python -m rin_diffusion.cascade.")


def _validate_eval(config: ml_collections.ConfigDict) -> None:
  """The evaluation fields: sampler settings for FID, schedule, sizes, reference and CAS."""
  from rin_diffusion.evaluation import classifier  # noqa: PLC0415 -- no TF/TFDS at import.

  for field in ("sampling.fid_steps", "eval_num_samples", "eval_batch_size", "eval.num_reference"):
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f"config.{field}={value!r}: must be a positive integer.")
  value = config.eval_every_steps
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f"config.eval_every_steps={value!r}: must be an integer >= 0 (0 disables).")
  value = config.sampling.fid_guidance
  if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
      or value < 0):
    raise ValueError(f"config.sampling.fid_guidance={value!r}: must be a number >= 0.")
  for field in ("eval.reference", "eval.inception_weights", "eval.cache_dir"):
    if not isinstance(_get(config, field), str):
      raise ValueError(f"config.{field}={_get(config, field)!r}: must be a string ('' = default).")
  reference = config.eval.reference
  if reference and not (reference.endswith(".npz") or ":" in reference):
    raise ValueError(
        f"config.eval.reference={reference!r}: allowed: '' (<dataset.name>:train), a TFDS "
        "'name:split' or a path to an .npz of images.")
  if not isinstance(config.eval.cas, bool):
    raise ValueError(f"config.eval.cas={config.eval.cas!r}: must be True or False.")
  if config.eval.cas and (config.dataset.name not in classifier.DATASETS
                          or int(config.model.num_classes) <= 0):
    raise ValueError(
        f"config.eval.cas=True needs a class-conditional model on {' or '.join(classifier.DATASETS)}"
        f" (the CAS classifier is trained for it); got config.dataset.name="
        f"{config.dataset.name!r}, config.model.num_classes={config.model.num_classes!r}.")
