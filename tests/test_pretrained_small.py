"""The shipped reference model `small` (docs/results.md): a quality regression check.

Held-out photos (the demo's coffee and flower, never training photos of `configs/small.py`)
compress to the recorded file sizes exactly and decode to the recorded PSNR (to 0.01 dB): a change
to the codec, the entropy coder or the networks that moves either shows here.
"""

import os
import pathlib

import jax
import numpy as np
import pytest
from helpers import hybridflow
from PIL import Image

from hybridflow_jax import pretrained
from hybridflow_jax.codec import files
from hybridflow_jax.codec.api import Codec
from hybridflow_jax.data import demo
from hybridflow_jax.image_metrics import psnr_uint8

# photo -> schedule -> (file bytes, PSNR dB), measured when the bundle was exported: last when the
# joint stage fine-tuned the hybrid's networks (`566e0884`; the bundle before it, `73622ef0`, wrote
# 1346 / 21.9197, 1185 / 21.8993, 1374 / 22.7651, 1176 / 22.7107); before that when the vq,
# transformer and bridge stages were trained again with LPIPS x 1 (the bundle before, LPIPS x 0.1,
# wrote 1356 / 22.1778, 1188 / 22.1562, 1380 / 23.3554, 1179 / 23.3282); before that when the
# bridge moved to LayerNorm (the same files; the GroupNorm bridge decoded 21.9285, 21.8330,
# 23.1015, 22.8213); and the first shipped `small` (side stream at rate target 0.03) wrote
# 1004 / 19.6115, 836 / 19.4501, 1005 / 20.4073, 803 / 20.0422.
RECORDED = {
    "coffee": {"1_4": (1294, 22.1338), "1_16": (1133, 22.1085)},
    "flower": {"1_4": (1422, 23.2331), "1_16": (1223, 23.1796)},
}


# `hybridflow compress` of coffee at 1_4 with the shipped `small` (2026-12-02, `566e0884`, 1294
# bytes).
GOLDEN_FILE = pathlib.Path(__file__).parent / "golden" / "coffee_small_1_4.hfc"


# The regression check of what users get: compiled as their programs are (conftest.py). On one
# pytest-xdist worker: each photo's size compiles the codec's programs once (about 10 s each, with
# XLA's usual optimisations), not once in each worker that meets it.
pytestmark = [pytest.mark.usefixtures("as_users_compile"), pytest.mark.xdist_group("small")]


@pytest.fixture(scope="module")
def small(as_users_compile):
  assert not jax.config.read("jax_disable_most_optimizations")
  assert pretrained.DEFAULT == "small" and "small" in pretrained.available()
  return Codec.load("small")


def test_a_recorded_file_is_coded_again_byte_for_byte(small):
  # Refactoring the container, the payload layout, the integer entropy parameters or the range
  # coder must not change a single byte of a file: the symbols of a recorded file, read back, are
  # coded into the same bytes. From the symbols on everything is integer arithmetic, so this holds
  # on any machine (the encoder networks' float rounding may differ between CPUs: the recorded
  # sizes below check those).
  data = GOLDEN_FILE.read_bytes()
  frame = small.read_symbols(data)
  assert frame.schedule == "1_4" and (frame.height, frame.width) == (400, 600)
  assert files.write(frame, small.fingerprint).data == data


@pytest.mark.parametrize("photo", sorted(RECORDED))
def test_small_compresses_held_out_photos_as_recorded(small, photo):
  rgb = demo.load("heldout")[photo]
  for schedule, (size, psnr) in RECORDED[photo].items():
    data = small.compress(rgb, schedule)
    decoded = small.decompress(data)
    assert len(data) == size, (photo, schedule, len(data))
    assert psnr_uint8(rgb, decoded) == pytest.approx(psnr, abs=0.01), (photo, schedule)
    # Real bpp of the reference point: the paper's regime (below 0.05 bpp at 1_4).
    assert len(data) * 8 / rgb[..., 0].size < 0.05


@pytest.mark.parametrize("photo", sorted(RECORDED))
def test_small_dynamic_files_spend_their_tokens_where_they_count(small, photo):
  # Dynamic masking on held-out photos, with real files: the rate-distortion allocation keeps
  # its budget of indices (here about as many as 1_9 keeps on these grids), its file costs between
  # 1_9's and 1_4's (each region's choice costs 2 bits), and it decodes on or above the line
  # between the two fixed schedules at its own bpp (the paper's claim; with the GroupNorm bridge
  # shipped before, whose regions depended on indices sent anywhere, it did not).
  rgb = demo.load("heldout")[photo]
  files = {s: small.compress_detailed(rgb, s) for s in ("1_9", "1_4", "dynamic")}
  psnr = {s: psnr_uint8(rgb, small.decompress(c.data)) for s, c in files.items()}
  bpp = {s: c.bpp for s, c in files.items()}
  assert bpp["1_9"] <= bpp["dynamic"] <= bpp["1_4"]
  assert files["dynamic"].keep_ratio <= files["dynamic"].budget
  t = (bpp["dynamic"] - bpp["1_9"]) / (bpp["1_4"] - bpp["1_9"])
  assert psnr["dynamic"] >= psnr["1_9"] + t * (psnr["1_4"] - psnr["1_9"]), (psnr, bpp)


def test_compress_without_model_uses_the_shipped_small_and_compiles_once(tmp_path):
  # The commands keep their compiled programs (HYBRIDFLOW_COMPILE_CACHE; every program here, whatever
  # its compile time): the second `compress` reads each program it needs from there.
  rgb = demo.load("heldout")["coffee"][:128, :192]
  Image.fromarray(rgb).save(tmp_path / "in.png")
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(HYBRIDFLOW_COMPILE_CACHE=str(tmp_path / "cache"), JAX_LOG_COMPILES="1",
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_DISABLE_MOST_OPTIMIZATIONS="0")
  r = hybridflow("compress", tmp_path / "in.png", tmp_path / "out.hfc", env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert list((tmp_path / "cache").glob("*-cache"))
  r = hybridflow("decompress", tmp_path / "out.hfc", tmp_path / "out.png", env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert np.asarray(Image.open(tmp_path / "out.png")).shape == rgb.shape
  # Beside them, the networks' exported programs (codec/programs.py): the sender's and the
  # receiver's, which the second `compress` reads back instead of tracing the model again.
  exported = sorted((tmp_path / "cache" / "exported").glob("*.jaxexport"))
  assert len(exported) == 2
  r = hybridflow("compress", tmp_path / "in.png", tmp_path / "again.hfc", env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert (tmp_path / "again.hfc").read_bytes() == (tmp_path / "out.hfc").read_bytes()
  assert sorted((tmp_path / "cache" / "exported").glob("*.jaxexport")) == exported
  programs = r.stderr.count("Compiling jit(")
  assert programs > 0 and r.stderr.count("Persistent compilation cache hit") == programs, \
      r.stderr[-3000:]
