"""The visual reports of `hybridflow eval` and `hybridflow ablate`: report.html and the crops it
shows (report/).

For each of the first images of a data set, one crop of the original where it has the most detail
(`crop_box`) and the same crop of what every codec (eval) or every row of the ablation decoded at
every operating point, side by side: a row per operating point, a column per codec or method. Each
crop carries a slider that uncovers the original under it, and its bpp, PSNR and LPIPS from the
measured rows (of the whole image, not the crop). The crops are PNG, cut from the decoded images
as measured, so what the page shows is what the metrics were computed on. One static page, no
script or style from outside it: it opens from the results folder, offline.
"""

from __future__ import annotations

import dataclasses
import html
import io
import math
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

CROP = 256          # crop side, pixels (a whole image when smaller)
CONTEXT_WIDTH = 384  # the original's thumbnail (JPEG), with the crop marked on it
DIR = "report"       # the crops' folder beside report.html
FILES = ("report.html",)
# The names `write` gives files in report/: STEM.original.png, STEM.CODEC.POINT.png, STEM.context.jpg
# (a stem has no '/'; an operating point no '.').
_WRITTEN = re.compile(r"[^/]+\.(original\.png|[a-z0-9-]+\.[^./]+\.png|context\.jpg)")


# (image name, column: a codec or method, operating point) -> that file's row of measures.
Figures = dict[tuple[str, str, str], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Crops:
  """One image's crops: the original's and, per (codec, operating point), the decoded image's."""

  name: str
  stem: str                         # the image's name as a file stem (as its .hfc files')
  shape: tuple[int, int]            # (height, width) of the whole image
  box: tuple[int, int, int, int]    # (top, left, height, width) of the crop
  original: np.ndarray              # uint8 [h, w, 3]
  context: bytes                    # a JPEG thumbnail of the whole original
  decoded: dict[tuple[str, str], np.ndarray]   # (column, operating point) -> crop


def crop_box(rgb: np.ndarray, size: int = CROP, step: int = 8) -> tuple[int, int, int, int]:
  """(top, left, height, width) of the size x size window of uint8 [H, W, 3] `rgb` with the most
  detail (the sum of absolute luma differences to the right and below neighbours), on a grid of
  `step` pixels; the first of equals, top-left first. Sides shorter than `size` are taken whole."""
  h, w = rgb.shape[:2]
  ch, cw = min(size, h), min(size, w)
  # float32 images, a float64 table: a few image-sized arrays, however large the image.
  luma = sum(np.float32(c) * rgb[..., i].astype(np.float32)
             for i, c in enumerate((0.299, 0.587, 0.114)))
  detail = np.zeros((h, w), np.float32)
  detail[:, :-1] += np.abs(np.diff(luma, axis=1))
  detail[:-1, :] += np.abs(np.diff(luma, axis=0))
  # Window sums from the summed-area table, at every candidate corner.
  table = np.zeros((h + 1, w + 1))
  table[1:, 1:] = detail.cumsum(0, dtype=np.float64).cumsum(1)
  tops = np.unique(np.r_[np.arange(0, h - ch + 1, step), h - ch])
  lefts = np.unique(np.r_[np.arange(0, w - cw + 1, step), w - cw])
  t, lf = tops[:, None], lefts[None, :]
  sums = table[t + ch, lf + cw] - table[t, lf + cw] - table[t + ch, lf] + table[t, lf]
  i, j = np.unravel_index(np.argmax(sums), sums.shape)
  return int(tops[i]), int(lefts[j]), ch, cw


def crops(name: str, stem: str, rgb: np.ndarray,
          decoded: dict[tuple[str, str], np.ndarray]) -> Crops:
  """The crops of one image: uint8 [H, W, 3] `rgb` and its decoded images by (column, point)."""
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


def crop_path(stem: str, column: str, point: str | None = None) -> str:
  """A picture's path relative to the report: report/STEM.original.png, report/STEM.context.jpg
  (the thumbnail) or report/STEM.COLUMN.POINT.png (a column's spaces and '=' as '-')."""
  if column == "original":
    return f"{DIR}/{stem}.original.png"
  if column == "context":
    return f"{DIR}/{stem}.context.jpg"
  return f"{DIR}/{stem}.{column.replace(' ', '-').replace('=', '-')}.{point}.png"


def write(out: pathlib.Path, samples: Sequence[Crops], figures: Figures, *, title: str,
          intro: str, columns: Sequence[str], points: Sequence[str]) -> None:
  """out/report.html and out/report/*: per sample, a table of its crops with a row per operating
  point of `points` and a column per codec or method of `columns` (after the original's), each
  captioned from `figures[(image, column, point)]` (a row of measures: bpp, psnr-rgb, lpips-alex
  and, for a file coded scaled down, scale); cells without a crop stay empty. `intro`: HTML put
  above the crops (e.g. `html_table` of the means)."""
  (out / DIR).mkdir(exist_ok=True)
  sections = []
  for s in samples:
    Image.fromarray(s.original).save(out / crop_path(s.stem, "original"))
    (out / crop_path(s.stem, "context")).write_bytes(s.context)
    for (column, point), img in s.decoded.items():
      Image.fromarray(img).save(out / crop_path(s.stem, column, point))
    sections.append(_section(s, points, columns, figures))
  page = _PAGE.format(title=_e(title), intro=intro, crop=CROP, sections="\n".join(sections))
  (out / "report.html").write_text(page, encoding="utf-8")


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A table for `intro`: cells as given (`figure` formats numbers), None as '-'."""
  head = "".join(f"<th>{_e(h)}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td>{'-' if v is None else _e(v)}</td>" for v in row) + "</tr>"
                 for row in rows)
  return f'<table class="means"><tr>{head}</tr>{body}</table>'


def figure(v: float | None, fmt: str) -> str | None:
  """`v` formatted with `fmt` for `html_table`; None for a missing or non-finite figure."""
  return None if v is None or not math.isfinite(v) else fmt.format(v)


def clear(out: pathlib.Path) -> None:
  """Removes what `write` wrote into `out`: report.html and the crops' names in report/ (nothing
  else there)."""
  (out / "report.html").unlink(missing_ok=True)
  if (out / DIR).is_dir():
    for f in (out / DIR).iterdir():
      if _WRITTEN.fullmatch(f.name) and f.is_file():
        f.unlink()


def _section(s: Crops, points: Sequence[str], columns: Sequence[str], figures: Figures) -> str:
  top, left, ch, cw = s.box
  h, w = s.shape
  mark = (f"left:{100 * left / w:.3f}%;top:{100 * top / h:.3f}%;"
          f"width:{100 * cw / w:.3f}%;height:{100 * ch / h:.3f}%")
  head = "".join(f"<th>{_e(c)}</th>" for c in ("", "original", *columns))
  body = []
  for point in points:
    cells = [f"<th>{_e(point)}</th>",
             f'<td><img src="{_e(crop_path(s.stem, "original"))}" width="{cw}" height="{ch}" '
             f'alt="original"><div class="cap">{w}x{h}, crop at ({left}, {top})</div></td>']
    for codec in columns:
      r = figures.get((s.name, codec, point))
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
          f'<div class="context"><img src="{_e(crop_path(s.stem, "context"))}" alt="{_e(s.name)}">'
          f'<div class="mark" style="{mark}"></div></div>'
          f"<table><tr>{head}</tr>{''.join(body)}</table></section>")


def _caption(r: dict[str, Any]) -> str:
  parts = [f"{r['bpp']:.4f} bpp", f"{r['psnr-rgb']:.2f} dB", f"LPIPS {r['lpips-alex']:.3f}"]
  if r.get("scale") not in ("", None, 1, 1.0):
    parts.append(f"coded at {r['scale']}x size")
  if r.get("note"):
    parts.append(r["note"])
  return " &middot; ".join(_e(p) for p in parts)


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
{intro}
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
