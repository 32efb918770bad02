"""Range coding with constriction, driven only by frozen integer tables (`CdfTable`).

One `Encoder` writes one range-coded stream (a section of the file); the `Decoder` must make the
same calls, in the same order, with the same tables and rows.

How a table becomes a constriction model. constriction 0.5.0 has no model that takes integer
frequencies (CustomModel takes float callbacks, per symbol: far too slow), so each row is handed to
`constriction.stream.model.Categorical(freqs / 2**P, perfect=False)` as float64. Those floats are
dyadic rationals, exact in float64, and the row sums to exactly 1. constriction's "fast" quantiser
(perfect=False) then puts symbol i's left edge at floor(cumsum_i * (2**24 - L)) + i, and in float64
every one of those products is exact (at most 17 + 24 significant bits), so the 24-bit model it
codes with is a fixed integer function of our table, identical on every machine, and within a
fraction of a percent of freq / 2**P (`estimate_bits` uses the latter). The dtype matters: float32
input is quantised in float32, with rounding, and gives a different model, so float64 is part of
the format (a test pins the bytes of a stream). Uniform symbols use `constriction.stream.model.Uniform`.

Order inside one `encode_with_table` call. Symbols are grouped by row (a stable sort, so the
decoder, which knows the rows, recomputes the same permutation) and each group is coded as i.i.d.
symbols of one concrete model: one vectorised constriction call per distinct row instead of one per
symbol, and no [count, L] probability matrix. Then come the escape payloads, in symbol order.

Escapes. A value v outside its row's support [lo, hi] is coded as the escape symbol, and after the
call's main symbols as: one bit, Uniform(2), 1 if v < lo; the distance d = lo - 1 - v or v - hi - 1
(>= 0) as e = d + 1 = 2**n + m with n coded by Uniform(64) (6 bits) and the n bits of m coded
most-significant first in chunks of up to 16 bits, each by a Uniform(2**bits). That is an
exp-Golomb / Elias-gamma style code with a fixed 6-bit length: 7 + n bits, n = floor(log2(d + 1)).
Values must satisfy |v| < 2**62.

Byte stream. constriction produces 32-bit words; they are written big-endian and trailing zero
bytes are dropped, because the decoder reads missing words as zeros. `finish` also moves the final
code point within the final interval to the value with the most trailing zero bits (usually 1-2
bytes saved per stream) and, by default, proves the result by decoding it again.
"""

from __future__ import annotations

import weakref

import constriction
import numpy as np

from hybridflow_jax.codec.tables import CdfTable

_model = constriction.stream.model
_queue = constriction.stream.queue

MAX_ABS_VALUE = 2**62  # escapes code |v| < 2**62
ESCAPE_LENGTH_SYMBOLS = 64  # n = floor(log2(d + 1)) is coded by Uniform(64)
CHUNK_BITS = 16  # mantissa bits per uniform symbol
MAX_UNIFORM = 2**24 - 1  # constriction's Uniform needs size < 2**24

# Per table, the constriction model of each row, built on first use (tables are frozen).
_ROW_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_UNIFORM_MODELS: dict[int, object] = {}


class CodecError(ValueError):
  """A stream that cannot be decoded: corrupt data, or a decoder call that does not fit it."""


def _row_model(table: CdfTable, row: int):
  """constriction model for `row` (None if the row has one symbol: nothing to code)."""
  models = _ROW_MODELS.setdefault(table, {})
  if row not in models:
    length = int(table.lengths[row])
    if length < 2:
      models[row] = None
    else:
      probs = table.freqs[row, :length].astype(np.float64) / float(1 << table.precision)
      models[row] = _model.Categorical(probs, perfect=False)
  return models[row]


def _uniform_model(n: int):
  if n not in _UNIFORM_MODELS:
    _UNIFORM_MODELS[n] = _model.Uniform(n)
  return _UNIFORM_MODELS[n]


_UNIFORM_FAMILY = _model.Uniform()


def _as_values(symbols) -> np.ndarray:
  values = np.asarray(symbols)
  if values.dtype.kind not in "iu":
    raise ValueError(f"symbols must be integers, got dtype {values.dtype}")
  if values.dtype.kind == "u" and values.size and int(values.max()) >= MAX_ABS_VALUE:
    raise ValueError("symbols must satisfy |v| < 2**62")
  return values.astype(np.int64).ravel()


def _as_rows(rows, count: int, table: CdfTable, error=ValueError) -> np.ndarray:
  r = np.asarray(rows)
  if r.dtype.kind not in "iu":
    raise error(f"rows must be integers, got dtype {r.dtype}")
  try:
    r = np.broadcast_to(r, (count,)) if r.ndim == 0 else r.reshape(-1)
  except ValueError:
    raise error(f"rows of shape {np.shape(rows)} do not fit {count} symbols") from None
  if r.shape != (count,):
    raise error(f"got {r.size} rows for {count} symbols")
  if count and (int(r.min()) < 0 or int(r.max()) >= table.num_rows):
    raise error(f"rows must be in [0, {table.num_rows})")
  return r.astype(np.int64)


def _groups(rows: np.ndarray):
  """(row, positions) per distinct row, rows ascending, positions in symbol order."""
  order = np.argsort(rows, kind="stable")
  sorted_rows = rows[order]
  starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_rows)) + 1, [rows.size]])
  for a, b in zip(starts[:-1], starts[1:]):
    if b > a:
      yield int(sorted_rows[a]), order[a:b]


def _split(values: np.ndarray, table: CdfTable, rows: np.ndarray):
  """Symbols of each value in its row, and which values escape (a bool mask)."""
  offsets = table.offsets[rows].astype(np.int64)
  lengths = table.lengths[rows].astype(np.int64)
  idx = values - offsets
  direct = (idx >= 0) & (idx < lengths - int(table.escape))
  if not table.escape and not np.all(direct):
    bad = int(values[~direct][0])
    raise ValueError(f"value {bad} is outside the table's range and the table has no escape")
  if np.any(np.abs(values) >= MAX_ABS_VALUE):
    raise ValueError("symbols must satisfy |v| < 2**62")
  idx = np.where(direct, idx, lengths - 1)
  return idx, ~direct


def _floor_log2(e: np.ndarray) -> np.ndarray:
  """floor(log2(e)) for uint64 e >= 1, exactly (floats would round near powers of two)."""
  n = np.zeros(e.shape, dtype=np.uint64)
  for s in (32, 16, 8, 4, 2, 1):
    n += np.uint64(s) * ((e >> (n + np.uint64(s))) > 0)
  return n.astype(np.int64)


def _chunk_layout(n: np.ndarray):
  """For escapes with n mantissa bits: per chunk the escape it belongs to, its shift and width."""
  chunks = (n + CHUNK_BITS - 1) // CHUNK_BITS
  owner = np.repeat(np.arange(n.size), chunks)
  first = np.repeat(np.cumsum(chunks) - chunks, chunks)
  j = np.arange(owner.size) - first  # chunk number within its escape, most significant first
  shift = CHUNK_BITS * (chunks[owner] - 1 - j)
  width = np.where(j == 0, n[owner] - CHUNK_BITS * (chunks[owner] - 1), CHUNK_BITS)
  return owner, shift, width


def _words_to_bytes(words: np.ndarray) -> bytes:
  return words.astype(">u4").tobytes().rstrip(b"\0")


def _bytes_to_words(data: bytes) -> np.ndarray:
  padded = bytes(data) + b"\0" * (-len(data) % 4)
  return np.frombuffer(padded, dtype=">u4").astype(np.uint32)


class Encoder:
  """Writes one range-coded stream. Call the encode methods, then `finish` for the bytes."""

  def __init__(self):
    self._coder = _queue.RangeEncoder()
    # Every constriction call, (model, symbols, params), so that `finish` can replay the decoder.
    self._log: list[tuple] = []

  def _encode(self, symbols: np.ndarray, model, params: np.ndarray | None = None) -> None:
    if symbols.size == 0:
      return
    symbols = np.ascontiguousarray(symbols, dtype=np.int32)
    if params is None:
      self._coder.encode(symbols, model)
    else:
      params = np.ascontiguousarray(params, dtype=np.int32)
      self._coder.encode(symbols, model, params)
    self._log.append((model, symbols, params))

  def encode_with_table(self, symbols: np.ndarray, table: CdfTable, rows: np.ndarray) -> None:
    """Codes integer values, each with its row of `table`.

    symbols: int [...] the values themselves (the table's offsets are applied here; values outside
      a row's support are escaped, see the module docstring).
    rows: int of `symbols`' shape (or a scalar): the table row of each value.
    """
    values = _as_values(symbols)
    rows = _as_rows(rows, values.size, table)
    idx, escaped = _split(values, table, rows)
    for row, positions in _groups(rows):
      model = _row_model(table, row)
      if model is not None:
        self._encode(idx[positions], model)
    if np.any(escaped):
      self._encode_escapes(values[escaped], table, rows[escaped])

  def _encode_escapes(self, values: np.ndarray, table: CdfTable, rows: np.ndarray) -> None:
    lo = table.offsets[rows].astype(np.int64)
    hi = lo + table.lengths[rows].astype(np.int64) - 2
    below = values < lo
    d = np.where(below, lo - 1 - values, values - hi - 1).astype(np.uint64)
    e = d + np.uint64(1)
    n = _floor_log2(e)
    m = e - (np.uint64(1) << n.astype(np.uint64))
    self._encode(below.astype(np.int32), _uniform_model(2))
    self._encode(n.astype(np.int32), _uniform_model(ESCAPE_LENGTH_SYMBOLS))
    owner, shift, width = _chunk_layout(n)
    if owner.size:
      chunk = (m[owner] >> shift.astype(np.uint64)) & ((np.uint64(1) << width.astype(np.uint64))
                                                       - np.uint64(1))
      self._encode(chunk.astype(np.int32), _UNIFORM_FAMILY, (1 << width).astype(np.int32))

  def encode_uniform(self, symbols: np.ndarray, n: int) -> None:
    """Codes integers in [0, n) with equal probabilities, log2(n) bits each (e.g. schedule ids)."""
    values = _as_values(symbols)
    if not 1 <= n <= MAX_UNIFORM:
      raise ValueError(f"uniform alphabet size must be in [1, {MAX_UNIFORM}], got {n}")
    if values.size and (int(values.min()) < 0 or int(values.max()) >= n):
      raise ValueError(f"uniform symbols must be in [0, {n})")
    if n > 1:  # one possible value: nothing to send
      self._encode(values, _uniform_model(n))

  def finish(self, verify: bool = True) -> bytes:
    """The stream's bytes. The encoder stays usable (later calls append; finish again).

    verify: decode the shortened stream again and fall back to constriction's own ending if it
      does not reproduce every call (it always has; the check costs one decode).
    """
    words = self._coder.get_compressed()
    plain = _words_to_bytes(words)
    if words.size == 0:
      return plain
    position, (lower, width) = self._coder.pos()
    upper = lower + width - 1
    # constriction ends the stream with the top word of ceil(lower / 2**32) * 2**32. Any point of
    # [lower, upper] works; pick the one with the most trailing zero bits. Only done in the plain
    # case (no pending carry), which this check recognises.
    sealed_plainly = (position + 1 == words.size and upper < 2**64
                      and int(words[-1]) == (-(-lower // 2**32)) % 2**32)
    if not sealed_plainly:
      return plain
    for k in range(63, 31, -1):
      point = -(-lower // 2**k) * 2**k
      if point <= upper:
        break
    shortened = words.copy()
    shortened[-1] = point >> 32
    data = _words_to_bytes(shortened)
    if len(data) >= len(plain):
      return plain
    if verify and not self._replays(data):
      return plain
    return data

  def _replays(self, data: bytes) -> bool:
    decoder = _queue.RangeDecoder(_bytes_to_words(data))
    try:
      for model, symbols, params in self._log:
        out = decoder.decode(model, symbols.size) if params is None else decoder.decode(model, params)
        if not np.array_equal(out, symbols):
          return False
    except (KeyboardInterrupt, SystemExit):
      raise
    except BaseException:  # noqa: B036 -- any failure (a Rust panic included) means "keep the plain ending"
      return False
    return True


def _guarded(call, *args):
  """Runs a constriction decode call; anything it raises becomes a CodecError."""
  try:
    return call(*args)
  except (KeyboardInterrupt, SystemExit):
    raise
  except BaseException as e:  # noqa: B036 -- a Rust panic surfaces as a BaseException
    raise CodecError(f"corrupt stream: {type(e).__name__}: {e}") from None


class Decoder:
  """Reads one stream written by `Encoder`, with the same calls in the same order."""

  def __init__(self, data: bytes):
    if not isinstance(data, bytes | bytearray | memoryview):
      raise CodecError(f"a stream is bytes, got {type(data).__name__}")
    self._coder = _guarded(_queue.RangeDecoder, _bytes_to_words(data))

  def _decode(self, count: int, model, params: np.ndarray | None = None) -> np.ndarray:
    if count == 0:
      return np.zeros(0, dtype=np.int64)
    if params is None:
      out = _guarded(self._coder.decode, model, count)
    else:
      out = _guarded(self._coder.decode, model, np.ascontiguousarray(params, dtype=np.int32))
    return np.asarray(out, dtype=np.int64)

  def decode_with_table(self, count: int, table: CdfTable, rows: np.ndarray) -> np.ndarray:
    """Inverse of `Encoder.encode_with_table`: int64 [count] values.

    rows: int [count] (or a scalar), the same rows the encoder used.
    """
    count = _check_count(count)
    rows = _as_rows(rows, count, table, error=CodecError)
    idx = np.zeros(count, dtype=np.int64)
    for row, positions in _groups(rows):
      model = _row_model(table, row)
      if model is not None:
        idx[positions] = self._decode(positions.size, model)
    lengths = table.lengths[rows].astype(np.int64)
    values = idx + table.offsets[rows].astype(np.int64)
    if table.escape:
      escaped = idx == lengths - 1
      if np.any(escaped):
        values[escaped] = self._decode_escapes(table, rows[escaped])
    return values

  def _decode_escapes(self, table: CdfTable, rows: np.ndarray) -> np.ndarray:
    count = rows.size
    below = self._decode(count, _uniform_model(2)).astype(bool)
    n = self._decode(count, _uniform_model(ESCAPE_LENGTH_SYMBOLS))
    if np.any(n > 62):  # the encoder never writes more (|v| < 2**62)
      raise CodecError("corrupt stream: escape length out of range")
    owner, shift, width = _chunk_layout(n)
    m = np.zeros(count, dtype=np.uint64)
    if owner.size:
      chunk = self._decode(owner.size, _UNIFORM_FAMILY, (1 << width).astype(np.int32))
      np.bitwise_or.at(m, owner, chunk.astype(np.uint64) << shift.astype(np.uint64))
    d = (np.uint64(1) << n.astype(np.uint64)) + m - np.uint64(1)
    if np.any(d >= np.uint64(MAX_ABS_VALUE + 2**32)):
      raise CodecError("corrupt stream: escaped value out of range")
    d = d.astype(np.int64)
    lo = table.offsets[rows].astype(np.int64)
    hi = lo + table.lengths[rows].astype(np.int64) - 2
    values = np.where(below, lo - 1 - d, hi + 1 + d)
    if np.any(np.abs(values) >= MAX_ABS_VALUE):
      raise CodecError("corrupt stream: escaped value out of range")
    return values

  def decode_uniform(self, count: int, n: int) -> np.ndarray:
    """Inverse of `Encoder.encode_uniform`: int64 [count] values in [0, n)."""
    count = _check_count(count)
    if not 1 <= n <= MAX_UNIFORM:
      raise CodecError(f"uniform alphabet size must be in [1, {MAX_UNIFORM}], got {n}")
    if n == 1:
      return np.zeros(count, dtype=np.int64)
    return self._decode(count, _uniform_model(n))


def _check_count(count) -> int:
  if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
    raise CodecError(f"count must be a non-negative integer, got {count!r}")
  return int(count)


def estimate_bits(symbols: np.ndarray, table: CdfTable, rows: np.ndarray) -> float:
  """Ideal information content of what `encode_with_table` writes, escapes included, in bits.

  -sum(log2(freq / 2**precision)) over the coded symbols, plus 1 + 6 + n bits per escape. The real
  stream adds up to a few bytes of termination and the (tiny) cost of constriction's 24-bit
  requantisation.
  """
  values = _as_values(symbols)
  rows = _as_rows(rows, values.size, table)
  idx, escaped = _split(values, table, rows)
  freqs = table.freqs[rows, idx].astype(np.float64)
  coded = table.lengths[rows] > 1  # one-symbol rows cost nothing
  total = float(np.sum(np.where(coded, table.precision - np.log2(freqs), 0.0)))
  if np.any(escaped):
    v = values[escaped]
    lo = table.offsets[rows[escaped]].astype(np.int64)
    hi = lo + table.lengths[rows[escaped]].astype(np.int64) - 2
    d = np.where(v < lo, lo - 1 - v, v - hi - 1).astype(np.uint64)
    n = _floor_log2(d + np.uint64(1))
    total += float(np.sum(1 + 6 + n))
  return total
