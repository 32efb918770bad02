"""The integer entropy parameters (codec/entropy_parameters.py): the JAX program, with int32 or
with (exact) float64 products, equals a plain NumPy int64 implementation of the arithmetic
docs/bitstream.md states, bit for bit, for any z_hat (overflow bounds included), in processes with
other XLA settings and with x64 on; and it stays close to the float h_s it was frozen from."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import ROOT, run_env
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridflow_jax.codec import bundle as bundle_lib
from hybridflow_jax.codec import entropy_parameters as ep
from hybridflow_jax.codec.api import Codec
from hybridflow_jax.codec.bundle import BundleError
from hybridflow_jax.codec.tables import scale_to_index

INT32_MAX = 2**31 - 1


def reference(model: ep.IntegerEntropyModel, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The integer h_s in NumPy int64, written from docs/bitstream.md: (mean_int, row).

  Also asserts that no accumulator or rounding sum leaves int32 (the int32 program would wrap)."""
  a = np.clip(np.asarray(z, np.int64), -ep.Z_LIMIT, ep.Z_LIMIT)
  for i, layer in enumerate(model.layers):
    kernel = layer.kernel.astype(np.int64)
    cin = kernel.shape[0] // 9
    b, h, w, _ = a.shape
    padded = np.zeros((b, h + 2, w + 2, cin), np.int64)
    padded[:, 1:-1, 1:-1] = a
    acc = np.zeros((b, h, w, kernel.shape[1]), np.int64) + layer.bias
    for dy in range(3):
      for dx in range(3):
        tap = (3 * dy + dx) * cin
        acc += padded[:, dy:dy + h, dx:dx + w] @ kernel[tap:tap + cin]
    shift = layer.shift.astype(np.int64)
    right, left = np.maximum(-shift, 0), np.maximum(shift, 0)
    summed = acc + (2**right) // 2
    assert np.abs(acc).max() <= INT32_MAX and np.abs(summed).max() <= INT32_MAX, f"layer {i}"
    hidden = i < len(model.layers) - 1
    limits = np.full(shift.shape, ep.PRE_MAX if hidden else ep.MEAN_LIMIT)
    if not hidden:
      limits[shift.size // 2:] = ep.SCALE_LIMIT
    # Clipped to the largest multiple of 2**left within the limit, then shifted left.
    bound = limits // 2**left
    q = np.clip(np.floor_divide(summed, 2**right), -bound, bound) * 2**left
    if hidden:
      act = layer.lut.astype(np.int64)[q + ep.PRE_MAX]
      c = act.shape[-1] // 4
      a = np.zeros((b, 2 * h, 2 * w, c), np.int64)
      for dy in range(2):
        for dx in range(2):
          a[:, dy::2, dx::2] = act[..., (2 * dy + dx) * c:(2 * dy + dx + 1) * c]
  m = q.shape[-1] // 2
  mean, v = q[..., :m], q[..., m:]
  row = (v[..., None] > model.thresholds.astype(np.int64)).sum(-1)
  return mean, row


@pytest.fixture(scope="module")
def stored(bundle_dir):
  """The tiny trained model's bundle as read from disk."""
  return bundle_lib.read(bundle_dir[0])


@pytest.fixture(scope="module")
def frozen(stored):
  """Its integer h_s."""
  return stored["entropy_model"]


@pytest.fixture(scope="module")
def program(frozen):
  """Both forms of the arithmetic: int32 products, and float64 products (what the codec runs on
  the host, `on_host_cpu`); asserts they agree, returns the result."""
  int32 = jax.jit(lambda z: ep.integer_forward(frozen, z))
  float64 = jax.jit(lambda z: ep.integer_forward(frozen, z, float64_products=True))

  def both(z):
    out = jax.device_get(int32(z))
    with jax.enable_x64(True):
      out64 = jax.device_get(float64(z))
    for a, b in zip(out, out64, strict=True):
      assert a.dtype == b.dtype
      np.testing.assert_array_equal(a, b)
    return out
  return both


def _check(frozen, program, z):
  mean, row = jax.device_get(program(np.asarray(z, np.int32)))
  ref_mean, ref_row = reference(frozen, z)
  np.testing.assert_array_equal(mean, ref_mean)
  np.testing.assert_array_equal(row, ref_row)
  return mean, row


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([3, 40, 400]))
def test_the_int32_program_equals_the_int64_reference_on_random_z(frozen, program, seed, spread):
  # spread 400 goes beyond Z_LIMIT: the clip is part of the arithmetic.
  nz = frozen.layers[0].kernel.shape[0] // 9
  z = np.random.default_rng(seed).integers(-spread, spread + 1, (2, 3, 3, nz))
  _check(frozen, program, z)


def test_extreme_z_stays_within_the_overflow_bounds(frozen, program):
  nz = frozen.layers[0].kernel.shape[0] // 9
  kernel = frozen.layers[0].kernel.reshape(3, 3, nz, -1)
  cases = [np.full((1, 3, 3, nz), v) for v in (ep.Z_LIMIT, -ep.Z_LIMIT, 2**24, -2**24, 0)]
  # The first layer's worst case, for every 8th output channel: each input at +-Z_LIMIT with the
  # sign of its weight, so the centre accumulator reaches Z_LIMIT * sum|W| + b.
  for c in range(0, kernel.shape[-1], 8):
    cases.append(ep.Z_LIMIT * np.sign(kernel[..., c])[None])
    cases.append(-ep.Z_LIMIT * np.sign(kernel[..., c])[None])
  for z in cases:
    _check(frozen, program, z)


def test_real_z_of_the_demo_photos(codec, frozen, program, photos):
  for rgb in photos.values():
    lat = codec.analyze(rgb)
    mean, row = _check(frozen, program, lat.z[None])
    # What the codec uses is exactly this arithmetic, mean scaled by 2**-10 into float32.
    np.testing.assert_array_equal(lat.scale_index, row[0][:lat.residual.shape[0],
                                                          :lat.residual.shape[1]])
    np.testing.assert_array_equal(lat.mean, ep.mean_to_float(mean[0])[:lat.mean.shape[0],
                                                                      :lat.mean.shape[1]])


def test_the_integer_h_s_stays_close_to_the_float_one(codec, stored, frozen, program, photos):
  hs = jax.device_get(codec.params["continuous"]["hyper_synthesis"])
  z = np.stack([codec.analyze(rgb).z for rgb in list(photos.values())[:4]])
  mean_f, scale_f, _ = ep.float_forward(hs, z)
  mean, row = jax.device_get(program(z.astype(np.int32)))
  row_f = scale_to_index(scale_f, stored["scales"])
  assert np.abs(row - row_f).max() <= 1
  assert np.mean(row == row_f) > 0.9
  assert np.abs(ep.mean_to_float(mean) - mean_f).max() < 0.05  # of a quantisation step


_PROBE = """
import hashlib, sys, numpy as np, jax
from hybridflow_jax.codec import bundle, entropy_parameters as ep
model = bundle.read(sys.argv[1])["entropy_model"]
z = np.load(sys.argv[2])
fn = ep.on_host_cpu(model)
h = hashlib.sha256()
for zi in z:
  mean, row = fn(zi, (4 * zi.shape[0], 4 * zi.shape[1]))
  assert mean.dtype == np.float32 and row.dtype == np.int32
  h.update(mean.tobytes() + row.tobytes())
print(h.hexdigest(), jax.config.jax_enable_x64)
"""

SETTINGS = {
    "one thread": {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
                                "intra_op_parallelism_threads=1"},
    "fast math": {"XLA_FLAGS": "--xla_cpu_enable_fast_math=true "
                               "--xla_cpu_enable_fast_min_max=true"},
    "xnnpack": {"XLA_FLAGS": "--xla_cpu_use_xnnpack=true"},
    "x64": {"JAX_ENABLE_X64": "1"},
}


def test_every_xla_setting_and_x64_gives_the_same_bits(bundle_dir, frozen, tmp_path):
  nz = frozen.layers[0].kernel.shape[0] // 9
  rng = np.random.default_rng(7)
  z = np.concatenate([rng.integers(-30, 31, (3, 3, 3, nz)),
                      np.full((1, 3, 3, nz), ep.Z_LIMIT), np.full((1, 3, 3, nz), -ep.Z_LIMIT)])
  np.save(tmp_path / "z.npy", z)
  fn = ep.on_host_cpu(frozen)
  h = hashlib.sha256()
  for zi in z:
    ref_mean, ref_row = reference(frozen, zi[None])
    h.update(ep.mean_to_float(ref_mean[0]).tobytes() + ref_row[0].astype(np.int32).tobytes())
    mean, row = fn(zi, (12, 12))
    np.testing.assert_array_equal(row, ref_row[0])
  expected = h.hexdigest()
  procs = {name: subprocess.Popen(
      [sys.executable, "-c", _PROBE, str(bundle_dir[0]), str(tmp_path / "z.npy")],
      env={**run_env(""), **extra}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      cwd=ROOT) for name, extra in SETTINGS.items()}
  for name, p in procs.items():
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, (name, err[-2000:])
    digest, x64 = out.split()
    assert digest == expected, name
    assert x64 == str(name == "x64"), name


def test_freezing_narrows_weights_to_keep_int32_and_refuses_the_impossible():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(9 * 64, 8))
  bias = rng.normal(size=8)
  k, b, shift = ep._quantize_layer(kernel, bias, 1.0, np.full(8, 0.01), ep.ACT_MAX, ep.PRE_MAX)
  assert int(np.abs(k).max()).bit_length() + 1 == ep.WEIGHT_BITS  # fits at full width
  # 2**16 inputs of up to 2047 need narrower weights for sum|W| * 2047 to fit in int32.
  wide = rng.normal(size=(9 * 8192, 8))
  k, b, shift = ep._quantize_layer(wide, bias, 1.0, np.full(8, 0.01), ep.ACT_MAX, ep.PRE_MAX)
  assert int(np.abs(k).max()).bit_length() + 1 < ep.WEIGHT_BITS
  assert (ep.ACT_MAX * np.abs(k.astype(np.int64)).sum(0) + np.abs(b)).max() <= INT32_MAX
  # Equal weights over 9 * 8192 inputs: even 6-bit weights (25 each here) overflow.
  with pytest.raises(ep.IntegerModelError, match="int32"):
    ep._quantize_layer(np.ones((9 * 8192, 2)), bias[:2], 1.0, np.full(2, 0.01), ep.ACT_MAX,
                       ep.PRE_MAX)


def test_the_thresholds_pick_the_nearest_table_scale():
  scales = np.exp(np.linspace(np.log(0.11), np.log(256.0), 128))
  t = ep.scale_thresholds(scales)
  v = np.arange(-8 * 2**ep.SCALE_FRAC_BITS, 300 * 2**ep.SCALE_FRAC_BITS, 37)
  rows = (v[:, None] > t).sum(-1)
  float_rows = scale_to_index(np.logaddexp(0.0, v / 2.0**ep.SCALE_FRAC_BITS), scales)
  # Equal except within one grid step of a boundary.
  assert np.mean(rows == float_rows) > 0.999 and np.abs(rows - float_rows).max() <= 1


def test_a_version_1_bundle_is_refused_with_one_line(bundle_dir, tmp_path):
  copy = tmp_path / "old"
  shutil.copytree(bundle_dir[0], copy)
  manifest = json.loads((copy / "manifest.json").read_text())
  manifest["version"] = 1
  (copy / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(BundleError, match="version 1 is not supported.*export the model again"):
    Codec.load(copy)
  os.remove(copy / "tables.npz")
  with pytest.raises(BundleError, match="missing tables.npz"):
    Codec.load(copy)
