"""The evaluation loop: every image of a data set compressed to real files, decoded and measured."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import numpy as np
from tqdm import tqdm

from hybridflow_jax.codec.api import Codec
from hybridflow_jax.data import pipeline
from hybridflow_jax.errors import UserError
from hybridflow_jax.evaluation import baselines, visual
from hybridflow_jax.evaluation.baselines import Baseline
from hybridflow_jax.evaluation.measures import Measures

# Images whose reconstructions are kept (for the grid of originals and reconstructions).
GRID_IMAGES = 3


@dataclasses.dataclass(frozen=True)
class Sample:
  """An image, uint8 [H, W, 3], and its reconstruction at every operating point."""

  name: str
  rgb: np.ndarray
  reconstructions: dict[str, np.ndarray]


def evaluate(codec: Codec, name: str, spec: str, out: pathlib.Path, *, schedules: Sequence[str],
             baselines: Sequence[Baseline] = (), limit: int | None = None,
             report_images: int = 0, progress: bool = True,
             log: Callable[[str], None] = print
             ) -> tuple[list[dict[str, Any]], list[Sample], list[visual.Crops]]:
  """Evaluates data set `name` (data spec `spec`, at most `limit` images); our files go to out/files/.

  Returns (rows, samples, crops): one row per image x codec x operating point (the columns of
  per_image.csv, docs/results.md: sizes in bytes and bits per pixel, times in seconds), the first
  GRID_IMAGES images with our reconstructions, and the crops of the first `report_images` images
  decoded by every codec (`visual.crops`). Raises UserError if the data set has no readable image.
  """
  (out / "files").mkdir(parents=True, exist_ok=True)
  listed = list(pipeline.readable_images(spec, limit, log))
  if not listed:
    raise UserError(f"--data {name}={spec}: no readable images")
  measure = Measures()
  rows: list[dict[str, Any]] = []
  samples: list[Sample] = []
  crops: list[visual.Crops] = []
  stems: set[str] = set()
  warm_shapes: set[tuple[int, int]] = set()
  bar = tqdm(listed, desc=f"eval {name}", unit="img", disable=not progress, file=sys.stderr)
  for image_name, rgb in bar:
    if rgb.shape[:2] not in warm_shapes:  # compile every program this shape needs, untimed
      for schedule in schedules:
        codec.decompress(codec.compress(rgb, schedule))
      measure(rgb, rgb)
      warm_shapes.add(rgb.shape[:2])
    image = {"dataset": name, "image": image_name, "width": rgb.shape[1], "height": rgb.shape[0]}
    stem = file_stem(image_name, taken=stems)
    stems.add(stem)
    ours, recon = _ours(codec, measure, image, rgb, schedules, out / "files" / stem)
    rows += ours
    bpp = {r["operating_point"]: r["bpp"] for r in ours}
    decoded = {("hybridflow", point): img for point, img in recon.items()}
    for b in baselines:
      theirs, their_decoded = _baseline(b, measure, image, rgb, bpp)
      rows += theirs
      decoded.update({(b.name, point): img for point, img in their_decoded.items()})
    if len(samples) < GRID_IMAGES:
      samples.append(Sample(image_name, rgb, recon))
    if len(crops) < report_images:
      crops.append(visual.crops(image_name, stem, rgb, decoded))
    bar.set_postfix(bpp=f"{np.mean(list(bpp.values())):.4f}")
  return rows, samples, crops


def _ours(codec: Codec, measure: Measures, image: dict[str, Any], rgb: np.ndarray,
          schedules: Sequence[str], stem: pathlib.Path):
  """Rows of our files of `rgb`, one per schedule (written to STEM.SCHEDULE.hfc), and the decoded
  images."""
  pixels = rgb.shape[0] * rgb.shape[1]
  lat = codec.analyze(rgb)
  rows, recon = [], {}
  for schedule in schedules:
    c, t_enc = _timed(codec.compress_detailed, rgb, schedule)
    decoded, t_dec = _timed(codec.decompress, c.data)
    path = stem.parent / f"{stem.name}.{schedule}.hfc"
    path.write_bytes(c.data)
    estimate = codec.estimate_bits(lat, c)["total"] + c.bits["header"]
    recon[schedule] = decoded
    rows.append({**image, "codec": "hybridflow", "operating_point": schedule, "quality": "",
                 "scale": "",
                 "bytes": len(c.data), "bpp": len(c.data) * 8 / pixels,
                 "bpp-estimated": estimate / pixels, "keep_ratio": c.keep_ratio,
                 "encoding_time": t_enc, "decoding_time": t_dec, **measure(rgb, decoded),
                 "file": f"files/{path.name}"})
  return rows, recon


def _baseline(b: Baseline, measure: Measures, image: dict[str, Any], rgb: np.ndarray,
              targets: dict[str, float]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
  """Rows of baseline `b` on `rgb`: per operating point, its file at that point's bpp
  (`baselines.at_rate`: coded smaller and scaled back up where the full size cannot reach it);
  and what the file of each point decodes to."""
  pixels = rgb.shape[0] * rgb.shape[1]
  cache: dict[float, dict[int, bytes]] = {}
  done: dict[tuple[int, float], dict] = {}  # (quality, scale) -> measured row (points often share)
  images: dict[tuple[int, float], np.ndarray] = {}
  rows, decoded_at = [], {}
  for schedule, target in targets.items():
    f = baselines.at_rate(b, rgb, target, cache=cache)
    if (f.quality, f.scale) not in done:
      data, t_enc = _timed(baselines.encode_at, b, rgb, f.quality, f.scale)
      decoded, t_dec = _timed(baselines.decode_at, b, data, rgb.shape)
      done[f.quality, f.scale] = {
          "bytes": len(data), "bpp": len(data) * 8 / pixels, "bpp-estimated": math.nan,
          "keep_ratio": math.nan, "encoding_time": t_enc, "decoding_time": t_dec,
          **measure(rgb, decoded), "file": ""}
      images[f.quality, f.scale] = decoded
    rows.append({**image, "codec": b.name, "operating_point": schedule, "quality": f.quality,
                 "scale": f.scale, **done[f.quality, f.scale]})
    decoded_at[schedule] = images[f.quality, f.scale]
  return rows, decoded_at


def _timed(fn: Callable, *args, **kwargs):
  t = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - t


def file_stem(image_name: str, taken: AbstractSet[str] = frozenset()) -> str:
  """An image's name as a file stem, the name of its files and crops: its folders joined by '_',
  other characters than letters, digits, '-', '_' and '.' replaced by '_', and '-2', '-3', ...
  appended when the stem is `taken` (`a.png` and `a.jpg`, `a/b.png` and `a_b.png`)."""
  stem = "".join(ch if ch.isalnum() or ch in "-_." else "_"
                 for ch in os.path.splitext(image_name)[0])
  unique, n = stem, 1
  while unique in taken:
    n += 1
    unique = f"{stem}-{n}"
  return unique
