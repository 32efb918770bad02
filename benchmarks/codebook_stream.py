"""What a run's codebook stream can carry: G_vq (the pixel decoder) on every true index of whole
held-out photos, for runs whose `vq` stage has finished (the other stages need not exist); writes
JSON (and prints a table).

    .venv/bin/python benchmarks/codebook_stream.py --run vq16=runs/small --run vq32=runs/vq32 \
        --data photos=data/photos/heldout --data demo=demo:heldout --out results.json

This is the codebook-only row of `hybridflow ablate --schedules 1_1` (every index sent) without
the rest of a run: the ceiling of what the hybrid's codebook stream renders, before the
transformer guesses any index. The images are edge-padded to the token grid as the codec pads
them, decoded to uint8 and cropped back; PSNR-RGB, MS-SSIM and LPIPS-Alex as `hybridflow eval`
measures them (`evaluation.measures`), and the share of codewords the photos use.
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


def evaluate_run(workdir: pathlib.Path, images, measures) -> dict:
  import jax
  import jax.numpy as jnp

  from hybridflow_jax.codec import image_input
  from hybridflow_jax.codec.api import to_uint8
  from hybridflow_jax.models import hybridflow as hf
  from hybridflow_jax.train import checkpoint as ckpt_lib
  from hybridflow_jax.train.rundir import RunDir

  run = RunDir(workdir)
  config = run.read_config()
  stage = run.stage("vq")
  if not stage.is_done():
    raise SystemExit(f"error: {workdir}: the vq stage has not finished; train it first")
  model = hf.build_model(config)
  params = ckpt_lib.load_params(stage.params, hf.param_shapes(model))
  stride = 2 ** (len(config.model.vq.channel_mult) - 1)

  @jax.jit
  def render(params, x):
    p = {"params": params}
    indices = model.apply(p, x, method=hf.HybridFlow.tokenize)["indices"]
    return model.apply(p, indices, method=hf.HybridFlow.render_codebook)[0], indices[0]

  used = np.zeros(config.model.vq.num_codes, bool)
  rows = []
  for source, name, rgb in images:
    h, w = rgb.shape[:2]
    x = image_input.padded(rgb, (-(-h // stride), -(-w // stride)), stride)
    image, indices = render(params, jnp.asarray(x)[None])
    used[np.asarray(indices).reshape(-1)] = True
    rows.append({"source": source, "image": name,
                 **measures(rgb, to_uint8(np.asarray(image))[:h, :w])})
  mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("source", "image")}
  return {"workdir": str(workdir), "vq_steps": int(config.train.steps.vq),
          "vq": config.model.vq.to_dict(), "mean": mean, "codes_used": float(used.mean()),
          "images": rows}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", action="append", required=True, metavar="NAME=WORKDIR",
                      help="a training run whose vq stage has finished (repeatable)")
  parser.add_argument("--data", action="append", required=True, metavar="NAME=SOURCE",
                      help="held-out images: a folder, demo:heldout, ... (repeatable)")
  parser.add_argument("--out", default=None, help="JSON file to write")
  args = parser.parse_args()

  from hybridflow_jax.commands.eval import parse_data
  from hybridflow_jax.data import pipeline
  from hybridflow_jax.errors import UserError
  from hybridflow_jax.evaluation.measures import Measures

  runs = {}
  for spec in args.run:
    name, sep, workdir = spec.partition("=")
    if not sep or not name or not workdir:
      parser.error(f"--run takes NAME=WORKDIR, got {spec!r}")
    runs[name] = workdir
  try:
    data = parse_data(args.data)
  except UserError as e:
    parser.error(str(e))
  images = [(source, name, rgb) for source, spec in data.items()
            for name, rgb in pipeline.readable_images(spec)]
  measures = Measures()
  t0 = time.perf_counter()
  results = {name: evaluate_run(pathlib.Path(workdir), images, measures)
             for name, workdir in runs.items()}
  print("| run | vq steps | channels | PSNR-RGB | MS-SSIM | LPIPS-Alex | codes used |")
  print("|---|---|---|---|---|---|---|")
  for name, r in results.items():
    m = r["mean"]
    print(f"| {name} | {r['vq_steps']} | {r['vq']['channels']} | {m['psnr-rgb']:.2f} | "
          f"{m['ms-ssim-rgb']:.4f} | {m['lpips-alex']:.4f} | {r['codes_used']:.2f} |")
  text = json.dumps({"data": data, "images": len(images), "runs": results,
                     "seconds": time.perf_counter() - t0}, indent=1)
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text + "\n")
  else:
    print(text)


if __name__ == "__main__":
  main()
