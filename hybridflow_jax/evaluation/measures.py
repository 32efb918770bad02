"""PSNR, MS-SSIM and LPIPS (AlexNet, VGG16) of a uint8 reconstruction, as `hybridflow eval` reports."""

from __future__ import annotations

import math

import jax
import numpy as np

from hybridflow_jax import image_metrics, perceptual


class Measures:
  """Callable: (reference, reconstruction), uint8 [H, W, 3] each -> {metric key: value}.

  One jitted program per image shape; MS-SSIM is NaN for images with a side of 160 px or less.
  """

  def __init__(self):
    self._psnr = image_metrics.psnr_uint8
    self._ms_ssim = jax.jit(image_metrics.ms_ssim)
    self._min_side = image_metrics.min_side()
    # The weights are arguments of the programs, placed on the device once.
    self._lpips = {net: (jax.jit(perceptual.lpips_distance(net)),
                         jax.device_put(perceptual.lpips_weights(net)))
                   for net in ("alexnet", "vgg16")}

  def __call__(self, ref: np.ndarray, rec: np.ndarray) -> dict[str, float]:
    x = ref[None].astype(np.float32) / np.float32(255)
    y = rec[None].astype(np.float32) / np.float32(255)
    small = min(ref.shape[:2]) <= self._min_side
    return {
        "psnr-rgb": self._psnr(ref, rec),
        # MS-SSIM is undefined for sides of 160 px or less (five scales of an 11-px window).
        "ms-ssim-rgb": math.nan if small else float(self._ms_ssim(x, y)[0]),
        "lpips-alex": self._distance("alexnet", x, y),
        "lpips-vgg": self._distance("vgg16", x, y),
    }

  def _distance(self, net: str, x: np.ndarray, y: np.ndarray) -> float:
    fn, weights = self._lpips[net]
    return float(fn(weights, x, y)[0])
