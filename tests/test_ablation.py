"""`hybridflow ablate` on the tiny run: every row is a real file decoded, and its outputs exist."""

import json
import re

import numpy as np
import pytest
from helpers import hybridflow, run_env
from PIL import Image

from hybridflow_jax import losses
from hybridflow_jax.config import matched_baseline_rate
from hybridflow_jax.data import demo


@pytest.fixture(scope="module")
def ablation(tiny_run, compile_cache, tmp_path_factory):
  workdir, _ = tiny_run
  photos = tmp_path_factory.mktemp("heldout")
  # One small held-out photo keeps the programs cheap: coffee, 96x128 from its centre.
  coffee = demo.load("heldout")["coffee"]
  top, left = (coffee.shape[0] - 96) // 2, (coffee.shape[1] - 128) // 2
  Image.fromarray(coffee[top:top + 96, left:left + 128]).save(photos / "coffee.png")
  out = tmp_path_factory.mktemp("ablation")
  r = hybridflow("ablate", "--workdir", workdir, "--data", f"photos={photos}", "--out", out,
                 "--prior-images", 2, env=run_env(compile_cache))
  assert r.returncode == 0, r.stderr[-3000:]
  return out, r


def test_ablation_writes_every_row_from_real_files(ablation):
  out, r = ablation
  for name in ("ablation.json", "ablation.md", "ablation.png", "panel.png"):
    assert (out / name).stat().st_size > 0, name
  results = json.loads((out / "ablation.json").read_text())
  rows = {(m["method"], m["point"]): m for m in results["means"]}
  for point in ("1_4", "1_9", "1_16", "dynamic"):
    assert ("hybrid", point) in rows and ("codebook-only", point) in rows
  assert ("hybrid y=0", "1_4") in rows and ("continuous-only", "") in rows
  assert ("avif", "at hybrid 1_4") in rows
  # Fewer sent indices, a smaller file (on this small crop 1_9 and 1_16 differ by one index, which
  # can vanish in the coder's last byte); the codebook-only and y=0 rows decode the same file.
  assert rows["hybrid", "1_16"]["bpp"] <= rows["hybrid", "1_9"]["bpp"] <= rows["hybrid", "1_4"]["bpp"]
  assert rows["hybrid", "1_16"]["bpp"] < rows["hybrid", "1_4"]["bpp"]
  assert rows["codebook-only", "1_4"]["bpp"] == rows["hybrid", "1_4"]["bpp"]
  # The continuous-only codec's file holds z and y only, trained for the hybrid's 1_4 rate.
  assert 0 < rows["continuous-only", ""]["bpp"] < 1.0
  for m in results["means"]:
    assert np.isfinite(m["psnr-rgb"]) and 0 <= m["lpips-alex"] < 2, m
  assert "| hybrid | 1_4 |" in r.stdout and "continuous-only" in r.stdout
  # The claims are checked from the same means, and printed.
  assert [c["check"].split()[0] for c in results["checks"]] == [
      "hybrid", "continuous-only", "hybrid", "hybrid", "dynamic"]
  assert "| check | measured |" in r.stdout and "| check |" in (out / "ablation.md").read_text()


def test_ablation_report_shows_every_row_beside_the_original(ablation):
  out, _ = ablation
  page = (out / "report.html").read_text()
  results = json.loads((out / "ablation.json").read_text())
  sources = set(re.findall(r'src="([^"]+)"', page))
  assert all((out / src).is_file() for src in sources), sources
  # One section per image (the default: all of them), a crop of every row of that image: the
  # hybrid and codebook-only at every schedule, the rows matched to 1_4 in its line.
  assert re.findall(r'<section data-image="([^"]+)"', page) == results["images"]
  shown = {src.split(".", 1)[1] for src in sources if src.endswith(".png")}
  assert shown == {"original.png", *(f"{m}.{p}.png" for m in ("hybrid", "codebook-only")
                                     for p in ("1_4", "1_9", "1_16", "dynamic")),
                   "hybrid-y-0.1_4.png", "continuous-head.1_4.png", "continuous-only.1_4.png",
                   "avif.1_4.png"}
  # Captions are the rows' own figures (AVIF's with its quality and scale).
  avif = next(r for r in results["rows"] if r["method"] == "avif")
  assert f"{avif['bpp']:.4f} bpp &middot; {avif['psnr-rgb']:.2f} dB" in page and avif["point"] in page
  assert "holds" in page and "hybrid PSNR &gt;= codebook-only" in page


def _mean(method, point, bpp, psnr, lpips):
  return {"method": method, "point": point, "bpp": bpp, "psnr-rgb": psnr, "lpips-alex": lpips}


def test_ablation_checks_state_each_claim_and_refuse_unmatched_rates():
  from hybridflow_jax.evaluation.ablation import checks

  means = [_mean("hybrid", "1_4", 0.030, 21.0, 0.40), _mean("codebook-only", "1_4", 0.030, 18.5, 0.5),
           _mean("hybrid", "1_9", 0.026, 20.8, 0.42), _mean("hybrid", "1_16", 0.024, 20.9, 0.43),
           _mean("hybrid", "dynamic", 0.028, 20.95, 0.41),
           _mean("continuous-only", "", 0.032, 20.0, 0.60)]
  got = {c["check"].split(" (")[0]: c for c in checks(means)}
  holds = {k: v["holds"] for k, v in got.items()}
  assert holds == {"hybrid PSNR >= codebook-only + 2 dB": True,
                   "continuous-only bpp within 10% of the hybrid's": True,
                   "hybrid LPIPS <= 0.7 x continuous-only's": True,
                   "hybrid PSNR ordered 1_4 >= 1_9 >= 1_16": False,       # 20.8 < 20.9
                   "dynamic on or above the 1_9-1_4 line at its bpp": True}  # 20.95 vs 20.90
  # A baseline 20 % off the hybrid's rate: its LPIPS ratio is reported, not judged.
  means[-1] = _mean("continuous-only", "", 0.036, 20.0, 0.60)
  got = {c["check"].split(" (")[0]: c for c in checks(means)}
  assert got["continuous-only bpp within 10% of the hybrid's"]["holds"] is False
  assert got["hybrid LPIPS <= 0.7 x continuous-only's"]["holds"] is None
  assert "(0.67 x)" in got["hybrid LPIPS <= 0.7 x continuous-only's"]["measured"]


def test_ablation_refuses_to_overwrite_and_needs_the_matched_point(ablation, tiny_run, tmp_path):
  out, _ = ablation
  workdir, _ = tiny_run
  r = hybridflow("ablate", "--workdir", workdir, "--data", "d=demo:heldout", "--out", out)
  assert r.returncode == 2 and "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
  r = hybridflow("ablate", "--workdir", workdir, "--data", "d=demo:heldout", "--out", tmp_path,
                 "--schedules", "1_9,1_16")
  assert r.returncode == 2 and "1_4" in r.stderr


def test_rate_targeting_weights_the_rate_only_above_the_target():
  mse = np.float32(0.01)
  lam = 0.002
  under = float(losses.rate_distortion(np.float32(0.02), mse, lam, 0.03, 32.0))
  over = float(losses.rate_distortion(np.float32(0.04), mse, lam, 0.03, 32.0))
  off = float(losses.rate_distortion(np.float32(0.04), mse, lam, 0.0, 32.0))
  distortion = lam * 255.0 ** 2 * 0.01
  assert under == pytest.approx(0.02 + distortion, rel=1e-5)
  assert over == pytest.approx(32 * 0.04 + distortion, rel=1e-5)
  assert off == pytest.approx(0.04 + distortion, rel=1e-5)


def test_the_baseline_is_matched_to_the_hybrids_1_4_rate():
  # 1/4 of the indices at log2(1024) = 10 bits, one per 256 pixels, on top of the side stream.
  assert matched_baseline_rate(1024, 0.03) == pytest.approx(0.03 + 10 / 1024)
  assert matched_baseline_rate(256, 0.03, "1_16") == pytest.approx(0.03 + 8 / 4096)
