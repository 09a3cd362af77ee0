r"""Diagnostics of a trained RIN: are its latents distinct, does it know where patches are, and
how does one sample form? One JSON line on stdout; optionally a trajectory grid.

  python -m rin_diffusion.tools.diagnose --config=configs/fashion_mnist.py \
      --workdir=workdir/fashion_mnist [--locality] [--trajectory=traj.png] \
      [--renoise=0.5 --renoise_output=renoised.npz] [--config.<field>=...]
  python -m rin_diffusion.tools.diagnose --config=configs/fashion_mnist.py --workdir=init

--workdir=init probes the parameters a run of this config starts from instead of a checkpoint.

* latent_cosine: the mean pairwise cosine similarity (over pairs of distinct learned latents,
  each centred over its feature axis, averaged over 16 real test images) of the learned latents
  after each unit (block_<i>_read, block_<i>_layer_<j>), for test images noised to t = 0.9, 0.6
  and 0.3 of the inference schedule. Near 1 means the latents carry one vector between them: the
  read -> latents -> write pathway can pass on no spatial layout, and the patches are denoised
  independently (docs/demo_diagnosis.md).
* position_signal: RMS of the interface position embedding (the learned table, or the sin-cos
  one) next to the RMS of the stem-LayerNorm'd patch content it is added to, and the RMS of the
  learned latent table.
* locality (--locality): where the x0 prediction of each patch looks. For test images noised to
  t = 0.9, 0.6, 0.3 (LOCALITY_IMAGES of them), the Jacobian d x0-hat / d x_t of the EMA model (no
  clipping) is split by the squared mass each output pixel draws from its own patch, from the 8
  patches around it and from the rest of the image (shares summing to 1). Next to it the same
  shares of the best linear estimator for a class-conditional Gaussian fitted to the training
  split (x0-hat = mu + sqrt(g) S (g S + (1 - g) I)^-1 (x_t - sqrt(g) mu) in the input-scaled
  units): the shares a denoiser should reach if it used no more than second-order statistics. A
  model far more local than that decides each patch from its own noisy pixels.
* renoise (--renoise=t --renoise_output=out.npz): the first renoise_images test images noised to
  t of the inference schedule, then finished by the config's FID sampler from t down to 0 (with
  round(fid_steps * t) steps, so each step is as long as in a full run; guidance
  config.sampling.fid_guidance; each image conditioned on its true class), written as uint8 for
  `python -m rin_diffusion.tools.fid`. The layout of the result is the real image's; its detail
  is the model's. FID of these against the reference, next to the FID of full samples, splits
  the gap into what goes wrong above t (layout) and below it (detail). SDEdit (Meng et al. 2022)
  uses the same construction for editing.
* --trajectory: the EMA model's x0 prediction along one DDIM trajectory of the config's
  fid_steps (2 samples per class as rows; columns t = 0.9, 0.8, ..., 0.2, 0): the grid is the
  same, the sampler just stops at t_end, so column k is the x0-hat the full run holds there.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image

from rin_diffusion import checkpointing, diffusion, generate, schedules, sharding, train
from rin_diffusion import model as model_lib
from rin_diffusion.evaluation import classifier, evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Trainer workdir (EMA parameters), or 'init'.")
_TRAJECTORY = flags.DEFINE_string("trajectory", "", "Write the x0-hat trajectory grid (PNG) here.")
_LOCALITY = flags.DEFINE_bool("locality", False, "Also measure the Jacobian locality (slower).")
_RENOISE = flags.DEFINE_float(
    "renoise", 0.0, "Also noise test images to this t and run the FID sampler from there (0: off).")
_RENOISE_OUTPUT = flags.DEFINE_string(
    "renoise_output", "", "Where --renoise writes its images (uint8 .npz, for tools/fid).")
_RENOISE_IMAGES = flags.DEFINE_integer("renoise_images", 1000, "Test images --renoise starts from.")

NOISE_LEVELS = (0.9, 0.6, 0.3)
TRAJECTORY_T = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.0)
NUM_IMAGES = 16
LOCALITY_IMAGES = 8
# Rank-deficient class covariances (constant black borders) get this much variance added, in
# [-1, 1] units squared: far below any pixel noise the shares are measured at.
GAUSSIAN_RIDGE = 1e-4


def mean_pairwise_cosine(latents: np.ndarray) -> float:
  """(B, L, D) -> mean over examples and ordered pairs l != m of cos(centred l, centred m)."""
  latents = np.asarray(latents, np.float64)
  num = latents.shape[1]
  if num < 2:
    raise ValueError(f"mean_pairwise_cosine needs at least 2 latents, got {num}.")
  centred = latents - latents.mean(axis=-1, keepdims=True)
  unit = centred / np.maximum(np.linalg.norm(centred, axis=-1, keepdims=True), 1e-12)
  cosine = np.einsum("bld,bmd->blm", unit, unit)
  return float(cosine[:, ~np.eye(num, dtype=bool)].mean())


def patch_shares(jacobian: np.ndarray, side: int, patch_size: int) -> dict[str, float]:
  """Shares of a pixel Jacobian's squared mass by where its inputs lie relative to each output.

  jacobian: (side * side, side * side), rows outputs and columns inputs in row-major pixel
  order (channels summed into the squares beforehand). Returns {'own', 'neighbours', 'far'}: the
  mass drawn from the output's own patch, from the (up to 8) patches around it and from all
  others, each divided by the total mass.
  """
  jacobian = np.asarray(jacobian, np.float64)
  pixels = side * side
  if jacobian.shape != (pixels, pixels):
    raise ValueError(f"patch_shares: jacobian has shape {jacobian.shape}, expected "
                     f"({pixels}, {pixels}) for side {side}.")
  if side % patch_size:
    raise ValueError(f"patch_shares: side {side} is not a multiple of patch_size {patch_size}.")
  rows, cols = np.divmod(np.arange(pixels), side)
  patch_row, patch_col = rows // patch_size, cols // patch_size
  distance = np.maximum(np.abs(patch_row[:, None] - patch_row[None]),
                        np.abs(patch_col[:, None] - patch_col[None]))  # In patches (Chebyshev).
  mass = np.square(jacobian)
  total = mass.sum()
  if total <= 0:
    raise ValueError("patch_shares: the Jacobian is zero.")
  own = mass[distance == 0].sum() / total
  neighbours = mass[distance == 1].sum() / total
  return {"own": float(own), "neighbours": float(neighbours), "far": float(1.0 - own - neighbours)}


def gaussian_linear_jacobian(covariance: np.ndarray, gamma: float, input_scale: float
                             ) -> np.ndarray:
  """d x0-hat / d x_t of the MMSE linear estimator for x0 ~ N(mu, covariance) ([-1, 1] units)
  and x_t = sqrt(gamma) input_scale x0 + sqrt(1 - gamma) eps: sqrt(gamma) b S (gamma b^2 S +
  (1 - gamma) I)^-1 (both sides symmetric, so the transpose is the same matrix)."""
  covariance = np.asarray(covariance, np.float64)
  eye = np.eye(covariance.shape[0])
  system = gamma * input_scale**2 * covariance + (1.0 - gamma) * eye
  return np.sqrt(gamma) * input_scale * np.linalg.solve(system, covariance).T


def _rms(x) -> float:
  return float(np.sqrt(np.mean(np.square(np.asarray(x, np.float64)))))


def main(argv: Sequence[str]) -> None:
  del argv

  config = _CONFIG.value
  mesh = sharding.make_mesh(config.mesh)
  model, _, init_fn, abstract_state, _ = train.build(config, mesh)
  mcfg = config.model
  if _WORKDIR.value == "init":  # Exactly the parameters a run with this config starts from.
    params = init_fn(int(config.seed))["params"]
    step = 0
  else:
    params = checkpointing.restore_params_from(_WORKDIR.value, "ema", abstract_state["params"],
                                               config, source="--workdir")
    step = evaluate.latest_checkpoint_step(_WORKDIR.value)

  images, labels = classifier.load_split(config.dataset, "test")
  x0 = jnp.asarray(images[:NUM_IMAGES], jnp.float32) / 127.5 - 1.0
  onehot = (jax.nn.one_hot(labels[:NUM_IMAGES], mcfg.num_classes) if mcfg.num_classes else None)
  dcfg = config.diffusion
  gamma_fn = schedules.gamma_fn(dcfg.infer_schedule)
  num_learned = model.num_learned_latents
  units = [f"block_{i}_read" if k < 0 else f"block_{i}_layer_{k}"
           for i, layers in enumerate(mcfg.blocks) for k in range(-1, layers)]
  latent_cosine = {}
  for t in NOISE_LEVELS:
    gamma = gamma_fn(jnp.full((NUM_IMAGES,), t, jnp.float32))
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    x_t = diffusion.add_noise(x0, gamma, noise, float(dcfg.input_scale))
    x_in = diffusion.normalize_input(x_t, gamma, float(dcfg.input_scale), dcfg.normalize_input)
    _, state = model.apply({"params": params}, x_in, gamma, onehot, None, train=False,
                           capture_intermediates=True, mutable=["intermediates"])
    captured = state["intermediates"]
    latent_cosine[str(t)] = {
        unit: round(mean_pairwise_cosine(np.asarray(captured[unit]["__call__"][0])[:, :num_learned]),
                    4)
        for unit in units if unit in captured}

  if mcfg.tape_pos == "learned":
    tape_pos = np.asarray(params["tape_pos_emb"])
  else:
    side = mcfg.image_size // mcfg.patch_size
    tape_pos = np.asarray(model_lib.sincos_2d_pos_emb(side, side, mcfg.tape_dim,
                                                      float(mcfg.time_scaling)))
  result = {
      "workdir": _WORKDIR.value, "step": step,
      "latent_cosine": latent_cosine,
      "position_signal": {
          "tape_pos": mcfg.tape_pos, "tape_pos_rms": round(_rms(tape_pos), 4),
          # LN output RMS is the RMS of its scale (plus bias) for a normalised input.
          "stem_ln_scale_rms": round(_rms(params["stem_ln"]["scale"]), 4),
          "latent_pos_rms": round(_rms(params["latent_pos_emb"]), 4)},
  }

  if _LOCALITY.value:
    result["locality"] = _locality(model, params, config, x0, onehot, labels[:NUM_IMAGES])

  if _RENOISE.value:
    result["renoise"] = _renoise(model, params, config, images, labels, _RENOISE.value,
                                 _RENOISE_IMAGES.value, _RENOISE_OUTPUT.value)

  if _TRAJECTORY.value:
    steps = int(config.sampling.fid_steps)
    rows = np.repeat(np.arange(max(int(mcfg.num_classes), 1)), 2).astype(np.int32)
    columns = []
    for t_end in TRAJECTORY_T:
      # A grid of `steps` over [0, 1] stopped at t_end is `steps (1 - t_end)` steps over [t_end, 1].
      sub_steps = max(1, int(round(steps * (1.0 - t_end))))
      sample = generate.make_sample_fn(model, config, sampler=config.sampling.fid_sampler,
                                       steps=sub_steps, guidance=0.0, t_end=t_end)
      columns.append(np.asarray(sample(params, jax.random.key(0), jnp.asarray(rows))))
    grid = np.concatenate([np.concatenate(list(c), axis=0) for c in columns], axis=1)
    grid = np.round(grid * 255).astype(np.uint8)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(_TRAJECTORY.value)
    result["trajectory"] = {"path": _TRAJECTORY.value, "t": list(TRAJECTORY_T),
                            "rows": "2 samples per class"}
  json.dump(result, sys.stdout)
  sys.stdout.write("\n")


def _renoise(model, params, config, images: np.ndarray, labels: np.ndarray, t_start: float,
             count: int, path: str) -> dict:
  """Test images (uint8) noised to t_start and sampled from there; written to `path` as .npz."""
  if not 0.0 < t_start <= 1.0:
    raise ValueError(f"--renoise={t_start!r}: allowed 0 < t <= 1 (0 turns it off).")
  if not path.endswith(".npz"):
    raise ValueError(f"--renoise_output={path!r}: --renoise needs a .npz path for its images.")
  if int(config.model.extra_in_channels):
    raise ValueError("--renoise needs a base model; this config's model has "
                     f"config.model.extra_in_channels={config.model.extra_in_channels}.")
  if not 0 < count <= len(images):
    raise ValueError(f"--renoise_images={count}: allowed 1 to {len(images)} (the test split).")
  dcfg, sampling = config.diffusion, config.sampling
  steps = max(1, int(round(int(sampling.fid_steps) * t_start)))
  gamma_fn = schedules.gamma_fn(dcfg.infer_schedule)

  @jax.jit
  def finish(x0, batch_labels, key):
    noise_key, sample_key = jax.random.split(key)
    gamma = gamma_fn(jnp.full((x0.shape[0],), t_start, jnp.float32))
    x_t = diffusion.add_noise(x0, gamma, jax.random.normal(noise_key, x0.shape),
                              float(dcfg.input_scale))
    out = generate.sample_output(
        model, config, params, sample_key, batch_labels, sampler=sampling.fid_sampler,
        steps=steps, guidance=float(sampling.fid_guidance), noise=x_t, t_start=t_start)
    return out.x0 * 0.5 + 0.5

  batch = int(config.eval_batch_size)
  finished = []
  for start in range(0, count, batch):
    x0 = jnp.asarray(images[start:start + batch], jnp.float32) / 127.5 - 1.0
    finished.append(generate.to_uint8(np.asarray(finish(
        x0, jnp.asarray(labels[start:start + batch]), jax.random.key(start)))))
  np.savez(path, images=np.concatenate(finished)[:count])
  return {"t": t_start, "images": count, "steps": steps, "sampler": sampling.fid_sampler,
          "guidance": float(sampling.fid_guidance), "path": path}


def _locality(model, params, config, x0: jax.Array, onehot, labels: np.ndarray) -> dict:
  """The model's and the class-Gaussian linear estimator's patch shares at NOISE_LEVELS."""
  mcfg, dcfg = config.model, config.diffusion
  if mcfg.architecture != "rin" or int(mcfg.extra_in_channels):
    raise ValueError(f"--locality needs a RIN without conditioning channels (a base model); "
                     f"config.model.architecture is {mcfg.architecture!r}, extra_in_channels "
                     f"{mcfg.extra_in_channels}.")
  side, patch, input_scale = int(mcfg.image_size), int(mcfg.patch_size), float(dcfg.input_scale)
  gamma_fn = schedules.gamma_fn(dcfg.infer_schedule)
  denoise = generate.make_denoise_fn(model, params, dcfg, self_condition=False)

  def x0_hat(x_t, gamma, cond):  # One image: (H, W, C) -> (H, W, C), no clipping.
    pred, _ = denoise(x_t[None], gamma[None], cond, None)
    x0, _ = diffusion.predict_x0_eps(pred, x_t[None], gamma[None], pred_type=dcfg.pred_type,
                                     input_scale=input_scale, clip_x0=False)
    return x0[0] / input_scale

  @jax.jit
  def jacobian(x_t, gamma, cond):
    jac = jax.jacrev(x0_hat)(x_t, gamma, cond)  # (H, W, C, H, W, C)
    return jnp.sum(jnp.square(jac), axis=(2, 5))  # Squared mass, channels summed.

  train_images, train_labels = classifier.load_split(config.dataset, "train")
  train_x0 = train_images.reshape(len(train_images), side * side, -1).astype(np.float64)
  train_x0 = train_x0 / 127.5 - 1.0
  covariances = {}
  shares = {}
  count = min(LOCALITY_IMAGES, x0.shape[0])
  for t in NOISE_LEVELS:
    gamma = gamma_fn(jnp.full((count,), t, jnp.float32))
    noise = jax.random.normal(jax.random.key(2), x0[:count].shape)
    x_t = diffusion.add_noise(x0[:count], gamma, noise, input_scale)
    model_mass, linear_mass = 0.0, 0.0
    for i in range(count):
      cond = {"class_onehot": onehot[i:i + 1]} if onehot is not None else {}
      model_mass = model_mass + np.asarray(jacobian(x_t[i], gamma[i], cond)).reshape(
          side * side, side * side)
      label = int(labels[i]) if onehot is not None else -1
      if label not in covariances:
        members = train_x0 if label < 0 else train_x0[train_labels == label]
        flat = members.mean(axis=-1)  # Channels averaged: one Gaussian over pixel positions.
        covariances[label] = np.cov(flat, rowvar=False) + GAUSSIAN_RIDGE * np.eye(side * side)
      linear = gaussian_linear_jacobian(covariances[label], float(gamma[i]), input_scale)
      linear_mass = linear_mass + np.square(linear)
    # Mass summed over images, so shares are of the pooled Jacobian (sqrt: patch_shares squares).
    shares[str(t)] = {"model": {k: round(v, 4) for k, v in patch_shares(
                          np.sqrt(model_mass), side, patch).items()},
                      "gaussian_linear": {k: round(v, 4) for k, v in patch_shares(
                          np.sqrt(linear_mass), side, patch).items()}}
  return {"images": count, "patch_size": patch, "shares": shares}


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
