"""The bridging correction network ("duplicate decoder").

A copy of the codebook stream's pixel decoder whose every scale also receives the continuous
latent y_hat through zero-initialised fusion layers (`PixelDecoder(fuse=True)`). Initialised from
the trained pixel decoder it starts from that decoder's weights; training then teaches the fusion
layers (and the copied weights) to correct the codebook decoder's deviations with continuous detail.
With the same normalisation as the pixel decoder (`config.model.bridge.norm = "group"`) it starts as
exactly that decoder; the default "layer" normalises per position instead (the same parameters,
other statistics), so that each decoded region depends only on what is sent near it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax

from hybridflow_jax.models.vq import PixelDecoder

BridgeDecoder = PixelDecoder  # constructed with fuse=True; kept as a name for readers


def init_bridge_from_pixel_decoder(bridge_params: Mapping[str, Any],
                                   pixel_params: Mapping[str, Any]) -> dict[str, Any]:
  """Returns `bridge_params` with every weight it shares with the pixel decoder copied from it.

  Both are the param trees of the two decoders (without the 'params' collection key). Fusion
  layers, which the pixel decoder lacks, keep their (zero-output) initialisation. A shared name
  with a different shape means the two were built from different configs: that is an error.
  """
  bridge = flax.traverse_util.flatten_dict(flax.core.unfreeze(bridge_params))
  pixel = flax.traverse_util.flatten_dict(flax.core.unfreeze(pixel_params))
  missing = sorted("/".join(k) for k in pixel if k not in bridge)
  if missing:
    raise ValueError(f"bridge decoder lacks pixel-decoder params: {missing[:3]}")
  for key, value in pixel.items():
    if bridge[key].shape != value.shape:
      raise ValueError(f"shape mismatch at {'/'.join(key)}: {bridge[key].shape} vs {value.shape}")
    bridge[key] = value
  return flax.traverse_util.unflatten_dict(bridge)
