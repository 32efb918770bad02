"""The figures of `hybridflow eval`: rate-distortion plots and a grid of reconstructions (PNG)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from hybridflow_jax.evaluation.loop import Sample
from hybridflow_jax.evaluation.report import blocks

# (file suffix, axis label, result keys: ours first, then the name published curves may use).
AXES = (("psnr", "PSNR-RGB (dB)", ("psnr-rgb",)),
        ("ms-ssim", "MS-SSIM (RGB)", ("ms-ssim-rgb",)),
        ("lpips", "LPIPS-Alex (lower is better)", ("lpips-alex", "lpips")))
FILES = ("grid.png", *(f"rd_{metric}.png" for metric, _, _ in AXES))


def rate_distortion(results: dict[str, Any], curves: Sequence[dict[str, Any]],
                    out: pathlib.Path) -> None:
  """out/rd_psnr.png, rd_ms-ssim.png, rd_lpips.png: our points, the baselines, published `curves`."""
  for metric, label, keys in AXES:
    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    ax = fig.subplots()
    for codec_name, block in blocks(results):
      x, y = block["results"]["bpp"], block["results"][keys[0]]
      # Lines join the points in order of rate (dynamic sits between the fixed schedules).
      line = sorted((b, v) for b, v in zip(x, y) if b is not None and v is not None)
      if not line:
        continue
      if codec_name == "hybridflow":
        ax.plot(*zip(*line), label="HybridFlow", marker="o", lw=2)
        for xi, yi, op in zip(x, y, results["operating_points"]):
          ax.annotate(op, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
      else:
        ax.plot(*zip(*line), label=f"{codec_name} (live)", marker="s", ls="--")
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


def grid(samples: Sequence[Sample], rows: Sequence[dict[str, Any]], path: pathlib.Path) -> None:
  """Originals and reconstructions, one row per sample and one column per operating point, each
  titled with its bpp and PSNR from `rows`; nothing without samples."""
  if not samples:
    return
  ops = list(samples[0].reconstructions)
  fig = Figure(figsize=(2.6 * (len(ops) + 1), 2.2 * len(samples)), dpi=110)
  axes = fig.subplots(len(samples), len(ops) + 1, squeeze=False)
  ours = {(r["image"], r["operating_point"]): r for r in rows if r["codec"] == "hybridflow"}
  for i, s in enumerate(samples):
    axes[i, 0].imshow(s.rgb)
    axes[i, 0].set_title(s.name[-24:], fontsize=7)
    for j, op in enumerate(ops, start=1):
      r = ours[(s.name, op)]
      axes[i, j].imshow(s.reconstructions[op])
      axes[i, j].set_title(f"{op}: {r['bpp']:.4f} bpp, {r['psnr-rgb']:.1f} dB", fontsize=7)
  for ax in axes.ravel():
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path)
