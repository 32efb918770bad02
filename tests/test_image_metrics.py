"""PSNR, MS-SSIM and LPIPS as evaluation computes them, against dm-pix and against golden values from
the reference implementations (tests/golden/: how they were made, and the inputs)."""

import json
import math
import pathlib
import sys

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridflow_jax import image_metrics, perceptual

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN_DIR))
import cases  # noqa: E402

GOLDEN = {r["case"]: r for r in json.loads((GOLDEN_DIR / "metrics.json").read_text())["values"]}


def _float(a):
  return jnp.asarray(a[None].astype(np.float32) / 255)


@pytest.fixture(scope="module")
def pairs():
  return {case[0]: cases.pair(case) for case in cases.CASES}


def test_every_case_has_golden_values():
  assert set(GOLDEN) == {case[0] for case in cases.CASES}


def test_psnr_agrees_with_dm_pix(pairs):
  for name, (ref, dist) in pairs.items():
    ours = image_metrics.psnr_uint8(ref, dist)
    if name.endswith("identical"):
      assert ours == math.inf
      continue
    theirs = float(dm_pix.psnr(_float(ref), _float(dist))[0])
    assert abs(ours - theirs) < 1e-4, (name, ours, theirs)


def test_ms_ssim_matches_the_reference_within_1e4(pairs):
  fn = jax.jit(image_metrics.ms_ssim)
  for name, (ref, dist) in pairs.items():
    ours = float(fn(_float(ref), _float(dist))[0])
    assert abs(ours - GOLDEN[name]["ms_ssim"]) < 1e-4, (name, ours, GOLDEN[name]["ms_ssim"])


@pytest.mark.parametrize("net", perceptual.NETS)
def test_lpips_matches_the_reference_package_within_1e4(pairs, net):
  fn, weights = jax.jit(perceptual.lpips_distance(net)), perceptual.lpips_weights(net)
  for name, (ref, dist) in pairs.items():
    ours = float(fn(weights, _float(ref), _float(dist))[0])
    assert abs(ours - GOLDEN[name][f"lpips_{net}"]) < 1e-4, (name, ours)


def test_ms_ssim_is_differentiable_and_orders_distortions(pairs):
  ref, dist = pairs["coffee_noise_odd"]
  x, y = _float(ref), _float(dist)
  ms_ssim = jax.jit(image_metrics.ms_ssim)  # compiled once per shape, instead of op by op
  grad = jax.jit(jax.grad(lambda y: image_metrics.ms_ssim(x, y).sum()))(y)
  assert grad.shape == y.shape and bool(jnp.all(jnp.isfinite(grad)))
  # A small step along the gradient raises MS-SSIM: the gradient is a real one.
  step = y + 1e-3 * grad / jnp.abs(grad).max()
  assert float(ms_ssim(x, step)[0]) > float(ms_ssim(x, y)[0])
  # Per image in a batch; a stronger distortion scores lower.
  worse = jnp.clip(y + (y - x), 0, 1)
  batch = ms_ssim(jnp.concatenate([x, x]), jnp.concatenate([y, worse]))
  assert batch.shape == (2,) and float(batch[1]) < float(batch[0]) < 1.0


def test_ms_ssim_refuses_images_too_small_for_five_scales():
  x = jnp.zeros((1, 160, 400, 3))
  with pytest.raises(ValueError, match="over 160 pixels"):
    image_metrics.ms_ssim(x, x)
  with pytest.raises(ValueError, match="one shape"):
    image_metrics.ms_ssim(jnp.zeros((1, 200, 200, 3)), jnp.zeros((1, 200, 201, 3)))
