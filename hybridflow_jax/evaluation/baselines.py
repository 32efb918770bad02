"""The live baselines of `hybridflow eval` and `ablate`: Pillow's JPEG, WebP and AVIF at a given rate."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, features

from hybridflow_jax import image_metrics
from hybridflow_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Baseline:
  """A Pillow codec swept over its quality setting (higher quality, more bits)."""

  name: str
  format: str
  qualities: tuple[int, int]
  options: tuple[tuple[str, Any], ...] = ()
  description: str = ""

  def encode(self, rgb: np.ndarray, quality: int) -> bytes:
    """The file of uint8 [H, W, 3] `rgb` at `quality`."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=self.format, quality=int(quality), **dict(self.options))
    return buf.getvalue()

  @staticmethod
  def decode(data: bytes) -> np.ndarray:
    """uint8 [H, W, 3] of a file."""
    with Image.open(io.BytesIO(data)) as im:
      return np.asarray(im.convert("RGB"))

  def closest(self, rgb: np.ndarray, target_bpp: float, cache: dict[int, bytes]) -> int:
    """The quality whose file's bpp is closest to `target_bpp` (sizes grow with quality; found by
    bisection, each size computed once per image through `cache`: quality -> file)."""
    pixels = rgb.shape[0] * rgb.shape[1]

    def bpp(q):
      if q not in cache:
        cache[q] = self.encode(rgb, q)
      return len(cache[q]) * 8 / pixels

    lo, hi = self.qualities
    if bpp(lo) >= target_bpp:
      return lo
    if bpp(hi) <= target_bpp:
      return hi
    while hi - lo > 1:  # invariant: bpp(lo) < target <= bpp(hi)
      mid = (lo + hi) // 2
      lo, hi = (mid, hi) if bpp(mid) < target_bpp else (lo, mid)
    return lo if target_bpp - bpp(lo) <= bpp(hi) - target_bpp else hi


# Image scales `at_rate` tries: a codec's lowest quality at full size costs more than the rates
# HybridFlow works at (AVIF's: about 0.07 bpp on 768x512 photos), so to match a rate the image is
# coded smaller and scaled back up, as an encoder with resolution reduction would do.
SCALES = (1.0, 0.75, 0.5, 0.375, 0.25)
RATE_TOLERANCE = 0.10   # a file within 10 % of the target rate counts as matched (the ablation's rule)


@dataclasses.dataclass(frozen=True)
class MatchedFile:
  """A baseline's file at a target rate: `data` codes `rgb` scaled by `scale` at `quality`;
  `decoded` is it decoded and scaled back to the full size; `bpp` counts the full size's pixels."""

  quality: int
  scale: float
  data: bytes
  bpp: float
  decoded: np.ndarray

  @property
  def label(self) -> str:
    return f"q{self.quality}" if self.scale == 1 else f"q{self.quality} at {self.scale:g}x"


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def scaled(rgb: np.ndarray, scale: float) -> np.ndarray:
  """`rgb` scaled by `scale` (Lanczos; 16 px a side at least); `rgb` itself where that is its size."""
  h, w = rgb.shape[:2]
  size = max(16, round(w * scale)), max(16, round(h * scale))
  return rgb if size == (w, h) else _resize(rgb, size)


def encode_at(b: Baseline, rgb: np.ndarray, quality: int, scale: float) -> bytes:
  """`b`'s file of `rgb` scaled by `scale` (Lanczos) at `quality`."""
  return b.encode(scaled(rgb, scale), quality)


def decode_at(b: Baseline, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
  """A file of `encode_at` decoded and scaled back (Lanczos) to `shape` [H, W, ...]."""
  decoded = b.decode(data)
  return decoded if decoded.shape[:2] == shape[:2] else _resize(decoded, (shape[1], shape[0]))


def at_rate(b: Baseline, rgb: np.ndarray, target_bpp: float, scales: Sequence[float] = SCALES,
            cache: dict[float, dict[int, bytes]] | None = None) -> MatchedFile:
  """`b`'s file of uint8 [H, W, 3] `rgb` at `target_bpp`. At each scale (Lanczos down, the quality
  whose file is closest to the target, decoded and Lanczos up); of the files within RATE_TOLERANCE
  of the target the one with the highest PSNR-RGB, else the file closest to the target. `cache`
  (scale -> quality -> file) saves encodings between calls on the same image."""
  cache = {} if cache is None else cache
  h, w = rgb.shape[:2]
  files = []
  for scale in scales:
    small = scaled(rgb, scale)
    # The small image's bpp for the full image's: the target times the scale-down in pixels.
    q = b.closest(small, target_bpp * (w * h) / (small.shape[0] * small.shape[1]),
                  cache.setdefault(scale, {}))
    data = cache[scale][q]
    files.append(MatchedFile(q, scale, data, len(data) * 8 / (w * h), decode_at(b, data, rgb.shape)))
  matched = [f for f in files if abs(f.bpp - target_bpp) <= RATE_TOLERANCE * target_bpp]
  if not matched:
    return min(files, key=lambda f: abs(f.bpp - target_bpp))
  return max(matched, key=lambda f: image_metrics.psnr_uint8(rgb, f.decoded))


BASELINES = {
    "jpeg": Baseline("jpeg", "JPEG", (1, 95), (("subsampling", 2),),
                     "Pillow JPEG (libjpeg), 4:2:0, default tables"),
    "webp": Baseline("webp", "WEBP", (0, 100), (("method", 6),), "Pillow WebP (libwebp), method 6"),
    "avif": Baseline("avif", "AVIF", (0, 100), (("speed", 6),), "Pillow AVIF (libavif), speed 6"),
}


def baselines(names: Sequence[str] | None = None) -> list[Baseline]:
  """JPEG, WebP and AVIF (if this Pillow writes AVIF), or the named subset (UserError if one is
  unknown or this Pillow cannot write it)."""
  available = [n for n in BASELINES if n != "avif" or features.check("avif")]
  if names is None:
    return [BASELINES[n] for n in available]
  unknown = [n for n in names if n not in BASELINES]
  if unknown:
    raise UserError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
  missing = [n for n in names if n not in available]
  if missing:
    raise UserError(f"this Pillow cannot write {', '.join(missing)}")
  return [BASELINES[n] for n in names]
