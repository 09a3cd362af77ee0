"""Ancestral (DDPM) and deterministic (DDIM) samplers as one jax.lax.scan (spec-rin section 6).

Time grid (spec-rin 6.1, generalised from [0, 1] to [t_end, 1] for truncated cascades, 8.2): for
i = 0 .. T - 1, t_now = 1 - i / T (1 - t_end) and
t_next = max(1 - (i + 1 + td) / T (1 - t_end), t_end), with gamma from the *inference* schedule
`gamma_fn` (the reference uses the offset 'cosine').

One step (spec-rin 6.2):
1. pred, hidden = denoise_fn(x_t, gamma_now, cond, hidden). With guidance w != 0 the conditional and
   the null-condition halves run as one 2B batch (x_t, gamma and hidden duplicated, cond and
   null_cond concatenated on axis 0) and pred = (1 + w) pred_cond - w pred_uncond in the raw output
   space; the hidden carried on is the conditional half's. With w == 0 (a Python number) there is a
   single B call and null_cond is not used. guidance_interval = (t_lo, t_hi) guides only the steps
   with t_lo < t_now <= t_hi (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval");
   the other steps make the single conditional B call. The default (0, 1) guides every step.
2. x0'-hat (clipped to [-b, b] when clip_x0) and eps-hat re-derived from it (truncate_noise=True).
3. Update, with alpha = gamma_now / gamma_next and 1 - alpha computed as (gamma_next - gamma_now) /
   gamma_next, both clipped to [0, 1]:
   * 'ddim' (eta = 0): x_next = sqrt(gamma_next) x0'-hat + sqrt(1 - gamma_next) eps-hat.
   * 'ddpm' (large variance) and 'ddpm_small' (posterior variance): the numerically safe mean
       mean = sqrt(gamma_next) (1 - alpha) / (1 - gamma_now) x0'-hat
              + sqrt(alpha) (1 - gamma_next) / (1 - gamma_now) x_t,
     which equals (x_t - (1 - alpha) / sqrt(1 - gamma_now) eps-hat) / sqrt(alpha) for the truncated
     eps-hat without dividing by sqrt(alpha) ~ 1e-4 near t = 1; var = 1 - alpha ('ddpm') or
     (1 - gamma_next) / (1 - gamma_now) (1 - alpha) ('ddpm_small'); x_next = mean + sqrt(var) z with
     fresh z per step. 1 - gamma_now is floored at 1e-7 where it divides.
   * 'ddpm_learned' (Improved DDPM's learned variances): the denoise fn returns 2C channels, the
     prediction and v; the mean is the 'ddpm' mean of the first half and
     log var = frac log(1 - alpha) + (1 - frac) log beta~, frac = (v + 1) / 2, with
     beta~ = (1 - gamma_next) / (1 - gamma_now) (1 - alpha) ('ddpm_small''s variance) floored at
     1e-20 (it is 0 at the last step, whose noise reaches only the returned state x_t). On a grid of
     K steps over a T-step process (K dividing T) this is Improved DDPM's strided sampling: alpha
     and beta~ are those of the respaced process. Guidance combines the first halves only; v comes
     from the conditional half (as GLIDE does).

The scan carries (x, hidden, key, x0'-hat). The output is SampleOutput(x0 = the last step's
x0'-hat / b, i.e. in [-1, 1] units when clipping; x_t = the final state, i.e. x at t_end).

Self-conditioning: the hidden returned at one step is the next step's input. hidden_init=None means
"zeros shaped like the denoise fn's hidden output", found with jax.eval_shape (an abstract trace, no
compute), so the first step sees zeros and later steps see the carried latents; a denoise fn that
returns None as its hidden gets None throughout. Returned hiddens are cast to the carry's dtypes.

When guidance is used and null_cond is None, the null condition is zeros_like(cond) (the all-zeros
"unconditional" one-hot of docs/architecture.md); pass null_cond explicitly for conditions that must
not be zeroed (e.g. a cascade's low-resolution image).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from rin_diffusion import diffusion, learned_variance

PyTree = Any
DenoiseFn = Callable[[jax.Array, jax.Array, PyTree, PyTree], tuple[jax.Array, PyTree]]

SAMPLERS = ("ddpm", "ddpm_small", "ddim", "ddpm_learned")
_MIN_VARIANCE = 1e-20


def samplers_for(learned_variance: bool) -> tuple[str, ...]:
  """The samplers a model can use: 'ddpm_learned' needs its learned-variance channels."""
  return SAMPLERS if learned_variance else tuple(s for s in SAMPLERS if s != "ddpm_learned")


class SampleOutput(NamedTuple):
  x0: jax.Array  # The last step's x0-hat in unscaled units (x0'-hat / b).
  x_t: jax.Array  # The final sampler state, at t_end.


def check_time_grid(steps: int, td: float = 0.0, t_end: float = 0.0, t_start: float = 1.0) -> None:
  """Raises ValueError naming the field for a grid `time_grid` cannot build; touches no device.

  Config validation calls this before jax.distributed.initialize, which must precede any jax op.
  """
  if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
    raise ValueError(f"config.sampling.steps={steps!r}; allowed: an integer >= 1")
  if not 0.0 < t_start <= 1.0:
    raise ValueError(f"t_start={t_start!r}; allowed: 0 < t_start <= 1")
  if not 0.0 <= t_end < t_start:
    raise ValueError(f"t_end={t_end!r}; allowed: 0 <= t_end < t_start={t_start!r}")
  if not td > -1.0:
    raise ValueError(f"config.sampling.td={td!r}; allowed: td > -1 (so that t_next < t_now)")


def check_guidance_interval(interval) -> tuple[float, float]:
  """(t_lo, t_hi) as floats, checked: 0 <= t_lo < t_hi <= 1 (the steps guided: t_lo < t <= t_hi)."""
  allowed = "allowed: (t_lo, t_hi) with 0 <= t_lo < t_hi <= 1, e.g. (0.0, 1.0) to guide every step"
  try:
    lo, hi = (float(v) for v in interval)
  except (TypeError, ValueError):
    raise ValueError(f"config.sampling.guidance_interval={interval!r}; {allowed}") from None
  if not 0.0 <= lo < hi <= 1.0:
    raise ValueError(f"config.sampling.guidance_interval={interval!r}; {allowed}")
  return lo, hi


def time_grid(steps: int, td: float = 0.0, t_end: float = 0.0,
              t_start: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """(t_now, t_next), each float32 of shape (steps,), of the uniform grid over [t_end, t_start]."""
  check_time_grid(steps, td, t_end, t_start)
  i = np.arange(steps, dtype=np.float64)
  span = t_start - t_end
  t_now = t_start - i / steps * span
  t_next = np.maximum(t_start - (i + 1.0 + td) / steps * span, t_end)
  return jnp.asarray(t_now, jnp.float32), jnp.asarray(t_next, jnp.float32)


def _is_zero(w) -> bool:
  return isinstance(w, (int, float, np.number)) and float(w) == 0.0


def sample(denoise_fn: DenoiseFn, noise: jax.Array, key: jax.Array, *,
           gamma_fn: Callable[[jax.Array], jax.Array], steps: int, sampler: str = "ddpm",
           input_scale: float = 1.0, pred_type: str = "eps", cond: PyTree = None,
           null_cond: PyTree = None, guidance: float = 0.0, td: float = 0.0,
           hidden_init: PyTree = None, clip_x0: bool = True, t_end: float = 0.0,
           t_start: float = 1.0,
           guidance_interval: tuple[float, float] = (0.0, 1.0)) -> SampleOutput:
  """Runs the reverse process from `noise`, the state at t_start (pure noise at the default 1),
  down to t_end. A t_start < 1 continues from a partly noised image (SDEdit, Meng et al. 2022).

  denoise_fn(x_t, gamma, cond, hidden) -> (pred, hidden_out) gets the un-normalised state x_t and
  gamma of shape (batch,); it applies normalize_input and the network itself.
  """
  diffusion.check_choice("config.sampling.sampler", sampler, SAMPLERS)
  diffusion.check_choice("config.diffusion.pred_type", pred_type, diffusion.PRED_TYPES)
  chex.assert_type(noise, float, custom_message="samplers.sample: noise must be float")
  chex.assert_tree_shape_prefix(
      [cond, null_cond, hidden_init], jnp.shape(noise)[:1],
      custom_message="samplers.sample: cond, null_cond and hidden_init need noise's batch size")
  if isinstance(input_scale, (int, float)) and not input_scale > 0:
    raise ValueError(f"config.diffusion.input_scale={input_scale!r}; allowed: a number > 0")
  t_now, t_next = time_grid(steps, td, t_end, t_start)
  guide_lo, guide_hi = check_guidance_interval(guidance_interval)
  x_init = jnp.asarray(noise, jnp.float32)
  batch = x_init.shape[0]
  tree_map = jax.tree_util.tree_map

  use_guidance = not _is_zero(guidance)
  if use_guidance:
    if cond is None:
      raise ValueError(f"guidance={guidance!r} needs a condition; cond is None")
    if null_cond is None:
      null_cond = tree_map(jnp.zeros_like, cond)
    both_conds = tree_map(lambda c, n: jnp.concatenate([c, n], axis=0), cond, null_cond)

  channels = x_init.shape[-1]
  learned = sampler == "ddpm_learned"

  def guided(x, gamma, hidden):
    twice = lambda a: jnp.concatenate([a, a], axis=0)  # noqa: E731
    pred2, hidden2 = denoise_fn(twice(x), twice(gamma), both_conds, tree_map(twice, hidden))
    pred2 = jnp.asarray(pred2, jnp.float32)
    pred = (1.0 + guidance) * pred2[:batch] - guidance * pred2[batch:]
    if learned:
      pred = jnp.concatenate([pred[..., :channels], pred2[:batch, ..., channels:]], axis=-1)
    return pred, tree_map(lambda h: h[:batch], hidden2)

  def unguided(x, gamma, hidden):
    pred, hidden_out = denoise_fn(x, gamma, cond, hidden)
    return jnp.asarray(pred, jnp.float32), hidden_out

  def denoise(x, gamma, hidden, t=None):
    if not use_guidance:
      return denoise_fn(x, gamma, cond, hidden)
    if t is None or (guide_lo, guide_hi) == (0.0, 1.0):
      return guided(x, gamma, hidden)
    # One branch runs per step, so steps outside the interval cost a single B call.
    inside = jnp.logical_and(t > guide_lo, t <= guide_hi)
    pred, hidden_out = jax.lax.cond(inside, guided, unguided, x, gamma, hidden)
    return pred, hidden_out

  if hidden_init is None:
    gamma0 = jnp.zeros((batch,), jnp.float32)
    shapes = jax.eval_shape(lambda x: denoise(x, gamma0, None)[1], x_init)
    hidden_init = tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def step(carry, t_pair):
    x, hidden, step_key, _ = carry
    gamma_now = jnp.asarray(gamma_fn(t_pair[0]), jnp.float32)
    gamma_next = jnp.asarray(gamma_fn(t_pair[1]), jnp.float32)
    pred, hidden_out = denoise(x, jnp.full((batch,), gamma_now), hidden, t_pair[0])
    hidden_out = tree_map(lambda h, c: jnp.asarray(h, c.dtype), hidden_out, hidden)
    pred = jnp.asarray(pred, jnp.float32)
    if learned:
      chex.assert_shape(pred, x.shape[:-1] + (2 * channels,),
                        custom_message="'ddpm_learned' needs a 2C-channel prediction [pred, v]")
      pred, v = pred[..., :channels], pred[..., channels:]
    x0_hat, eps_hat = diffusion.predict_x0_eps(
        pred, x, jnp.full((batch,), gamma_now), pred_type=pred_type, input_scale=input_scale,
        clip_x0=clip_x0, truncate_noise=True)

    if sampler == "ddim":
      x_next = jnp.sqrt(gamma_next) * x0_hat + jnp.sqrt(1.0 - gamma_next) * eps_hat
    else:
      alpha = jnp.clip(gamma_now / gamma_next, 0.0, 1.0)
      one_minus_alpha = jnp.clip((gamma_next - gamma_now) / gamma_next, 0.0, 1.0)
      one_minus_gamma_now = jnp.maximum(1.0 - gamma_now, 1e-7)
      mean = (jnp.sqrt(gamma_next) * one_minus_alpha / one_minus_gamma_now * x0_hat
              + jnp.sqrt(alpha) * (1.0 - gamma_next) / one_minus_gamma_now * x)
      beta_tilde = (1.0 - gamma_next) / one_minus_gamma_now * one_minus_alpha
      if sampler == "ddpm":
        var = one_minus_alpha
      elif sampler == "ddpm_small":
        var = beta_tilde
      else:
        var = jnp.exp(learned_variance.interpolated_log_variance(
            v, jnp.log(jnp.maximum(one_minus_alpha, _MIN_VARIANCE)),
            jnp.log(jnp.maximum(beta_tilde, _MIN_VARIANCE))))
      step_key, noise_key = jax.random.split(step_key)
      z = jax.random.normal(noise_key, x.shape, jnp.float32)
      x_next = mean + jnp.sqrt(var) * z
    return (x_next, hidden_out, step_key, x0_hat), None

  init = (x_init, hidden_init, key, jnp.zeros_like(x_init))
  (x_final, _, _, x0_last), _ = jax.lax.scan(step, init, (t_now, t_next))
  return SampleOutput(x0=x0_last / input_scale, x_t=x_final)
