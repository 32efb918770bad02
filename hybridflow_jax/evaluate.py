"""`hybridflow eval`: every image compressed to a real file, decoded, and measured.

    hybridflow eval --model models/demo --data kodak=/data/kodak --out results/run1
    hybridflow eval --workdir runs/demo --data demo=demo:heldout --out /tmp/eval

For each data set (`--data NAME=SOURCE`; SOURCE is a folder of images, `tfds:BUILDER/SPLIT[@DIR]`
or a demo split), each image and each operating point (`--schedules`, default 1_4,1_9,1_16,dynamic):
compress to a file (written under OUT/NAME/files/), decompress it, and measure
  bpp (file bytes x 8 / pixels), bpp estimated by the model, PSNR-RGB, MS-SSIM-RGB, LPIPS-Alex,
  LPIPS-VGG, encoding and decoding seconds (after one untimed warm-up per image shape, so no
  compilation is timed; wall clock on this process's devices).
The same images are coded live by JPEG, WebP and (where Pillow writes it) AVIF, each at the quality
whose real bpp is closest to each of our operating points on that image.

Written per data set, under OUT/NAME/:
  results.json   CompressAI's layout ("name", "description", "results": {"bpp": [...], "psnr-rgb",
                 "ms-ssim-rgb", "encoding_time", "decoding_time"}, one entry per operating point),
                 plus our keys (docs/results.md) and "baselines" in the same layout;
  per_image.csv  one row per image x codec x operating point; summary.csv: the means;
  rd_psnr.png, rd_ms-ssim.png, rd_lpips.png: rate-distortion plots with the reference curves of
                 `results/<NAME>/*.json` (published points; `--references`);
  grid.png       originals and reconstructions of the first few images.
Peak memory (resident set size of this process) is recorded in results.json.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import resource
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

SCHEDULES = ("1_4", "1_9", "1_16", "dynamic")
# Our metric keys, in table order; the first five are CompressAI's result keys.
METRICS = ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time", "bpp-estimated",
           "lpips-alex", "lpips-vgg")
GRID_IMAGES = 3
REFERENCES = pathlib.Path(__file__).resolve().parents[1] / "results"
EXIT_USER_ERROR = 2


class UserError(Exception):
  """Printed as one line; exit status 2."""


# --------------------------------------------------------------------------------------------------
# Metrics on uint8 images.


class Measures:
  """PSNR, MS-SSIM and LPIPS (AlexNet, VGG16) of a reconstruction, one jitted program per shape."""

  def __init__(self):
    import jax

    from hybridflow_jax import image_metrics, perceptual
    self._psnr = image_metrics.psnr_uint8
    self._ms_ssim = jax.jit(image_metrics.ms_ssim)
    self._min_side = image_metrics.min_side()
    self._lpips = {net: jax.jit(perceptual.lpips_fn(net)) for net in ("alexnet", "vgg16")}

  def __call__(self, ref: np.ndarray, rec: np.ndarray) -> dict[str, float]:
    x = ref[None].astype(np.float32) / np.float32(255)
    y = rec[None].astype(np.float32) / np.float32(255)
    small = min(ref.shape[:2]) <= self._min_side
    return {
        "psnr-rgb": self._psnr(ref, rec),
        # MS-SSIM is undefined for sides of 160 px or less (five scales of an 11-px window).
        "ms-ssim-rgb": math.nan if small else float(self._ms_ssim(x, y)[0]),
        "lpips-alex": float(self._lpips["alexnet"](x, y)[0]),
        "lpips-vgg": float(self._lpips["vgg16"](x, y)[0]),
    }


# --------------------------------------------------------------------------------------------------
# Live baselines (Pillow).


@dataclasses.dataclass(frozen=True)
class Baseline:
  """A Pillow codec swept over its quality setting (higher quality, more bits)."""

  name: str
  format: str
  qualities: tuple[int, int]
  options: tuple[tuple[str, Any], ...] = ()
  description: str = ""

  def encode(self, rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=self.format, quality=int(quality), **dict(self.options))
    return buf.getvalue()

  @staticmethod
  def decode(data: bytes) -> np.ndarray:
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
      return np.asarray(im.convert("RGB"))

  def closest(self, rgb: np.ndarray, target_bpp: float, cache: dict[int, bytes]) -> int:
    """The quality whose file's bpp is closest to `target_bpp` (sizes grow with quality; found by
    bisection, each size computed once per image through `cache`)."""
    pixels = rgb.shape[0] * rgb.shape[1]

    def bpp(q):
      if q not in cache:
        cache[q] = self.encode(rgb, q)
      return len(cache[q]) * 8 / pixels

    lo, hi = self.qualities
    if bpp(lo) >= target_bpp:
      return lo
    if bpp(hi) <= target_bpp:
      return hi
    while hi - lo > 1:  # invariant: bpp(lo) < target <= bpp(hi)
      mid = (lo + hi) // 2
      lo, hi = (mid, hi) if bpp(mid) < target_bpp else (lo, mid)
    return lo if target_bpp - bpp(lo) <= bpp(hi) - target_bpp else hi


def baselines(names: Sequence[str] | None = None) -> list[Baseline]:
  """JPEG, WebP and AVIF (if this Pillow writes AVIF), or the named subset."""
  from PIL import features
  table = {
      "jpeg": Baseline("jpeg", "JPEG", (1, 95), (("subsampling", 2),),
                       "Pillow JPEG (libjpeg), 4:2:0, default tables"),
      "webp": Baseline("webp", "WEBP", (0, 100), (("method", 6),), "Pillow WebP (libwebp), method 6"),
      "avif": Baseline("avif", "AVIF", (0, 100), (("speed", 6),), "Pillow AVIF (libavif), speed 6"),
  }
  available = [n for n in table if n != "avif" or features.check("avif")]
  if names is None:
    return [table[n] for n in available]
  unknown = [n for n in names if n not in table]
  if unknown:
    raise UserError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(table)}")
  missing = [n for n in names if n not in available]
  if missing:
    raise UserError(f"this Pillow cannot write {', '.join(missing)}")
  return [table[n] for n in names]


# --------------------------------------------------------------------------------------------------
# Data.


def parse_data(specs: Sequence[str]) -> dict[str, str]:
  """{"NAME": "SOURCE"} from --data NAME=SOURCE arguments (names must be unique and plain)."""
  out: dict[str, str] = {}
  for spec in specs:
    name, sep, source = spec.partition("=")
    if not sep or not name or not source:
      raise UserError(f"--data {spec!r}: expected NAME=SOURCE (e.g. kodak=/data/kodak)")
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
      raise UserError(f"--data {spec!r}: NAME may use letters, digits, '-', '_' and '.' only")
    if name in out:
      raise UserError(f"--data: the name {name!r} is given twice")
    out[name] = source
  return out


def images(spec: str, limit: int | None = None, log=print) -> Iterable[tuple[str, np.ndarray]]:
  """(name, uint8 [H, W, 3]) of every readable image of a data spec; unreadable ones are reported
  and skipped. Names are unique file names relative to a folder, or the source's own names."""
  from hybridflow_jax.data import pipeline
  source = pipeline.make_source(spec)
  root = getattr(source, "root", None)
  count = len(source) if limit is None else min(limit, len(source))
  for i in range(count):
    record = source[i]
    name = pipeline.describe(record)
    if root is not None:
      name = os.path.relpath(name, root)
    try:
      if record["error"]:
        raise OSError(record["error"])
      rgb = pipeline.decode_image(record["payload"])
    except Exception as e:  # noqa: BLE001  (any decoder failure: report, go on)
      log(f"skipping {name}: cannot read it ({type(e).__name__}: {str(e)[:100]})")
      continue
    yield name, rgb


# --------------------------------------------------------------------------------------------------
# The evaluation.


def _mean(values: Sequence[float]) -> float:
  values = [v for v in values if v is not None and not math.isnan(v)]
  return float(np.mean(values)) if values else math.nan


def _peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _timed(fn: Callable, *args, **kwargs):
  t = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - t


def evaluate_dataset(codec, name: str, spec: str, out: pathlib.Path, *,
                     schedules: Sequence[str] = SCHEDULES, baseline_codecs: Sequence[Baseline] = (),
                     limit: int | None = None, progress: bool = True,
                     references: pathlib.Path | None = REFERENCES, log=print) -> dict[str, Any]:
  """Evaluates one data set into out/ (see the module docstring); returns the results dict."""
  from tqdm import tqdm

  from hybridflow_jax.codec import api

  files = out / "files"
  files.mkdir(parents=True, exist_ok=True)
  measure = Measures()
  rows: list[dict[str, Any]] = []
  grid: list[tuple[str, np.ndarray, dict[str, np.ndarray]]] = []
  warm_shapes: set[tuple[int, int]] = set()
  listed = list(images(spec, limit, log))
  if not listed:
    raise UserError(f"--data {name}={spec}: no readable images")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", api.ConversionNotice)  # reported once per image by `images`
    bar = tqdm(listed, desc=f"eval {name}", unit="img", disable=not progress, file=sys.stderr)
    for image_name, rgb in bar:
      h, w = rgb.shape[:2]
      pixels = h * w
      if (h, w) not in warm_shapes:  # compile every program this shape needs, untimed
        for schedule in schedules:
          codec.decompress(codec.compress(rgb, schedule))
        measure(rgb, rgb)
        warm_shapes.add((h, w))
      lat = codec.analyze(rgb)
      recon = {}
      for schedule in schedules:
        c, t_enc = _timed(codec.compress_detailed, rgb, schedule)
        decoded, t_dec = _timed(codec.decompress, c.data)
        path = files / f"{_file_stem(image_name)}.{schedule}.hfc"
        path.write_bytes(c.data)
        estimate = codec.estimate_bits(lat, c)["total"] + c.bits["header"]
        recon[schedule] = decoded
        rows.append({"dataset": name, "image": image_name, "width": w, "height": h,
                     "codec": "hybridflow", "operating_point": schedule, "quality": "",
                     "bytes": len(c.data), "bpp": len(c.data) * 8 / pixels,
                     "bpp-estimated": estimate / pixels, "keep_ratio": c.keep_ratio,
                     "encoding_time": t_enc, "decoding_time": t_dec, **measure(rgb, decoded),
                     "file": str(path.relative_to(out))})
      ours = {r["operating_point"]: r["bpp"] for r in rows[-len(schedules):]}
      for b in baseline_codecs:
        cache: dict[int, bytes] = {}
        done: dict[int, dict] = {}  # quality -> measured row (points often share a quality)
        for schedule in schedules:
          q = b.closest(rgb, ours[schedule], cache)
          if q not in done:
            data, t_enc = _timed(b.encode, rgb, q)
            decoded, t_dec = _timed(b.decode, data)
            done[q] = {"bytes": len(data), "bpp": len(data) * 8 / pixels,
                       "bpp-estimated": math.nan, "keep_ratio": math.nan, "encoding_time": t_enc,
                       "decoding_time": t_dec, **measure(rgb, decoded), "file": ""}
          rows.append({"dataset": name, "image": image_name, "width": w, "height": h,
                       "codec": b.name, "operating_point": schedule, "quality": q, **done[q]})
      if len(grid) < GRID_IMAGES:
        grid.append((image_name, rgb, recon))
      bar.set_postfix(bpp=f"{np.mean([r for r in ours.values()]):.4f}")
  results = _summarize(codec, name, spec, rows, schedules, baseline_codecs)
  _write_outputs(out, results, rows)
  plot_rd(results, out, references)
  plot_grid(grid, rows, out / "grid.png")
  return results


def _file_stem(image_name: str) -> str:
  stem = os.path.splitext(image_name)[0]
  return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)


def _summarize(codec, name, spec, rows, schedules, baseline_codecs) -> dict[str, Any]:
  def block(codec_name: str) -> dict[str, list[float]]:
    out = {}
    for key in METRICS:
      out[key] = [_mean([r[key] for r in rows
                         if r["codec"] == codec_name and r["operating_point"] == s])
                  for s in schedules]
    return out

  images_seen = sorted({r["image"] for r in rows})
  return {
      "name": "hybridflow",
      "description": (f"HybridFlow model {codec.fingerprint.hex()} on {name} ({spec}): real files, "
                      f"one per image and operating point; means over {len(images_seen)} images"),
      "results": block("hybridflow"),
      "operating_points": list(schedules),
      "dataset": {"name": name, "source": spec, "images": len(images_seen)},
      "model": {"fingerprint": codec.manifest["fingerprint"],
                "source": codec.manifest.get("source")},
      "baselines": {b.name: {"name": b.name, "description": b.description + "; per image, the "
                             "quality whose real bpp is closest to each HybridFlow point",
                             "results": block(b.name)} for b in baseline_codecs},
      "peak_rss_gib": _peak_rss_gib(),
      "notes": "times exclude compilation (one untimed warm-up per image shape); "
               "MS-SSIM is NaN for images with a side of 160 px or less",
  }


def _json_safe(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [_json_safe(v) for v in x]
  return x


def _write_outputs(out: pathlib.Path, results: dict, rows: list[dict]) -> None:
  (out / "results.json").write_text(
      json.dumps(_json_safe({**results, "per_image": rows}), indent=1) + "\n")
  with open(out / "per_image.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  with open(out / "summary.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["codec", "operating_point", *METRICS])
    for codec_name, block in _blocks(results):
      for i, op in enumerate(results["operating_points"]):
        writer.writerow([codec_name, op, *(block["results"][k][i] for k in METRICS)])


def _blocks(results):
  yield "hybridflow", results
  yield from results["baselines"].items()


def table(results: dict) -> str:
  """The means as a fixed-width text table."""
  heads = ("codec", "point", "bpp", "bpp est", "PSNR", "MS-SSIM", "LPIPS-A", "LPIPS-V", "enc s",
           "dec s")
  keys = ("bpp", "bpp-estimated", "psnr-rgb", "ms-ssim-rgb", "lpips-alex", "lpips-vgg",
          "encoding_time", "decoding_time")
  formats = ("{:.4f}", "{:.4f}", "{:.2f}", "{:.4f}", "{:.4f}", "{:.4f}", "{:.3f}", "{:.3f}")
  lines = [f"{results['dataset']['name']}: {results['dataset']['images']} images",
           "".join(f"{h:>10s}" for h in heads)]
  for codec_name, block in _blocks(results):
    for i, op in enumerate(results["operating_points"]):
      cells = []
      for key, fmt in zip(keys, formats):
        v = block["results"][key][i]
        cells.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
      lines.append(f"{codec_name:>10s}{op:>10s}" + "".join(f"{c:>10s}" for c in cells))
  return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Reference curves and plots.


def reference_curves(dataset: str, root: pathlib.Path | None = REFERENCES) -> list[dict[str, Any]]:
  """The published curves stored under root/<dataset>/*.json (CompressAI's layout + "source")."""
  if root is None or not (pathlib.Path(root) / dataset).is_dir():
    return []
  curves = []
  for path in sorted((pathlib.Path(root) / dataset).glob("*.json")):
    try:
      curve = json.loads(path.read_text())
      curve["results"]["bpp"]  # noqa: B018
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f"{path}: not a results file ({type(e).__name__}: {e})") from None
    curves.append(curve)
  return curves


_AXES = (("psnr", "PSNR-RGB (dB)", ("psnr-rgb",)),
         ("ms-ssim", "MS-SSIM (RGB)", ("ms-ssim-rgb",)),
         ("lpips", "LPIPS-Alex (lower is better)", ("lpips-alex", "lpips")))


def plot_rd(results: dict, out: pathlib.Path, references: pathlib.Path | None = REFERENCES) -> None:
  """rd_psnr.png, rd_ms-ssim.png, rd_lpips.png: our points, the baselines, the reference curves."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  curves = reference_curves(results["dataset"]["name"], references)
  for metric, label, keys in _AXES:
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for codec_name, block in _blocks(results):
      key = keys[0]
      x, y = block["results"]["bpp"], block["results"][key]
      style = dict(marker="o", lw=2) if codec_name == "hybridflow" else dict(marker="s", ls="--")
      ax.plot(x, y, label=f"{codec_name} (live)" if codec_name != "hybridflow" else "HybridFlow",
              **style)
      if codec_name == "hybridflow":
        for xi, yi, op in zip(x, y, results["operating_points"]):
          ax.annotate(op, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for curve in curves:
      key = next((k for k in keys if k in curve["results"]), None)
      if key is None:
        continue
      pts = sorted((b, v) for b, v in zip(curve["results"]["bpp"], curve["results"][key])
                   if v is not None)
      if pts:
        ax.plot(*zip(*pts), marker="^", ls=":", alpha=0.8,
                label=f"{curve['name']} ({curve.get('short_source', 'published')})")
    ax.set_xlabel("bits per pixel (real files)")
    ax.set_ylabel(label)
    ax.set_title(f"{results['dataset']['name']}: {results['dataset']['images']} images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"rd_{metric}.png")
    plt.close(fig)


def plot_grid(grid, rows, path: pathlib.Path) -> None:
  """Originals and reconstructions (one row per image, one column per operating point)."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  if not grid:
    return
  ops = list(grid[0][2])
  fig, axes = plt.subplots(len(grid), len(ops) + 1, figsize=(2.6 * (len(ops) + 1), 2.2 * len(grid)),
                           dpi=110, squeeze=False)
  bpp = {(r["image"], r["operating_point"]): r for r in rows if r["codec"] == "hybridflow"}
  for i, (name, rgb, recon) in enumerate(grid):
    axes[i, 0].imshow(rgb)
    axes[i, 0].set_title(name[-24:], fontsize=7)
    for j, op in enumerate(ops, start=1):
      r = bpp[(name, op)]
      axes[i, j].imshow(recon[op])
      axes[i, j].set_title(f"{op}: {r['bpp']:.4f} bpp, {r['psnr-rgb']:.1f} dB", fontsize=7)
  for ax in axes.ravel():
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


# --------------------------------------------------------------------------------------------------
# The command.


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="hybridflow eval")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--model", help="a bundle written by hybridflow export")
  src.add_argument("--workdir", help="a finished training run (its bundle is built in memory)")
  p.add_argument("--data", action="append", required=True, metavar="NAME=SOURCE",
                 help="a data set: a folder of images, tfds:BUILDER/SPLIT[@DIR] or demo:SPLIT "
                      "(repeat for several)")
  p.add_argument("--out", required=True, help="results directory (one subdirectory per data set)")
  p.add_argument("--schedules", default=",".join(SCHEDULES),
                 help=f"operating points, comma-separated (default {','.join(SCHEDULES)})")
  p.add_argument("--baselines", default=None,
                 help="comma-separated subset of jpeg,webp,avif, or 'none' (default: all available)")
  p.add_argument("--limit", type=int, default=None, help="at most this many images per data set")
  p.add_argument("--references", default=None,
                 help="folder of published curves, <dataset>/*.json (default: the repo's results/)")
  p.add_argument("--prior-images", "--prior_images", dest="prior_images", type=int, default=1000,
                 help="with --workdir: images for the codeword prior (default 1000)")
  p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
  p.add_argument("--force", action="store_true", help="replace existing results of a data set")
  return p


def _schedules(text: str) -> list[str]:
  from hybridflow_jax.models import masking
  names = [s.strip() for s in text.split(",") if s.strip()]
  valid = (*masking.SCHEDULES, "dynamic")
  bad = [s for s in names if s not in valid]
  if bad or not names:
    raise UserError(f"--schedules: unknown {', '.join(bad) or '(none given)'}; choose from "
                    f"{', '.join(valid)}")
  if len(set(names)) != len(names):
    raise UserError("--schedules: a schedule is given twice")
  return names


def _load(ns):
  from hybridflow_jax.codec.api import Codec
  from hybridflow_jax.codec.bundle import BundleError
  if ns.model:
    try:
      return Codec.load(ns.model)
    except BundleError as e:
      raise UserError(str(e)) from None
  from hybridflow_jax import export
  try:
    config, params, provenance = export.load_run(ns.workdir)
    return Codec(export.make_bundle(config, params, prior_images=ns.prior_images,
                                    provenance=provenance, log=lambda m: print(m, file=sys.stderr)))
  except (ValueError, FileNotFoundError) as e:
    raise UserError(str(e)) from None


def main(args: list[str]) -> int:
  parser = _parser()
  parser.error = lambda message: _fail(message)
  ns = parser.parse_args(args)
  try:
    return _run(ns)
  except UserError as e:
    return _fail(str(e))


def _run(ns) -> int:
  datasets = parse_data(ns.data)
  schedules = _schedules(ns.schedules)
  chosen = None if ns.baselines is None else [
      b.strip() for b in ns.baselines.split(",") if b.strip() and b.strip() != "none"]
  baseline_codecs = baselines(chosen)
  if ns.limit is not None and ns.limit < 1:
    raise UserError("--limit must be at least 1")
  out = pathlib.Path(ns.out)
  if out.exists() and not out.is_dir():
    raise UserError(f"--out {out} exists and is not a directory")
  for name in datasets:
    if (out / name).exists() and any((out / name).iterdir()) and not ns.force:
      raise UserError(f"{out / name} exists and is not empty (pass --force to replace it)")
  references = REFERENCES if ns.references is None else pathlib.Path(ns.references)
  if ns.references is not None and not references.is_dir():
    raise UserError(f"--references {ns.references}: not a directory")
  from hybridflow_jax.data import pipeline
  for spec in datasets.values():  # fail on a bad source before the slow part
    try:
      pipeline.make_source(spec)
    except ValueError as e:
      raise UserError(str(e)) from None
  codec = _load(ns)
  log = lambda m: print(m, file=sys.stderr)
  for name, spec in datasets.items():
    target = out / name
    _clear(target)
    results = evaluate_dataset(codec, name, spec, target, schedules=schedules,
                               baseline_codecs=baseline_codecs, limit=ns.limit,
                               progress=ns.progress, references=references, log=log)
    print(table(results))
    print(f"wrote {target}/ (results.json, per_image.csv, summary.csv, rd_*.png, grid.png); "
          f"peak memory {results['peak_rss_gib']:.2f} GiB")
  return 0


OUTPUTS = ("results.json", "per_image.csv", "summary.csv", "grid.png",
           *(f"rd_{m}.png" for m, _, _ in _AXES))


def _clear(target: pathlib.Path) -> None:
  """Removes the outputs of an earlier evaluation (with --force); nothing else in `target`."""
  for name in OUTPUTS:
    (target / name).unlink(missing_ok=True)
  if (target / "files").is_dir():
    for f in (target / "files").glob("*.hfc"):
      f.unlink()


def _fail(message: str) -> int:
  print(f"hybridflow eval: error: {message}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)
