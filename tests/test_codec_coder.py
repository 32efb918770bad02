import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridflow_jax.codec import tables
from hybridflow_jax.codec.coder import CodecError, Decoder, Encoder, estimate_bits

CHANNELS = 16


@pytest.fixture(scope="module")
def factorized():
  locs = np.linspace(-3.0, 5.0, CHANNELS)[:, None]
  widths = np.linspace(0.3, 6.0, CHANNELS)[:, None]
  # Logistic cdfs, one per channel.
  return tables.factorized_table(lambda v: 0.5 * (1.0 + np.tanh((v - locs) / (2.0 * widths))),
                                 CHANNELS), locs[:, 0], widths[:, 0]


@pytest.fixture(scope="module")
def scale_table():
  return tables.gaussian_scale_table()


@pytest.fixture(scope="module")
def gaussian(scale_table):
  return tables.gaussian_tables(scale_table)


@pytest.fixture(scope="module")
def index_prior():
  rng = np.random.default_rng(3)
  return tables.index_prior_table(np.bincount((rng.zipf(1.4, 50_000) - 1) % 4096, minlength=4096))


def round_trip(values, table, rows, verify=True):
  enc = Encoder()
  enc.encode_with_table(values, table, rows)
  data = enc.finish(verify=verify)
  out = Decoder(data).decode_with_table(np.size(values), table, rows)
  np.testing.assert_array_equal(out, np.ravel(values))
  return data


def assert_size_close(data, bits):
  # constriction codes with 24-bit requantised models and ends the stream with up to 4 bytes.
  assert abs(len(data) - bits / 8) <= 0.01 * bits / 8 + 8, (len(data), bits / 8)


def test_factorized_round_trip_with_outliers(factorized):
  table, locs, widths = factorized
  rng = np.random.default_rng(0)
  n = 20_000
  rows = rng.integers(0, CHANNELS, n)
  values = np.round(rng.logistic(locs[rows], widths[rows])).astype(np.int64)
  values[rng.choice(n, 40, replace=False)] = rng.integers(-10**12, 10**12, 40)  # far escapes
  values[:4] = [2**62 - 1, -(2**62) + 1, 0, -1]
  data = round_trip(values, table, rows)
  assert_size_close(data, estimate_bits(values, table, rows))


def test_gaussian_round_trip_with_outliers(gaussian, scale_table):
  rng = np.random.default_rng(1)
  shape = (24, 32, 26)  # ~20k latents [h, w, C]
  scales = np.exp(rng.uniform(np.log(0.05), np.log(300.0), shape))
  rows = tables.scale_to_index(scales, scale_table)
  residuals = np.round(rng.normal(0.0, scales)).astype(np.int64)
  residuals.flat[rng.choice(residuals.size, 30, replace=False)] = rng.integers(-10**6, 10**6, 30)
  data = round_trip(residuals, gaussian, rows)
  bits = estimate_bits(residuals, gaussian, rows)
  assert_size_close(data, bits)
  # The escape payload is 1 sign bit, a 6-bit length and floor(log2(d + 1)) mantissa bits.
  one = np.array([int(-gaussian.offsets[0]) + 1 + 6])  # d = 6 past the support of row 0
  escape_cost = tables.PRECISION - np.log2(float(gaussian.freqs[0, gaussian.lengths[0] - 1]))
  assert estimate_bits(one, gaussian, 0) == pytest.approx(escape_cost + 1 + 6 + 2)


def test_index_prior_round_trip(index_prior):
  rng = np.random.default_rng(2)
  indices = (rng.zipf(1.4, 5000) - 1) % 4096
  indices[:3] = [0, 4095, 1234]
  data = round_trip(indices, index_prior, 0)
  bits = estimate_bits(indices, index_prior, 0)
  assert_size_close(data, bits)
  assert bits < 12 * indices.size  # cheaper than log2(K) each on data like the training data
  with pytest.raises(ValueError, match="no escape"):
    Encoder().encode_with_table(np.array([4096]), index_prior, 0)
  with pytest.raises(ValueError, match="no escape"):
    Encoder().encode_with_table(np.array([-1]), index_prior, 0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 17, 4096, 2**20 + 7])
def test_uniform_round_trip(n):
  rng = np.random.default_rng(n)
  ids = rng.integers(0, n, 300)
  enc = Encoder()
  enc.encode_uniform(ids, n)
  data = enc.finish()
  np.testing.assert_array_equal(Decoder(data).decode_uniform(300, n), ids)
  assert len(data) <= np.ceil(300 * np.log2(n) / 8) + 4
  with pytest.raises(ValueError):
    enc.encode_uniform(np.array([n]), n)


def test_several_calls_share_one_stream(factorized, gaussian, index_prior):
  table, _, _ = factorized
  rng = np.random.default_rng(4)
  z = rng.integers(-4, 5, (3, 5, CHANNELS))
  z_rows = np.broadcast_to(np.arange(CHANNELS), z.shape)
  y = rng.integers(-20, 21, 500)
  y_rows = rng.integers(0, 64, 500)
  idx = rng.integers(0, 4096, 40)
  schedule = rng.integers(0, 4, 6)
  enc = Encoder()
  enc.encode_with_table(z, table, z_rows)
  enc.encode_uniform(schedule, 4)
  enc.encode_with_table(y, gaussian, y_rows)
  enc.encode_with_table(idx, index_prior, 0)
  dec = Decoder(enc.finish())
  np.testing.assert_array_equal(dec.decode_with_table(z.size, table, z_rows), z.ravel())
  np.testing.assert_array_equal(dec.decode_uniform(6, 4), schedule)
  np.testing.assert_array_equal(dec.decode_with_table(500, gaussian, y_rows), y)
  np.testing.assert_array_equal(dec.decode_with_table(40, index_prior, 0), idx)


def test_empty_stream():
  assert Encoder().finish() == b""
  dec = Decoder(b"")
  assert dec.decode_uniform(0, 5).shape == (0,)


def test_shortened_ending_is_sound_without_the_check(gaussian):
  # finish() moves the final code point; prove on many streams that the arithmetic alone is right
  # (the default verification would otherwise hide a mistake behind its fallback).
  rng = np.random.default_rng(5)
  saved = 0
  for _ in range(300):
    n = int(rng.integers(1, 200))
    rows = rng.integers(0, 64, n)
    values = rng.integers(-3, 4, n)
    data = round_trip(values, gaussian, rows, verify=False)
    enc = Encoder()
    enc.encode_with_table(values, gaussian, rows)
    assert enc.finish() == data
    saved += 4 * enc._coder.num_words() - len(data)
  assert saved > 300  # more than a byte per stream on average


def test_bad_inputs_are_rejected(gaussian):
  enc = Encoder()
  with pytest.raises(ValueError, match="integers"):
    enc.encode_with_table(np.array([0.5]), gaussian, 0)
  with pytest.raises(ValueError, match="2\\*\\*62"):
    enc.encode_with_table(np.array([2**62]), gaussian, 0)
  with pytest.raises(ValueError, match="rows"):
    enc.encode_with_table(np.array([1, 2]), gaussian, np.array([0, gaussian.num_rows]))
  with pytest.raises(ValueError, match="rows"):
    enc.encode_with_table(np.array([1, 2]), gaussian, np.array([0, 1, 2]))
  dec = Decoder(b"\x12\x34")
  with pytest.raises(CodecError):
    dec.decode_with_table(3, gaussian, np.array([0, 1]))
  with pytest.raises(CodecError):
    dec.decode_with_table(-1, gaussian, 0)
  with pytest.raises(CodecError):
    Decoder("not bytes")


@settings(max_examples=2000, deadline=None)
@given(data=st.binary(max_size=80), count=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_decoding_garbage_raises_only_codec_error(data, count, seed, factorized, gaussian,
                                                  index_prior):
  table, _, _ = factorized
  rng = np.random.default_rng(seed)
  start = time.perf_counter()
  try:
    dec = Decoder(data)
    out = dec.decode_with_table(count, gaussian, rng.integers(0, 64, count))
    assert out.shape == (count,)
    dec.decode_with_table(count, table, rng.integers(0, CHANNELS, count))
    dec.decode_uniform(count, 3)
    out = dec.decode_with_table(count, index_prior, 0)
    assert np.all((out >= 0) & (out < 4096))
  except CodecError:
    pass
  # No hang: at most 4 x 300 symbols, whatever the bytes say. A bound, not a timing (those are in
  # benchmarks/): an example's first call also builds its rows' models, which took 0.51 s once
  # on a loaded 2-core machine.
  assert time.perf_counter() - start < 5.0


def test_stream_bytes_are_pinned():
  # Any change here (constriction's quantiser, the float64 path, escapes, the ending) breaks every
  # file written so far: bump the format version instead.
  freqs = [[1, 60000, 5000, 535, 0, 0, 0, 0], [7, 9, 11, 13, 65000, 400, 95, 1]]
  table = tables.CdfTable(np.array(freqs), offsets=[-1, -3], lengths=[4, 8], escape=True)
  values = np.array([0, 0, 1, -1, 2, 40, 0, 1, 2, 3, -3, 1000, -70000, 4, 0, 0, 0])
  rows = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1])
  enc = Encoder()
  enc.encode_with_table(values, table, rows)
  enc.encode_uniform(np.array([3, 0, 2]), 4)
  data = enc.finish()
  assert data.hex() == "c476379053a6a3aed48a3370ffa0fff27a87e4288ac1d046c8119cdf"
  dec = Decoder(data)
  np.testing.assert_array_equal(dec.decode_with_table(values.size, table, rows), values)
  np.testing.assert_array_equal(dec.decode_uniform(3, 4), [3, 0, 2])
