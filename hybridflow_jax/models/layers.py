"""Building blocks shared by the convolutional parts of HybridFlow.

All tensors are NHWC. Upsampling is conv + depth_to_space rather than ConvTranspose: on XLA:CPU the
transposed convolution is 3-6x slower for the same output, and the pixel shuffle has no checkerboard
artefacts either.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def num_groups(channels: int, max_groups: int) -> int:
  """Largest group count <= max_groups that divides `channels` (GroupNorm needs a divisor)."""
  return math.gcd(channels, max_groups)


def depth_to_space(x: jax.Array, block: int) -> jax.Array:
  """[B, H, W, C*b*b] -> [B, H*b, W*b, C] (the pixel shuffle)."""
  b, h, w, c = x.shape
  oc = c // (block * block)
  x = x.reshape(b, h, w, block, block, oc)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * block, w * block, oc)


def resize_to(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """Bilinear resize of [B, h, w, C] to [B, *hw, C] (used to bring latents to a decoder's scale)."""
  if x.shape[1:3] == tuple(hw):
    return x
  return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), method="bilinear")


class ResBlock(nn.Module):
  """Pre-activation residual block: GroupNorm -> swish -> conv3x3, twice, with a 1x1 skip if needed."""

  features: int
  groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.GroupNorm(num_groups(x.shape[-1], self.groups), name="norm1")(x)
    h = nn.Conv(self.features, (3, 3), name="conv1")(nn.swish(h))
    h = nn.GroupNorm(num_groups(self.features, self.groups), name="norm2")(h)
    h = nn.Conv(self.features, (3, 3), name="conv2")(nn.swish(h))
    if x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), name="skip")(x)
    return x + h


class Downsample(nn.Module):
  """Halves H and W with a strided 3x3 convolution."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Conv(self.features, (3, 3), strides=(2, 2), name="conv")(x)


class Upsample(nn.Module):
  """Doubles H and W: conv3x3 to 4x the channels, then depth_to_space."""

  features: int
  kernel: int = 3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features * 4, (self.kernel, self.kernel), name="conv")(x)
    return depth_to_space(x, 2)


class TransposedConv5x5(nn.Module):
  """Doubles H and W exactly as a 5x5 transposed convolution of stride 2 does (CompressAI's
  `deconv`: padding 2, output padding 1), without ConvTranspose.

  out[2m + a, 2n + b] = sum over taps of x[m + di, n + dj] * kernel[ki, kj], where the even output
  rows use kernel rows 4, 2, 0 against input rows m-1, m, m+1 and the odd ones rows 3, 1 against
  m, m+1 (the same for columns). So the layer is four ordinary convolutions of the input, 3x3, 3x2,
  2x3 and 2x2, whose outputs interleave: 25 multiply-adds per input pixel and channel pair, as the
  transposed convolution does, against `Upsample`'s 36 (conv3x3 to 4x the channels).
  kernel: [5, 5, in, out], the transposed convolution's own.
  """

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Each output pixel sees ~25/4 taps of every input channel: that is the fan-in.
    init = nn.initializers.variance_scaling(4.0 / 25.0, "fan_in", "truncated_normal")
    kernel = self.param("kernel", init, (5, 5, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    taps = {0: slice(4, None, -2), 1: slice(3, None, -2)}        # rows 4, 2, 0 / rows 3, 1
    pads = {0: (1, 1), 1: (0, 1)}
    rows = []
    for a in (0, 1):
      row = [jax.lax.conv_general_dilated(
          x, kernel[taps[a], taps[b]], (1, 1), (pads[a], pads[b]),
          dimension_numbers=("NHWC", "HWIO", "NHWC")) for b in (0, 1)]
      rows.append(jnp.stack(row, axis=3))                          # [B, H, W, 2 (b), C]
    y = jnp.stack(rows, axis=2)                                     # [B, H, 2 (a), W, 2 (b), C]
    bsz, h, _, w, _, c = y.shape
    return y.reshape(bsz, 2 * h, 2 * w, c) + bias


class ZeroFusion(nn.Module):
  """Injects a conditioning map into features: cond -> conv3x3 -> swish -> zero-initialised conv3x3.

  The last convolution starts at zero, so before training the block adds exactly nothing and the
  host network computes what it computed without it (the bridging decoder relies on this).
  """

  features: int
  hidden: int

  @nn.compact
  def __call__(self, h: jax.Array, cond: jax.Array) -> jax.Array:
    c = resize_to(cond, h.shape[1:3])
    c = nn.swish(nn.Conv(self.hidden, (3, 3), name="proj")(c))
    c = nn.Conv(self.features, (3, 3), kernel_init=nn.initializers.zeros, name="out")(c)
    return h + c
