"""Freezing probability models into integer tables (numpy only).

A bitstream decodes the same on every machine only if the encoder and the decoder feed the entropy
coder bit-identical probabilities. Floating-point networks do not give that guarantee across
hardware, so every model the coder uses is frozen once, at export time, into a `CdfTable`: integer
frequencies that sum to exactly 2**precision per distribution. The tables are stored with the model
(`to_arrays` / `from_arrays`) and the coder (`hybridflow_jax.codec.coder`) only ever sees them.

Tables built here:

- `factorized_table`: one distribution per channel of the hyper-latent z, from the learned
  factorized prior's cumulative.
- `gaussian_tables`: one zero-mean quantised Gaussian per scale of `gaussian_scale_table`, for the
  residuals r = round(y - mean); `scale_to_index` maps predicted scales to rows.
- `index_prior_table`: one distribution over the K codeword indices, from counts measured on
  training data.

Escapes: the factorized and Gaussian tables cover a finite support [offset, offset + length - 2]
plus one last symbol, the escape, which carries the tail mass outside the support. A value outside
the support is coded as the escape followed by the value itself in a simple universal code (see
`hybridflow_jax.codec.coder`), so every integer stays codable however wrong the model is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping

import numpy as np

# Probabilities are integers summing to 2**PRECISION. constriction's fixed-point models work with up
# to 24 bits; 16 bits keeps stored tables small (every frequency fits a uint16) while the smallest
# probability, 2**-16, costs at most 16 bits for a symbol the model thought (nearly) impossible.
PRECISION = 16


def quantize_pmf(pmf: np.ndarray, precision: int = PRECISION) -> np.ndarray:
  """Integer frequencies for float pmfs: a uint32 array of `pmf`'s shape.

  pmf: float [..., L], the probabilities of L symbols over the last axis (one distribution per
    leading index). Rows need not sum to one and may hold zeros, but must be finite, non-negative
    and have positive mass.
  Returns frequencies that sum to exactly 2**precision over the last axis, every entry >= 1 (so
  every symbol stays codable).

  Every symbol first gets frequency 1; the remaining 2**precision - L units are shared in
  proportion to the probabilities (floors), and the units the floors leave over go to the largest
  fractional parts, ties to the lower index. Only float64 and integer numpy operations are used,
  with sequential sums, so the result is reproducible bit for bit.
  """
  if not 1 <= precision <= 24:
    raise ValueError(f"precision must be in [1, 24] bits, got {precision}")
  p = np.asarray(pmf, dtype=np.float64)
  if p.ndim == 0:
    raise ValueError("pmf must have at least one axis (the symbols)")
  num_symbols = p.shape[-1]
  total = 1 << precision
  if not 1 <= num_symbols <= total:
    raise ValueError(f"a pmf over {num_symbols} symbols cannot be quantised to {precision} bits")
  if not np.all(np.isfinite(p)) or np.any(p < 0):
    raise ValueError("pmf entries must be finite and non-negative")
  # cumsum adds left to right; np.sum's pairwise, vectorised order could differ between builds.
  mass = np.cumsum(p, axis=-1)[..., -1:]
  if np.any(mass <= 0):
    raise ValueError("every pmf row needs positive mass")
  free = total - num_symbols
  target = p / mass * free
  floors = np.floor(target)
  freqs = floors.astype(np.int64)
  deficit = free - np.cumsum(freqs, axis=-1)[..., -1]
  # Hand the left-over units to the largest remainders; a stable sort breaks ties by index.
  order = np.argsort(-(target - floors), axis=-1, kind="stable")
  ranks = np.empty_like(order)
  np.put_along_axis(ranks, order, np.broadcast_to(np.arange(num_symbols), order.shape), axis=-1)
  freqs += ranks < np.maximum(deficit, 0)[..., None]
  freqs += 1
  # Float rounding could in principle leave a row a unit off; settle it on its largest entry.
  sums = np.cumsum(freqs, axis=-1)[..., -1]
  for index in map(tuple, np.argwhere(sums != total)):
    row = freqs[index]
    while row.sum() != total:
      row[np.argmax(row)] += 1 if row.sum() < total else -1
  return freqs.astype(np.uint32)


@dataclasses.dataclass(eq=False)
class CdfTable:
  """N frozen integer distributions, each over a contiguous range of integer values.

  freqs: uint32 [N, L]; row n holds the frequencies of its `lengths[n]` symbols (each >= 1, summing
    to 2**precision), zero-padded to the common width L.
  offsets: int32 [N]; the integer value that symbol 0 of each row stands for.
  lengths: int32 [N]; symbols per row. With `escape`, the last symbol of each row is the escape and
    the row codes the values [offset, offset + length - 2] directly; without, the values
    [offset, offset + length - 1] and nothing else.
  escape: whether the last symbol of every row is an escape.
  precision: the frequencies sum to 2**precision.

  The arrays are copied and made read-only: a table is frozen, so the coder may cache what it
  builds from it.
  """

  freqs: np.ndarray
  offsets: np.ndarray
  lengths: np.ndarray
  escape: bool = True
  precision: int = PRECISION

  def __post_init__(self):
    freqs = np.array(self.freqs)
    offsets = np.array(self.offsets)
    lengths = np.array(self.lengths)
    if freqs.ndim != 2 or offsets.shape != (freqs.shape[0],) or lengths.shape != (freqs.shape[0],):
      raise ValueError(f"table shapes disagree: freqs {freqs.shape}, offsets {offsets.shape}, "
                       f"lengths {lengths.shape}")
    for name, a in (("freqs", freqs), ("offsets", offsets), ("lengths", lengths)):
      if a.dtype.kind not in "iu":
        raise ValueError(f"table {name} must be integers, got {a.dtype}")
    if not 1 <= int(self.precision) <= 24:
      raise ValueError(f"table precision must be in [1, 24] bits, got {self.precision}")
    num_rows, width = freqs.shape
    if num_rows == 0 or width == 0:
      raise ValueError("a table needs at least one row and one symbol")
    min_length = 2 if self.escape else 1
    if np.any(lengths < min_length) or np.any(lengths > width):
      raise ValueError(f"row lengths must be in [{min_length}, {width}]")
    if np.any(np.abs(offsets.astype(np.int64)) >= 2**31 - width):
      raise ValueError("offsets must keep every coded value inside int32")
    valid = np.arange(width)[None, :] < lengths[:, None]
    f = freqs.astype(np.int64)
    if np.any(f[valid] < 1) or np.any(f[~valid] != 0):
      raise ValueError("frequencies must be >= 1 inside each row and 0 in the padding")
    if np.any(f.sum(axis=1) != 1 << int(self.precision)):
      raise ValueError(f"every row must sum to 2**{self.precision}")
    self.freqs = freqs.astype(np.uint32)
    self.offsets = offsets.astype(np.int32)
    self.lengths = lengths.astype(np.int32)
    self.escape = bool(self.escape)
    self.precision = int(self.precision)
    for a in (self.freqs, self.offsets, self.lengths):
      a.setflags(write=False)

  @classmethod
  def from_rows(cls, rows: list[np.ndarray], offsets, escape: bool = True,
                precision: int = PRECISION) -> CdfTable:
    """Builds a table from rows of possibly different lengths (zero-padded to the longest)."""
    lengths = np.array([len(r) for r in rows], dtype=np.int32)
    freqs = np.zeros((len(rows), int(lengths.max())), dtype=np.uint32)
    for n, r in enumerate(rows):
      freqs[n, :len(r)] = r
    return cls(freqs, np.asarray(offsets), lengths, escape, precision)

  @property
  def num_rows(self) -> int:
    return int(self.freqs.shape[0])

  def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
    """The table as named arrays for an .npz (several tables share one file through `prefix`).

    Frequencies are stored as uint16 when they fit: at 16-bit precision, whenever every row has at
    least two symbols (a one-symbol row holds 2**16 and forces uint32).
    """
    fits16 = int(self.freqs.max()) < 1 << 16
    return {
        f"{prefix}freqs": self.freqs.astype(np.uint16 if fits16 else np.uint32),
        f"{prefix}offsets": self.offsets.copy(),
        f"{prefix}lengths": self.lengths.copy(),
        f"{prefix}escape": np.array(self.escape, dtype=np.uint8),
        f"{prefix}precision": np.array(self.precision, dtype=np.uint8),
    }

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "") -> CdfTable:
    """Inverse of `to_arrays`; validates everything (raises ValueError on a malformed table)."""
    try:
      return cls(freqs=np.asarray(arrays[f"{prefix}freqs"]),
                 offsets=np.asarray(arrays[f"{prefix}offsets"]),
                 lengths=np.asarray(arrays[f"{prefix}lengths"]),
                 escape=bool(np.asarray(arrays[f"{prefix}escape"])),
                 precision=int(np.asarray(arrays[f"{prefix}precision"])))
    except KeyError as e:
      raise ValueError(f"table array {e.args[0]!r} is missing") from None

  @property
  def nbytes(self) -> int:
    """Bytes of the stored arrays (as `to_arrays` writes them, before any npz compression)."""
    return sum(a.nbytes for a in self.to_arrays().values())

  def digest(self) -> bytes:
    """SHA-256 of the table's canonical content: feeds the model fingerprint of a bundle."""
    h = hashlib.sha256()
    for name, a in sorted(self.to_arrays().items()):
      h.update(name.encode())
      h.update(str(a.shape).encode())
      h.update(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes())
    return h.digest()


def _bisect(predicate: Callable[[np.ndarray], np.ndarray], true_at: np.ndarray,
            false_at: np.ndarray) -> np.ndarray:
  """Per channel, the integer next to the boundary of a monotone predicate, on the `true_at` side.

  true_at, false_at: int64 [C] with predicate(true_at) all True and predicate(false_at) all False;
  the predicate must switch exactly once between them.
  """
  a, b = true_at.copy(), false_at.copy()
  while np.any(np.abs(b - a) > 1):
    m = a + (b - a) // 2
    ok = predicate(m)
    a = np.where(ok, m, a)
    b = np.where(ok, b, m)
  return a


def factorized_table(cdf_fn: Callable[[np.ndarray], np.ndarray], channels: int,
                     tail_mass: float = 1e-9, max_support: int = 4095,
                     precision: int = PRECISION) -> CdfTable:
  """Freezes a per-channel density (the hyper-latent's factorized prior) into a `CdfTable`.

  cdf_fn: maps float64 [channels, n] points to float64 [channels, n], the cumulative of each
    channel's density at its points (row c is channel c).
  tail_mass: per channel, the support [lo, hi] is the narrowest integer range that leaves at most
    tail_mass / 2 of the mass below lo - 0.5 and above hi + 0.5 each.
  max_support: at most this many values per channel; a wider support is cut to the window of that
    length around the channel's median (the escape then carries more mass).
  Returns one row per channel over pmf(v) = cdf(v + 0.5) - cdf(v - 0.5) for v in [lo, hi], followed
  by the escape, whose probability is the mass outside, quantised with `quantize_pmf`.
  """
  if not 0 < tail_mass < 1:
    raise ValueError(f"tail_mass must be in (0, 1), got {tail_mass}")
  if max_support < 1 or max_support + 1 > 1 << precision:
    raise ValueError(f"max_support must be in [1, 2**{precision} - 1], got {max_support}")
  half_tail = tail_mass / 2

  def cdf(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    column = points.ndim == 1
    grid = points[:, None] if column else points
    out = np.asarray(cdf_fn(grid), dtype=np.float64)
    if out.shape != grid.shape or not np.all(np.isfinite(out)):
      raise ValueError(f"cdf_fn must return finite values of shape {grid.shape}, got {out.shape}")
    out = np.clip(out, 0.0, 1.0)
    return out[:, 0] if column else out

  # Bracket all channels between -bound and bound (the tails may sit far from zero), then bisect.
  bound = 1
  while True:
    below = cdf(np.full(channels, -bound - 0.5))
    above = cdf(np.full(channels, bound + 0.5))
    if np.all(below <= half_tail) and np.all(above >= 1 - half_tail):
      break
    bound *= 2
    if bound > 2**30:
      raise ValueError("cdf_fn does not reach its tails within +-2**30")
  lo_end = np.full(channels, -bound, dtype=np.int64)
  hi_end = np.full(channels, bound, dtype=np.int64)
  # lo: the largest v with cdf(v - 0.5) <= tail / 2;
  # hi: the smallest v with cdf(v + 0.5) >= 1 - tail / 2.
  lo = _bisect(lambda v: cdf(v - 0.5) <= half_tail, lo_end, hi_end + 1)
  hi = _bisect(lambda v: cdf(v + 0.5) >= 1 - half_tail, hi_end, lo_end - 1)
  too_wide = hi - lo + 1 > max_support
  if np.any(too_wide):
    median = _bisect(lambda v: cdf(v + 0.5) >= 0.5, hi_end, lo_end - 1)
    start = np.clip(median - max_support // 2, lo, hi - max_support + 1)
    lo = np.where(too_wide, start, lo)
    hi = np.where(too_wide, start + max_support - 1, hi)
  sizes = hi - lo + 1
  width = int(sizes.max())
  edges = cdf(lo[:, None] - 0.5 + np.arange(width + 1)[None, :])  # [C, width + 1]
  pmf = np.diff(edges, axis=1)
  rows = []
  for c in range(channels):
    size = int(sizes[c])
    outside = edges[c, 0] + (1.0 - edges[c, size])
    row_pmf = np.concatenate([np.maximum(pmf[c, :size], 0.0), [max(outside, 0.0)]])
    rows.append(quantize_pmf(row_pmf, precision))
  return CdfTable.from_rows(rows, lo.astype(np.int32), escape=True, precision=precision)


def gaussian_scale_table(min_scale: float = 0.11, max_scale: float = 256.0,
                         levels: int = 128) -> np.ndarray:
  """`levels` log-spaced Gaussian scales (standard deviations, in quantisation steps): float64."""
  if not 0 < min_scale < max_scale or levels < 2:
    raise ValueError("need 0 < min_scale < max_scale and levels >= 2")
  return np.exp(np.linspace(math.log(min_scale), math.log(max_scale), levels))


def scale_to_index(scales: np.ndarray, table: np.ndarray) -> np.ndarray:
  """Row of the Gaussian table for each predicted scale: int32 of `scales`' shape.

  The table scale nearest in log space (ties go to the smaller), clipped to the table; scales at or
  below zero go to row 0, NaN to the last row. Nearest, not "round up": the rate cost of coding
  with a scale off by a factor e^d is second order in d when d is symmetric around 0, but first
  order when every scale is rounded the same way. Measured on a trained model's latents with 64
  levels, rounding up cost 2-8 % more bits than the model's own estimate on some images, nearest
  rounding under 0.4 % on most images but up to 1.35 % on some; with 128 levels (the default,
  13 % -> 6 % apart) every demo photo is within 0.2 %. (Values in the tails stay codable either
  way: they escape.)

  This is the one step that maps network output to the coder's world: everything after it is
  integers. The encoder and decoder must compute the same scales, so the network that predicts
  them (the hyper-decoder, from the decoded z) must itself be deterministic enough that no scale
  lands on the other side of a rounding boundary.
  """
  log_table = np.log(np.asarray(table, dtype=np.float64))
  s = np.asarray(scales, dtype=np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    log_s = np.where(s > 0, np.log(np.where(s > 0, s, 1.0)), -np.inf)
  log_s = np.where(np.isnan(s), np.inf, log_s)
  up = np.minimum(np.searchsorted(log_table, log_s, side="left"), len(log_table) - 1)
  down = np.maximum(up - 1, 0)
  index = np.where(log_s - log_table[down] <= log_table[up] - log_s, down, up)
  return index.astype(np.int32)


def _normal_tail(x: np.ndarray) -> np.ndarray:
  """P(N(0, 1) > x), accurate far into the tail (via erfc)."""
  erfc = np.frompyfunc(math.erfc, 1, 1)
  return 0.5 * np.asarray(erfc(np.asarray(x, dtype=np.float64) / math.sqrt(2.0)), dtype=np.float64)


def _normal_quantile_upper(tail: float) -> float:
  """The z with P(N(0, 1) > z) = tail, by bisection (numpy has no erfinv)."""
  a, b = 0.0, 40.0
  for _ in range(200):
    m = 0.5 * (a + b)
    if 0.5 * math.erfc(m / math.sqrt(2.0)) > tail:
      a = m
    else:
      b = m
  return b


def gaussian_tables(scale_table: np.ndarray, tail_mass: float = 1e-9,
                    precision: int = PRECISION) -> CdfTable:
  """One zero-mean quantised Gaussian per table scale, over residuals [-R, R] plus an escape.

  scale_table: float64 [levels], e.g. `gaussian_scale_table()`.
  For scale s, R is the smallest integer with P(|x| > R + 0.5) <= tail_mass for x ~ N(0, s**2);
  pmf(r) = P(r - 0.5 < x <= r + 0.5) and the escape gets the mass beyond R + 0.5 on both sides.
  """
  if not 0 < tail_mass < 1:
    raise ValueError(f"tail_mass must be in (0, 1), got {tail_mass}")
  z = _normal_quantile_upper(tail_mass / 2)
  rows, offsets = [], []
  for s in np.asarray(scale_table, dtype=np.float64):
    if not s > 0:
      raise ValueError(f"scales must be positive, got {s}")
    radius = max(0, math.ceil(z * s - 0.5))
    if 2 * radius + 2 > 1 << precision:
      raise ValueError(f"scale {s} needs {2 * radius + 2} symbols, more than 2**{precision}")
    r = np.arange(radius + 1, dtype=np.float64)
    # Upper tails beyond each half-integer; differences of tails keep precision far out.
    tails = _normal_tail((r + 0.5) / s)
    side = np.concatenate([[1.0 - 2.0 * tails[0]], tails[:-1] - tails[1:]])  # r = 0, 1, ..., R
    pmf = np.concatenate([side[:0:-1], side, [2.0 * tails[-1]]])
    rows.append(quantize_pmf(pmf, precision))
    offsets.append(-radius)
  return CdfTable.from_rows(rows, np.array(offsets, dtype=np.int32), escape=True, precision=precision)


def uniform_excess_bits(num_symbols: int, precision: int = PRECISION) -> float:
  """Upper bound on how far the quantised uniform table's cost per symbol exceeds log2(K).

  Zero when K is a power of two; otherwise log2(2**precision / (K * floor(2**precision / K))).
  """
  total = 1 << precision
  return math.log2(total / (num_symbols * (total // num_symbols)))


def index_prior_table(counts: np.ndarray, uniform_mix: float = 1 / 32,
                      precision: int = PRECISION) -> CdfTable:
  """The static prior of the K codeword indices: a one-row table over [0, K), no escape.

  counts: [K] non-negative counts of each index on training data.
  uniform_mix: weight of the uniform distribution mixed into the add-one-smoothed frequencies.
  The pmf is (1 - uniform_mix) * (counts + 1) / (sum + K) + uniform_mix / K, quantised.

  Guarantees (`expected_bits` measures the first):
  - On the measured counts, the expected cost per index is never above that of the quantised
    uniform table, which is log2(K) when K is a power of two and at most
    log2(K) + `uniform_excess_bits(K)` otherwise. If mixing would break this (a nearly uniform
    histogram plus quantisation), the uniform table is returned instead.
  - Every index is codable, and no index costs more than log2(K) + log2(1 / uniform_mix) plus the
    quantisation excess (about 5 bits above uniform at the default), however rare it was in training.
  It does not bound the cost on other data: an image whose indices follow the training histogram
  costs about the same; one that uses the rarest indices costs more than log2(K) each.
  """
  c = np.asarray(counts, dtype=np.float64)
  if c.ndim != 1 or c.size < 1 or c.size > 1 << precision:
    raise ValueError(f"counts must be a vector of 1..2**{precision} entries, got shape {c.shape}")
  if not np.all(np.isfinite(c)) or np.any(c < 0):
    raise ValueError("counts must be finite and non-negative")
  if not 0 <= uniform_mix <= 1:
    raise ValueError(f"uniform_mix must be in [0, 1], got {uniform_mix}")
  k = c.size
  smoothed = (c + 1.0) / (np.cumsum(c)[-1] + k)
  pmf = (1.0 - uniform_mix) * smoothed + uniform_mix / k
  table = CdfTable(quantize_pmf(pmf, precision)[None], np.zeros(1, np.int32),
                   np.array([k], np.int32), escape=False, precision=precision)
  uniform = CdfTable(quantize_pmf(np.ones(k), precision)[None], np.zeros(1, np.int32),
                     np.array([k], np.int32), escape=False, precision=precision)
  if c.sum() > 0 and expected_bits(table, c) > expected_bits(uniform, c):
    return uniform
  return table


def expected_bits(table: CdfTable, counts: np.ndarray, row: int = 0) -> float:
  """Average bits per symbol of `table`'s row `row` on data with histogram `counts`.

  counts: [length] counts of symbols 0..length-1 of the row (values offset..offset+length-1;
  the escape, if any, is the last). Returns sum(counts * -log2(freq / 2**precision)) / sum(counts).
  """
  c = np.asarray(counts, dtype=np.float64)
  length = int(table.lengths[row])
  if c.shape != (length,):
    raise ValueError(f"counts must have shape ({length},), got {c.shape}")
  total = c.sum()
  if total <= 0:
    raise ValueError("counts must not all be zero")
  cost = table.precision - np.log2(table.freqs[row, :length].astype(np.float64))
  return float((c * cost).sum() / total)
