"""The payload of a HybridFlow file: its streams, declared once, in coding order (`PAYLOAD`).

A payload is one range-coded stream (`codec.coder`) of several streams of symbols, one after the
other. `PAYLOAD` is the one statement of which streams a file holds, in which order, and how each
is coded: `write` (the sender) and `read` (the receiver) walk it in order, and `bits` prices each
stream from it. A stream's coding may depend only on what a receiver knows when it reaches that
stream (the header, the model, the streams before it), which is all a `Frame` offers; so whatever
the sender writes, the receiver reads back with the same tables, rows and counts, by construction.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping

import numpy as np

from hybridflow_jax import schedules
from hybridflow_jax.codec.coder import CodecError, Decoder, Encoder, estimate_bits
from hybridflow_jax.codec.tables import CdfTable

# Bounds no real latent comes near; beyond them a stream is corrupt (and float32 would lose them).
MAX_ABS_LATENT = 2**20


@dataclasses.dataclass(frozen=True)
class CodingModel:
  """What a model fixes about every payload it writes and reads.

  tables: the frozen tables "z", "y" and "index" (`codec.bundle.TABLES`).
  hyper_channels: Nz, channels of z. stride: pixels per token; hyper_stride: tokens per z position.
  region: tokens per side of a dynamic-masking region; candidates: dynamic masking's schedules
    (a region's choice is a position in this list).
  entropy_parameters: (z_hat int [hz, wz, Nz], (h, w)) -> (mean float32 [h, w, M], Gaussian table
    row int32 [h, w, M]) of y (`codec.entropy_parameters`).
  """

  tables: Mapping[str, CdfTable]
  hyper_channels: int
  stride: int
  hyper_stride: int
  region: int
  candidates: tuple[str, ...]
  entropy_parameters: Callable[[np.ndarray, tuple[int, int]], tuple[np.ndarray, np.ndarray]]

  def grid(self, height: int, width: int) -> tuple[int, int]:
    """Token grid (h, w) of a height x width image: it is edge-padded to a multiple of the stride."""
    return -(-height // self.stride), -(-width // self.stride)


@dataclasses.dataclass(eq=False)
class Frame:
  """One file as both sides see it while coding: the header's facts, and the streams' symbols by
  stream name (`symbols`: all of them for the sender, those decoded so far for the receiver).

  height, width: image size in pixels; schedule: a name of `schedules.ALL`; grey: the image is
    greyscale (the container's flag; no stream depends on it).
  entropy: (mean, table row) of y, which the sender has already computed; the receiver leaves it
    None and it is computed from the z stream on first use.
  """

  model: CodingModel
  height: int
  width: int
  schedule: str
  symbols: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  entropy: tuple[np.ndarray, np.ndarray] | None = None
  grey: bool = False

  @property
  def grid(self) -> tuple[int, int]:
    """(h, w): the token grid, of the codeword indices and of y."""
    return self.model.grid(self.height, self.width)

  @property
  def hyper_grid(self) -> tuple[int, int]:
    """(hz, wz): the grid of z."""
    return tuple(-(-n // self.model.hyper_stride) for n in self.grid)

  def entropy_parameters(self) -> tuple[np.ndarray, np.ndarray]:
    """(mean float32 [h, w, M], Gaussian table row int32 [h, w, M]) of y, from the z stream."""
    if self.entropy is None:
      self.entropy = self.model.entropy_parameters(self.symbols["z"], self.grid)
    return self.entropy

  @functools.cached_property
  def keep(self) -> np.ndarray:
    """[h, w] bool: which codeword indices the file sends (dynamic: from the side stream)."""
    if self.schedule != schedules.DYNAMIC:
      return schedules.fixed_keep_map(self.schedule, *self.grid)
    return schedules.region_keep_map(self.symbols["side"], self.model.candidates, self.model.region,
                                     self.grid, xp=np)

  def y_hat(self) -> np.ndarray:
    """float32 [h, w, M]: the dequantised latent, residual + mean."""
    return dequantize(self.symbols["y"], self.entropy_parameters()[0])

  def index_grid(self) -> np.ndarray:
    """int32 [h, w]: the sent codeword indices in place, 0 where none was sent."""
    out = np.zeros(self.grid, np.int32)
    out[self.keep] = self.symbols["indices"]
    return out


def dequantize(residual: np.ndarray, mean: np.ndarray) -> np.ndarray:
  """y_hat = residual + mean in float32, as both sides compute it."""
  return residual.astype(np.float32) + mean


@dataclasses.dataclass(frozen=True)
class TableCoding:
  """Integers each coded with its row of a frozen table; the stream has the shape of `rows`."""

  table: CdfTable
  rows: np.ndarray

  @property
  def shape(self) -> tuple[int, ...]:
    return self.rows.shape

  def encode(self, enc: Encoder, values: np.ndarray) -> None:
    enc.encode_with_table(values, self.table, self.rows)

  def decode(self, dec: Decoder) -> np.ndarray:
    return dec.decode_with_table(self.rows.size, self.table, self.rows.ravel()).reshape(self.shape)

  def bits(self, values: np.ndarray) -> float:
    return estimate_bits(values, self.table, self.rows)


@dataclasses.dataclass(frozen=True)
class UniformCoding:
  """Integers in [0, n), equally likely: log2(n) bits each."""

  n: int
  shape: tuple[int, ...]

  def encode(self, enc: Encoder, values: np.ndarray) -> None:
    enc.encode_uniform(values, self.n)

  def decode(self, dec: Decoder) -> np.ndarray:
    return dec.decode_uniform(math.prod(self.shape), self.n).reshape(self.shape)

  def bits(self, values: np.ndarray) -> float:
    return math.prod(self.shape) * math.log2(self.n)


Coding = TableCoding | UniformCoding


@dataclasses.dataclass(frozen=True)
class Stream:
  """One stream of the payload.

  name: the key of its symbols in `Frame.symbols` and of its cost in `bits`.
  contents: what the symbols are, in which order.
  coding: how it is coded, from what precedes it; None where a file has no such stream.
  bound: a decoded magnitude above it means a corrupt stream (None: the coding bounds it).
  """

  name: str
  contents: str
  coding: Callable[[Frame], Coding | None]
  bound: int | None = None


def _z_coding(f: Frame) -> TableCoding:
  channels = f.model.hyper_channels
  rows = np.broadcast_to(np.arange(channels), (*f.hyper_grid, channels))
  return TableCoding(f.model.tables["z"], rows)


def _y_coding(f: Frame) -> TableCoding:
  return TableCoding(f.model.tables["y"], f.entropy_parameters()[1])


def _side_coding(f: Frame) -> UniformCoding | None:
  if f.schedule != schedules.DYNAMIC:
    return None
  return UniformCoding(len(f.model.candidates), schedules.region_grid(f.grid, f.model.region))


def _indices_coding(f: Frame) -> TableCoding:
  return TableCoding(f.model.tables["index"], np.zeros(int(f.keep.sum()), np.int64))


PAYLOAD = (
    Stream("z", "hyper-latent z_hat [hz, wz, Nz], row-major; channel c with row c of table z",
           _z_coding, bound=MAX_ABS_LATENT),
    Stream("y", "latent residuals round(y - mean) [h, w, M], row-major; each with the row of table y "
           "that entropy_parameters(z_hat) gives it", _y_coding, bound=MAX_ABS_LATENT),
    Stream("side", "dynamic files only: each region's choice [rh, rw], row-major, a position in the "
           "candidate schedules, uniform", _side_coding),
    Stream("indices", "the sent codeword indices [n], where the keep-map is True in row-major "
           "order; with the index prior (row 0 of table index)", _indices_coding),
)


def write(frame: Frame) -> bytes:
  """The payload bytes of a sender's frame (every stream's symbols in `frame.symbols`)."""
  enc = Encoder()
  for stream in PAYLOAD:
    coding = stream.coding(frame)
    if coding is None:
      continue
    values = frame.symbols[stream.name]
    if np.shape(values) != coding.shape:
      raise ValueError(f"stream {stream.name} has shape {np.shape(values)}, its reader expects "
                       f"{coding.shape}")
    coding.encode(enc, values)
  return enc.finish()


def read(data: bytes, frame: Frame) -> Frame:
  """Decodes a payload into a receiver's frame (header facts only); raises CodecError."""
  dec = Decoder(data)
  for stream in PAYLOAD:
    coding = stream.coding(frame)
    if coding is None:
      continue
    values = coding.decode(dec)
    if stream.bound is not None and np.any(np.abs(values) > stream.bound):
      raise CodecError(f"corrupt stream: values of stream {stream.name} out of range")
    frame.symbols[stream.name] = values
  return frame


def bits(frame: Frame) -> dict[str, float]:
  """Ideal cost of each stream under its coding, in bits (0 for a stream the file lacks; escapes
  included, stream termination not)."""
  out = {}
  for stream in PAYLOAD:
    coding = stream.coding(frame)
    out[stream.name] = 0.0 if coding is None else coding.bits(frame.symbols[stream.name])
  return out
