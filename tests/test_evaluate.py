"""`hybridflow eval`: real files, metrics of what the files decode to, baselines, JSON/CSV/plots."""

import csv
import json
import math
import re
import time

import numpy as np
import pytest
from helpers import PRIOR_IMAGES, hybridflow, run_env
from PIL import Image

from hybridflow_jax import cli, image_metrics
from hybridflow_jax.codec.api import Codec
from hybridflow_jax.data import demo
from hybridflow_jax.evaluation import baselines, loop, plots, references, visual

SCHEDULES = ("1_4", "dynamic")
SHAPE = (176, 232)  # MS-SSIM needs sides over 160 px


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
  """Three demo photos as PNG files, one of them in a subfolder."""
  root = tmp_path_factory.mktemp("photos")
  (root / "more").mkdir()
  photos = demo.load("all")
  for name, rel in (("chelsea", "chelsea.png"), ("rocket", "rocket.png"), ("coffee", "more/coffee.png")):
    img = photos[name]
    Image.fromarray(img[:SHAPE[0], :SHAPE[1]]).save(root / rel)
  return root


@pytest.fixture(scope="module")
def evaluated(bundle_dir, photo_dir, compile_cache, tmp_path_factory):
  out = tmp_path_factory.mktemp("eval")
  r = hybridflow("eval", "--model", bundle_dir[0], "--data", f"photos={photo_dir}", "--out", out,
                 "--schedules", ",".join(SCHEDULES), "--baselines", "jpeg,webp", "--no-progress",
                 env=run_env(compile_cache))
  assert r.returncode == 0, r.stderr[-3000:]
  return out / "photos", r


def test_eval_reports_real_file_sizes_and_metrics_of_the_decoded_files(evaluated, bundle_dir,
                                                                       photo_dir):
  out, r = evaluated
  results = json.loads((out / "results.json").read_text())
  ours = [row for row in results["per_image"] if row["codec"] == "hybridflow"]
  assert len(ours) == 3 * len(SCHEDULES)
  assert {row["image"] for row in ours} == {"chelsea.png", "rocket.png", "more/coffee.png"}
  codec = Codec.load(bundle_dir[0])
  for row in ours:
    data = (out / row["file"]).read_bytes()
    pixels = row["width"] * row["height"]
    # The bpp is the file's: its size x 8 / pixels, exactly.
    assert row["bytes"] == len(data) and row["bpp"] == len(data) * 8 / pixels
    # The metrics are of what that file decodes to.
    original = np.asarray(Image.open(photo_dir / row["image"]).convert("RGB"))
    decoded = codec.decompress(data)
    assert row["psnr-rgb"] == pytest.approx(image_metrics.psnr_uint8(original, decoded), abs=1e-9)
    assert 0 < row["ms-ssim-rgb"] <= 1 and 0 <= row["lpips-alex"] and 0 <= row["lpips-vgg"]
    assert row["encoding_time"] > 0 and row["decoding_time"] > 0
    assert row["bpp-estimated"] == pytest.approx(row["bpp"], rel=0.1)
  # Means per operating point, in CompressAI's keys, over the per-image rows.
  assert results["name"] == "hybridflow" and results["operating_points"] == list(SCHEDULES)
  for key in ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time", "lpips-alex",
              "lpips-vgg", "bpp-estimated"):
    for i, op in enumerate(SCHEDULES):
      values = [row[key] for row in ours if row["operating_point"] == op]
      assert results["results"][key][i] == pytest.approx(np.mean(values)), (key, op)
  assert results["dataset"] == {"name": "photos", "source": str(photo_dir), "images": 3}
  assert results["model"]["fingerprint"] == codec.manifest["fingerprint"]
  assert 0 < results["peak_rss_gib"] < 8
  assert "hybridflow" in r.stdout and "bpp" in r.stdout


def test_eval_baselines_sit_at_our_rates(evaluated, photo_dir):
  out, _ = evaluated
  results = json.loads((out / "results.json").read_text())
  assert set(results["baselines"]) == {"jpeg", "webp"}
  rows = results["per_image"]
  ours = {(r["image"], r["operating_point"]): r["bpp"] for r in rows if r["codec"] == "hybridflow"}
  for b in baselines.baselines(["jpeg", "webp"]):
    for row in (r for r in rows if r["codec"] == b.name):
      original = np.asarray(Image.open(photo_dir / row["image"]).convert("RGB"))
      pixels = original.shape[0] * original.shape[1]
      data = baselines.encode_at(b, original, row["quality"], row["scale"])
      assert row["bytes"] == len(data) and row["bpp"] == len(data) * 8 / pixels
      decoded = baselines.decode_at(b, data, original.shape)
      assert decoded.shape == original.shape
      assert row["psnr-rgb"] == pytest.approx(image_metrics.psnr_uint8(original, decoded))
      # At our bpp on that image, or no quality at any of the scales gets there.
      target = ours[(row["image"], row["operating_point"])]
      if abs(row["bpp"] - target) > baselines.RATE_TOLERANCE * target:
        lo, hi = b.qualities
        assert all(abs(len(baselines.encode_at(b, original, q, s)) * 8 / pixels - target)
                   > baselines.RATE_TOLERANCE * target
                   for s in baselines.SCALES for q in range(lo, hi + 1)), row


@pytest.mark.parametrize("b", baselines.baselines(), ids=lambda b: b.name)  # AVIF where Pillow has it
def test_a_baseline_matches_rates_below_its_lowest_quality_by_coding_smaller(b):
  """The ablation's AVIF row: at HybridFlow's rates a codec's lowest quality at full size costs
  too much, so `at_rate` codes the image scaled down; at a rate the full size reaches, it does no
  worse than the quality closest to the rate at full size."""
  rgb = demo.load("heldout")["flower"][:256, :384]
  pixels = rgb.shape[0] * rgb.shape[1]
  lowest = len(b.encode(rgb, b.qualities[0])) * 8 / pixels
  f = baselines.at_rate(b, rgb, lowest / 2)
  assert f.scale < 1 and abs(f.bpp - lowest / 2) <= baselines.RATE_TOLERANCE * lowest / 2, f.label
  assert f.bpp == len(f.data) * 8 / pixels and f.decoded.shape == rgb.shape
  assert b.decode(f.data).shape[:2] == (round(256 * f.scale), round(384 * f.scale))
  target = len(b.encode(rgb, 30)) * 8 / pixels
  f = baselines.at_rate(b, rgb, target)
  plain = b.decode(b.encode(rgb, b.closest(rgb, target, {})))
  assert image_metrics.psnr_uint8(rgb, f.decoded) >= image_metrics.psnr_uint8(rgb, plain)


def test_eval_writes_csv_and_plots(evaluated):
  out, _ = evaluated
  with open(out / "per_image.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3 * len(SCHEDULES) * 3  # images x operating points x (ours, jpeg, webp)
  with open(out / "summary.csv") as f:
    summary = list(csv.DictReader(f))
  assert [(r["codec"], r["operating_point"]) for r in summary] == [
      (c, s) for c in ("hybridflow", "jpeg", "webp") for s in SCHEDULES]
  for name in ("rd_psnr.png", "rd_ms-ssim.png", "rd_lpips.png", "grid.png"):
    with Image.open(out / name) as im:
      assert im.format == "PNG" and im.size[0] > 300, name


def test_eval_report_shows_crops_of_what_each_file_decodes_to(evaluated, bundle_dir, photo_dir):
  out, _ = evaluated
  page = (out / "report.html").read_text()
  results = json.loads((out / "results.json").read_text())
  rows = {(r["image"], r["codec"], r["operating_point"]): r for r in results["per_image"]}
  # Every picture the page shows is in the results folder.
  sources = set(re.findall(r'src="([^"]+)"', page))
  assert sources and all((out / src).is_file() for src in sources), sources
  sections = re.findall(r'<section data-image="([^"]+)" data-crop="(\d+),(\d+),(\d+),(\d+)"', page)
  # --report-images defaults to 3: every image here, in the order evaluated.
  assert [name for name, *_ in sections] == ["chelsea.png", "more/coffee.png", "rocket.png"]
  codec = Codec.load(bundle_dir[0])
  for name, *box in sections:
    top, left, h, w = map(int, box)
    cut = (slice(top, top + h), slice(left, left + w))
    original = np.asarray(Image.open(photo_dir / name).convert("RGB"))
    stem = loop.file_stem(name)
    assert (out / visual.crop_path(stem, "original")).is_file()
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / visual.crop_path(stem, "original"))), original[cut])
    for op in SCHEDULES:
      # Ours: the crop of what the .hfc file decodes to, captioned with that file's figures.
      r = rows[(name, "hybridflow", op)]
      shown = np.asarray(Image.open(out / visual.crop_path(stem, "hybridflow", op)))
      np.testing.assert_array_equal(shown, codec.decompress((out / r["file"]).read_bytes())[cut])
      assert f"{r['bpp']:.4f} bpp &middot; {r['psnr-rgb']:.2f} dB" in page
      # A baseline: the crop of its file at our rate, as measured.
      for b in baselines.baselines(["jpeg", "webp"]):
        r = rows[(name, b.name, op)]
        decoded = baselines.decode_at(b, baselines.encode_at(b, original, r["quality"], r["scale"]),
                                      original.shape)
        np.testing.assert_array_equal(
            np.asarray(Image.open(out / visual.crop_path(stem, b.name, op))), decoded[cut])


def test_the_report_crops_where_the_image_has_detail():
  rng = np.random.default_rng(0)
  flat = np.full((300, 400, 3), 120, np.uint8)
  flat[140:200, 250:330] = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
  top, left, h, w = visual.crop_box(flat, size=96)
  assert (h, w) == (96, 96) and top <= 140 and top + h >= 200 and left <= 250 and left + w >= 330
  # An image smaller than the crop is shown whole; a flat one from its top-left corner.
  assert visual.crop_box(flat[:50, :70], size=96) == (0, 0, 50, 70)
  assert visual.crop_box(np.zeros((300, 400, 3), np.uint8), size=96) == (0, 0, 96, 96)


def test_the_report_page_escapes_image_names(tmp_path):
  rgb = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
  name = 'x/<b>&"q".png'
  c = visual.crops(name, loop.file_stem(name), rgb, {("hybridflow", "1_4"): rgb[::-1]})
  row = {"bpp": 0.04, "psnr-rgb": 20.0, "lpips-alex": 0.5}
  visual.write(tmp_path, [c], {(name, "hybridflow", "1_4"): row}, title="t <1>", intro="",
               columns=["hybridflow"], points=["1_4"])
  page = (tmp_path / "report.html").read_text()
  assert "<b>" not in page and "&lt;b&gt;&amp;&quot;q&quot;.png" in page and "t &lt;1&gt;" in page
  src = set(re.findall(r'src="([^"]+)"', page))  # context, original, decoded
  assert len(src) == 3 and all((tmp_path / s).is_file() for s in src), src
  np.testing.assert_array_equal(
      np.asarray(Image.open(tmp_path / visual.crop_path(c.stem, "hybridflow", "1_4"))), rgb[::-1])


def test_replacing_a_report_removes_its_crops_and_nothing_else(tmp_path):
  ours = ("report.html", "report/a.original.png", "report/a.context.jpg",
          "report/a.hybridflow.1_4.png", "report/a-2.avif.dynamic.png")
  theirs = ("report/notes.txt", "report/mine.png", "report/a.original.png.bak")
  (tmp_path / "report").mkdir()
  for name in ours + theirs:
    (tmp_path / name).write_bytes(b"x")
  visual.clear(tmp_path)
  assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "report").iterdir()) == \
      sorted(theirs) and not (tmp_path / "report.html").exists()


def test_images_whose_names_would_share_a_file_get_their_own():
  taken = set()
  stems = []
  for name in ("a.png", "a.jpg", "x/b.png", "x_b.png", "c d.png"):
    stems.append(loop.file_stem(name, taken))
    taken.add(stems[-1])
  assert stems == ["a", "a-2", "x_b", "x_b-2", "c_d"]


def test_reference_curves_name_their_sources():
  for dataset in ("kodak", "clic2020"):
    curves = references.reference_curves(dataset)
    assert len(curves) >= 5, dataset
    for c in curves:
      assert c["source"] and c["name"] and c["results"]["bpp"]
      assert all(b <= 0.1 for b in c["results"]["bpp"])
      for key, values in c["results"].items():
        assert len(values) == len(c["results"]["bpp"]), (c["name"], key)


def test_rate_distortion_plots_draw_the_reference_curves(tmp_path):
  results = {"dataset": {"name": "kodak", "images": 1}, "operating_points": ["1_4", "dynamic"],
             "results": {"bpp": [0.02, 0.03], "psnr-rgb": [24.0, 25.0],
                         "ms-ssim-rgb": [0.8, 0.85], "lpips-alex": [0.4, 0.35]},
             "baselines": {}}
  plots.rate_distortion(results, references.reference_curves("kodak"), tmp_path)
  for metric in ("psnr", "ms-ssim", "lpips"):
    with Image.open(tmp_path / f"rd_{metric}.png") as im:
      assert im.format == "PNG" and im.size[0] > 300, metric


def test_eval_of_a_training_run_uses_the_same_model_as_its_export(tiny_run, bundle_dir, photo_dir,
                                                                  compile_cache, tmp_path):
  workdir, _ = tiny_run
  r = hybridflow("eval", "--workdir", workdir, "--data", f"one={photo_dir}", "--out", tmp_path,
                 "--schedules", "1_4", "--baselines", "none", "--limit", 1, "--no-progress",
                 "--prior-images", PRIOR_IMAGES, env=run_env(compile_cache))
  assert r.returncode == 0, r.stderr[-3000:]
  results = json.loads((tmp_path / "one" / "results.json").read_text())
  assert results["dataset"]["images"] == 1 and results["baselines"] == {}
  assert results["model"]["fingerprint"] == Codec.load(bundle_dir[0]).manifest["fingerprint"]
  assert math.isfinite(results["results"]["bpp"][0])


@pytest.mark.parametrize("args, message", [
    (("--data", "photos"), "expected NAME=SOURCE"),
    (("--data", "a=/no/such/dir"), "not an existing directory"),
    (("--data", "a=demo", "--schedules", "1_5"), "unknown 1_5"),
    (("--data", "a=demo", "--baselines", "gif"), "unknown baseline"),
    (("--data", "a=demo", "--data", "a=demo:heldout"), "given twice"),
    (("--data", "a=demo", "--references", "/no/such/dir"), "not a directory"),
    (("--data", "a=demo", "--report-images", "-1"), "--report-images must be 0"),
])
def test_eval_user_errors_are_one_line(bundle_dir, tmp_path, args, message, capsys):
  # In this process (`cli.main`, what the `hybridflow` script runs): checked before the model loads.
  t = time.perf_counter()
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["eval", "--model", str(bundle_dir[0]), "--out", str(tmp_path / "out"), *args])
  stderr = capsys.readouterr().err
  assert exit_info.value.code == 2 and message in stderr, stderr
  assert len(stderr.strip().splitlines()) == 1 and time.perf_counter() - t < 5
  assert not (tmp_path / "out").exists()


def test_eval_does_not_replace_results_without_force(bundle_dir, evaluated):
  out, _ = evaluated
  before = (out / "results.json").read_bytes()
  r = hybridflow("eval", "--model", bundle_dir[0], "--data", "photos=demo", "--out", out.parent)
  assert r.returncode == 2 and "--force" in r.stderr
  assert (out / "results.json").read_bytes() == before
  r = hybridflow("eval", "--model", "/no/such/model", "--data", "x=demo", "--out", out.parent / "x")
  assert r.returncode == 2 and "no model bundle" in r.stderr
