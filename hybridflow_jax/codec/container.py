"""The HybridFlow file format: a small header, opaque sections, and a CRC32.

A whole image is about 1.5 kB at 0.03 bpp, so every header byte is accounted for; what is there
lets a reader reject other files, other models and corrupt bytes. Layout (version 1), in order:

| Field            | Bytes                 | Contents                                                   |
|------------------|-----------------------|------------------------------------------------------------|
| magic            | 2                     | b"HF"                                                      |
| version          | 1                     | 1                                                          |
| layout           | 1                     | bits 7-5: number of sections n (0-7); bit 4: greyscale     |
|                  |                       | (R = G = B everywhere; decoders give grey);                |
|                  |                       | bits 3-0: schedule id, 0-14 fixed, 15 = dynamic (the       |
|                  |                       | per-region ids then live in a section)                     |
| height           | 1-3                   | LEB128 varint, 1..65536 pixels                             |
| width            | 1-3                   | LEB128 varint, 1..65536 pixels                             |
| fingerprint      | 4                     | first 4 bytes of the model bundle's hash                   |
| section lengths  | 1-4 each, n - 1 of    | LEB128 varints, bytes of sections 0..n-2; the last         |
|                  | them                  | section runs up to the checksum                            |
| sections         | sum of their lengths  | opaque payloads (range-coded streams)                      |
| crc32            | 4                     | zlib.crc32 of every byte before it, big-endian             |

Varints are minimal (no redundant 0x80 continuation bytes), so every Bitstream has exactly one
encoding. The fixed part is 2 + 1 + 1 + 4 + 4 = 12 bytes; a 768x512 image adds 2 + 2 bytes of
size, and each section but the last 1 byte up to 127 bytes long, 2 bytes up to 16383: 20 bytes of
header for three sections of ~500 bytes, 8 of them the fingerprint and the checksum. The last
section's length is implied to save those 1-2 bytes; the price is that a truncated file is only
recognised as "corrupt or truncated" by its checksum (up to 64 KiB of trailing garbage is still
told apart: a valid checksum ends before the end of the input).

`unpack` checks, in this order, and raises `FormatError` with one line for the first failure:
empty input; bad magic ("not a HybridFlow file"); unsupported version; too short ("truncated");
checksum (corrupt or truncated, or trailing garbage when a valid checksum ends earlier); malformed
or implausible header fields (non-minimal varints, sizes above 2**16, section lengths
beyond the data, payload without sections); fingerprint ("made with another model"). It only
slices the input, never allocates from a length it read, and runs in time linear in the input.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from hybridflow_jax import schedules

MAGIC = b"HF"
VERSION = 1
SCHEDULE_DYNAMIC = schedules.DYNAMIC_WIRE_ID  # schedule ids 0..14 are fixed schedules
MAX_SECTIONS = 7
MAX_SIDE = 2**16
FINGERPRINT_BYTES = 4
CRC_BYTES = 4
# magic, version, layout, one-byte height and width, fingerprint, checksum.
MIN_SIZE = len(MAGIC) + 1 + 1 + 1 + 1 + FINGERPRINT_BYTES + CRC_BYTES
# Trailing garbage (a valid checksum that ends early) is recognised up to this many bytes of it.
_MAX_GARBAGE = 1 << 16


class FormatError(ValueError):
  """Not a valid HybridFlow file for this reader (or this model)."""


@dataclasses.dataclass
class Bitstream:
  """One image's file content.

  height, width: image size in pixels, 1..65536.
  fingerprint: 4 bytes identifying the model bundle that made (and can decode) the file.
  schedule: 0..14 a fixed schedule id, or SCHEDULE_DYNAMIC (per-region ids in a section).
  sections: up to 7 opaque payloads, in order.
  grey: the image is greyscale (every pixel has R = G = B): decoders give one channel.
  """

  height: int
  width: int
  fingerprint: bytes
  schedule: int
  sections: list[bytes] = dataclasses.field(default_factory=list)
  grey: bool = False


# Layout byte: bit 4 was reserved (and refused when set) until the greyscale flag took it, so
# readers from before it refuse greyscale files with "reserved layout bit is set".
GREY_BIT = 0x10


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


class _OutOfData(Exception):
  """The header runs past the end of the input."""


def _read_varint(data: bytes, pos: int, max_bytes: int, what: str) -> tuple[int, int]:
  value = 0
  for i in range(max_bytes):
    if pos + i >= len(data):
      raise _OutOfData
    byte = data[pos + i]
    value |= (byte & 0x7F) << (7 * i)
    if not byte & 0x80:
      if byte == 0 and i > 0:
        raise FormatError(f"malformed header: non-minimal varint for the {what}")
      return value, pos + i + 1
  raise FormatError(f"malformed header: the {what} takes more than {max_bytes} bytes")


def pack(bs: Bitstream) -> bytes:
  """The file bytes of `bs` (raises ValueError for fields the format cannot hold)."""
  for name, side in (("height", bs.height), ("width", bs.width)):
    if not isinstance(side, int) or not 1 <= side <= MAX_SIDE:
      raise ValueError(f"{name} must be an integer in [1, {MAX_SIDE}], got {side!r}")
  fingerprint = bytes(bs.fingerprint)
  if len(fingerprint) != FINGERPRINT_BYTES:
    raise ValueError(f"fingerprint must be {FINGERPRINT_BYTES} bytes, got {len(fingerprint)}")
  if not isinstance(bs.schedule, int) or not 0 <= bs.schedule <= SCHEDULE_DYNAMIC:
    raise ValueError(f"schedule must be in [0, {SCHEDULE_DYNAMIC}], got {bs.schedule!r}")
  sections = [bytes(s) for s in bs.sections]
  if len(sections) > MAX_SECTIONS:
    raise ValueError(f"at most {MAX_SECTIONS} sections fit the format, got {len(sections)}")
  out = bytearray(MAGIC)
  out.append(VERSION)
  out.append(len(sections) << 5 | (GREY_BIT if bs.grey else 0) | bs.schedule)
  out += _varint(bs.height) + _varint(bs.width) + fingerprint
  for s in sections[:-1]:
    out += _varint(len(s))
  for s in sections:
    out += s
  out += zlib.crc32(out).to_bytes(CRC_BYTES, "big")
  return bytes(out)


def header_size(bs: Bitstream) -> int:
  """Bytes of the file that are not section payloads (header, section lengths, checksum)."""
  return len(pack(bs)) - sum(len(s) for s in bs.sections)


def _crc_ok(data: bytes, end: int) -> bool:
  """Whether data[:end] ends with the checksum of what precedes it."""
  return zlib.crc32(data[:end - CRC_BYTES]) == int.from_bytes(data[end - CRC_BYTES:end], "big")


def _checksum_failure(data: bytes) -> FormatError:
  """The error for a file whose last 4 bytes are not its checksum."""
  # A valid checksum that ends before the input does means bytes were appended to a good file.
  # Look for one among the last _MAX_GARBAGE ends only, so that huge inputs stay fast.
  first = max(MIN_SIZE, len(data) - _MAX_GARBAGE)
  # stored[i]: the big-endian uint32 at data[i:i + 4], for every candidate end i + 4.
  u = np.frombuffer(data, dtype=np.uint8)[first - CRC_BYTES:].astype(np.uint32)
  stored = (u[:-3] << 24 | u[1:-2] << 16 | u[2:-1] << 8 | u[3:]).tolist()
  view = memoryview(data)
  crc = zlib.crc32(view[:first - CRC_BYTES])
  for i, end in enumerate(range(first, len(data))):
    if crc == stored[i]:
      return FormatError(f"trailing garbage: {len(data) - end} bytes after the end of the file "
                         f"({end} bytes)")
    crc = zlib.crc32(view[end - CRC_BYTES:end - CRC_BYTES + 1], crc)
  return FormatError("checksum mismatch: the file is corrupt or truncated")


def unpack(data: bytes, expected_fingerprint: bytes | None = None) -> Bitstream:
  """Parses and checks file bytes (see the module docstring); raises FormatError."""
  if not isinstance(data, bytes | bytearray | memoryview):
    raise FormatError(f"expected bytes, got {type(data).__name__}")
  data = bytes(data)
  if not data:
    raise FormatError("empty input: not a HybridFlow file")
  if data[:len(MAGIC)] != MAGIC[:len(data)]:
    raise FormatError(f"not a HybridFlow file (starts with {data[:8]!r}, expected {MAGIC!r})")
  if len(data) > len(MAGIC) and data[len(MAGIC)] != VERSION:
    raise FormatError(f"unsupported format version {data[len(MAGIC)]} (this reader reads "
                      f"version {VERSION})")
  if len(data) < MIN_SIZE:
    raise FormatError(f"truncated: {len(data)} bytes, a HybridFlow file has at least {MIN_SIZE}")
  if not _crc_ok(data, len(data)):
    raise _checksum_failure(data)
  body = data[:-CRC_BYTES]
  try:
    return _parse(body, expected_fingerprint)
  except _OutOfData:
    raise FormatError("malformed header: it runs past the end of the file") from None


def _parse(body: bytes, expected_fingerprint: bytes | None) -> Bitstream:
  """Header and sections of a checksum-verified file (without its checksum)."""
  layout = body[3]
  num_sections, schedule = layout >> 5, layout & 0x0F
  pos = 4
  height, pos = _read_varint(body, pos, 3, "height")
  width, pos = _read_varint(body, pos, 3, "width")
  if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
    raise FormatError(f"implausible image size {height}x{width} (each side must be 1..{MAX_SIDE})")
  if pos + FINGERPRINT_BYTES > len(body):
    raise _OutOfData
  fingerprint = body[pos:pos + FINGERPRINT_BYTES]
  pos += FINGERPRINT_BYTES
  lengths = []
  for i in range(max(num_sections - 1, 0)):
    length, pos = _read_varint(body, pos, 4, f"length of section {i}")
    lengths.append(length)
  sections = []
  for i, length in enumerate(lengths):
    if length > len(body) - pos:
      raise FormatError(f"implausible section length: section {i} claims {length} bytes, "
                        f"{len(body) - pos} remain")
    sections.append(body[pos:pos + length])
    pos += length
  if num_sections:
    sections.append(body[pos:])
  elif pos != len(body):
    raise FormatError(f"malformed file: {len(body) - pos} payload bytes but no sections")
  if expected_fingerprint is not None and fingerprint != bytes(expected_fingerprint):
    raise FormatError(f"made with another model (fingerprint {fingerprint.hex()}, this model is "
                      f"{bytes(expected_fingerprint).hex()})")
  return Bitstream(height=height, width=width, fingerprint=fingerprint, schedule=schedule,
                   sections=sections, grey=bool(layout & GREY_BIT))
