"""What `hybridflow eval` writes and prints per data set: results.json, per_image.csv, summary.csv,
report.html, and a text table of the means (docs/results.md describes the files)."""

from __future__ import annotations

import csv
import html
import json
import math
import pathlib
import resource
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from hybridflow_jax.evaluation import visual
from hybridflow_jax.evaluation.baselines import Baseline

# Our metric keys, in table order; the first five are CompressAI's result keys.
METRICS = ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time", "bpp-estimated",
           "lpips-alex", "lpips-vgg")
FILES = ("results.json", "per_image.csv", "summary.csv")


def summarize(rows: Sequence[dict[str, Any]], *, codec, name: str, spec: str,
              schedules: Sequence[str], baselines: Sequence[Baseline]) -> dict[str, Any]:
  """The results of `codec` (a Codec) on data set `name` (spec `spec`) from the loop's rows: means
  over images per codec and operating point in CompressAI's layout, plus our keys."""
  def block(codec_name: str) -> dict[str, list[float]]:
    return {key: [_mean([r[key] for r in rows if r["codec"] == codec_name
                         and r["operating_point"] == s]) for s in schedules]
            for key in METRICS}

  images = len({r["image"] for r in rows})
  return {
      "name": "hybridflow",
      "description": (f"HybridFlow model {codec.fingerprint.hex()} on {name} ({spec}): real "
                      f"files, one per image and operating point; means over {images} images"),
      "results": block("hybridflow"),
      "operating_points": list(schedules),
      "dataset": {"name": name, "source": spec, "images": images},
      "model": {"fingerprint": codec.manifest["fingerprint"],
                "source": codec.manifest.get("source")},
      "baselines": {b.name: {"name": b.name, "description": b.description + "; per image, "
                             "its file at each HybridFlow point's real bpp (baselines.at_rate)",
                             "results": block(b.name)} for b in baselines},
      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
      "notes": "times exclude compilation (one untimed warm-up per image shape); "
               "MS-SSIM is NaN for images with a side of 160 px or less",
  }


def write(out: pathlib.Path, results: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
  """results.json (the results and every row), per_image.csv (the rows), summary.csv (the means)."""
  (out / "results.json").write_text(
      json.dumps(_json_safe({**results, "per_image": list(rows)}), indent=1) + "\n")
  with open(out / "per_image.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  with open(out / "summary.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["codec", "operating_point", *METRICS])
    for codec_name, block in blocks(results):
      for i, op in enumerate(results["operating_points"]):
        writer.writerow([codec_name, op, *(block["results"][k][i] for k in METRICS)])


def table(results: dict[str, Any]) -> str:
  """The means as a fixed-width text table."""
  heads = ("codec", "point", "bpp", "bpp est", "PSNR", "MS-SSIM", "LPIPS-A", "LPIPS-V", "enc s",
           "dec s")
  keys = ("bpp", "bpp-estimated", "psnr-rgb", "ms-ssim-rgb", "lpips-alex", "lpips-vgg",
          "encoding_time", "decoding_time")
  formats = ("{:.4f}", "{:.4f}", "{:.2f}", "{:.4f}", "{:.4f}", "{:.4f}", "{:.3f}", "{:.3f}")
  lines = [f"{results['dataset']['name']}: {results['dataset']['images']} images",
           "".join(f"{h:>10s}" for h in heads)]
  for codec_name, block in blocks(results):
    for i, op in enumerate(results["operating_points"]):
      cells = []
      for key, fmt in zip(keys, formats):
        v = block["results"][key][i]
        cells.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
      lines.append(f"{codec_name:>10s}{op:>10s}" + "".join(f"{c:>10s}" for c in cells))
  return "\n".join(lines)


def write_visual(out: pathlib.Path, crops: Sequence[visual.Crops],
                 rows: Sequence[dict[str, Any]], results: dict[str, Any]) -> None:
  """out/report.html: the crops of the first images by every codec at every point, under the
  means."""
  dataset = results["dataset"]
  shown = (("bpp", "{:.4f}"), ("psnr-rgb", "{:.2f}"), ("ms-ssim-rgb", "{:.4f}"),
           ("lpips-alex", "{:.4f}"))
  means = [[codec_name, op, *(visual.figure(block["results"][key][i], fmt) for key, fmt in shown)]
           for codec_name, block in blocks(results)
           for i, op in enumerate(results["operating_points"])]
  intro = (f"<p>Model <code>{html.escape(results['model']['fingerprint'])}</code>; "
           f"{dataset['images']} images of <code>{html.escape(dataset['source'])}</code>. Means "
           "over every image, from the real files (the baselines coded at our real bpp):</p>"
           + visual.html_table(("codec", "point", "bpp", "PSNR (dB)", "MS-SSIM", "LPIPS-Alex"),
                               means))
  visual.write(out, crops, {(r["image"], r["codec"], r["operating_point"]): r for r in rows},
               title=f"HybridFlow on {dataset['name']}", intro=intro,
               columns=[name for name, _ in blocks(results)],
               points=results["operating_points"])


def blocks(results: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
  """(codec name, its block: {"results": {metric: [mean per operating point]}}), ours first."""
  yield "hybridflow", results
  yield from results["baselines"].items()


def _mean(values: Sequence[float]) -> float:
  values = [v for v in values if v is not None and not math.isnan(v)]
  return float(np.mean(values)) if values else math.nan


def _json_safe(x):
  """NaN and infinities -> None (JSON has no NaN)."""
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [_json_safe(v) for v in x]
  return x
