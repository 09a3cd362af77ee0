"""Learned reverse-process variances and the hybrid loss of Improved DDPM (no networks here).

Nichol & Dhariwal 2021 ("Improved Denoising Diffusion Probabilistic Models", section 3.1), as CDM's
32x32 base and 32 -> 64 stages use them (Ho et al. 2021, Appendix B): a discrete process of T steps
with alpha-bar_0 = 1 > alpha-bar_1 > ... > alpha-bar_T (schedules.alpha_bar_table, e.g.
'iddpm_cosine@4000'), beta_i = 1 - alpha-bar_i / alpha-bar_(i-1), and the posterior
q(x_(i-1) | x_i, x0) = N(mu~_i, beta~_i) with beta~_i = beta_i (1 - alpha-bar_(i-1)) / (1 - alpha-bar_i).

* The network returns 2C channels: eps-hat, then v. The reverse variance is
  Sigma = exp(frac log beta_i + (1 - frac) log beta~_i), frac = (v + 1) / 2: v = -1 gives beta~_i, v = 1
  gives beta_i, exactly. beta~_1 = 0, so at i = 1 its log is taken at beta~_2 (Improved DDPM's
  "clipped" posterior log-variance).
* The reverse mean from eps-hat: mu = (x_i - beta_i / sqrt(1 - alpha-bar_i) eps-hat) / sqrt(1 - beta_i)
  (DDPM eq. 11; equal to the posterior mean at the unclipped x0-hat, without dividing by a tiny
  sqrt(alpha-bar) near i = T). Only 'eps' prediction is supported, as in Improved DDPM.
* L_vlb terms, per example, in bits per dimension (mean over the non-batch axes / log 2):
  i > 1: KL(q(x_(i-1) | x_i, x0) || N(mu, Sigma)); i = 1: -log p(x0 | x_1) under the discretised
  Gaussian decoder (256 bins on [-1, 1], the outer bins open; DDPM section 3.3).
* Hybrid loss = L_simple + lambda L_vlb with lambda = 0.001, L_simple the eps MSE (config:
  loss_target 'eps', weighting 'constant') and the mean stopped in L_vlb, so that L_vlb trains only
  the variance. L_vlb = sum_i L_i is estimated from the one uniformly drawn i per example as T L_i
  (Improved DDPM's `vb *= num_timesteps / 1000`, i.e. lambda T L_i).

Tables are computed in float64 and gathered per example as float32: beta_1 is about 1e-5 for the
4000-step cosine, and 1 - alpha-bar_1 / alpha-bar_0 in float32 would lose most of its digits.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rin_diffusion import schedules

_LOG2 = float(np.log(2.0))
# Decoder bins: x0 in [-1, 1] quantised to 256 levels, bin half-width 1 / 255.
_BIN_HALF_WIDTH = 1.0 / 255.0


class Process(NamedTuple):
  """float32 tables of a discrete process, indexed by the step i = 0 .. T (entry 0 unused but 1)."""
  alpha_bar: jax.Array  # alpha-bar_i.
  log_beta: jax.Array  # log beta_i.
  log_beta_tilde_clipped: jax.Array  # log beta~_i, with beta~_2 at i = 1 (and i = 0).
  posterior_coef_x0: jax.Array  # sqrt(alpha-bar_(i-1)) beta_i / (1 - alpha-bar_i).
  posterior_coef_xt: jax.Array  # sqrt(1 - beta_i) (1 - alpha-bar_(i-1)) / (1 - alpha-bar_i).
  mean_coef_eps: jax.Array  # beta_i / sqrt(1 - alpha-bar_i).
  recip_sqrt_alpha: jax.Array  # 1 / sqrt(1 - beta_i).

  @property
  def timesteps(self) -> int:
    return self.alpha_bar.shape[0] - 1


def process(schedule: str) -> Process:
  """The tables of a discrete process named like 'iddpm_cosine@4000' (schedules.alpha_bar_table)."""
  alpha_bar = schedules.alpha_bar_table(schedule)
  if len(alpha_bar) < 3:
    raise ValueError(f"config.diffusion.train_schedule={schedule!r}: learned variances need T >= 2 "
                     "steps (beta~ at step 1 is taken from step 2).")
  prev = np.concatenate([[1.0], alpha_bar[:-1]])
  beta = np.concatenate([[0.0], 1.0 - alpha_bar[1:] / alpha_bar[:-1]])
  with np.errstate(divide="ignore", invalid="ignore"):
    beta_tilde = beta * (1.0 - prev) / (1.0 - alpha_bar)
    log_beta = np.log(beta)
  beta_tilde[:2] = beta_tilde[2]
  log_beta[0] = log_beta[1]
  one_minus = np.concatenate([[1.0], 1.0 - alpha_bar[1:]])  # Entry 0 only avoids 0 / 0.
  tables = dict(
      alpha_bar=alpha_bar,
      log_beta=log_beta,
      log_beta_tilde_clipped=np.log(beta_tilde),
      posterior_coef_x0=np.sqrt(prev) * beta / one_minus,
      posterior_coef_xt=np.sqrt(1.0 - beta) * (1.0 - prev) / one_minus,
      mean_coef_eps=beta / np.sqrt(one_minus),
      recip_sqrt_alpha=1.0 / np.sqrt(1.0 - beta),
  )
  return Process(**{name: jnp.asarray(value, jnp.float32) for name, value in tables.items()})


def _bcast(values: jax.Array, x: jax.Array) -> jax.Array:
  return jnp.reshape(values, values.shape + (1,) * (x.ndim - values.ndim))


def interpolated_log_variance(v: jax.Array, log_beta: jax.Array,
                              log_beta_tilde: jax.Array) -> jax.Array:
  """log Sigma = frac log beta + (1 - frac) log beta~, frac = (v + 1) / 2 (v = -1: beta~, 1: beta)."""
  frac = (v + 1.0) / 2.0
  return frac * log_beta + (1.0 - frac) * log_beta_tilde


def normal_kl(mean1: jax.Array, log_var1: jax.Array, mean2: jax.Array,
              log_var2: jax.Array) -> jax.Array:
  """KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))) per element, in nats."""
  return 0.5 * (-1.0 + log_var2 - log_var1 + jnp.exp(log_var1 - log_var2)
                + jnp.square(mean1 - mean2) * jnp.exp(-log_var2))


def _standard_normal_cdf(x: jax.Array) -> jax.Array:
  return 0.5 * (1.0 + jax.scipy.special.erf(x / np.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x0: jax.Array, mean: jax.Array,
                                        log_scale: jax.Array) -> jax.Array:
  """log P(x0) per element, x0 on the 256-level grid of [-1, 1], under N(mean, exp(log_scale)^2)
  integrated over x0's bin (x0 +- 1/255; the bins of -1 and 1 extend to -inf and +inf)."""
  centred = x0 - mean
  inv_scale = jnp.exp(-log_scale)
  cdf_upper = _standard_normal_cdf(inv_scale * (centred + _BIN_HALF_WIDTH))
  cdf_lower = _standard_normal_cdf(inv_scale * (centred - _BIN_HALF_WIDTH))
  log_cdf_upper = jnp.log(jnp.maximum(cdf_upper, 1e-12))
  log_one_minus_cdf_lower = jnp.log(jnp.maximum(1.0 - cdf_lower, 1e-12))
  log_bin = jnp.log(jnp.maximum(cdf_upper - cdf_lower, 1e-12))
  return jnp.where(x0 < -0.999, log_cdf_upper,
                   jnp.where(x0 > 0.999, log_one_minus_cdf_lower, log_bin))


def vlb_terms(tables: Process, step: jax.Array, *, x0: jax.Array, x_t: jax.Array,
              eps_hat: jax.Array, v: jax.Array) -> jax.Array:
  """L_i per example (B,), in bits per dimension, for steps i >= 1 of shape (B,).

  x_t = sqrt(alpha-bar_i) x0 + sqrt(1 - alpha-bar_i) eps; eps_hat and v are the network's two halves.
  Gradients reach eps_hat here; the hybrid loss stops them.
  """
  gather = lambda table: _bcast(table[step], x_t)  # noqa: E731
  true_mean = gather(tables.posterior_coef_x0) * x0 + gather(tables.posterior_coef_xt) * x_t
  true_log_var = gather(tables.log_beta_tilde_clipped)
  model_mean = gather(tables.recip_sqrt_alpha) * (x_t - gather(tables.mean_coef_eps) * eps_hat)
  model_log_var = interpolated_log_variance(v, gather(tables.log_beta),
                                            gather(tables.log_beta_tilde_clipped))
  axes = tuple(range(1, x_t.ndim))
  kl = jnp.mean(normal_kl(true_mean, true_log_var, model_mean, model_log_var), axis=axes) / _LOG2
  decoder_nll = -jnp.mean(
      discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var), axis=axes) / _LOG2
  return jnp.where(step == 1, decoder_nll, kl)


def hybrid_vlb(tables: Process, step: jax.Array, *, x0: jax.Array, x_t: jax.Array,
               pred: jax.Array, vlb_weight: float) -> jax.Array:
  """lambda T L_i per example (B,): the hybrid loss's L_vlb part, with the mean stopped.

  pred: (B, H, W, 2C) = [eps-hat, v]. Add it to the per-example L_simple of the first half.
  """
  channels = x_t.shape[-1]
  eps_hat = jax.lax.stop_gradient(pred[..., :channels])
  terms = vlb_terms(tables, step, x0=x0, x_t=x_t, eps_hat=eps_hat, v=pred[..., channels:])
  return vlb_weight * tables.timesteps * terms
