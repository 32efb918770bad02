"""A model bundle against AVIF at the same rate, per image: the bundle's file at a schedule and
Pillow's AVIF at that file's bpp (`evaluation.baselines.at_rate`: the image coded at the scale,
of `baselines.SCALES`, whose file within 10 % of the rate has the best PSNR, and scaled back up).
For a shipped model, whose training run is not in the repository, this is the AVIF row of
`hybridflow ablate` with the hybrid row next to it; writes JSON (and prints a table).

    .venv/bin/python benchmarks/avif_at_rate.py --model small --schedule 1_4 \
        --data photos=data/photos/heldout --data demo=demo:heldout --out results.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = ("bpp", "psnr-rgb", "ms-ssim-rgb", "lpips-alex")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="small", help="a shipped model's name or a bundle folder")
  parser.add_argument("--schedule", default="1_4")
  parser.add_argument("--data", action="append", required=True, metavar="NAME=SOURCE",
                      help="held-out images: a folder, demo:heldout, ... (repeatable)")
  parser.add_argument("--out", default=None, help="JSON file to write")
  args = parser.parse_args()

  from hybridflow_jax import pretrained
  from hybridflow_jax.codec.api import Codec
  from hybridflow_jax.commands.eval import parse_data
  from hybridflow_jax.data import pipeline
  from hybridflow_jax.errors import UserError
  from hybridflow_jax.evaluation import baselines
  from hybridflow_jax.evaluation.measures import Measures

  try:
    data = parse_data(args.data)
    bundle = pretrained.resolve(args.model)
  except (UserError, ValueError) as e:
    parser.error(str(e))
  codec = Codec.load(bundle)
  avif = baselines.baselines(["avif"])[0]
  measures = Measures()
  t0 = time.perf_counter()
  rows = []
  for source, spec in data.items():
    for name, rgb in pipeline.readable_images(spec):
      pixels = rgb.shape[0] * rgb.shape[1]
      ours = codec.compress(rgb, args.schedule)
      bpp = 8 * len(ours) / pixels
      rows.append({"source": source, "image": name, "method": "hybridflow",
                   "point": args.schedule, "bpp": bpp,
                   **measures(rgb, codec.decompress(ours))})
      f = baselines.at_rate(avif, rgb, bpp)
      rows.append({"source": source, "image": name, "method": "avif", "point": f.label,
                   "scale": f.scale, "quality": f.quality, "bpp": f.bpp,
                   **measures(rgb, f.decoded)})
      print(f"{name}: hybridflow {bpp:.4f} bpp, avif {f.label} {f.bpp:.4f} bpp", file=sys.stderr)
  means = {m: {k: float(np.mean([r[k] for r in rows if r["method"] == m]))
               for k in (*METRICS, "lpips-vgg")} for m in ("hybridflow", "avif")}
  print("| method | point | bpp (file) | PSNR (dB) | MS-SSIM | LPIPS-Alex |")
  print("|---|---|---|---|---|---|")
  for method, point in (("hybridflow", args.schedule), ("avif", "at its rate, per image")):
    m = means[method]
    print(f"| {method} | {point} | {m['bpp']:.4f} | {m['psnr-rgb']:.2f} | "
          f"{m['ms-ssim-rgb']:.4f} | {m['lpips-alex']:.4f} |")
  text = json.dumps({"model": str(bundle), "fingerprint": codec.manifest["fingerprint"],
                     "schedule": args.schedule, "data": data, "avif": avif.description,
                     "scales": list(baselines.SCALES), "means": means, "rows": rows,
                     "seconds": time.perf_counter() - t0}, indent=1)
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text + "\n")
  else:
    print(text)


if __name__ == "__main__":
  main()
