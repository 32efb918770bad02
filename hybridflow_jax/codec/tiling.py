"""Overlapping windows for rendering large images in pieces.

The bridging decoder normalises per position (`model.bridge.norm = "layer"`), so each output pixel
depends only on the codewords and y_hat within its receptive field. A large image is rendered by
running the decoder's coarse levels once on the whole token grid and its full-resolution levels,
where the memory is, window by window: each window reaches `halo` tokens past the part of the
image it is kept for, except at the image's own edges, where the window's edge is the image's and
the decoder pads as it does for the whole image. The windows of one image all have the same size,
so one compiled program renders all of them.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Span:
  """One window along one axis, in tokens: computed over [start, start + size), kept over
  [keep_from, keep_to)."""

  start: int
  size: int
  keep_from: int
  keep_to: int


def spans(length: int, window: int, halo: int) -> list[Span]:
  """The fewest windows of at most `window` tokens that cover [0, length) with `halo` tokens of
  context on every side that is not the image's edge, all of one size and evenly spread (the
  least work for that number); what each keeps tiles [0, length) exactly, in order.

  A length that fits in one window gets one window of that length.
  """
  if halo < 0 or window <= 2 * halo:
    raise ValueError(f"a window of {window} tokens leaves nothing inside a halo of {halo}")
  if length <= window:
    return [Span(0, length, 0, length)]
  n = -(-(length - 2 * halo) // (window - 2 * halo))
  size = -(-(length + 2 * halo * (n - 1)) // n)
  # Neighbours overlap by at least 2 * halo: n * size >= length + 2 * halo * (n - 1).
  starts = [(j * (length - size) + (n - 1) // 2) // (n - 1) for j in range(n)]
  return [Span(start, size, 0 if j == 0 else start + halo,
               length if j == n - 1 else starts[j + 1] + halo)
          for j, start in enumerate(starts)]
