"""Building blocks shared by the convolutional parts of HybridFlow.

All tensors are NHWC. Upsampling is conv + depth_to_space rather than ConvTranspose: on XLA:CPU the
transposed convolution is 3-6x slower for the same output, and the pixel shuffle has no checkerboard
artefacts either. Stride-2 convolutions (`StridedConv`) get their input gradient, which is a
transposed convolution, from the same four-phase arithmetic.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from hybridflow_jax.config import NORMS


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


def norm_layer(kind: str, channels: int, groups: int, name: str) -> nn.Module:
  """The normalisation of a conv block over `channels` features.

  "group": GroupNorm, statistics over the whole image per group of channels (VQGAN's). Every output
    pixel then depends on every input pixel, however far: a change anywhere shifts the whole image.
  "layer": LayerNorm over the channels at each position. Local: an output pixel depends only on its
    receptive field, and the statistics do not change with the image's size. Same parameter names
    and shapes (`scale`, `bias` [channels]) as "group", so weights copy between the two.
  """
  if kind == "group":
    return nn.GroupNorm(num_groups(channels, groups), name=name)
  if kind == "layer":
    return nn.LayerNorm(epsilon=1e-6, name=name)
  raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ResBlock(nn.Module):
  """Pre-activation residual block: norm -> swish -> conv3x3, twice, with a 1x1 skip if needed."""

  features: int
  groups: int = 32
  norm: str = "group"     # `norm_layer`'s kind

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = norm_layer(self.norm, x.shape[-1], self.groups, "norm1")(x)
    h = nn.Conv(self.features, (3, 3), name="conv1")(nn.swish(h))
    h = norm_layer(self.norm, self.features, self.groups, "norm2")(h)
    h = nn.Conv(self.features, (3, 3), name="conv2")(nn.swish(h))
    if x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), name="skip")(x)
    return x + h


_NHWC = ("NHWC", "HWIO", "NHWC")
PHASE_GRAD_MIN_CHANNELS = 8   # StridedConv: inputs this narrow keep XLA's own input gradient


def _phase_taps(size: int, low_pad: int, parity: int) -> tuple[list[int], int]:
  """For the input positions i = 2n + parity of a stride-2 convolution (kernel `size`, `low_pad`
  zeros before the input): the kernel taps k that reach them, ordered by the output offset
  d = (parity + low_pad - k) / 2 they come from (dx[i] = sum_k g[n + d] w[k]), and the first d."""
  ks = [k for k in range(size) if (k - parity - low_pad) % 2 == 0]
  ks.sort(reverse=True)                                           # d increases as k decreases
  return ks, (parity + low_pad - ks[0]) // 2


def _stride2_input_grad(g: jax.Array, kernel: jax.Array, low_pads: tuple[int, int],
                        in_hw: tuple[int, int]) -> jax.Array:
  """The input gradient of a stride-2 NHWC convolution: g [B, M, N, out] -> [B, *in_hw, in], as
  four ordinary convolutions of g, one per output phase (row and column parity), whose outputs
  interleave: the taps the transposed convolution multiplies, none of the zeros XLA inserts
  between g's pixels when it computes the same thing as one dilated convolution."""
  wt = kernel.transpose(0, 1, 3, 2)                               # [kh, kw, out, in]
  rows_out = [-(-n // 2) for n in in_hw]                          # ceil(H / 2), ceil(W / 2)
  phases = []
  for a in (0, 1):
    row = []
    for b in (0, 1):
      taps, pads = [], []
      for axis, parity in ((0, a), (1, b)):
        ks, d0 = _phase_taps(kernel.shape[axis], low_pads[axis], parity)
        taps.append(ks)
        # Window t of output n reads g[n + d0 + t]: pad g by -d0 before it (negative = crop) and
        # enough after it for rows_out outputs.
        pads.append((-d0, rows_out[axis] + len(ks) - 1 + d0 - g.shape[1 + axis]))
      k = wt[jnp.array(taps[0])][:, jnp.array(taps[1])]
      gp = jax.lax.pad(g, jnp.zeros((), g.dtype),
                       ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
      row.append(jax.lax.conv_general_dilated(gp, k, (1, 1), "VALID", dimension_numbers=_NHWC))
    phases.append(jnp.stack(row, axis=3))                         # [B, H', W', 2 (b), in]
  y = jnp.stack(phases, axis=2)                                   # [B, H', 2 (a), W', 2 (b), in]
  bsz, h, _, w, _, c = y.shape
  return y.reshape(bsz, 2 * h, 2 * w, c)[:, :in_hw[0], :in_hw[1]]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _stride2_conv(x: jax.Array, kernel: jax.Array, padding: tuple) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (2, 2), padding, dimension_numbers=_NHWC)


def _stride2_conv_fwd(x, kernel, padding):
  return _stride2_conv(x, kernel, padding), (x, kernel)


def _stride2_conv_bwd(padding, res, g):
  x, kernel = res
  # The kernel gradient as XLA derives it (its own form is fast here); the input gradient by phases.
  _, pull = jax.vjp(lambda k: jax.lax.conv_general_dilated(x, k, (2, 2), padding,
                                                           dimension_numbers=_NHWC), kernel)
  (dk,) = pull(g)
  dx = _stride2_input_grad(g, kernel, (padding[0][0], padding[1][0]), x.shape[1:3])
  return dx, dk


_stride2_conv.defvjp(_stride2_conv_fwd, _stride2_conv_bwd)


def _conv_with_phase_input_grad(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                                precision=None, **kwargs):
  """`lax.conv_general_dilated` as `nn.Conv` calls it; a plain stride-2 NHWC convolution gets
  `_stride2_input_grad` as its input gradient. The forward is XLA's own convolution either way.
  Narrow inputs (an image's 3 channels) keep XLA's gradient: phase convolutions with 3 output
  channels are slower than its dilated one (4x4 kernel, 3 -> 32 at 256 px: 19 ms against 5.5)."""
  plain = (tuple(window_strides) == (2, 2) and lhs.ndim == 4 and feature_group_count == 1
           and lhs.shape[-1] > PHASE_GRAD_MIN_CHANNELS
           and not kwargs and precision is None
           and all(d in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation))
           and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
  if not plain:
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        precision=precision, **kwargs)
  if isinstance(padding, str):                                   # "SAME", "VALID", ...
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (2, 2), padding)
  return _stride2_conv(lhs, rhs, tuple((int(lo), int(hi)) for lo, hi in padding))


def StridedConv(features: int, kernel_size: tuple[int, int], **kwargs) -> nn.Conv:  # noqa: N802
  """`nn.Conv(features, kernel_size, strides=(2, 2), ...)` (the same params, the same forward)
  whose input gradient is computed by phases (`_stride2_input_grad`). XLA:CPU computes that
  gradient as a convolution over g with zeros between its pixels, three quarters of the work
  wasted: for g_a's 48 -> 48 5x5 layer at 128 px, batch 8, 117 ms against 16 ms by phases
  (docs/benchmarks.md). The kernel gradient stays XLA's."""
  return nn.Conv(features, kernel_size, strides=(2, 2),
                 conv_general_dilated=_conv_with_phase_input_grad, **kwargs)


class Downsample(nn.Module):
  """Halves H and W with a strided 3x3 convolution."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return StridedConv(self.features, (3, 3), name="conv")(x)


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
  Narrow outputs (at most `SUBPIXEL_MAX_FEATURES` channels, e.g. the last layer to RGB) are
  computed instead as one 3x3 convolution to 4x the channels, whose kernel holds the same taps
  (zeros where a phase has fewer), and a pixel shuffle: the same sums in 36 multiply-adds, but
  four 3-channel phase convolutions are what XLA:CPU's convolutions run slowest (128 -> 3 at
  256x384: 61 ms as phases, 25 ms as one 12-channel convolution; docs/benchmarks.md).
  kernel: [5, 5, in, out], the transposed convolution's own.
  """

  SUBPIXEL_MAX_FEATURES = 8

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Each output pixel sees ~25/4 taps of every input channel: that is the fan-in.
    init = nn.initializers.variance_scaling(4.0 / 25.0, "fan_in", "truncated_normal")
    kernel = self.param("kernel", init, (5, 5, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    if self.features <= self.SUBPIXEL_MAX_FEATURES:
      return depth_to_space(_subpixel_conv(x, kernel), 2) + bias
    # The transposed convolution is the input gradient of the stride-2 convolution whose kernel is
    # this one with in and out swapped (padding 2 before): the same four phases.
    out_hw = (2 * x.shape[1], 2 * x.shape[2])
    return _stride2_input_grad(x, kernel.transpose(0, 1, 3, 2), (2, 2), out_hw) + bias


def _subpixel_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [B, H, W, in], a transposed 5x5 kernel [5, 5, in, out] -> [B, H, W, 4 out], the four output
  phases (row parity, column parity, channel) of the transposed convolution, as one 3x3 convolution
  (`depth_to_space(., 2)` interleaves them). Even output rows take kernel rows 4, 2, 0 at input
  offsets -1, 0, +1; odd rows take rows 3, 1 at offsets 0, +1 (columns alike: `_phase_taps`)."""
  taps = {}                                                       # parity -> (3x3 position, 5x5 row)
  for parity in (0, 1):
    ks, d0 = _phase_taps(5, 2, parity)
    taps[parity] = [(d0 + t + 1, k) for t, k in enumerate(ks)]
  cin, cout = kernel.shape[2:]
  full = jnp.zeros((3, 3, cin, 2, 2, cout), kernel.dtype)
  for a in (0, 1):
    for b in (0, 1):
      for i, ki in taps[a]:
        for j, kj in taps[b]:
          full = full.at[i, j, :, a, b, :].set(kernel[ki, kj])
  return jax.lax.conv_general_dilated(x, full.reshape(3, 3, cin, 4 * cout), (1, 1),
                                      ((1, 1), (1, 1)), dimension_numbers=_NHWC)


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
