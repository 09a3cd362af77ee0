"""Analytic model FLOPs of the RIN: the matmuls of model.py, counted by hand.

The convention of MFU accounting (PaLM appendix B, MaxText): a multiply-add is 2 FLOPs, only
matrix products count (projections, convolutions, attention scores and their weighted sums), and
recomputation (remat, gradient accumulation's checkpointed microbatches) does not: these are the
FLOPs the model needs, not the ones a particular compilation spends. Layer norms, softmax,
activations and the optimizer are left out; XLA's cost analysis counts them, so the two agree to a
few per cent on realistic widths (benchmarks/train_step.py prints both).

The backward pass costs two products per forward product (gradient of the input and of the
weight), except where the input needs no gradient: the patch-embedding convolution (its input is
the noisy image), the first time-embedding layer (its input is a sinusoid of gamma) and the class
projection (its input is a one-hot). Self-conditioning's first pass runs forward only, and its
prediction is unused, so XLA removes the last write unit and the output projection from it; its
patch embedding and time (and extra-level) embeddings are those of the second pass, computed once.
With these rules the count equals the products XLA compiles into a train step exactly
(tests/test_dot_ceiling.py). Not modelled: with tape_conv or tape_self_attn, the first block's
interface mixing also sees the same input in both passes, so that part of pass 1 is counted but
computed once (a small overcount).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from rin_diffusion import model as model_lib


def xla_flops(compiled: Any) -> float:
  """XLA's FLOP count of a compiled program (`jax.stages.Compiled`); NaN when it reports none.

  Older jax versions return a one-element list of dicts. A loop body (lax.scan, lax.map) may be
  counted once, whatever its trip count.
  """
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", float("nan")))


def _dense(rows: int, fan_in: int, fan_out: int) -> float:
  return 2.0 * rows * fan_in * fan_out


def _attention(q_rows: int, q_dim: int, kv_rows: int, kv_dim: int, inner: int,
               out_dim: int) -> float:
  """Projections q, k, v and out, scores q k^T and the weighted sum of v."""
  projections = (_dense(q_rows, q_dim, inner) + 2 * _dense(kv_rows, kv_dim, inner)
                 + _dense(q_rows, inner, out_dim))
  return projections + 2 * 2.0 * q_rows * kv_rows * inner


def _mlp(rows: int, dim: int, ratio: int) -> float:
  return 2 * _dense(rows, dim, dim * ratio)


def _check_rin(config_model: Mapping[str, Any]) -> None:
  if config_model.get("architecture", "rin") != "rin":
    raise NotImplementedError(
        f"analytic FLOPs cover the RIN only, not config.model.architecture="
        f"{config_model['architecture']!r}; use XLA's cost analysis for it.")


def forward_parts(model_config: Mapping[str, Any]) -> dict[str, float]:
  """Forward matmul FLOPs per image, by part of the network.

  Keys: 'stem' (patch embedding), 'embeddings' (time, class and extra-token embeddings, first
  layers apart as 'embeddings_first'), 'self_cond' (the MLP on the previous latents), 'read',
  'compute', 'write' (all blocks), 'last_write' (the last block's write unit, also in 'write'),
  'output' (the projection back to patches).
  """
  _check_rin(model_config)
  mc = model_config
  patch, size = int(mc["patch_size"]), int(mc["image_size"])
  tokens = (size // patch) ** 2
  tape_dim, latent_dim = int(mc["tape_dim"]), int(mc["latent_dim"])
  latents = int(mc["latent_slots"]) + int(mc["num_extra_tokens"])
  in_channels = int(mc["channels"]) + int(mc["extra_in_channels"])
  inner = min(tape_dim, latent_dim)
  # Overlapping stem and output kernels: only the taps that land on the image (or token grid)
  # count, as in XLA; per axis the first and last positions lose what hangs over the border.
  side = size // patch
  overlap = int(mc.get("stem_overlap", 0))
  stem_taps = (side * (patch + 2 * overlap) - 2 * overlap) ** 2
  reach = int(mc.get("out_kernel", 1)) // 2
  out_taps = (side * (2 * reach + 1) - reach * (reach + 1)) ** 2
  latent_ratio, tape_ratio = int(mc["latent_mlp_ratio"]), int(mc["tape_mlp_ratio"])
  embeddings_per_scalar = latent_dim  # ScalarEmbedding: D/4 -> D -> D.
  num_scalars = 1 + int(mc["num_extra_tokens"])
  parts = {
      "stem": _dense(1, stem_taps * in_channels, tape_dim),
      "embeddings_first": (num_scalars * _dense(1, embeddings_per_scalar // 4, latent_dim)
                           + _dense(1, int(mc["num_classes"]), latent_dim)),
      "embeddings": num_scalars * _dense(1, latent_dim, latent_dim),
      "self_cond": _mlp(latents, latent_dim, latent_ratio),
      "read": 0.0, "compute": 0.0, "write": 0.0, "last_write": 0.0,
      "output": _dense(out_taps, tape_dim, patch * patch * int(mc["channels"])),
  }
  read = (_attention(latents, latent_dim, tokens, tape_dim, inner, latent_dim)
          + _mlp(latents, latent_dim, latent_ratio))
  layer = (_attention(latents, latent_dim, latents, latent_dim, latent_dim, latent_dim)
           + _mlp(latents, latent_dim, latent_ratio))
  write = (_attention(tokens, tape_dim, latents, latent_dim, inner, tape_dim)
           + _mlp(tokens, tape_dim, tape_ratio))
  # The interface's own mixing runs at the start of every block, so it is counted with the read.
  if mc.get("tape_conv", False):
    read += 2.0 * tokens * 9 * tape_dim  # Depthwise 3x3.
  if mc.get("tape_self_attn", False):
    read += _attention(tokens, tape_dim, tokens, tape_dim, tape_dim, tape_dim)
  blocks = model_lib.parse_blocks(mc["blocks"])
  for num_layers in blocks:
    parts["read"] += read
    if num_layers:  # A read-only block has no compute and no write.
      parts["compute"] += num_layers * layer
      parts["write"] += write
  parts["last_write"] = write if blocks and blocks[-1] else 0.0
  return parts


def forward_flops_per_image(model_config: Mapping[str, Any]) -> float:
  """Matmul FLOPs of one RIN forward pass, per image."""
  parts = forward_parts(model_config)
  return sum(v for k, v in parts.items() if k != "last_write")


def train_flops_per_image(config: ml_collections.ConfigDict) -> float:
  """Model FLOPs of one training example: self-conditioning's forward pass, then forward+backward."""
  parts = forward_parts(config.model)
  forward = forward_flops_per_image(config.model)
  no_input_gradient = parts["stem"] + parts["embeddings_first"]
  backward = 2 * forward - no_input_gradient
  first_pass = 0.0
  if float(config.diffusion.self_cond_rate) > 0:
    # Inputs pass 1 shares with pass 2 (the noisy image, gamma, extra levels) are embedded once:
    # XLA merges the two computations. The class projection is not shared: each pass drops
    # labels with its own key.
    class_projection = _dense(1, int(config.model.num_classes), int(config.model.latent_dim))
    shared = parts["stem"] + parts["embeddings_first"] - class_projection + parts["embeddings"]
    first_pass = forward - parts["last_write"] - parts["output"] - shared
  return first_pass + forward + backward


def sample_step_flops_per_image(config: ml_collections.ConfigDict,
                                guidance: float | None = None) -> float:
  """One denoiser evaluation per image; classifier-free guidance runs the network twice."""
  guidance = float(config.sampling.guidance if guidance is None else guidance)
  evaluations = 2 if guidance != 0 and int(config.model.num_classes) > 0 else 1
  return evaluations * forward_flops_per_image(config.model)

