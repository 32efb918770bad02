"""A PatchGAN discriminator (Isola et al. 2017, as used by VQGAN) for the hinge GAN losses."""

from __future__ import annotations

import flax.linen as nn
import jax

from hybridflow_jax.models.layers import StridedConv, num_groups


class PatchDiscriminator(nn.Module):
  """[B, H, W, 3] in [0, 1] -> [B, H/2^n, W/2^n, 1] real/fake logits per patch.

  `layers` strided 4x4 convolutions double the width each time (capped at 8x), then a stride-1
  convolution and a 1-channel head; GroupNorm instead of BatchNorm keeps it a pure function.
  """

  channels: int = 64
  layers: int = 3
  groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.leaky_relu(StridedConv(self.channels, (4, 4), name="conv_in")(x * 2 - 1), 0.2)
    for i in range(1, self.layers + 1):
      width = self.channels * min(2 ** i, 8)
      conv = StridedConv if i < self.layers else nn.Conv
      h = conv(width, (4, 4), name=f"conv{i}")(h)
      h = nn.leaky_relu(nn.GroupNorm(num_groups(width, self.groups), name=f"norm{i}")(h), 0.2)
    return nn.Conv(1, (4, 4), name="conv_out")(h)
