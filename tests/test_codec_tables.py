import io
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hybridflow_jax.codec import coder, tables

P = tables.PRECISION


def kl_bits(pmf, freqs, precision=P):
  p = pmf / pmf.sum()
  q = freqs / 2.0**precision
  nz = p > 0
  return float(np.sum(p[nz] * np.log2(p[nz] / q[nz])))


def logistic_cdf(locs, widths):
  """cdf_fn for channels with logistic densities, float64 [C, n] -> [C, n]."""
  locs = np.asarray(locs, dtype=np.float64)[:, None]
  widths = np.asarray(widths, dtype=np.float64)[:, None]
  return lambda v: 0.5 * (1.0 + np.tanh((v - locs) / (2.0 * widths)))


def normal_mass(lo, hi, s):
  """P(lo < x <= hi) for x ~ N(0, s**2)."""
  return 0.5 * (math.erf(hi / (s * math.sqrt(2))) - math.erf(lo / (s * math.sqrt(2))))


# --- quantize_pmf -------------------------------------------------------------------------------


def test_quantize_pmf_sums_exactly_and_keeps_every_symbol():
  pmf = np.array([0.5, 0.0, 0.25, 1e-12, 0.25])
  f = tables.quantize_pmf(pmf)
  assert f.dtype == np.uint32 and f.sum() == 2**P and f.min() >= 1
  assert f[1] == 1 and f[3] == 1  # zero and negligible probabilities stay codable
  # Not normalised input is fine: only the proportions matter.
  np.testing.assert_array_equal(tables.quantize_pmf(pmf * 7.5), f)


def test_quantize_pmf_is_batched_and_deterministic():
  rng = np.random.default_rng(0)
  pmf = rng.random((3, 4, 50)) ** 4
  f = tables.quantize_pmf(pmf)
  assert f.shape == pmf.shape
  np.testing.assert_array_equal(f.sum(-1), 2**P)
  for i in range(3):
    for j in range(4):
      np.testing.assert_array_equal(tables.quantize_pmf(pmf[i, j]), f[i, j])
  np.testing.assert_array_equal(tables.quantize_pmf(pmf.copy()), f)


def test_quantize_pmf_breaks_ties_by_index():
  # 3 equal symbols: 65536 = 3 * 21845 + 1, the extra unit goes to symbol 0.
  np.testing.assert_array_equal(tables.quantize_pmf(np.ones(3)), [21846, 21845, 21845])


@pytest.mark.parametrize("kind", ["flat", "peaked", "gaussian", "two_modes"])
def test_quantize_pmf_is_close_to_the_float_pmf(kind):
  x = np.arange(256, dtype=np.float64)
  pmf = {
      "flat": np.ones(256),
      "peaked": np.where(x == 17, 1.0, 1e-7),
      "gaussian": np.exp(-0.5 * ((x - 128) / 3.0) ** 2),
      "two_modes": np.exp(-np.abs(x - 40) / 2) + 0.3 * np.exp(-np.abs(x - 200) / 9),
  }[kind]
  f = tables.quantize_pmf(pmf)
  # Every symbol is reserved 1/65536, which a pmf with (nearly) empty symbols pays for: at most
  # -log2(1 - 256/65536) bits. Beyond that, rounding costs little.
  reserve = -math.log2(1 - 256 / 2**P)
  assert kl_bits(pmf, f) < reserve + 1e-3, kl_bits(pmf, f)
  if kind == "flat":
    assert kl_bits(pmf, f) < 1e-12


@pytest.mark.parametrize("bad", [np.array([0.5, np.nan]), np.array([0.5, -0.1]), np.zeros(4),
                                 np.ones(2**P + 1), np.float64(1.0)])
def test_quantize_pmf_rejects_bad_input(bad):
  with pytest.raises(ValueError):
    tables.quantize_pmf(bad)


@settings(max_examples=200, deadline=None)
@given(pmf=hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 300)),
                      elements=st.one_of(st.just(0.0), st.floats(0.0, 1e6))),
       precision=st.sampled_from([9, 12, 16, 20]))
def test_quantize_pmf_property(pmf, precision):
  pmf[:, 0] += 1e-3  # every row needs some mass
  f = tables.quantize_pmf(pmf, precision)
  assert f.shape == pmf.shape and f.dtype == np.uint32
  np.testing.assert_array_equal(f.astype(np.int64).sum(-1), 2**precision)
  assert f.min() >= 1
  np.testing.assert_array_equal(tables.quantize_pmf(pmf, precision), f)
  # Each frequency is within one unit of its share of the free mass (plus its reserved unit).
  free = 2**precision - pmf.shape[1]
  share = pmf / pmf.sum(-1, keepdims=True) * free
  assert np.all(np.abs(f - 1 - share) <= 1.0 + 1e-6)


# --- CdfTable -----------------------------------------------------------------------------------


def test_table_storage_round_trip():
  table = tables.gaussian_tables(tables.gaussian_scale_table(levels=8))
  buf = io.BytesIO()
  np.savez(buf, **table.to_arrays("y_"), **tables.index_prior_table(np.arange(16)).to_arrays("i_"))
  buf.seek(0)
  with np.load(buf) as stored:
    back = tables.CdfTable.from_arrays(stored, "y_")
    index = tables.CdfTable.from_arrays(stored, "i_")
  np.testing.assert_array_equal(back.freqs, table.freqs)
  np.testing.assert_array_equal(back.offsets, table.offsets)
  np.testing.assert_array_equal(back.lengths, table.lengths)
  assert back.escape and not index.escape and back.precision == P
  assert back.digest() == table.digest() and index.digest() != table.digest()
  # Frequencies are stored as uint16: 2 bytes each, plus offsets and lengths.
  assert table.nbytes == table.freqs.size * 2 + table.num_rows * 8 + 2
  assert not table.freqs.flags.writeable


def test_table_validation():
  good = tables.index_prior_table(np.ones(8)).to_arrays()
  broken = dict(good, freqs=good["freqs"] + np.uint16(1))
  with pytest.raises(ValueError, match="sum"):
    tables.CdfTable.from_arrays(broken)
  with pytest.raises(ValueError, match="missing"):
    tables.CdfTable.from_arrays({k: v for k, v in good.items() if k != "lengths"})
  with pytest.raises(ValueError):
    tables.CdfTable(np.array([[2**P, 0]]), [0], [2], escape=False)  # a zero inside the row


# --- factorized, Gaussian and index tables ------------------------------------------------------


def test_factorized_table_covers_each_channel_up_to_tail_mass():
  locs, widths = [0.0, 3.3, -40.0, 1000.0], [0.2, 1.0, 4.0, 0.7]
  cdf = logistic_cdf(locs, widths)
  table = tables.factorized_table(cdf, 4, tail_mass=1e-9)
  assert table.escape and table.num_rows == 4
  for c in range(4):
    lo = int(table.offsets[c])
    hi = lo + int(table.lengths[c]) - 2
    one = lambda v, c=c: float(cdf(np.full((4, 1), v))[c, 0])
    assert one(lo - 0.5) <= 5e-10 and 1 - one(hi + 0.5) <= 5e-10
    # The narrowest such support: one value less on either side would leave too much outside.
    assert one(lo + 0.5) > 5e-10 and 1 - one(hi - 0.5) > 5e-10
    assert lo <= locs[c] <= hi
  # Wider channels get wider supports.
  assert table.lengths[2] > table.lengths[1] > table.lengths[0]


def test_factorized_table_caps_the_support_around_the_median():
  cdf = logistic_cdf([5.0, 100.0], [1.0, 50.0])
  table = tables.factorized_table(cdf, 2, max_support=63)
  assert table.lengths[1] == 64  # 63 values + the escape
  lo = int(table.offsets[1])
  assert lo <= 100 - 31 and lo + 62 >= 100 + 31
  # The escape then carries the mass outside: about P(|x - 100| > 31.5), far more than 1e-9.
  outside = 2 / (1 + math.exp(31.5 / 50.0))
  assert table.freqs[1, 63] / 2**P == pytest.approx(outside, rel=0.02)


def test_gaussian_tables_radius_matches_tail_mass():
  scales = tables.gaussian_scale_table()
  assert scales.shape == (128,) and scales[0] == pytest.approx(0.11) and scales[-1] == pytest.approx(256)
  table = tables.gaussian_tables(scales, tail_mass=1e-9)
  radius = -table.offsets
  np.testing.assert_array_equal(table.lengths, 2 * radius + 2)
  assert np.all(np.diff(radius) >= 0)
  for s, r in zip(scales[::9], radius[::9]):
    outside = 1 - normal_mass(-r - 0.5, r + 0.5, s)
    assert outside <= 1e-9
    if r > 0:
      assert 1 - normal_mass(-r + 0.5, r - 0.5, s) > 1e-9  # R is the smallest such radius
  # Symmetric (up to the unit that tie-breaking by index hands to the left) and close to the
  # quantised Gaussian.
  for n in (0, 20, 40):
    r, s = int(radius[n]), scales[n]
    row = table.freqs[n, :2 * r + 1].astype(np.float64)
    assert np.abs(row - row[::-1]).max() <= 1
    pmf = np.array([normal_mass(v - 0.5, v + 0.5, s) for v in range(-r, r + 1)] + [1e-9])
    assert kl_bits(pmf, table.freqs[n, :2 * r + 2].astype(np.float64)) < 0.03


def test_scale_to_index_rounds_to_the_nearest_in_log_and_clips():
  table = tables.gaussian_scale_table(0.5, 8.0, 5)  # about 0.5, 1, 2, 4, 8
  np.testing.assert_allclose(table, [0.5, 1, 2, 4, 8])
  t = table
  scales = np.array([[0.1, t[0], t[0] * 1.01, t[1] * 1.4, t[1] * 1.42, -1.0],
                     [t[3], t[4] * 0.99, t[4], 1e9, np.nan, 0.0]])
  idx = tables.scale_to_index(scales, table)
  assert idx.dtype == np.int32 and idx.shape == scales.shape
  # sqrt(2) ~ 1.414 is the log-midpoint between 1 and 2.
  np.testing.assert_array_equal(idx, [[0, 0, 0, 1, 2, 0], [3, 4, 4, 4, 4, 0]])


def test_nearest_scale_rounding_costs_little_rate():
  """Coding N(0, s) data with the table row of s costs within 0.5 % of the ideal rate on average
  over scales spread across the table (128 levels)."""
  scale_table = tables.gaussian_scale_table()
  table = tables.gaussian_tables(scale_table)
  rng = np.random.default_rng(0)
  scales = np.exp(rng.uniform(np.log(0.15), np.log(20.0), 4000))
  values = np.round(rng.normal(size=(64, scales.size)) * scales).astype(np.int64)
  rows = np.broadcast_to(tables.scale_to_index(scales, scale_table), values.shape)
  real = coder.estimate_bits(values, table, rows)
  from math import erf, sqrt
  cdf = np.vectorize(lambda x: 0.5 * (1 + erf(x / sqrt(2))))
  ideal = -np.log2(cdf((np.abs(values) + 0.5) / scales) - cdf((np.abs(values) - 0.5) / scales)).sum()
  assert abs(real - ideal) / ideal < 0.005, (real, ideal)


def zipf_counts(k, n=200_000, a=1.3, seed=0):
  rng = np.random.default_rng(seed)
  return np.bincount((rng.zipf(a, n) - 1) % k, minlength=k)


@pytest.mark.parametrize("counts", [zipf_counts(4096), np.full(4096, 50), np.zeros(4096),
                                    np.r_[np.full(4095, 3), 10**6]], ids=["zipf", "flat", "none", "one"])
def test_index_prior_expected_bits_never_exceed_log2_k(counts):
  table = tables.index_prior_table(counts)
  assert not table.escape and table.lengths[0] == 4096 and table.freqs.min() >= 1
  measured = counts if counts.sum() else np.ones(4096)
  assert tables.expected_bits(table, measured) <= 12.0
  # And no index costs more than log2(K) + log2(1 / uniform_mix) (+ quantisation).
  assert (P - np.log2(table.freqs[0].astype(np.float64))).max() <= 12.0 + 5.0 + 0.05


def test_index_prior_saves_bits_on_a_skewed_histogram_and_bounds_non_power_of_two_k():
  counts = zipf_counts(4096)
  assert tables.expected_bits(tables.index_prior_table(counts), counts) < 8.0
  flat = np.full(1000, 7)
  table = tables.index_prior_table(flat)
  bound = math.log2(1000) + tables.uniform_excess_bits(1000)
  assert tables.expected_bits(table, flat) <= bound
  assert tables.uniform_excess_bits(4096) == 0.0


@settings(max_examples=60, deadline=None)
@given(counts=hnp.arrays(np.int64, st.sampled_from([2, 16, 256, 4096]), elements=st.integers(0, 10**5)),
       mix=st.sampled_from([0.0, 1 / 64, 1 / 32, 0.5]))
def test_index_prior_property(counts, mix):
  table = tables.index_prior_table(counts, uniform_mix=mix)
  assert table.freqs.min() >= 1
  if counts.sum():
    assert tables.expected_bits(table, counts) <= math.log2(counts.size) + 1e-12
