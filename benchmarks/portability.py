"""What the integer entropy parameters cost and what they guarantee; writes JSON (and prints it).

    .venv/bin/python benchmarks/portability.py --data photos=data/photos/heldout \
        --data demo=demo:heldout --out benchmarks/results/portability.json

(a) Rate: each photo compressed at `1_4` with the bundle's integer entropy parameters and with the
    float32 h_s they were frozen from (the version-1 path: float h_s on the host CPU, then the
    nearest table scale): file bytes, y-stream bits, and the difference.
(b) Time: compress and decompress of the first photo, integer vs float entropy parameters, and the
    entropy-parameter function alone (medians after a warm-up).
(c) Portability: the files of (a) decoded in fresh processes under other XLA CPU settings (one
    thread, fast math, XNNPACK, JAX_ENABLE_X64) and compared with a decode under the default
    settings: entropy-decoded symbols and entropy parameters (must be identical), tokens the
    transformer predicts differently, and pixels (max difference, PSNR between the two decodes).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import _median_time  # noqa: E402  (benchmarks/run.py: the shared timing helper)

SETTINGS = {
    "default": {},
    "one thread": {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
                                "intra_op_parallelism_threads=1"},
    "fast math": {"XLA_FLAGS": "--xla_cpu_enable_fast_math=true "
                               "--xla_cpu_enable_fast_min_max=true"},
    "xnnpack": {"XLA_FLAGS": "--xla_cpu_use_xnnpack=true"},
    "x64": {"JAX_ENABLE_X64": "1"},
}


def float_entropy_parameters(codec):
  """The version-1 entropy-parameter function: float32 h_s on the host CPU, nearest table row."""
  import jax

  from hybridflow_jax.codec.tables import scale_to_index
  from hybridflow_jax.models.hybridflow import HybridFlow
  cpu = jax.devices("cpu")[0]
  hs = jax.device_put({"continuous": {"hyper_synthesis":
                                      codec.params["continuous"]["hyper_synthesis"]}}, cpu)
  model = codec.model
  program = jax.jit(lambda p, z, hw: model.apply({"params": p}, z, hw,
                                                 method=HybridFlow.entropy_parameters),
                    static_argnums=2)

  def fn(z_hat, hw):
    mean, scale = program(hs, jax.device_put(np.asarray(z_hat, np.float32)[None], cpu), tuple(hw))
    return np.asarray(mean[0]), scale_to_index(np.asarray(scale[0]), codec.scales)
  return fn


def load_codec(model: str):
  from hybridflow_jax import pretrained
  from hybridflow_jax.codec import bundle as bundle_lib
  from hybridflow_jax.codec.api import Codec
  b = bundle_lib.read(pretrained.resolve(model))
  codec = Codec(b)
  codec.scales = np.asarray(b["scales"], np.float64)
  return codec


def with_entropy_parameters(codec, fn):
  """A shallow copy of `codec` whose coding model uses the entropy-parameter function `fn`."""
  import copy
  other = copy.copy(codec)
  other.entropy_parameters = fn
  other.coding = dataclasses.replace(codec.coding, entropy_parameters=fn)
  return other


def photos(specs: list[str]) -> list[tuple[str, np.ndarray]]:
  from hybridflow_jax.data import pipeline
  out = []
  for spec in specs:
    tag, _, data = spec.partition("=")
    for name, rgb in pipeline.readable_images(data):
      out.append((f"{tag}/{name}", rgb))
  return out


def rate_and_time(codec, images, reps: int) -> tuple[list[dict], dict, dict[str, bytes]]:
  float_codec = with_entropy_parameters(codec, float_entropy_parameters(codec))
  rows, files = [], {}
  for name, rgb in images:
    lat_i, lat_f = codec.analyze(rgb), float_codec.analyze(rgb)
    ci, cf = codec.write(lat_i, "1_4"), float_codec.write(lat_f, "1_4")
    files[name] = ci.data
    mi, ri = lat_i.mean, lat_i.scale_index
    mf, rf = lat_f.mean, lat_f.scale_index
    rows.append({
        "photo": name, "size": list(rgb.shape[:2]),
        "bytes_integer": len(ci.data), "bytes_float": len(cf.data),
        "file_change_pct": 100.0 * (len(ci.data) - len(cf.data)) / len(cf.data),
        "y_bits_integer": ci.bits["y"], "y_bits_float": cf.bits["y"],
        "rows_equal": float(np.mean(ri == rf)), "rows_max_diff": int(np.abs(ri - rf).max()),
        "mean_max_abs_diff": float(np.abs(mi - mf).max()),
    })
    print(json.dumps(rows[-1]), flush=True)
  name, rgb = images[0]
  timing = {"photo": name}
  # Integer and float runs alternate, so that a background load drifts into both alike.
  codecs = {"integer": codec, "float": float_codec}
  data = {label: c.compress(rgb, schedule="1_4") for label, c in codecs.items()}
  lat = codec.analyze(rgb)
  grid = lat.residual.shape[:2]
  samples = {f"{what}_s_{label}": [] for what in ("compress", "decompress", "entropy_parameters")
             for label in codecs}
  for _ in range(reps):
    for label, c in codecs.items():
      c.decompress(data[label])
      for what, fn in (("compress", lambda c=c: c.compress(rgb, schedule="1_4")),
                       ("decompress", lambda c=c, d=data[label]: c.decompress(d)),
                       ("entropy_parameters", lambda c=c: c.entropy_parameters(lat.z, grid))):
        samples[f"{what}_s_{label}"].append(_median_time(fn, 1 if what != "entropy_parameters"
                                                         else 5))
  timing.update({k: statistics.median(v) for k, v in samples.items()})
  for what in ("compress", "decompress"):
    timing[f"{what}_change_pct"] = 100.0 * (timing[f"{what}_s_integer"] /
                                            timing[f"{what}_s_float"] - 1.0)
  print(json.dumps(timing), flush=True)
  return rows, timing, files


def worker(model: str, folder: pathlib.Path, out: pathlib.Path) -> None:
  """Decodes every .hfc in `folder`: symbols digest, entropy parameters, tokens, pixels -> out."""
  import jax
  import jax.numpy as jnp

  from hybridflow_jax.models import hybridflow as hf
  codec = load_codec(model)
  decode = jax.jit(lambda p, i, k, y: hf.decode(codec.model, p, i[None], k[None], y[None]))
  result = {}
  for path in sorted(folder.glob("*.hfc")):
    frame = codec.read_symbols(path.read_bytes())
    h = hashlib.sha256()
    for key in sorted(frame.symbols):
      h.update(key.encode() + np.ascontiguousarray(frame.symbols[key], np.int64).tobytes())
    mean, row = frame.entropy_parameters()
    image, tokens = decode(codec.params, jnp.asarray(frame.index_grid()), jnp.asarray(frame.keep),
                           jnp.asarray(frame.y_hat()))
    result[path.stem] = {"symbols": h.hexdigest(),
                         "entropy": hashlib.sha256(mean.tobytes() + row.tobytes()).hexdigest()}
    np.save(out / f"{path.stem}.tokens.npy", np.asarray(tokens[0]))
    np.save(out / f"{path.stem}.image.npy", np.asarray(image[0], np.float32))
  (out / "digests.json").write_text(json.dumps(result))


def portability(model: str, files: dict[str, bytes], keep: np.ndarray | None = None) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    folder = tmp / "files"
    folder.mkdir()
    stems = {}
    for i, (name, data) in enumerate(files.items()):
      stems[f"p{i}"] = name
      (folder / f"p{i}.hfc").write_bytes(data)
    decoded = {}
    for setting, env in SETTINGS.items():
      out = tmp / setting.replace(" ", "_")
      out.mkdir()
      e = dict(os.environ, JAX_PLATFORMS="cpu", **env)
      r = subprocess.run([sys.executable, __file__, "--model", model, "--worker", str(folder),
                          str(out)], env=e, capture_output=True, text=True, cwd=ROOT)
      if r.returncode:
        raise SystemExit(f"worker under {setting!r} failed:\n{r.stderr[-3000:]}")
      decoded[setting] = (out, json.loads((out / "digests.json").read_text()))
    ref_dir, ref = decoded["default"]
    report = {}
    for setting, (out, dig) in decoded.items():
      if setting == "default":
        continue
      rows = []
      for stem, name in stems.items():
        t0 = np.load(ref_dir / f"{stem}.tokens.npy")
        t1 = np.load(out / f"{stem}.tokens.npy")
        x0 = np.load(ref_dir / f"{stem}.image.npy")
        x1 = np.load(out / f"{stem}.image.npy")
        p0 = np.round(x0 * 255)
        p1 = np.round(x1 * 255)
        mse = float(np.mean((p0 - p1) ** 2))
        rows.append({
            "photo": name,
            "symbols_identical": dig[stem]["symbols"] == ref[stem]["symbols"],
            "entropy_parameters_identical": dig[stem]["entropy"] == ref[stem]["entropy"],
            "tokens_flipped": int(np.sum(t0 != t1)), "tokens": int(t0.size),
            "pixels_differing_pct": 100.0 * float(np.mean(p0 != p1)),
            "pixel_max_diff": int(np.abs(p0 - p1).max()),
            "psnr_between_decodes": (float("inf") if mse == 0 else
                                     10 * np.log10(255.0**2 / mse)),
        })
      report[setting] = rows
      print(setting, json.dumps(rows), flush=True)
  return report


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default="small")
  ap.add_argument("--data", action="append", default=None,
                  help="TAG=SPEC, a data spec of photos (repeatable; default demo=demo:heldout)")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--out", default=None)
  ap.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
  ns = ap.parse_args()
  if ns.worker:
    worker(ns.model, pathlib.Path(ns.worker[0]), pathlib.Path(ns.worker[1]))
    return
  import jax
  codec = load_codec(ns.model)
  images = photos(ns.data or ["demo=demo:heldout"])
  rows, timing, files = rate_and_time(codec, images, ns.reps)
  result = {
      "model": ns.model, "fingerprint": codec.manifest["fingerprint"],
      "jax": jax.__version__, "cpu_count": os.cpu_count(),
      "rate": rows, "timing": timing,
      "portability": portability(ns.model, files),
  }
  text = json.dumps(result, indent=1, default=float)
  if ns.out:
    pathlib.Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(ns.out).write_text(text)
  print(text)


if __name__ == "__main__":
  main()
