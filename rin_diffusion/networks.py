"""The denoiser a config asks for: RIN (model.py) or CDM's U-Net (unet.py).

Both have one call contract, (x, gamma, class_onehot, hidden, extra_gammas, *, train) ->
(prediction, hidden), so the trainer, the samplers and the cascade take either. Only the RIN has
self-conditioning latents: a U-Net's hidden is None.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import ml_collections

from rin_diffusion import model as model_lib
from rin_diffusion import unet as unet_lib


def from_config(config: ml_collections.ConfigDict) -> nn.Module:
  """The network of `config` (validated; raises ValueError naming the field)."""
  if config.model.architecture == "unet":
    # The output width is a fact of the diffusion recipe, so it has one source: config.diffusion.
    unet_fields = dict(config.unet.to_dict(),
                       learned_variance=bool(config.diffusion.learned_variance))
    return unet_lib.unet_from_config(config.model.to_dict(), unet_fields)
  if config.model.architecture != "rin":
    raise ValueError(f"config.model.architecture={config.model.architecture!r}; allowed: 'rin', "
                     "'unet'.")
  return model_lib.rin_from_config(config.model)


def zero_hidden(config: ml_collections.ConfigDict, batch_size: int) -> jax.Array | None:
  """The "no previous latents" self-conditioning state (None for a U-Net)."""
  if config.model.architecture == "unet":
    return None
  return model_lib.zero_hidden(config.model, batch_size)
