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
   * 'dpmpp_2m_sde' (DPM-Solver++(2M) SDE, eta = 1): 'ddpm_small''s step (mean and variance) taken
     with DPM-Solver++(2M)'s extrapolated D in place of x0'-hat (dpmpp_2m_step, docs/samplers.md).
   * 'ddpm_learned' (Improved DDPM's learned variances): the denoise fn returns 2C channels, the
     prediction and v; the mean is the 'ddpm' mean of the first half and
     log var = frac log(1 - alpha) + (1 - frac) log beta~, frac = (v + 1) / 2, with
     beta~ = (1 - gamma_next) / (1 - gamma_now) (1 - alpha) ('ddpm_small''s variance) floored at
     1e-20 (it is 0 at the last step, whose noise reaches only the returned state x_t). On a grid of
     K steps over a T-step process (K dividing T) this is Improved DDPM's strided sampling: alpha
     and beta~ are those of the respaced process. Guidance combines the first halves only; v comes
     from the conditional half (as GLIDE does).

The scan carries (x, hidden, key, x0'-hat). The output is SampleOutput(x0 = the last step's
x0'-hat / b, i.e. in [-1, 1] units when clipping; x_t = the final state, i.e. x at t_end; hidden =
the last carried self-conditioning latents, to continue from t_end as hidden_init).

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

from rin_diffusion import diffusion, learned_variance, schedules

PyTree = Any
DenoiseFn = Callable[[jax.Array, jax.Array, PyTree, PyTree], tuple[jax.Array, PyTree]]

SAMPLERS = ("ddpm", "ddpm_small", "ddim", "ddpm_learned", "dpmpp_2m", "heun", "dpmpp_2m_sde")
# The deterministic second-order solvers of the probability-flow ODE (docs/samplers.md).
ODE_SAMPLERS = ("dpmpp_2m", "heun")
# The samplers that need td = 0: a multistep or two-call step reads the grid point where the step
# before it ended (the ODE solvers and the stochastic DPM-Solver++(2M) SDE).
END_TO_END_SAMPLERS = ODE_SAMPLERS + ("dpmpp_2m_sde",)
TIME_GRIDS = ("uniform_t", "logsnr", "edm")
# The grid each sampler uses when none is named (docs/samplers.md has the measurements behind it).
DEFAULT_TIME_GRID = {"ddpm": "uniform_t", "ddpm_small": "uniform_t", "ddim": "uniform_t",
                     "ddpm_learned": "uniform_t", "dpmpp_2m": "logsnr", "heun": "uniform_t",
                     "dpmpp_2m_sde": "logsnr"}
EDM_RHO = 7.0  # Karras et al. 2022, eq. 5: sigma_i^(1 / rho) is uniform in i.
# EDM's sigma_max for data in [-1, 1] (times b on the scaled data): the 'logsnr' and 'edm' grids
# start there, not at the offset cosine's sigma(1) ~ 1.3e4, which would spend half of a 10-step
# 'edm' grid above sigma = 10 where the ODE is a straight line.
EDM_SIGMA_MAX = 80.0
_MIN_VARIANCE = 1e-20
_BISECTION_STEPS = 48  # Halvings of [t_end, t_start]: far below float32's resolution of t.


def samplers_for(learned_variance: bool) -> tuple[str, ...]:
  """The samplers a model can use: 'ddpm_learned' needs its learned-variance channels."""
  return SAMPLERS if learned_variance else tuple(s for s in SAMPLERS if s != "ddpm_learned")


class SampleOutput(NamedTuple):
  x0: jax.Array  # The last step's x0-hat in unscaled units (x0'-hat / b).
  x_t: jax.Array  # The final sampler state, at t_end.
  # The self-conditioning latents the last call returned: with x_t, what a run continued from
  # t_end needs (hidden_init) to go on as one run would.
  hidden: PyTree = None


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


def time_grid(steps: int, td: float = 0.0, t_end: float = 0.0, t_start: float = 1.0, *,
              kind: str = "uniform_t",
              gamma_fn: Callable[[jax.Array], jax.Array] | None = None,
              input_scale: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """(t_now, t_next), each float32 of shape (steps,), of a grid over [t_end, t_start].

  Step i runs from u = i / steps to u = min((i + 1 + td) / steps, 1) of a coordinate that `kind`
  spaces uniformly between the two ends (u = 0 is t_start, u = 1 is t_end, both exactly):
  * 'uniform_t': t itself (spec-rin 6.1);
  * 'logsnr': log(gamma / (1 - gamma)) (DPM-Solver's "logSNR" grid);
  * 'edm': sigma^(1 / rho), sigma = sqrt((1 - gamma) / gamma), rho = 7 (Karras et al. 2022 eq. 5).
  The last two need `gamma_fn`; their t are found by bisection of the monotone gamma_fn, so the
  sampler still evaluates gamma_fn(t) and guidance_interval still reads t. gamma is clipped to
  [CLIP_MIN, GAMMA_MAX] for the coordinate, so an end at gamma = 1 (sigma = 0) stays finite. Their
  coordinate starts at sigma = min(sigma(t_start), EDM_SIGMA_MAX b): above that the first step
  jumps from t_start to the grid's second point (the flow is a straight line there).
  """
  check_time_grid(steps, td, t_end, t_start)
  diffusion.check_choice("config.sampling.time_grid", kind, TIME_GRIDS)
  i = np.arange(steps, dtype=np.float64)
  u_now, u_next = i / steps, np.minimum((i + 1.0 + td) / steps, 1.0)
  if kind == "uniform_t":
    span = t_start - t_end
    t_now = t_start - u_now * span
    t_next = np.maximum(t_start - (i + 1.0 + td) / steps * span, t_end)
  else:
    if gamma_fn is None:
      raise ValueError(f"time_grid kind={kind!r} needs the schedule gamma_fn")
    sigma_max = EDM_SIGMA_MAX * float(input_scale)
    t_now = _invert_grid(gamma_fn, kind, u_now, t_end, t_start, sigma_max)
    t_next = _invert_grid(gamma_fn, kind, u_next, t_end, t_start, sigma_max)
  return jnp.asarray(t_now, jnp.float32), jnp.asarray(t_next, jnp.float32)


_grid = time_grid  # sample()'s time_grid argument shadows the function inside it.


def _noise_level(gamma: np.ndarray, kind: str) -> np.ndarray:
  """The grid coordinate of `kind` (not 'uniform_t'), increasing with the noise; float64."""
  gamma = np.clip(np.asarray(gamma, np.float64), schedules.CLIP_MIN, schedules.GAMMA_MAX)
  if kind == "logsnr":
    return np.log1p(-gamma) - np.log(gamma)  # -logSNR.
  return ((1.0 - gamma) / gamma) ** (0.5 / EDM_RHO)  # sigma^(1 / rho).


def _invert_grid(gamma_fn: Callable[[jax.Array], jax.Array], kind: str, u: np.ndarray,
                 t_end: float, t_start: float, sigma_max: float) -> np.ndarray:
  """The t in [t_end, t_start] whose noise level is the fraction u of the way from the start's
  (t_start's, capped at sigma_max) to t_end's: bisection on t, vectorised over u. Runs eagerly even
  inside a jit trace (the grid is a compile-time constant, like the uniform one)."""
  with jax.ensure_compile_time_eval():
    level = lambda t: _noise_level(  # noqa: E731
        np.asarray(gamma_fn(jnp.asarray(t, jnp.float32))), kind)
    start = min(level(np.float64(t_start)), _noise_level(1.0 / (1.0 + sigma_max**2), kind))
    end = level(np.float64(t_end))
    target = start + u * (end - start)
    lo, hi = np.full_like(u, t_end), np.full_like(u, t_start)
    for _ in range(_BISECTION_STEPS):
      mid = 0.5 * (lo + hi)
      noisier = level(mid) > target
      hi, lo = np.where(noisier, mid, hi), np.where(noisier, lo, mid)
  # The ends exactly, whatever the float32 rounding of gamma_fn near them.
  return np.where(u <= 0.0, t_start, np.where(u >= 1.0, t_end, 0.5 * (lo + hi)))


def _is_zero(w) -> bool:
  return isinstance(w, (int, float, np.number)) and float(w) == 0.0


def sample(denoise_fn: DenoiseFn, noise: jax.Array, key: jax.Array, *,
           gamma_fn: Callable[[jax.Array], jax.Array], steps: int, sampler: str = "ddpm",
           input_scale: float = 1.0, pred_type: str = "eps", cond: PyTree = None,
           null_cond: PyTree = None, guidance: float = 0.0, td: float = 0.0,
           hidden_init: PyTree = None, clip_x0: bool = True, t_end: float = 0.0,
           t_start: float = 1.0,
           guidance_interval: tuple[float, float] = (0.0, 1.0),
           time_grid: str | None = None) -> SampleOutput:
  """Runs the reverse process from `noise`, the state at t_start (pure noise at the default 1),
  down to t_end. A t_start < 1 continues from a partly noised image (SDEdit, Meng et al. 2022).

  denoise_fn(x_t, gamma, cond, hidden) -> (pred, hidden_out) gets the un-normalised state x_t and
  gamma of shape (batch,); it applies normalize_input and the network itself.

  `steps` are grid intervals: 'heun' calls the denoiser 2 steps - 1 times (calls_per_run), the
  others `steps` times (twice the batch where guided). time_grid: one of TIME_GRIDS, None (or '')
  for the sampler's DEFAULT_TIME_GRID.
  """
  diffusion.check_choice("config.sampling.sampler", sampler, SAMPLERS)
  grid_kind = time_grid or DEFAULT_TIME_GRID[sampler]
  diffusion.check_choice("config.diffusion.pred_type", pred_type, diffusion.PRED_TYPES)
  chex.assert_type(noise, float, custom_message="samplers.sample: noise must be float")
  chex.assert_tree_shape_prefix(
      [cond, null_cond, hidden_init], jnp.shape(noise)[:1],
      custom_message="samplers.sample: cond, null_cond and hidden_init need noise's batch size")
  if isinstance(input_scale, (int, float)) and not input_scale > 0:
    raise ValueError(f"config.diffusion.input_scale={input_scale!r}; allowed: a number > 0")
  if sampler in END_TO_END_SAMPLERS and not td == 0:
    raise ValueError(f"config.sampling.td={td!r}; allowed: 0 with the sampler {sampler!r}, "
                     "whose steps must meet end to end")
  t_now, t_next = _grid(steps, td, t_end, t_start, kind=grid_kind, gamma_fn=gamma_fn,
                        input_scale=input_scale)
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

  def posterior(x0_hat, x, gamma_now, gamma_next):
    """(mean, 1 - alpha, beta~) of q(x_next | x, x0'-hat): the 'ddpm' mean in its numerically safe
    form (module docstring) and the posterior variance beta~ of 'ddpm_small'."""
    alpha = jnp.clip(gamma_now / gamma_next, 0.0, 1.0)
    one_minus_alpha = jnp.clip((gamma_next - gamma_now) / gamma_next, 0.0, 1.0)
    one_minus_gamma_now = jnp.maximum(1.0 - gamma_now, 1e-7)
    mean = (jnp.sqrt(gamma_next) * one_minus_alpha / one_minus_gamma_now * x0_hat
            + jnp.sqrt(alpha) * (1.0 - gamma_next) / one_minus_gamma_now * x)
    beta_tilde = (1.0 - gamma_next) / one_minus_gamma_now * one_minus_alpha
    return mean, one_minus_alpha, beta_tilde

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
      mean, one_minus_alpha, beta_tilde = posterior(x0_hat, x, gamma_now, gamma_next)
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

  def x0_eps(x, gamma, hidden, t):
    """(x0'-hat, eps-hat, hidden out) of one denoiser call at the scalar gamma (time t)."""
    gammas = jnp.full((batch,), gamma)
    pred, hidden_out = denoise(x, gammas, hidden, t)
    hidden_out = tree_map(lambda h, c: jnp.asarray(h, c.dtype), hidden_out, hidden)
    x0_hat, eps_hat = diffusion.predict_x0_eps(
        pred, x, gammas, pred_type=pred_type, input_scale=input_scale, clip_x0=clip_x0,
        truncate_noise=True)
    return x0_hat, eps_hat, hidden_out

  def ddim_update(x0_hat, x, gamma_now, gamma_next):
    """DDIM's step with a given x0'-hat, its eps re-derived from x (an 'x0' head, unclipped)."""
    _, eps = diffusion.predict_x0_eps(x0_hat, x, gamma_now, pred_type="x0",
                                      input_scale=input_scale, clip_x0=False)
    return jnp.sqrt(gamma_next) * x0_hat + jnp.sqrt(1.0 - gamma_next) * eps

  # Where the run ends at the data (t_end = 0, log-SNR ~ +16 or infinite), DPM-Solver++'s last step
  # is first order ("lower_order_final"): extrapolating x0-hat linearly over that unbounded log-SNR
  # step overshoots, and the first-order step returns the last x0-hat itself (as heun's Euler).
  final_first_order = t_end == 0.0

  stochastic = sampler == "dpmpp_2m_sde"

  def dpmpp_2m_step(carry, xs):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in lambda = logSNR / 2: the DDIM step taken
    with D = x0-hat + h / (2 h_prev) (x0-hat - previous x0-hat), h = lambda_next - lambda_now.

    'dpmpp_2m_sde' (the paper's SDE variant, eta = 1, k-diffusion's "midpoint" correction, which
    is this D): x_next = (sigma_next / sigma_now) e^-h x + alpha_next (1 - e^-2h) D
    + sigma_next sqrt(1 - e^-2h) z. In gamma, (sigma_next / sigma_now) e^-h and
    alpha_next (1 - e^-2h) are the coefficients of x and x0'-hat in the 'ddpm' mean, and
    sigma_next^2 (1 - e^-2h) is 'ddpm_small''s variance, so that step is posterior() with D: no
    division by sigma_now ~ 0 near t = 0, no exponential of an h that is infinite where gamma
    rounds to 1. Its first-order steps are 'ddpm_small''s steps."""
    x, hidden, step_key, x0_prev, lambda_prev = carry
    t_pair, index = xs
    gamma_now = jnp.asarray(gamma_fn(t_pair[0]), jnp.float32)
    gamma_next = jnp.asarray(gamma_fn(t_pair[1]), jnp.float32)
    x0_hat, _, hidden_out = x0_eps(x, gamma_now, hidden, t_pair[0])
    lambda_now = 0.5 * schedules.logsnr(gamma_now)
    lambda_next = 0.5 * schedules.logsnr(gamma_next)
    h_prev = lambda_now - lambda_prev
    # Also first order after a step of no length (near gamma = 1 float32 may round two grid
    # points' gammas alike), where the ratio h / h_prev has no meaning.
    first_order = jnp.logical_or(index == 0, h_prev <= 0.0)
    if final_first_order:
      first_order = jnp.logical_or(first_order, index == steps - 1)
    # where() before the product: the unused ratio may be inf or nan.
    ratio = jnp.where(first_order, 0.0, (lambda_next - lambda_now) / (2.0 * h_prev))
    x0_combined = x0_hat + ratio * (x0_hat - x0_prev)
    if stochastic:
      mean, _, beta_tilde = posterior(x0_combined, x, gamma_now, gamma_next)
      step_key, noise_key = jax.random.split(step_key)
      x_next = mean + jnp.sqrt(beta_tilde) * jax.random.normal(noise_key, x.shape, jnp.float32)
    else:
      x_next = ddim_update(x0_combined, x, gamma_now, gamma_next)
    return (x_next, hidden_out, step_key, x0_hat, lambda_now), None

  def karras_sigma(gamma):
    """sigma of Karras et al.'s x / sqrt(gamma) = x0' + sigma eps: sqrt((1 - gamma) / gamma)."""
    gamma = jnp.clip(gamma, schedules.CLIP_MIN, 1.0)
    return jnp.sqrt((1.0 - gamma) / gamma)

  heun_sigma_max = EDM_SIGMA_MAX * input_scale

  def heun_step(carry, xs):
    """Karras et al. 2022, Algorithm 1 (deterministic) on y = x / sqrt(gamma), dy / dsigma = eps-hat:
    an Euler step (= DDIM) and the trapezoidal correction with eps-hat at the Euler point (a second
    call, fed the first call's hidden), except on the last step (which may end at sigma = 0) and on
    steps from above sigma_max = EDM_SIGMA_MAX b. Up there eps-hat is constant to (b s / sigma)^2
    (s the data's std), so Euler is exact to that order, while the trapezoid would weight the whole
    step by the end point's slope: from the offset cosine's sigma(1) ~ 1.3e4 to sigma = 10 that
    moved y by ~1 where the flow moves it by 1e-3."""
    x, hidden, step_key, _ = carry
    t_pair, is_last = xs
    gamma_now = jnp.asarray(gamma_fn(t_pair[0]), jnp.float32)
    gamma_next = jnp.asarray(gamma_fn(t_pair[1]), jnp.float32)
    x0_hat, eps_now, hidden = x0_eps(x, gamma_now, hidden, t_pair[0])
    x_euler = jnp.sqrt(gamma_next) * x0_hat + jnp.sqrt(1.0 - gamma_next) * eps_now
    # y_next - y_euler = (sigma_next - sigma_now) (eps_next - eps_now) / 2, times sqrt(gamma_next).
    scale = 0.5 * jnp.sqrt(gamma_next) * (karras_sigma(gamma_next) - karras_sigma(gamma_now))

    def correct(hidden):
      _, eps_next, hidden = x0_eps(x_euler, gamma_next, hidden, t_pair[1])
      return x_euler + scale * (eps_next - eps_now), hidden

    # A cond, not a select: the last step's skipped call costs nothing.
    euler_only = jnp.logical_or(is_last, karras_sigma(gamma_now) > heun_sigma_max)
    x_next, hidden = jax.lax.cond(euler_only, lambda h: (x_euler, h), correct, hidden)
    return (x_next, hidden, step_key, x0_hat), None

  zeros = jnp.zeros_like(x_init)
  if sampler in ("dpmpp_2m", "dpmpp_2m_sde"):
    init = (x_init, hidden_init, key, zeros, jnp.zeros((), jnp.float32))
    xs = ((t_now, t_next), jnp.arange(steps))
    (x_final, hidden_final, _, x0_last, _), _ = jax.lax.scan(dpmpp_2m_step, init, xs)
  elif sampler == "heun":
    xs = ((t_now, t_next), jnp.arange(steps) == steps - 1)
    (x_final, hidden_final, _, x0_last), _ = jax.lax.scan(
        heun_step, (x_init, hidden_init, key, zeros), xs)
  else:
    init = (x_init, hidden_init, key, zeros)
    (x_final, hidden_final, _, x0_last), _ = jax.lax.scan(step, init, (t_now, t_next))
  return SampleOutput(x0=x0_last / input_scale, x_t=x_final, hidden=hidden_final)


def calls_per_run(sampler: str, steps: int, *, gamma_fn: Callable[[jax.Array], jax.Array],
                  time_grid: str | None = None, t_end: float = 0.0, t_start: float = 1.0,
                  input_scale: float = 1.0) -> int:
  """Denoiser calls of one run (each a 2B-batch call where guided): `steps` ('dpmpp_2m_sde' too:
  one call per step, its second order from the previous call's x0-hat), except for 'heun',
  which makes 2 per step but 1 on the last step (no call at the end point, which may be sigma = 0)
  and on the steps from above EDM_SIGMA_MAX b (the first step of every grid from t = 1 with the
  offset cosine: 2 steps - 2 calls)."""
  diffusion.check_choice("config.sampling.sampler", sampler, SAMPLERS)
  if sampler != "heun":
    return int(steps)
  t_now, _ = _grid(steps, 0.0, t_end, t_start, kind=time_grid or DEFAULT_TIME_GRID[sampler],
                   gamma_fn=gamma_fn, input_scale=input_scale)
  with jax.ensure_compile_time_eval():
    gamma = np.clip(np.asarray(gamma_fn(t_now[:-1]), np.float64), schedules.CLIP_MIN, 1.0)
  euler_only = np.sqrt((1.0 - gamma) / gamma) > EDM_SIGMA_MAX * input_scale
  return int(2 * steps - 1 - np.sum(euler_only))


def steps_for_calls(sampler: str, calls: int, **grid_kwargs) -> int:
  """The most steps whose calls_per_run (same keyword arguments) is at most `calls` (>= 1 step)."""
  steps = 1
  while calls_per_run(sampler, steps + 1, **grid_kwargs) <= calls:
    steps += 1
  return steps
