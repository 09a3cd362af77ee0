"""Forward process, prediction conversions and the weighted diffusion loss (no networks here).

Conventions (docs/architecture.md): data x0 in [-1, 1], input scale b, scaled data x0' = b x0,
gamma of shape (B,) broadcast over the non-batch axes, eps ~ N(0, I).

* Forward process (spec-rin 4.2; Chen 2023 section 2.2):
  x_t = sqrt(gamma) b x0 + sqrt(1 - gamma) eps.
* Network input normalisation (spec-rin 4.3, ambiguity A4): 'empirical' divides by the per-example
  population std over all non-batch axes (clamped at 1e-5), 'analytic' by sqrt((b^2 - 1) gamma + 1)
  (the std, not the variance factor), 'none' leaves x_t alone. Only the network input is normalised;
  every conversion below uses the un-normalised x_t.
* Prediction types (spec-rin 5.1): 'eps' predicts eps, 'x0' predicts the *scaled* data x0', 'v'
  predicts v = sqrt(gamma) eps - sqrt(1 - gamma) x0' (VP velocity on the scaled data, A10).
  `predict_x0_eps` clips x0'-hat to [-b, b] when clip_x0 and, when truncate_noise, re-derives
  eps-hat from the clipped x0'-hat (the sampler's setting). For 'x0' eps-hat is always derived
  from the (clipped) x0'-hat. Only denominators see a clipped gamma: sqrt(max(gamma, 1e-9)) and
  sqrt(max(1 - gamma, 1e-7)); numerators use gamma as given, so gamma = 1 or 1e-9 stay exact where
  nothing is divided.
* Loss (spec-rin 5.2, 7.2, A11): the raw prediction is converted to the loss target WITHOUT clipping
  or truncation. Targets: 'eps' -> eps; 'x0' -> x0 in UNSCALED units, i.e. the error is
  (x0' - x0'-hat) / b as in the reference's 'x' loss; 'v' -> sqrt(gamma) eps - sqrt(1 - gamma) x0'.
  per_example_loss = weight(gamma) * mean over non-batch axes of the squared error; loss = mean over
  the batch.

Loss weightings. With S = b^2 gamma / (1 - gamma) (the SNR relative to the unscaled data, A9) and a
fixed x0'-hat error, the per-example MSEs are related by eps-MSE = S x0-MSE and
v-MSE = (S + b^2) x0-MSE (spec-rin 7.2). Every weighting except 'constant' is therefore *defined*
as a weight w(S) on the unscaled x0-MSE, as in the Min-SNR paper (Hang et al. 2023, section 4:
"SNR", "truncated SNR" and "Min-SNR-gamma" are all weights of the x0 loss), and converted per
target so that all three targets give the same objective:

  weighting        w on x0-MSE     on eps-MSE (w / S)     on v-MSE (w / (S + b^2))
  'constant'       1 on whichever target is chosen (plain MSE; the official RIN setting)
  'snr'            S               1                      S / (S + b^2) = gamma
  'truncated_snr'  max(S, 1)       max(1, 1 / S)          max(S, 1) / (S + b^2)
  'min_snr'        min(S, k)       min(1, k / S)          min(S, k) / (S + b^2)

'truncated_snr' is Salimans & Ho's max(||x - x-hat||^2, ||eps - eps-hat||^2) with the x error in
unscaled units: max(x0-MSE, eps-MSE) = max(1, S) x0-MSE. Its threshold is the fixed 1 of that paper;
`min_snr_gamma` (k, default 5) is used only by 'min_snr'. S is computed in float32 from gamma
clipped to [1e-9, 1 - 1e-7]; for b = 1 the formulas reduce to those of the Min-SNR repository.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rin_diffusion import schedules

PRED_TYPES = ("eps", "x0", "v")
LOSS_TARGETS = ("eps", "x0", "v")
WEIGHTINGS = ("constant", "snr", "truncated_snr", "min_snr")
NORMALIZE_MODES = ("empirical", "analytic", "none")

_STD_MIN = 1e-5
# Smallest 1 - gamma used in a denominator (schedules.GAMMA_MAX = 1 - 1e-7).
_ONE_MINUS_GAMMA_MIN = 1e-7


def _allowed(values) -> str:
  return ", ".join(repr(v) for v in values)


def check_choice(field: str, value, allowed) -> None:
  """Raises ValueError naming the config field, the value and what is allowed."""
  if value not in allowed:
    raise ValueError(f"{field}={value!r}; allowed: {_allowed(allowed)}")


def _bcast(gamma: jax.Array, x: jax.Array) -> jax.Array:
  """(B,) (or scalar) gamma -> shape broadcastable against x of shape (B, ...)."""
  gamma = jnp.asarray(gamma, jnp.float32)
  return jnp.reshape(gamma, gamma.shape + (1,) * (x.ndim - gamma.ndim))


def _sqrt_gamma_div(gamma: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.maximum(gamma, schedules.CLIP_MIN))


def _sqrt_one_minus_gamma_div(gamma: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.maximum(1.0 - gamma, _ONE_MINUS_GAMMA_MIN))


def add_noise(x0: jax.Array, gamma: jax.Array, noise: jax.Array, input_scale: float) -> jax.Array:
  """x_t = sqrt(gamma) b x0 + sqrt(1 - gamma) noise, with x0 the unscaled data in [-1, 1]."""
  x0 = jnp.asarray(x0, jnp.float32)
  g = _bcast(gamma, x0)
  return jnp.sqrt(g) * (input_scale * x0) + jnp.sqrt(1.0 - g) * noise


def normalize_input(x_t: jax.Array, gamma: jax.Array, input_scale: float, mode: str) -> jax.Array:
  """The network input: x_t divided by its empirical or analytic std, or x_t itself ('none')."""
  check_choice("config.diffusion.normalize_input", mode, NORMALIZE_MODES)
  x_t = jnp.asarray(x_t, jnp.float32)
  if mode == "empirical":
    axes = tuple(range(1, x_t.ndim))
    std = jnp.std(x_t, axis=axes, keepdims=True)  # Population std (ddof = 0).
    return x_t / jnp.maximum(std, _STD_MIN)
  if mode == "analytic":
    g = _bcast(gamma, x_t)
    return x_t / jnp.sqrt((input_scale**2 - 1.0) * g + 1.0)
  return x_t


def predict_x0_eps(pred: jax.Array, x_t: jax.Array, gamma: jax.Array, *, pred_type: str,
                   input_scale: float, clip_x0: bool = True,
                   truncate_noise: bool = True) -> tuple[jax.Array, jax.Array]:
  """Converts a network output into (x0'-hat in scaled units, eps-hat) (spec-rin 5.1).

  x0'-hat is clipped to [-b, b] when clip_x0. eps-hat is re-derived from the clipped x0'-hat when
  clip_x0 and truncate_noise (without clipping the re-derivation is an identity and is skipped).
  """
  check_choice("config.diffusion.pred_type", pred_type, PRED_TYPES)
  pred = jnp.asarray(pred, jnp.float32)
  x_t = jnp.asarray(x_t, jnp.float32)
  g = _bcast(gamma, x_t)
  sqrt_g, sqrt_1mg = jnp.sqrt(g), jnp.sqrt(1.0 - g)

  if pred_type == "eps":
    eps = pred
    x0 = (x_t - sqrt_1mg * eps) / _sqrt_gamma_div(g)
  elif pred_type == "x0":
    x0, eps = pred, None
  else:  # 'v': both follow without any division.
    x0 = sqrt_g * x_t - sqrt_1mg * pred
    eps = sqrt_1mg * x_t + sqrt_g * pred

  if clip_x0:
    x0 = jnp.clip(x0, -input_scale, input_scale)
  if eps is None or (clip_x0 and truncate_noise):
    eps = (x_t - sqrt_g * x0) / _sqrt_one_minus_gamma_div(g)
  return x0, eps


def _snr(gamma: jax.Array, input_scale: float) -> tuple[jax.Array, jax.Array]:
  """(S = b^2 gamma / (1 - gamma), gamma), with gamma clipped to [CLIP_MIN, GAMMA_MAX]."""
  g = jnp.clip(jnp.asarray(gamma, jnp.float32), schedules.CLIP_MIN, schedules.GAMMA_MAX)
  return input_scale**2 * g / (1.0 - g), g


def loss_weight(gamma: jax.Array, *, input_scale: float, loss_target: str, weighting: str,
                min_snr_gamma: float = 5.0) -> jax.Array:
  """Per-example loss weight of shape gamma.shape; see the module docstring for the table."""
  check_choice("config.diffusion.loss_target", loss_target, LOSS_TARGETS)
  check_choice("config.diffusion.loss_weighting", weighting, WEIGHTINGS)
  gamma = jnp.asarray(gamma, jnp.float32)
  if weighting == "constant":
    return jnp.ones_like(gamma)
  if weighting == "min_snr" and isinstance(min_snr_gamma, (int, float)) and not min_snr_gamma > 0:
    raise ValueError(f"config.diffusion.min_snr_gamma={min_snr_gamma!r}; allowed: a number > 0")

  snr, g = _snr(gamma, input_scale)
  b2 = input_scale**2
  if loss_target == "x0":
    if weighting == "snr":
      return snr
    if weighting == "truncated_snr":
      return jnp.maximum(snr, 1.0)
    return jnp.minimum(snr, min_snr_gamma)
  if loss_target == "eps":
    if weighting == "snr":
      return jnp.ones_like(gamma)
    if weighting == "truncated_snr":
      return jnp.maximum(1.0, 1.0 / snr)
    return jnp.minimum(1.0, min_snr_gamma / snr)  # = min(S, k) / S, with no S / S at tiny S.
  # 'v': 1 / (S + b^2) = (1 - gamma) / b^2.
  if weighting == "snr":
    return g
  if weighting == "truncated_snr":
    return jnp.maximum(snr, 1.0) * (1.0 - g) / b2
  return jnp.minimum(snr, min_snr_gamma) * (1.0 - g) / b2


def diffusion_loss(pred: jax.Array, *, x0: jax.Array, noise: jax.Array, x_t: jax.Array,
                   gamma: jax.Array, pred_type: str, loss_target: str, input_scale: float,
                   weighting: str, min_snr_gamma: float = 5.0) -> tuple[jax.Array, jax.Array]:
  """Weighted diffusion MSE. Returns (loss, per_example_loss of shape (B,)).

  x0 is the unscaled clean data, noise the eps that made x_t = add_noise(x0, gamma, noise, b).
  The prediction is converted to `loss_target` without clipping (spec-rin A11).
  """
  check_choice("config.diffusion.pred_type", pred_type, PRED_TYPES)
  check_choice("config.diffusion.loss_target", loss_target, LOSS_TARGETS)
  weight = loss_weight(gamma, input_scale=input_scale, loss_target=loss_target,
                       weighting=weighting, min_snr_gamma=min_snr_gamma)
  pred = jnp.asarray(pred, jnp.float32)
  x0 = jnp.asarray(x0, jnp.float32)
  noise = jnp.asarray(noise, jnp.float32)

  if pred_type == loss_target:
    # No conversion: the error is taken on the raw output (x0 errors still go to unscaled units).
    converted = pred
  else:
    x0_hat, eps_hat = predict_x0_eps(pred, x_t, gamma, pred_type=pred_type,
                                     input_scale=input_scale, clip_x0=False, truncate_noise=False)
    if loss_target == "eps":
      converted = eps_hat
    elif loss_target == "x0":
      converted = x0_hat
    else:
      g = _bcast(gamma, x0)
      converted = jnp.sqrt(g) * eps_hat - jnp.sqrt(1.0 - g) * x0_hat

  if loss_target == "eps":
    error = converted - noise
  elif loss_target == "x0":
    error = converted / input_scale - x0
  else:
    g = _bcast(gamma, x0)
    error = converted - (jnp.sqrt(g) * noise - jnp.sqrt(1.0 - g) * (input_scale * x0))

  axes = tuple(range(1, error.ndim))
  per_example_loss = weight * jnp.mean(jnp.square(error), axis=axes)
  return jnp.mean(per_example_loss), per_example_loss
