"""What the sender accepts as an image: conversion to 8-bit RGB, the size limits, and the padding
to whole tokens."""

from __future__ import annotations

import numpy as np

from hybridflow_jax import imageio
from hybridflow_jax.codec import container

# Images above this many pixels are refused (2**26: 8192 x 8192, 67 MP; raise it with
# `max_pixels`). Large images are coded in windows (`networks.analyze_windows` and
# `render_windows`), but what is kept for the whole image still grows with it: 50-70 bytes a
# pixel each way for `small` (the image, the features at stride 2 and 4, the transformer's logits).
DEFAULT_MAX_PIXELS = 2**26


class ConversionNotice(UserWarning):
  """An input image was converted (mode, bit depth, alpha, orientation) before coding."""


def to_rgb8(image, max_pixels: int) -> tuple[np.ndarray, list[str]]:
  """uint8 [H, W, 3] from an array or PIL image, and what was converted; ValueError for an image
  the format cannot hold or above `max_pixels` pixels."""
  if hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image
    buf = imageio.encode_png(np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB")))
    image = imageio.decode(buf)[0]
  rgb, notes = imageio.to_rgb8(image)
  h, w = rgb.shape[:2]
  if max(h, w) > container.MAX_SIDE:
    raise ValueError(f"image is {w}x{h}: the format holds sides up to {container.MAX_SIDE} px")
  if h * w > max_pixels:
    raise ValueError(f"image is {w}x{h} = {h * w / 1e6:.1f} MP, above this codec's limit of "
                     f"{max_pixels / 1e6:.1f} MP (max_pixels)")
  return rgb, notes


def padded(rgb: np.ndarray, grid: tuple[int, int], stride: int) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 [h * stride, w * stride, 3] in [0, 1], edge-padded to the token
  grid (h, w)."""
  height, width = rgb.shape[:2]
  pad = ((0, grid[0] * stride - height), (0, grid[1] * stride - width), (0, 0))
  return np.pad(rgb, pad, mode="edge").astype(np.float32) / np.float32(255.0)
