"""The visual report of `hybridflow eval`: OUT/NAME/report.html and the crops it shows (report/).

For each of the first images of a data set, one crop of the original where it has the most detail
(`crop_box`) and the same crop of what every codec decoded at every operating point, side by side:
a row per operating point, a column per codec (ours first, then the baselines at our real bpp). Each
crop carries a slider that uncovers the original under it, and its bpp, PSNR and LPIPS from the
evaluation's rows (of the whole image, not the crop). The crops are PNG, cut from the decoded images
as measured, so what the page shows is what the metrics were computed on. One static page, no
script or style from outside it: it opens from the results folder, offline.
"""

from __future__ import annotations

import dataclasses
import html
import io
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

CROP = 256          # crop side, pixels (a whole image when smaller)
CONTEXT_WIDTH = 384  # the original's thumbnail (JPEG), with the crop marked on it
DIR = "report"       # the crops' folder beside report.html
# The names `write` gives files in report/: STEM.original.png, STEM.CODEC.POINT.png, STEM.context.jpg
# (a stem has no '/'; an operating point no '.').
_WRITTEN = re.compile(r"[^/]+\.(original\.png|[a-z]+\.[^./]+\.png|context\.jpg)")


@dataclasses.dataclass(frozen=True)
class Crops:
  """One image's crops: the original's and, per (codec, operating point), the decoded image's."""

  name: str
  stem: str                         # the image's name as a file stem (as its .hfc files')
  shape: tuple[int, int]            # (height, width) of the whole image
  box: tuple[int, int, int, int]    # (top, left, height, width) of the crop
  original: np.ndarray              # uint8 [h, w, 3]
  context: bytes                    # a JPEG thumbnail of the whole original
  decoded: dict[tuple[str, str], np.ndarray]


def crop_box(rgb: np.ndarray, size: int = CROP, step: int = 8) -> tuple[int, int, int, int]:
  """(top, left, height, width) of the size x size window of uint8 [H, W, 3] `rgb` with the most
  detail (the sum of absolute luma differences to the right and below neighbours), on a grid of
  `step` pixels; the first of equals, top-left first. Sides shorter than `size` are taken whole."""
  h, w = rgb.shape[:2]
  ch, cw = min(size, h), min(size, w)
  luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  detail = np.zeros((h, w))
  detail[:, :-1] += np.abs(np.diff(luma, axis=1))
  detail[:-1, :] += np.abs(np.diff(luma, axis=0))
  # Window sums from the summed-area table, at every candidate corner.
  table = np.zeros((h + 1, w + 1))
  table[1:, 1:] = detail.cumsum(0).cumsum(1)
  tops = np.unique(np.r_[np.arange(0, h - ch + 1, step), h - ch])
  lefts = np.unique(np.r_[np.arange(0, w - cw + 1, step), w - cw])
  t, lf = tops[:, None], lefts[None, :]
  sums = table[t + ch, lf + cw] - table[t, lf + cw] - table[t + ch, lf] + table[t, lf]
  i, j = np.unravel_index(np.argmax(sums), sums.shape)
  return int(tops[i]), int(lefts[j]), ch, cw


def crops(name: str, stem: str, rgb: np.ndarray,
          decoded: dict[tuple[str, str], np.ndarray]) -> Crops:
  """The crops of one image: uint8 [H, W, 3] `rgb` and its decoded images by (codec, point)."""
  top, left, ch, cw = box = crop_box(rgb)
  cut = (slice(top, top + ch), slice(left, left + cw))
  h, w = rgb.shape[:2]
  thumb = Image.fromarray(rgb)
  if w > CONTEXT_WIDTH:
    thumb = thumb.resize((CONTEXT_WIDTH, max(1, round(h * CONTEXT_WIDTH / w))), Image.LANCZOS)
  buf = io.BytesIO()
  thumb.save(buf, format="JPEG", quality=90)
  return Crops(name, stem, (h, w), box, rgb[cut].copy(), buf.getvalue(),
               {key: np.ascontiguousarray(img[cut]) for key, img in decoded.items()})


def crop_path(stem: str, codec: str, point: str | None = None) -> str:
  """The crop's path relative to the report: report/STEM.original.png or
  report/STEM.CODEC.POINT.png."""
  return f"{DIR}/{stem}.original.png" if codec == "original" else f"{DIR}/{stem}.{codec}.{point}.png"


def write(out: pathlib.Path, samples: Sequence[Crops], rows: Sequence[dict[str, Any]],
          results: dict[str, Any]) -> None:
  """out/report.html and out/report/*: the crops of `samples` with the figures of `rows` (the
  evaluation's per-image rows) and the means of `results` (`report.summarize`)."""
  (out / DIR).mkdir(exist_ok=True)
  points = results["operating_points"]
  codecs = ["hybridflow", *results["baselines"]]
  by_key = {(r["image"], r["codec"], r["operating_point"]): r for r in rows}
  sections = []
  for s in samples:
    Image.fromarray(s.original).save(out / crop_path(s.stem, "original"))
    (out / DIR / f"{s.stem}.context.jpg").write_bytes(s.context)
    for (codec, point), img in s.decoded.items():
      Image.fromarray(img).save(out / crop_path(s.stem, codec, point))
    sections.append(_section(s, points, codecs, by_key))
  dataset = results["dataset"]
  title = f"HybridFlow on {dataset['name']}"
  page = _PAGE.format(
      title=_e(title), model=_e(results["model"]["fingerprint"]), images=dataset["images"],
      source=_e(dataset["source"]), means=_means(results, codecs), crop=CROP,
      sections="\n".join(sections))
  (out / "report.html").write_text(page, encoding="utf-8")


def clear(out: pathlib.Path) -> None:
  """Removes what `write` wrote into `out`: report.html and the crops' names in report/ (nothing
  else there)."""
  (out / "report.html").unlink(missing_ok=True)
  if (out / DIR).is_dir():
    for f in (out / DIR).iterdir():
      if _WRITTEN.fullmatch(f.name) and f.is_file():
        f.unlink()


def _section(s: Crops, points: Sequence[str], codecs: Sequence[str],
             by_key: dict[tuple[str, str, str], dict[str, Any]]) -> str:
  top, left, ch, cw = s.box
  h, w = s.shape
  mark = (f"left:{100 * left / w:.3f}%;top:{100 * top / h:.3f}%;"
          f"width:{100 * cw / w:.3f}%;height:{100 * ch / h:.3f}%")
  head = "".join(f"<th>{_e(c)}</th>" for c in ("", "original", *codecs))
  body = []
  for point in points:
    cells = [f"<th>{_e(point)}</th>",
             f'<td><img src="{_e(crop_path(s.stem, "original"))}" width="{cw}" height="{ch}" '
             f'alt="original"><div class="cap">{w}x{h}, crop at ({left}, {top})</div></td>']
    for codec in codecs:
      r = by_key.get((s.name, codec, point))
      if r is None or (codec, point) not in s.decoded:
        cells.append("<td></td>")
        continue
      cells.append(
          f'<td><div class="cmp" style="width:{cw}px;height:{ch}px">'
          f'<img src="{_e(crop_path(s.stem, "original"))}" alt="original">'
          f'<img class="top" src="{_e(crop_path(s.stem, codec, point))}" '
          f'alt="{_e(codec)} at {_e(point)}">'
          f'<input type="range" min="0" max="100" value="0" aria-label="uncover the original"></div>'
          f'<div class="cap">{_caption(r)}</div></td>')
    body.append("<tr>" + "".join(cells) + "</tr>")
  return (f'<section data-image="{_e(s.name)}" data-crop="{top},{left},{ch},{cw}">'
          f"<h2>{_e(s.name)}</h2>"
          f'<div class="context"><img src="{_e(DIR)}/{_e(s.stem)}.context.jpg" alt="{_e(s.name)}">'
          f'<div class="mark" style="{mark}"></div></div>'
          f"<table><tr>{head}</tr>{''.join(body)}</table></section>")


def _caption(r: dict[str, Any]) -> str:
  parts = [f"{r['bpp']:.4f} bpp", f"{r['psnr-rgb']:.2f} dB", f"LPIPS {r['lpips-alex']:.3f}"]
  if r.get("scale") not in ("", None, 1, 1.0):
    parts.append(f"coded at {r['scale']}x size")
  return " &middot; ".join(_e(p) for p in parts)


def _means(results: dict[str, Any], codecs: Sequence[str]) -> str:
  head = "<tr><th>codec</th><th>point</th><th>bpp</th><th>PSNR (dB)</th><th>MS-SSIM</th>" \
         "<th>LPIPS-Alex</th></tr>"
  lines = []
  for codec in codecs:
    block = results if codec == "hybridflow" else results["baselines"][codec]
    for i, point in enumerate(results["operating_points"]):
      cells = [codec, point]
      for key, fmt in (("bpp", "{:.4f}"), ("psnr-rgb", "{:.2f}"), ("ms-ssim-rgb", "{:.4f}"),
                       ("lpips-alex", "{:.4f}")):
        v = block["results"][key][i]
        cells.append("-" if v is None or v != v else fmt.format(v))
      lines.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
  return f"<table class=\"means\">{head}{''.join(lines)}</table>"


def _e(x: Any) -> str:
  return html.escape(str(x), quote=True)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 4px; vertical-align: top; text-align: left; }}
.means td, .means th {{ border-bottom: 1px solid #ddd; padding: 2px 10px; }}
img {{ image-rendering: pixelated; display: block; }}
.cmp {{ position: relative; }}
.cmp img {{ position: absolute; top: 0; left: 0; }}
.cmp img.top {{ clip-path: inset(0 0 0 var(--x, 0%)); }}
.cmp input {{ position: absolute; left: 0; bottom: 2px; width: 100%; margin: 0; opacity: 0.6; }}
.cap {{ font-size: 12px; color: #333; max-width: {crop}px; }}
.context {{ position: relative; display: inline-block; margin-bottom: 6px; }}
.context .mark {{ position: absolute; outline: 2px solid #e33; }}
</style></head>
<body>
<h1>{title}</h1>
<p>Model <code>{model}</code>; {images} images of <code>{source}</code>. Means over every image,
from the real files (the baselines coded at our real bpp):</p>
{means}
<p>Below, for the first images, a crop of at most {crop}x{crop} pixels where the original has the
most detail, shown at one screen pixel per image pixel (zoom in to see more). Each decoded crop lies
over the original: drag its slider to uncover the original from the left. Figures under a crop are
of the whole image.</p>
{sections}
<script>
for (const r of document.querySelectorAll('.cmp input'))
  r.addEventListener('input', () => r.parentNode.style.setProperty('--x', r.value + '%'));
</script>
</body></html>
"""
