"""Whole files: a frame's payload in the container (`codec.container`), and back, with the checks
a reader makes before decoding anything."""

from __future__ import annotations

import dataclasses

import numpy as np

from hybridflow_jax import schedules
from hybridflow_jax.codec import container, payload
from hybridflow_jax.codec.container import FormatError


@dataclasses.dataclass(frozen=True)
class Compressed:
  """A compressed image and what it cost.

  data: the file bytes. schedule: the schedule used ("1_4", ..., "dynamic"). keep_ratio: fraction
  of indices sent. bits: real sizes in bits ("file", "header" = container bytes that are not
  payload) and the tables' ideal cost of each stream of the payload (`payload.bits`: "z", "y",
  "side", "indices"; no stream termination). budget: the dynamic target keep ratio, if dynamic.
  keep: [h, w] bool, which codeword indices were sent. grey: the file is marked greyscale (the
  image had R = G = B; it decodes grey).
  """

  data: bytes
  height: int
  width: int
  schedule: str
  keep_ratio: float
  bits: dict[str, float]
  budget: float | None = None
  keep: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
  grey: bool = False

  @property
  def bpp(self) -> float:
    return len(self.data) * 8 / (self.height * self.width)


def write(frame: payload.Frame, fingerprint: bytes, budget: float | None = None) -> Compressed:
  """The file of a sender's frame (see `payload.write`), made by the model of `fingerprint`."""
  body = payload.write(frame)
  bs = container.Bitstream(frame.height, frame.width, fingerprint,
                           schedules.wire_id(frame.schedule), [body], grey=frame.grey)
  data = container.pack(bs)
  bits = {"file": 8.0 * len(data), "header": 8.0 * (len(data) - len(body)), **payload.bits(frame)}
  return Compressed(data=data, height=frame.height, width=frame.width, schedule=frame.schedule,
                    keep_ratio=float(frame.keep.mean()), bits=bits, budget=budget, keep=frame.keep,
                    grey=frame.grey)


def parse(data: bytes, fingerprint: bytes, max_pixels: int) -> container.Bitstream:
  """A file's container, checked against the model of `fingerprint` and the pixel limit, without
  decoding it (fast, no jax); raises FormatError with one line."""
  bs = container.unpack(data, expected_fingerprint=fingerprint)
  if len(bs.sections) != 1:
    raise FormatError(f"malformed file: {len(bs.sections)} sections, this format has 1")
  try:
    schedules.from_wire(bs.schedule)
  except ValueError as e:
    raise FormatError(str(e)) from None
  if bs.height * bs.width > max_pixels:
    raise FormatError(f"image is {bs.width}x{bs.height}, above this codec's limit of "
                      f"{max_pixels / 1e6:.1f} MP (max_pixels)")
  return bs


def read(data: bytes, model: payload.CodingModel, fingerprint: bytes,
         max_pixels: int) -> payload.Frame:
  """The receiver's frame of a file, every stream decoded (see `payload.read`); raises FormatError
  or CodecError with one line."""
  bs = parse(data, fingerprint, max_pixels)
  frame = payload.Frame(model, bs.height, bs.width, schedules.from_wire(bs.schedule), grey=bs.grey)
  return payload.read(bs.sections[0], frame)
