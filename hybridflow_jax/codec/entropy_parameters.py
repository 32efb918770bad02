"""The entropy parameters in integer arithmetic: z_hat -> the mean and the Gaussian table row of
every y symbol, bit for bit the same on every machine.

The encoder and the decoder must agree exactly on the table row of each y residual: one row off
and the range decoder reads garbage from that symbol on. A float h_s (the hyper-synthesis) does
not promise that across CPUs, GPUs or XLA builds, so `hybridflow export` freezes the trained float
h_s into integer arithmetic (after Ballé, Johnston and Minnen, "Integer networks for data
compression with latent-variable models", ICLR 2019; post-training, calibrated, no fine-tuning):

    a0 = clip(z_hat, -Z_LIMIT, Z_LIMIT)                        (int)
    for the two up-sampling layers l = 0, 1 (conv3x3 to 4C channels, depth_to_space, GELU):
      acc = conv3x3(a_l, W_l) + b_l                          int32, exact (bounded, see below)
      q   = clip(rshift_round(acc, r_l[c]), +-(PRE_MAX >> s_l[c])) << s_l[c]   per output channel c
      a_{l+1} = depth_to_space(GELU_l[q + PRE_MAX])           a 4095-entry integer table
    acc = conv3x3(a_2, W_2) + b_2                              the output layer, 2M channels
    mean_int = the same requantisation of acc[:M], limit MEAN_LIMIT: the mean, 2**-MEAN_FRAC_BITS units
    v        = the same of acc[M:], limit SCALE_LIMIT: softplus's input, 2**-SCALE_FRAC_BITS units
    row      = #{i : v > T_i}                                  T: integer thresholds of the table

`rshift_round(x, r) = (x + (2**r >> 1)) >> r` (arithmetic shift: rounds half up). Convolutions are
3x3 with one zero of padding (as the float layers), written as 9 shifted copies of the input and
one integer matrix product. Weights are integers of at most WEIGHT_BITS bits with one power-of-two
scale per output channel chosen so that the requantisation to the next layer's grid is a pure shift;
the layer's weight bits drop below WEIGHT_BITS only if that is needed to keep every accumulator
within int32 for every input the clip allows (checked at export: |acc| <= max|a| * sum|W[:, c]| +
|b[c]|). The GELU tables map a pre-activation grid of R_l / PRE_MAX (R_l: 1.25x the largest
pre-activation seen when calibrating) to activations of at most ACT_MAX. The thresholds T_i are the
softplus-inverse of the geometric midpoints of neighbouring table scales, so the row is the table
scale nearest in log space to softplus(v), as the float path chose it.

Calibration (export time only, float64): h_s evaluated on z_hat of the training tiles export
already reads for the index prior (`train.export.measure_tiles`); a pre-activation beyond the
calibrated range saturates. (The model's own factorized prior is no substitute: in a briefly
trained model it is far wider than the z_hat images give, and the grids came out 60x too coarse.)
The arrays (`IntegerEntropyModel`) live in
the bundle's tables.npz and are fingerprinted; at run time there is no float anywhere until the
mean is turned into float32 on the host (`mean_int * 2**-MEAN_FRAC_BITS`, exact).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Z_LIMIT = 255                 # h_s reads z_hat clipped to [-255, 255] (the coded symbol is not)
PRE_MAX = 2047                # pre-activations index the GELU tables: [-2047, 2047]
ACT_MAX = 2047                # activations are integers in [-2047, 2047] (12-bit)
WEIGHT_BITS = 12              # weights are signed integers of at most this many bits
MIN_WEIGHT_BITS = 6
MEAN_FRAC_BITS = 10           # the mean's grid: 1/1024 of a quantisation step
SCALE_FRAC_BITS = 10          # softplus's input grid
MEAN_LIMIT = 2**24 - 1        # exact in float32
SCALE_LIMIT = 2**24 - 1
ACC_LIMIT = 2**31 - 1
CALIBRATION_MARGIN = 1.25
MIN_PRE_RANGE = 1.0           # GELU's input grid is never coarser than needed for |x| <= 1
HIDDEN_LAYERS = ("up0", "up1")  # HyperSynthesis: Upsample, GELU, Upsample, GELU, conv_out
PREFIX = "hs_"


class IntegerModelError(ValueError):
  """A float h_s that cannot be frozen into int32 arithmetic (no weight width keeps it exact)."""


def gelu(x: np.ndarray) -> np.ndarray:
  """flax's default GELU (the tanh approximation), in float64."""
  x = np.asarray(x, np.float64)
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


@dataclasses.dataclass(frozen=True, eq=False)
class IntegerLayer:
  """One 3x3 convolution of the integer h_s.

  kernel: int32 [9 * Cin, Cout], rows in (dy, dx, input channel) order; bias: int32 [Cout];
  shift: int32 [Cout], the requantisation per output channel (negative: rounding right shift by
  -shift; positive: left shift); lut: int32 [2 * PRE_MAX + 1], the GELU table of a hidden layer
  (None for the output layer).
  """

  kernel: np.ndarray
  bias: np.ndarray
  shift: np.ndarray
  lut: np.ndarray | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class IntegerEntropyModel:
  """The frozen integer h_s (see the module docstring): hidden layers, the output layer and the
  scale-row thresholds int32 [L - 1] of a Gaussian table with L rows."""

  layers: tuple[IntegerLayer, ...]
  thresholds: np.ndarray

  @property
  def latent_channels(self) -> int:
    return self.layers[-1].kernel.shape[1] // 2

  def to_arrays(self, prefix: str = PREFIX) -> dict[str, np.ndarray]:
    out = {f"{prefix}thresholds": np.asarray(self.thresholds, np.int32)}
    for i, layer in enumerate(self.layers):
      for name in ("kernel", "bias", "shift", "lut"):
        value = getattr(layer, name)
        if value is not None:
          out[f"{prefix}{i}_{name}"] = np.asarray(value, np.int32)
    return out

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = PREFIX
                  ) -> IntegerEntropyModel:
    """Inverse of `to_arrays`; raises ValueError on missing or malformed arrays."""
    layers = []
    try:
      for i in range(len(HIDDEN_LAYERS) + 1):
        get = lambda name, i=i: np.asarray(arrays[f"{prefix}{i}_{name}"])  # noqa: E731
        lut = get("lut") if i < len(HIDDEN_LAYERS) else None
        layers.append(IntegerLayer(get("kernel"), get("bias"), get("shift"), lut))
      thresholds = np.asarray(arrays[f"{prefix}thresholds"])
    except KeyError as e:
      raise ValueError(f"integer entropy-model array {e.args[0]!r} is missing") from None
    model = cls(tuple(layers), thresholds)
    model.check()
    return model

  def check(self) -> None:
    """Raises ValueError unless the arrays fit together (dtypes, shapes, table sizes)."""
    arrays = [self.thresholds] + [a for layer in self.layers
                                  for a in (layer.kernel, layer.bias, layer.shift, layer.lut)
                                  if a is not None]
    if any(a.dtype != np.int32 for a in arrays):
      raise ValueError("integer entropy-model arrays must be int32")
    cin = None
    for i, layer in enumerate(self.layers):
      k = layer.kernel
      if k.ndim != 2 or k.shape[0] % 9 or layer.bias.shape != (k.shape[1],) \
          or layer.shift.shape != (k.shape[1],):
        raise ValueError(f"integer entropy-model layer {i}: inconsistent shapes")
      if cin is not None and k.shape[0] != 9 * cin:
        raise ValueError(f"integer entropy-model layer {i}: expects {k.shape[0] // 9} input "
                         f"channels, gets {cin}")
      hidden = i < len(self.layers) - 1
      if hidden and (layer.lut is None or layer.lut.shape != (2 * PRE_MAX + 1,)
                     or k.shape[1] % 4):
        raise ValueError(f"integer entropy-model layer {i}: bad GELU table or channel count")
      cin = k.shape[1] // 4 if hidden else None
    if self.layers[-1].kernel.shape[1] % 2 or self.thresholds.ndim != 1 \
        or np.any(np.diff(self.thresholds) < 0):
      raise ValueError("integer entropy-model output layer or thresholds malformed")

  def digest(self) -> bytes:
    """SHA-256 of the arrays: feeds the bundle's fingerprint."""
    h = hashlib.sha256()
    for name, a in sorted(self.to_arrays().items()):
      h.update(f"{name}:{a.shape}".encode())
      h.update(np.ascontiguousarray(a, dtype="<i4").tobytes())
    return h.digest()


# ------------------------------------------------------------------------------------------------
# Run time: the integer program (JAX, int32), the one path compress and decompress both use.
# (jax is imported inside the functions: the bundle reader imports this module, and the command
# line's quick checks of a file use the bundle reader without starting jax.)

def _shift_parts(shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(right shift, rounding addend, left shift), int32 each, of signed per-channel shifts."""
  right = np.maximum(-shift, 0).astype(np.int32)
  left = np.maximum(shift, 0).astype(np.int32)
  return right, ((np.int32(1) << right) >> 1).astype(np.int32), left


def _conv3x3(a, kernel, bias, float64: bool = False):
  """int32 [B, H, W, C] -> int32 [B, H, W, Cout]: zero-padded 3x3 convolution, exact.

  float64: the matrix product in float64 (needs jax's x64 mode), whose result is the same
  integers: every product |a * w| and every partial sum, in any order, is at most the
  accumulator bound `freeze` checks (< 2**31), far inside float64's exact integers (2**53), so no
  rounding happens anywhere. XLA:CPU runs it about 2x faster than its int32 product.
  """
  import jax
  import jax.numpy as jnp
  h, w = a.shape[1:3]
  p = jnp.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))
  cols = jnp.concatenate([p[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], -1)
  if float64:
    acc = jax.lax.dot_general(cols.astype(jnp.float64), jnp.asarray(kernel, jnp.float64),
                              (((3,), (0,)), ((), ()))).astype(jnp.int32)
  else:
    acc = jax.lax.dot_general(cols, kernel, (((3,), (0,)), ((), ())),
                              preferred_element_type=jnp.int32)
  return acc + bias


def _requantize(acc, shift: np.ndarray, limit: int):
  """clip(rshift_round(acc, r), +-(limit >> s)) << s per channel: within +-limit, no overflow."""
  import jax.numpy as jnp
  right, add, left = _shift_parts(shift)
  bound = jnp.asarray(np.int32(limit) >> left)
  q = jnp.clip(jnp.right_shift(acc + jnp.asarray(add), jnp.asarray(right)), -bound, bound)
  return jnp.left_shift(q, jnp.asarray(left))


def _depth_to_space(x):
  """[B, H, W, 4C] -> [B, 2H, 2W, C], the layout of `models.layers.depth_to_space` (numpy or jax
  arrays)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, 2, 2, c // 4).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, 2 * h, 2 * w, c // 4)


def integer_forward(model: IntegerEntropyModel, z_hat, float64_products: bool = False):
  """z_hat int [B, hz, wz, Nz] -> (mean_int int32 [B, 4hz, 4wz, M] in units of
  2**-MEAN_FRAC_BITS, table row int32 [B, 4hz, 4wz, M]). Traceable; int32 throughout, except
  with float64_products (x64 mode only): the convolutions' products and sums in float64, exact
  (`_conv3x3`), the same integers."""
  import jax.numpy as jnp
  a = jnp.clip(jnp.asarray(z_hat).astype(jnp.int32), -Z_LIMIT, Z_LIMIT)
  for layer in model.layers[:-1]:
    q = _requantize(_conv3x3(a, jnp.asarray(layer.kernel), jnp.asarray(layer.bias),
                             float64_products), layer.shift, PRE_MAX)
    a = _depth_to_space(jnp.take(jnp.asarray(layer.lut), q + PRE_MAX, mode="clip"))
  out = model.layers[-1]
  acc = _conv3x3(a, jnp.asarray(out.kernel), jnp.asarray(out.bias), float64_products)
  m = model.latent_channels
  mean = _requantize(acc[..., :m], out.shift[:m], MEAN_LIMIT)
  v = _requantize(acc[..., m:], out.shift[m:], SCALE_LIMIT)
  row = jnp.searchsorted(jnp.asarray(model.thresholds), v, side="left")
  return mean, row.astype(jnp.int32)


def mean_to_float(mean_int: np.ndarray) -> np.ndarray:
  """float32 mean of `integer_forward`'s integer mean (exact: |mean_int| < 2**24)."""
  return np.asarray(mean_int, np.int32).astype(np.float32) * np.float32(2.0**-MEAN_FRAC_BITS)


def on_host_cpu(model: IntegerEntropyModel
                ) -> Callable[[np.ndarray, tuple[int, int]], tuple[np.ndarray, np.ndarray]]:
  """The codec's entropy-parameter function: (z_hat int [hz, wz, Nz], (h, w)) -> (mean float32
  [h, w, M], table row int32 [h, w, M]). Integer arithmetic, so any device would give the same
  result; it runs on the host CPU because h_s is tiny and its input and output live there. Its
  convolutions multiply in float64 (exact, `_conv3x3`), in x64 mode for this call only."""
  import jax
  cpu = jax.devices("cpu")[0]
  program = jax.jit(functools.partial(integer_forward, model, float64_products=True))

  def entropy_parameters(z_hat: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    z = np.clip(np.asarray(z_hat), -Z_LIMIT, Z_LIMIT).astype(np.int32)[None]
    with jax.enable_x64(True):
      mean, row = jax.device_get(program(jax.device_put(z, cpu)))
    h, w = hw
    return mean_to_float(mean[0, :h, :w]), np.asarray(row[0, :h, :w], np.int32)

  return entropy_parameters


# ------------------------------------------------------------------------------------------------
# Export time: freezing the float h_s (numpy float64).

def _float_kernel(conv: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  k = np.asarray(conv["kernel"], np.float64)
  if k.shape[:2] != (3, 3):
    raise IntegerModelError(f"h_s convolutions must be 3x3, got {k.shape[:2]}")
  return k.reshape(9 * k.shape[2], k.shape[3]), np.asarray(conv["bias"], np.float64)


def _float_conv(a: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
  h, w = a.shape[1:3]
  p = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))
  cols = np.concatenate([p[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], -1)
  return cols @ kernel + bias


def float_layers(hs_params: Mapping[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
  """The float h_s params (`params["continuous"]["hyper_synthesis"]`) as (kernel [9Cin, Cout],
  bias [Cout]) float64 per layer, in order."""
  return [_float_kernel(hs_params[name]["conv"]) for name in HIDDEN_LAYERS] + \
      [_float_kernel(hs_params["conv_out"])]


def float_forward(hs_params: Mapping[str, Any], z_hat: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
  """The float h_s in float64: (mean, scale, [pre-activations of each hidden layer])."""
  layers = float_layers(hs_params)
  a = np.clip(np.asarray(z_hat, np.float64), -Z_LIMIT, Z_LIMIT)
  pre = []
  for kernel, bias in layers[:-1]:
    x = _float_conv(a, kernel, bias)
    pre.append(x)
    a = _depth_to_space(gelu(x))
  out = _float_conv(a, *layers[-1])
  m = out.shape[-1] // 2
  return out[..., :m], np.logaddexp(0.0, out[..., m:]), pre


def _quantize_layer(kernel: np.ndarray, bias: np.ndarray, s_in: float, s_out: np.ndarray,
                    a_max: int, out_limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(kernel int32, bias int32, shift int32) for real kernel and bias, inputs on the grid s_in
  (|a| <= a_max) and outputs on the per-channel grid s_out: the widest weights (<= WEIGHT_BITS)
  whose accumulators provably stay within int32."""
  w_max_abs = np.max(np.abs(kernel), axis=0)
  for bits in range(WEIGHT_BITS, MIN_WEIGHT_BITS - 1, -1):
    w_limit = 2 ** (bits - 1) - 1
    # Weight grid s_w = s_out * 2**shift / s_in, the finest power-of-two multiple that holds
    # max|W| within w_limit; the accumulator is then on the grid s_out * 2**shift.
    with np.errstate(divide="ignore"):
      need = np.log2(np.maximum(w_max_abs, 1e-30) * s_in / (w_limit * s_out))
    # (at most a 30-bit right shift: finer than that only matters for an all-zero channel)
    shift = np.maximum(np.ceil(need), -30).astype(np.int64)
    unit = s_out * np.exp2(shift.astype(np.float64))
    w_int = np.clip(np.round(kernel * s_in / unit), -w_limit, w_limit).astype(np.int64)
    b_int = np.round(bias / unit)
    if np.any(np.abs(b_int) > ACC_LIMIT):
      continue
    b_int = b_int.astype(np.int64)
    bound = a_max * np.abs(w_int).sum(axis=0) + np.abs(b_int)
    right = np.maximum(-shift, 0)
    # (The left shift needs no bound: the value is clipped to +-(out_limit >> left) before it.)
    if np.all(bound + ((1 << right) >> 1) <= ACC_LIMIT) and np.all(right < 31) \
        and np.all(out_limit >> np.maximum(shift, 0) >= 1):
      return w_int.astype(np.int32), b_int.astype(np.int32), shift.astype(np.int32)
  raise IntegerModelError(f"h_s layer cannot be frozen into int32 arithmetic with "
                          f">= {MIN_WEIGHT_BITS}-bit weights")


def freeze(hs_params: Mapping[str, Any], scales: np.ndarray, z_calibration: np.ndarray
           ) -> tuple[IntegerEntropyModel, dict[str, Any]]:
  """The integer h_s of trained float params, for a Gaussian table with row scales `scales`,
  calibrated on z_hat [T, hz, wz, Nz] (of training tiles). Returns (model, statistics)."""
  layers = float_layers(hs_params)
  z_calibration = np.asarray(z_calibration)
  if z_calibration.ndim != 4 or not z_calibration.size:
    raise ValueError(f"calibration z_hat must be [T, hz, wz, Nz], got {z_calibration.shape}")
  _, _, pre = float_forward(hs_params, z_calibration)
  frozen, stats = [], {"weight_bits": [], "pre_activation_range": []}
  s_in, a_max = 1.0, Z_LIMIT
  for (kernel, bias), x in zip(layers[:-1], pre):
    # An untrained model's z_hat may be all zeros: the floor keeps the grid sensible.
    r = max(float(np.max(np.abs(x))) * CALIBRATION_MARGIN, MIN_PRE_RANGE)
    s_pre = r / PRE_MAX
    s_act = float(gelu(np.array(r))) / ACT_MAX
    k, b, shift = _quantize_layer(kernel, bias, s_in, np.full(kernel.shape[1], s_pre), a_max,
                                  PRE_MAX)
    q = np.arange(-PRE_MAX, PRE_MAX + 1)
    lut = np.clip(np.round(gelu(q * s_pre) / s_act), -ACT_MAX, ACT_MAX).astype(np.int32)
    frozen.append(IntegerLayer(k, b, shift, lut))
    stats["pre_activation_range"].append(r)
    stats["weight_bits"].append(_bits(k))
    s_in, a_max = s_act, int(np.max(np.abs(lut)))
  kernel, bias = layers[-1]
  m = kernel.shape[1] // 2
  s_out = np.concatenate([np.full(m, 2.0**-MEAN_FRAC_BITS), np.full(m, 2.0**-SCALE_FRAC_BITS)])
  k, b, shift = _quantize_layer(kernel, bias, s_in, s_out, a_max, max(MEAN_LIMIT, SCALE_LIMIT))
  frozen.append(IntegerLayer(k, b, shift))
  stats["weight_bits"].append(_bits(k))
  model = IntegerEntropyModel(tuple(frozen), scale_thresholds(scales))
  model.check()
  return model, stats


def _bits(kernel: np.ndarray) -> int:
  return int(np.max(np.abs(kernel))).bit_length() + 1


def scale_thresholds(scales: np.ndarray) -> np.ndarray:
  """int32 [L - 1]: row = #{i : v > T_i} for softplus's input v on the 2**-SCALE_FRAC_BITS grid
  picks the table scale nearest to softplus(v) in log space (ties to the smaller scale)."""
  log_s = np.log(np.asarray(scales, np.float64))
  mid = np.exp(0.5 * (log_s[:-1] + log_s[1:]))        # geometric midpoints
  v = np.where(mid > 30, mid, np.log(np.expm1(np.minimum(mid, 30))))  # softplus^-1
  # softplus(v) > mid  <=>  v > softplus^-1(mid); on the integer grid: q > floor(v * 2**F).
  t = np.floor(v * 2.0**SCALE_FRAC_BITS)
  return np.clip(t, -SCALE_LIMIT, SCALE_LIMIT).astype(np.int32)
