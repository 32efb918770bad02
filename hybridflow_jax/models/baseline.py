"""The continuous-only codec that the ablation compares HybridFlow with: a mean-scale hyperprior
(the same g_a, h_a, h_s and entropy models as HybridFlow's continuous stream) whose y_hat is
decoded by a full synthesis transform of the pixel decoder's size, not by the light head.

It answers the paper's first claim: at the same bits, does the hybrid (codebook + a small
continuous stream) beat a codec that spends every bit on continuous features? It is trained by the
`baseline` stage on the same data with the same step budget as the tokenizer, and never exported
with the hybrid codec.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from hybridflow_jax.models.hyperprior import ContinuousStream
from hybridflow_jax.models.vq import PixelDecoder


class ContinuousBaseline(nn.Module):
  channels: int          # N of the hyperprior
  latent_channels: int   # M
  hyper_channels: int    # Nz
  decoder_channels: int  # the pixel decoder's width and levels (its full synthesis transform)
  channel_mult: Sequence[int]
  num_res_blocks: int
  groups: int
  quantization: str = "noise"
  norm: str = "group"    # the synthesis' normalisation (layers.norm_layer): the bridge's

  def setup(self):
    # head_channels=1: the light head is never called here, so it never gets parameters.
    self.stream = ContinuousStream(self.channels, self.latent_channels, self.hyper_channels, 1,
                                   self.quantization)
    self.synthesis = PixelDecoder(self.decoder_channels, self.channel_mult, self.num_res_blocks,
                                  self.groups, norm=self.norm)

  def __call__(self, x: jax.Array, rng: jax.Array | None = None, train: bool = True):
    """x [B, H, W, 3] in [0, 1] -> the stream's outputs (y_hat, likelihoods, ...) and `x_base`."""
    out = self.stream(x, rng, train=train)
    out["x_base"] = self.synthesis(out["y_hat"])
    return out
