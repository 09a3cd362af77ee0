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
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

CLIP_MIN = 1e-9
# Largest gamma used where a formula divides by 1 - gamma (float32 rounds it to 1 - 1.19e-7).
GAMMA_MAX = 1.0 - 1e-7

_ALLOWED = "'linear', 'simple_linear', 'cosine', 'cosine@start,end,tau', 'sigmoid@start,end,tau'"


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
