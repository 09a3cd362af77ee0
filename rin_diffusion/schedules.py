"""Continuous-time noise schedules gamma(t) and the log signal-to-noise ratio.

gamma(t) is the signal variance of the forward process x_t = sqrt(gamma) b x0 + sqrt(1 - gamma) eps
(spec-rin section 4). t = 1 is pure noise, t = 0 is data.

Families (spec-rin 4.1; Chen 2023, "On the Importance of Noise Scheduling for Diffusion Models",
Algorithm 1), all clipped to [CLIP_MIN, 1]:

* 'linear' (alias 'simple_linear'): gamma = 1 - t.
* 'cosine@start,end,tau':
    gamma = (cos((t (e - s) + s) pi / 2)^(2 tau) - cos(e pi / 2)^(2 tau))
            / (cos(s pi / 2)^(2 tau) - cos(e pi / 2)^(2 tau)).
* 'sigmoid@start,end,tau':
    gamma = (sigmoid(e / tau) - sigmoid((t (e - s) + s) / tau))
            / (sigmoid(e / tau) - sigmoid(s / tau)).
* 'cosine' (no arguments): the reference's offset inference cosine
    gamma = cos^2(((t + 2e-4) / (1 + 2.5e-4)) pi / 2), so gamma(1) ~ 6.2e-9 and gamma(0) ~ 1 - 1e-7.
  This is the official sampling schedule; it is *not* 'cosine@0,1,1'.

Choices:
* Arguments are parsed once, in Python float64; the returned function computes in float32 and is
  jit-friendly (pure jnp, no Python control flow on t).
* cos(theta) near theta = pi / 2 is evaluated as sin(pi / 2 - theta), with pi / 2 - theta formed
  without cancellation ((1 - e) + (e - s)(1 - t)), so small gammas near t = 1 keep their relative
  precision in float32 and never go negative (float32 cos(pi / 2) is -4.4e-8). Mathematically this
  is Algorithm 1 unchanged.
* 'cosine@s,e,tau' requires 0 <= s < e <= 1 (outside [0, 1] the cosine changes sign and the power
  2 tau is undefined); both families require tau > 0 and finite numbers.

Discrete processes of T steps (DDPM / Improved DDPM, used by CDM's U-Net stages), given as tables
alpha-bar_0 = 1, alpha-bar_1, ..., alpha-bar_T computed in float64 from clipped betas
(`alpha_bar_table`):

* 'iddpm_cosine@T': Improved DDPM's cosine, alpha-bar_i = f(i / T) / f(0) with
  f(u) = cos^2((u + 0.008) / 1.008 pi / 2), betas 1 - alpha-bar_i / alpha-bar_(i-1) clipped to 0.999
  and alpha-bar recomputed as their cumulative product (so alpha-bar_T ~ 1e-3 alpha-bar_(T-1), not 0).
* 'ddpm_linear@T': DDPM's linear betas, scaled to T as Improved DDPM does: from 1e-4 1000 / T to
  0.02 1000 / T (T = 1000 gives DDPM's 1e-4 .. 0.02).

As gamma(t) they are continuous: sqrt(alpha-bar) is interpolated linearly between t = (i - 1) / T
and i / T, so gamma(i / T) = alpha-bar_i and a uniform t draws sqrt(alpha-bar) uniformly within a
uniformly chosen segment: SR3 / WaveGrad's "continuous noise conditioning" on that process. Training
with config.diffusion.timesteps = T instead draws t from {1/T, ..., 1}: the discrete process.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

CLIP_MIN = 1e-9
# Largest gamma used where a formula divides by 1 - gamma (float32 rounds it to 1 - 1.19e-7).
GAMMA_MAX = 1.0 - 1e-7

_ALLOWED = ("'linear', 'simple_linear', 'cosine', 'cosine@start,end,tau', 'sigmoid@start,end,tau', "
            "'iddpm_cosine@T', 'ddpm_linear@T'")
TABLE_FAMILIES = ("iddpm_cosine", "ddpm_linear")
_MAX_BETA = 0.999  # Improved DDPM's clip of the cosine betas (the last ones would reach 1).


def _error(spec: str, why: str) -> ValueError:
  return ValueError(f"diffusion schedule {spec!r} {why}; allowed: {_ALLOWED}")


def _parse_args(spec: str, family: str, args: str) -> tuple[float, float, float]:
  parts = args.split(",")
  if len(parts) != 3:
    raise _error(spec, f"needs exactly 3 arguments (start,end,tau), got {len(parts)}")
  try:
    start, end, tau = (float(p) for p in parts)
  except ValueError:
    raise _error(spec, "has arguments that are not numbers") from None
  if not all(math.isfinite(v) for v in (start, end, tau)):
    raise _error(spec, "has non-finite arguments")
  if not start < end:
    raise _error(spec, f"needs start < end, got start={start:g}, end={end:g}")
  if not tau > 0:
    raise _error(spec, f"needs tau > 0, got tau={tau:g}")
  if family == "cosine" and not (0.0 <= start and end <= 1.0):
    raise _error(spec, f"needs 0 <= start < end <= 1, got start={start:g}, end={end:g}")
  return start, end, tau


def _linear() -> Callable[[jax.Array], jax.Array]:
  def gamma(t):
    t = jnp.asarray(t, jnp.float32)
    return jnp.clip(1.0 - t, CLIP_MIN, 1.0)
  return gamma


def _offset_cosine() -> Callable[[jax.Array], jax.Array]:
  def gamma(t):
    t = jnp.asarray(t, jnp.float32)
    # cos(u pi/2) with u = (t + 2e-4) / (1 + 2.5e-4) equals sin((1 - u) pi/2), and
    # 1 - u = (1 - t + 5e-5) / (1 + 2.5e-4) is formed without cancellation near t = 1.
    one_minus_u = ((1.0 - t) + 5e-5) / (1.0 + 2.5e-4)
    return jnp.clip(jnp.sin(one_minus_u * (jnp.pi / 2)) ** 2, CLIP_MIN, 1.0)
  return gamma


def _cosine(start: float, end: float, tau: float) -> Callable[[jax.Array], jax.Array]:
  # cos(x pi/2) = sin((1 - x) pi/2); the endpoints use the same form so that e = 1 gives exactly 0.
  v_start = math.sin((1.0 - start) * math.pi / 2) ** (2 * tau)
  v_end = math.sin((1.0 - end) * math.pi / 2) ** (2 * tau)

  def gamma(t):
    t = jnp.asarray(t, jnp.float32)
    # 1 - (t (e - s) + s) = (1 - e) + (e - s)(1 - t), which is in [1 - e, 1 - s] for t in [0, 1].
    one_minus_x = (1.0 - end) + (end - start) * (1.0 - t)
    value = jnp.maximum(jnp.sin(one_minus_x * (jnp.pi / 2)), 0.0) ** (2 * tau)
    return jnp.clip((value - v_end) / (v_start - v_end), CLIP_MIN, 1.0)
  return gamma


def _sigmoid(start: float, end: float, tau: float) -> Callable[[jax.Array], jax.Array]:
  def py_sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))

  v_start = py_sigmoid(start / tau)
  v_end = py_sigmoid(end / tau)

  def gamma(t):
    t = jnp.asarray(t, jnp.float32)
    value = jax.nn.sigmoid((t * (end - start) + start) / tau)
    return jnp.clip((v_end - value) / (v_end - v_start), CLIP_MIN, 1.0)
  return gamma


def _parse_table(spec: str) -> tuple[str, int]:
  """'iddpm_cosine@4000' -> ('iddpm_cosine', 4000); raises naming the spec otherwise."""
  family, _, args = spec.strip().partition("@")
  if family not in TABLE_FAMILIES:
    raise _error(spec, "is not a discrete process ('iddpm_cosine@T' or 'ddpm_linear@T')")
  try:
    timesteps = int(args)
  except ValueError:
    raise _error(spec, "needs an integer number of steps T >= 1 after '@'") from None
  if timesteps < 1 or str(timesteps) != args.strip():
    raise _error(spec, "needs an integer number of steps T >= 1 after '@'")
  if family == "ddpm_linear" and timesteps < 50:
    raise _error(spec, "needs T >= 50 (the last beta, 0.02 1000 / T, must stay below 1)")
  return family, timesteps


def is_table(spec: str) -> bool:
  """Whether `spec` names a discrete process ('iddpm_cosine@T', 'ddpm_linear@T')."""
  return isinstance(spec, str) and spec.strip().partition("@")[0] in TABLE_FAMILIES


def alpha_bar_table(spec: str) -> np.ndarray:
  """float64 (T + 1,) alpha-bar_0 = 1, ..., alpha-bar_T of a discrete process ('iddpm_cosine@T')."""
  family, timesteps = _parse_table(spec)
  steps = np.arange(timesteps + 1, dtype=np.float64)
  if family == "iddpm_cosine":
    offset = 0.008
    f = np.cos((steps / timesteps + offset) / (1.0 + offset) * np.pi / 2) ** 2
    betas = np.minimum(1.0 - f[1:] / f[:-1], _MAX_BETA)
  else:
    scale = 1000.0 / timesteps
    betas = np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)
  return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


def _table(spec: str) -> Callable[[jax.Array], jax.Array]:
  sqrt_alpha_bar = np.sqrt(alpha_bar_table(spec))
  timesteps = len(sqrt_alpha_bar) - 1
  grid = np.arange(timesteps + 1, dtype=np.float32)

  def gamma(t):
    t = jnp.asarray(t, jnp.float32)
    position = jnp.clip(t, 0.0, 1.0) * timesteps
    root = jnp.interp(position, grid, jnp.asarray(sqrt_alpha_bar, jnp.float32))
    return jnp.clip(root**2, CLIP_MIN, 1.0)
  return gamma


def gamma_fn(spec: str) -> Callable[[jax.Array], jax.Array]:
  """Returns gamma(t) for a schedule string such as 'linear', 'cosine' or 'sigmoid@-3,3,0.9'.

  The returned function maps t (any shape, t = 1 is noise) to float32 gamma in [CLIP_MIN, 1].
  Raises ValueError naming `spec` for unknown names and malformed or out-of-range arguments.
  """
  if not isinstance(spec, str):
    raise _error(repr(spec), "is not a string")
  name = spec.strip()
  if name in ("linear", "simple_linear"):
    return _linear()
  if name == "cosine":
    return _offset_cosine()
  if "@" in name:
    family, args = name.split("@", 1)
    if family == "cosine":
      return _cosine(*_parse_args(spec, family, args))
    if family == "sigmoid":
      return _sigmoid(*_parse_args(spec, family, args))
    if family in TABLE_FAMILIES:
      return _table(spec)
    if family in ("linear", "simple_linear"):
      raise _error(spec, f"takes no arguments for {family!r}")
  raise _error(spec, "is unknown")


def logsnr(gamma: jax.Array, input_scale: float = 1.0) -> jax.Array:
  """log SNR of x_t relative to the unscaled data: log(gamma / (1 - gamma)) + 2 log b.

  gamma is clipped to [CLIP_MIN, GAMMA_MAX] so the result is finite at gamma = 0 and 1 (spec-rin
  4.2: b shifts logSNR vertically by 2 log b without changing its shape).
  """
  gamma = jnp.clip(jnp.asarray(gamma, jnp.float32), CLIP_MIN, GAMMA_MAX)
  return jnp.log(gamma) - jnp.log1p(-gamma) + 2.0 * jnp.log(jnp.asarray(input_scale, jnp.float32))
