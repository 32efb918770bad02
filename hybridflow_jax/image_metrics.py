"""Image quality metrics for evaluation: PSNR of uint8 images, and MS-SSIM (written here, in JAX).

MS-SSIM follows Wang, Simoncelli and Bovik, "Multi-scale structural similarity for image quality
assessment" (2003), with the conventions of `pytorch_msssim`, the implementation CompressAI reports
`ms-ssim-rgb` with, so our numbers are comparable with published ones:

- an 11-tap Gaussian window, sigma 1.5, applied separably with no padding ("valid");
- K1 = 0.01, K2 = 0.03, a data range of 1 (images in [0, 1]);
- five scales with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); between scales a 2x2 average
  pool, stride 2, which pads an odd side with one zero on each end (zeros counted in the mean);
- per channel: the contrast-structure means of the first four scales and the SSIM mean of the last,
  each clipped at 0, raised to its weight and multiplied; the result is the mean over channels.

The shorter side must exceed 160 pixels ((11 - 1) * 2**4), or the coarsest scale has no valid
window; `ms_ssim` raises ValueError then. Everything is differentiable (`jax.grad` works through it).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR-RGB in dB of two uint8 images, exactly, in float64 (inf for identical images); the mean
  squared error is over all pixels and channels, as CompressAI's `psnr-rgb`."""
  mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
  return math.inf if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def min_side() -> int:
  """The smallest shorter side (exclusive) that MS-SSIM accepts."""
  return (WINDOW - 1) * 2 ** (len(WEIGHTS) - 1)


def _gaussian_window() -> np.ndarray:
  coords = np.arange(WINDOW, dtype=np.float64) - WINDOW // 2
  g = np.exp(-(coords**2) / (2 * SIGMA**2))
  return (g / g.sum()).astype(np.float32)


def _blur(x: jax.Array) -> jax.Array:
  """Separable Gaussian filter, valid padding, of [N, H, W] maps (N = images x channels)."""
  g = jnp.asarray(_gaussian_window())
  dims = ("NHWC", "HWIO", "NHWC")
  x = x[..., None]
  x = jax.lax.conv_general_dilated(x, g.reshape(WINDOW, 1, 1, 1), (1, 1), "VALID",
                                   dimension_numbers=dims, precision=jax.lax.Precision.HIGHEST)
  x = jax.lax.conv_general_dilated(x, g.reshape(1, WINDOW, 1, 1), (1, 1), "VALID",
                                   dimension_numbers=dims, precision=jax.lax.Precision.HIGHEST)
  return x[..., 0]


def _ssim_terms(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean SSIM and mean contrast-structure term of each [N, H, W] map pair: ([N], [N])."""
  c1, c2 = K1**2, K2**2
  mu_x, mu_y = _blur(x), _blur(y)
  sxx = _blur(x * x) - mu_x * mu_x
  syy = _blur(y * y) - mu_y * mu_y
  sxy = _blur(x * y) - mu_x * mu_y
  cs = (2 * sxy + c2) / (sxx + syy + c2)
  luminance = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
  return (luminance * cs).mean(axis=(1, 2)), cs.mean(axis=(1, 2))


def _downsample(x: jax.Array) -> jax.Array:
  """2x2 mean, stride 2; an odd side gets one zero of padding on each end (counted in the mean)."""
  ph, pw = x.shape[1] % 2, x.shape[2] % 2
  x = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw)))
  h, w = x.shape[1] // 2, x.shape[2] // 2
  x = x[:, :2 * h, :2 * w]
  return x.reshape(x.shape[0], h, 2, w, 2).mean(axis=(2, 4))


def ms_ssim(x: jax.Array, y: jax.Array) -> jax.Array:
  """MS-SSIM of [B, H, W, C] images in [0, 1], averaged over channels: one value per image, [B]."""
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  if x.shape != y.shape or x.ndim != 4:
    raise ValueError(f"ms_ssim needs two [B, H, W, C] arrays of one shape, got {x.shape} and {y.shape}")
  b, h, w, c = x.shape
  if min(h, w) <= min_side():
    raise ValueError(f"MS-SSIM needs both sides over {min_side()} pixels, got {h}x{w}")
  # [B, H, W, C] -> [B*C, H, W]: every channel is its own map.
  x = x.transpose(0, 3, 1, 2).reshape(b * c, h, w)
  y = y.transpose(0, 3, 1, 2).reshape(b * c, h, w)
  terms = []
  for level in range(len(WEIGHTS)):
    ssim, cs = _ssim_terms(x, y)
    if level < len(WEIGHTS) - 1:
      terms.append(jax.nn.relu(cs))
      x, y = _downsample(x), _downsample(y)
  terms.append(jax.nn.relu(ssim))
  weights = jnp.asarray(WEIGHTS, jnp.float32)[:, None]
  value = jnp.prod(jnp.stack(terms) ** weights, axis=0)  # [B*C]
  return value.reshape(b, c).mean(axis=1)
