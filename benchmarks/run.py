"""Speed figures in one command; writes JSON (and prints it). docs/benchmarks.md holds the results.

    .venv/bin/python benchmarks/run.py --out benchmarks/results/cpu-2core.json
    .venv/bin/python benchmarks/run.py --peer-python /path/to/env-with-compressai/bin/python

(a) Train-step throughput of every stage of a config (default configs/small.py, the reference
    recipe: its batch and crops): images/s, FLOPs per step (XLA cost analysis of the compiled
    step), achieved FLOP/s, and MFU = achieved / a float32 matmul peak measured in the same process
    on the same device (the higher of the run's first peak and one timed next to the stage's
    steps); and the input stall: the step time when fed from the grain pipeline as the
    trainer feeds it (the config's photos if present, else the bundled ones) / the step time on a
    batch already in memory. The step runs data-parallel on every device (one unless XLA_FLAGS has
    --xla_force_host_platform_device_count=N): FLOPs are the whole step's, the peak the machine's
    (CPU devices share its cores; an accelerator's peak is one device's times the devices).
(b) Compress and decompress latency of one 768x512 photo (the Kodak layout) with --model (default
    the shipped `small`; `untrained`: the config's networks with random params), broken down into
    encoder networks, entropy parameters (h_s), range coding, range decoding, transformer steps and
    bridging decoder; and the token transformer alone with global attention and 6 rounds, windows
    and 6 rounds, and the model's own settings.
(c) The grain input pipeline (demo photos, 256 px crops): images/s with 0 and 2 worker processes.
(d) Peak memory of compress and decompress of a --large-size square photo, each in a fresh process.
(e) With --peer-python: CompressAI's mbt2018-mean (quality 1, untrained) compress/decompress of the
    same photo, in that interpreter, next to our continuous stream as a codec of the same size and
    work (N=128, M=192): g_a, h_a, the integer h_s and range coding; decoding is range decoding,
    the integer h_s and a full synthesis transform of 4 transposed 5x5 stride-2 layers (128 channels).
(f) The command line as a user waits on it: the wall time of `hybridflow compress` and
    `hybridflow decompress` of the same photo, each a fresh process (start-up, imports, loading the
    model, tracing, compiling or reading compiled programs, the work, writing the file): once with
    an empty compile cache, then median of --reps runs with the cache that first run filled, and
    median of --reps runs with the cache off (HYBRIDFLOW_COMPILE_CACHE=off: every run compiles);
    then each command once on a folder of 8 copies of the photo (warm cache), per file.
Times of (a)-(e) are medians of repeated runs after a warm-up (no compilation timed).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_time(fn, reps: int) -> float:
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
  """float32 FLOP/s of a jitted n x n matmul on the default device."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  return 2 * n**3 / _median_time(lambda: f(a).block_until_ready(), reps)


def step_flops(compiled) -> float:
  """FLOPs of one call of a compiled step, from XLA's cost analysis."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  return float(cost.get("flops", float("nan")))


def time_steps(compiled, state, x, steps: int):
  """(state after `steps` more steps, median seconds per step); the step donates its state."""
  import jax
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = compiled(state, x)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t)
  return state, statistics.median(times)


def train_throughput(cfg, peak: float, steps: int, log) -> dict:
  import jax
  import jax.numpy as jnp

  from hybridflow_jax import stages
  from hybridflow_jax.data import pipeline
  from hybridflow_jax.models import hybridflow as hf
  from hybridflow_jax.train import sharding as shard_lib
  from hybridflow_jax.train import steps as steps_lib

  mesh = shard_lib.make_mesh((("data", -1),))
  peak_devices = 1 if jax.devices()[0].platform == "cpu" else mesh.size
  model = hf.build_model(cfg)
  params = hf.init_params(model, jax.random.PRNGKey(0))
  abstract_params = hf.param_shapes(model)
  # The input timing reads the config's training photos when they are here, else the bundled ones.
  data = cfg.data.train
  if not (data == "demo" or data.startswith("folder:") and pathlib.Path(data[7:]).is_dir()):
    data = "demo"
  # Enough draws that every photo has almost surely been decoded (and cached) once: 8 per photo.
  warm_batches = -(-8 * len(pipeline.make_source(data)) // cfg.train.batch_size)
  out = {}
  for stage in stages.stage_list(cfg):
    # The trainer's own sharded, donating step (steps.stage_step), on a one-axis mesh.
    # The stage's own length: the step compiles with the GAN only where training would use it.
    built = steps_lib.stage_step(model, cfg, stage, mesh, abstract_params)
    # A copy per stage: the step donates its state, and the next stage starts from `params`.
    fresh = jax.tree.map(lambda a: a.copy(), params)
    state = jax.jit(built.make_state, out_shardings=built.state_shardings)(fresh)
    crop, batch = built.crop, cfg.train.batch_size
    # uint8, as the pipeline gives batches (the step scales them to [0, 1]).
    x = jax.device_put(jax.random.randint(jax.random.PRNGKey(2), (batch, crop, crop, 3), 0, 256,
                                          jnp.int32).astype(jnp.uint8), built.images_sharding)
    step = built.step
    log(f"train step {stage}: compiling")
    compiled = step.compile(state, x)
    # The cost analysis of a sharded program is one device's share: the step's FLOPs are every
    # device's. The peak is the machine's: CPU devices (XLA_FLAGS=
    # --xla_force_host_platform_device_count=N) share its cores, and the matmul timed on one of them
    # already uses every core; an accelerator's peak is one device's, times the devices.
    flops = step_flops(compiled) * mesh.size
    state, _ = compiled(state, x)
    jax.block_until_ready(state)
    # The machine's speed drifts (10-20 % within a run here): the peak is timed again next to each
    # stage's steps, and MFU is taken against the higher of that and the run's first peak.
    stage_peak = max(peak, matmul_peak()) * peak_devices
    state, sec = time_steps(compiled, state, x, steps)
    # The input stall: steps fed as the trainer feeds them (the next batch is read from the grain
    # pipeline, whose background thread prepares it while the previous step runs, then placed on
    # the mesh) against steps on the batch in memory, interleaved one by one so that the machine's
    # drifting speed (10-20 % between runs here) falls on both alike; medians. The pipeline is
    # warmed first, until its cache holds every photo it will draw (the steady state of a run; a
    # cold cache is a one-off cost of the first few steps).
    fed_steps = max(steps, 8)
    it = pipeline.train_iterator(data, crop=crop, batch_size=batch, seed=0,
                                 workers=cfg.data.workers, prefetch=cfg.data.prefetch,
                                 cache_mb=cfg.data.cache_mb)
    for _ in range(warm_batches):
      next(it)
    in_memory, fed = [], []
    for _ in range(fed_steps):
      t = time.perf_counter()
      state, metrics = compiled(state, x)
      jax.block_until_ready((state, metrics))
      in_memory.append(time.perf_counter() - t)
      t = time.perf_counter()
      images = jax.make_array_from_process_local_data(built.images_sharding, next(it)["image"])
      state, metrics = compiled(state, images)
      jax.block_until_ready((state, metrics))
      fed.append(time.perf_counter() - t)
    in_memory, fed = statistics.median(in_memory), statistics.median(fed)
    out[stage] = {"batch": batch, "crop": crop, "step_seconds": sec, "images_per_second": batch / sec,
                  "flops_per_step": flops, "achieved_flops_per_second": flops / sec,
                  "matmul_peak_flops_per_second": stage_peak,
                  "mfu": flops / sec / stage_peak, "stall_steps": fed_steps,
                  "step_seconds_in_memory_interleaved": in_memory, "step_seconds_with_input": fed,
                  "input_stall": fed / in_memory}
    log(f"train step {stage}: {batch / sec:.2f} img/s, {flops / sec / 1e9:.1f} GFLOP/s, "
        f"MFU {flops / sec / stage_peak:.3f}, input stall {fed / in_memory:.3f}")
    del state
  return {"mesh_devices": mesh.size, "input_data": data, "stages": out}


def photo_768x512() -> np.ndarray:
  from PIL import Image

  from hybridflow_jax.data import demo
  img = Image.fromarray(demo.load("all")["astronaut"])
  return np.asarray(img.resize((768, 768), Image.LANCZOS).crop((0, 128, 768, 640)))


def codec_latency(cfg, image: np.ndarray, reps: int, log, model_name: str | None = None) -> dict:
  """model_name: a shipped model or bundle path (its own config); None: untrained params of `cfg`."""
  import jax
  import jax.numpy as jnp

  from hybridflow_jax.codec.api import Codec
  from hybridflow_jax.models import hybridflow as hf
  from hybridflow_jax.models.transformer import decode_tokens
  from hybridflow_jax.train import export

  if model_name:
    codec = Codec.load(model_name)
    cfg, model = codec.config, codec.model
  else:
    model = hf.build_model(cfg)
    params = hf.init_params(model, jax.random.PRNGKey(0))
    codec = Codec(export.make_bundle(cfg, params, prior_images=2, log=lambda _: None))
  log("codec: compiling")
  data = codec.compress(image)
  codec.decompress(data)
  lat = codec.analyze(image)
  hw = lat.indices.shape

  # The decoder's networks, jitted separately to time them apart (Codec.render fuses them).
  p = {"params": codec.params}
  steps = cfg.model.transformer.decode_steps
  predict = lambda t, c: model.apply(p, t, c, method=hf.HybridFlow.predict_tokens)
  tokens_fn = jax.jit(lambda i, k, y: decode_tokens(predict, i, k, y, cfg.model.vq.num_codes, steps))
  render_fn = jax.jit(lambda i, y: model.apply(p, i, y, method=hf.HybridFlow.render))
  s = codec.read_symbols(data)
  i, k, y = (jnp.asarray(s.index_grid())[None], jnp.asarray(s.keep)[None],
             jnp.asarray(s.y_hat())[None])
  tokens = tokens_fn(i, k, y)
  render_fn(tokens, y).block_until_ready()

  t = lambda fn: _median_time(fn, reps)
  enc_networks = t(lambda: codec.networks.analyze(lat.image))
  entropy_params = t(lambda: codec.entropy_parameters(lat.z, hw))
  range_coding = t(lambda: codec.write(lat, "1_4"))
  read = t(lambda: codec.read_symbols(data))
  transformer = t(lambda: tokens_fn(i, k, y).block_until_ready())
  bridge = t(lambda: render_fn(tokens, y).block_until_ready())
  compress_total = t(lambda: codec.compress(image))
  decompress_total = t(lambda: codec.decompress(data))

  # The token transformer's settings side by side, same params and file: global attention with
  # MaskGIT's 6 rounds (before issue #13), windowed attention with 6 rounds, and the model's own.
  variants = {}
  for window, rounds in ((0, 6), (cfg.model.transformer.get("window", 0), 6),
                         (cfg.model.transformer.get("window", 0), steps)):
    vcfg = cfg.copy_and_resolve_references()
    vcfg.model.transformer.window, vcfg.model.transformer.decode_steps = window, rounds
    vmodel = hf.build_model(vcfg)
    vpredict = lambda t, c, vmodel=vmodel: vmodel.apply(p, t, c, method=hf.HybridFlow.predict_tokens)
    vfn = jax.jit(lambda i, k, y, f=vpredict, n=rounds: decode_tokens(
        f, i, k, y, cfg.model.vq.num_codes, n))
    vfn(i, k, y).block_until_ready()
    variants[f"window {window}, {rounds} rounds"] = t(lambda f=vfn: f(i, k, y).block_until_ready())
  return {
      "model": model_name or "untrained", "window": cfg.model.transformer.get("window", 0),
      "image": f"{image.shape[1]}x{image.shape[0]}", "schedule": "1_4", "bytes": len(data),
      "compress_seconds": compress_total, "decompress_seconds": decompress_total,
      "compress_breakdown": {"encoder_networks": enc_networks, "entropy_parameters_hs": entropy_params,
                             "range_coding_and_container": range_coding},
      "decompress_breakdown": {"range_decoding_and_hs": read, "entropy_parameters_hs": entropy_params,
                               "transformer_steps": transformer, "transformer_step_count": steps,
                               "bridging_decoder": bridge},
      "transformer_variants_seconds": variants,
  }


def grain_throughput(batches: int, log) -> dict:
  from hybridflow_jax.data import pipeline
  out = {}
  for workers in (0, 2):
    it = pipeline.train_iterator("demo", crop=256, batch_size=8, seed=0, workers=workers, prefetch=2)
    for _ in range(2):
      next(it)
    t = time.perf_counter()
    for _ in range(batches):
      next(it)
    sec = time.perf_counter() - t
    it.close() if hasattr(it, "close") else None
    out[f"workers_{workers}"] = {"images_per_second": 8 * batches / sec, "batches": batches}
    log(f"grain workers={workers}: {8 * batches / sec:.1f} img/s")
  return out


# Peak memory of one direction in a fresh process: `size` px square (0: a 64 px warm-up only).
MEMORY_SCRIPT = r"""
import json, sys
import numpy as np
from PIL import Image
from hybridflow_jax.codec.api import Codec
from hybridflow_jax.data import demo
model, direction, size, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
codec = Codec.load(model)
small = demo.load("all")["astronaut"][:64, :64]
codec.decompress(codec.compress(small))

def status(key):  # kiB, from Linux's /proc (ru_maxrss would include the parent's RSS at fork)
  line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
  return int(line.split()[1])

open("/proc/self/clear_refs", "w").write("5")      # resets the peak (VmHWM) to the current RSS
before = status("VmRSS")
if size:
  image = np.asarray(Image.fromarray(demo.load("all")["astronaut"]).resize((size, size), Image.LANCZOS))
  if direction == "compress":
    open(path, "wb").write(codec.compress(image))
  else:
    codec.decompress(open(path, "rb").read())
peak = status("VmHWM")
# What XLA allocates for the intermediates of the programs that run (RSS also holds the
# compiler's own peak): the largest of them, by name.
import jax, jax.numpy as jnp
from hybridflow_jax.codec import networks, tiling
n, h = codec.networks, -(-size // 16)
S = jax.ShapeDtypeStruct
grid = (S((h, h), jnp.int32), S((h, h), bool), S((h, h, codec.latent_channels), jnp.float32))
if direction == "compress":
  programs = {"analysis": jax.jit(n._analysis).lower(n.params, S((1, 16 * h, 16 * h, 3), jnp.float32))}
elif n.window_halo is None or h <= networks.WINDOW:
  programs = {"render": jax.jit(n._render).lower(n.params, *grid)}
else:
  w = tiling.spans(h, networks.WINDOW, n.window_halo)[0].size
  f = jax.jit(n._render_features).lower(n.params, *grid)
  c = f.out_info.shape[-1]
  per = 16 // 2 ** networks.WINDOW_LEVEL
  programs = {"render_features": f, "render_from": jax.jit(n._render_from).lower(
      n.params, S((w * per, w * per, c), jnp.float32), S((w, w, codec.latent_channels), jnp.float32))}
temps = {k: p.compile().memory_analysis().temp_size_in_bytes for k, p in programs.items()}
print(json.dumps({"rss_before_kib": before, "rss_peak_kib": peak,
                  "xla_temp_bytes": max(temps.values()), "xla_temp_bytes_by_program": temps}))
"""


def large_image_memory(model: str, size: int, log) -> dict:
  """Peak resident memory (Linux: /proc's VmHWM) of compress and of decompress of a size x size
  photo, each in a fresh process, above the same process after loading the model and coding a
  64 px image (compilation for the large size included); and the bytes XLA allocates for the
  intermediates of the one program that dominates each direction."""
  out = {"image": f"{size}x{size}", "model": model}
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "large.hfc")
    for direction in ("compress", "decompress"):
      r = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, model, direction, str(size), path],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
      if r.returncode != 0:
        raise SystemExit(f"large-image {direction} failed: {r.stderr.strip().splitlines()[-1]}")
      m = json.loads(r.stdout.strip().splitlines()[-1])
      extra = (m["rss_peak_kib"] - m["rss_before_kib"]) * 1024
      out[direction] = {"peak_rss_mib": m["rss_peak_kib"] / 1024,
                        "above_loaded_model_mib": extra / 2**20,
                        "float32_rgb_image_copies": extra / (size * size * 3 * 4),
                        "xla_intermediates_mib": m["xla_temp_bytes"] / 2**20,
                        "xla_intermediates_mib_by_program": {
                            k: v / 2**20 for k, v in m["xla_temp_bytes_by_program"].items()}}
      log(f"{size}x{size} {direction}: +{extra / 2**20:.0f} MiB over the loaded model")
  return out


PEER_SCRIPT = r"""
import json, statistics, sys, time
import numpy as np, torch
from PIL import Image
from compressai.zoo import mbt2018_mean
net = mbt2018_mean(quality=1, pretrained=False).eval()
net.update(force=True)
x = torch.from_numpy(np.asarray(Image.open(sys.argv[1]).convert("RGB"), np.float32) / 255)
x = x.permute(2, 0, 1)[None]
reps = int(sys.argv[2])
with torch.no_grad():
  out = net.compress(x); net.decompress(out["strings"], out["shape"])
  def med(fn):
    ts = []
    for _ in range(reps):
      t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
  c = med(lambda: net.compress(x))
  d = med(lambda: net.decompress(out["strings"], out["shape"]))
import compressai
print(json.dumps({"model": "mbt2018-mean quality 1 (untrained)", "N": net.N, "M": net.M,
                  "compressai": compressai.__version__, "torch": torch.__version__,
                  "torch_threads": torch.get_num_threads(), "compress_seconds": c,
                  "decompress_seconds": d,
                  "bytes": sum(len(s[0]) for s in out["strings"])}))
"""


def mbt_sized_synthesis(channels: int):
  """A synthesis transform of mbt2018-mean's shape and work from our layers: four 5x5 stride-2
  transposed convolutions, M -> N -> N -> N -> 3 (`layers.TransposedConv5x5`: the same arithmetic,
  25 multiply-adds per input pixel and channel pair, as four phase convolutions), GELU between
  them where theirs has IGDN (our continuous stream's nonlinearity; IGDN adds a 1x1 convolution,
  ~4 % of a layer's multiply-adds)."""
  import flax.linen as nn

  from hybridflow_jax.models.layers import TransposedConv5x5

  class Synthesis(nn.Module):
    @nn.compact
    def __call__(self, y):
      h = y
      for i in range(3):
        h = nn.gelu(TransposedConv5x5(channels, name=f"up{i}")(h))
      return TransposedConv5x5(3, name="up3")(h) * 0.5 + 0.5

  return Synthesis()


def continuous_stream_latency(base_cfg, image: np.ndarray, reps: int):
  """Our continuous stream as a standalone codec of mbt2018-mean's size and work: N=128, M=192,
  g_a, h_a, the integer h_s and range coding; back: range decoding, the integer h_s and a full
  synthesis transform of mbt2018-mean's shape (`mbt_sized_synthesis`). Builds and compiles it, and
  returns a function that times both directions (medians of `reps`) and returns the figures."""
  import jax
  import jax.numpy as jnp

  from hybridflow_jax.codec import entropy_parameters
  from hybridflow_jax.codec.coder import Decoder, Encoder
  from hybridflow_jax.models import hybridflow as hf
  from hybridflow_jax.train import export

  cfg = base_cfg.copy_and_resolve_references()
  cfg.model.continuous.update(channels=128, latent_channels=192, hyper_channels=128)
  model = hf.build_model(cfg)
  params = hf.init_params(model, jax.random.PRNGKey(0))
  p = {"params": params}
  analyze = jax.jit(lambda x: model.apply(p, x, method=lambda m, x: (
      lambda y: (y, jnp.round(m.hyper_analysis(y))))(m.analysis(x))))
  x = jnp.asarray(image[None].astype(np.float32) / 255)
  y0, z0 = jax.device_get(analyze(x))
  synthesis = mbt_sized_synthesis(128)
  s_params = synthesis.init(jax.random.PRNGKey(1), jnp.zeros_like(y0))
  synthesize = jax.jit(lambda y: synthesis.apply(s_params, y))
  # Random params: the integer h_s is calibrated on this photo's own z_hat.
  tables, _, frozen, _ = export.build_tables(params, np.ones(cfg.model.vq.num_codes),
                                             np.asarray(z0, np.int64))
  hs = entropy_parameters.on_host_cpu(frozen)

  def compress():
    y, z = jax.device_get(analyze(x))
    z = np.asarray(z[0], np.int64)
    mean, idx = hs(z, y.shape[1:3])
    res = np.round(np.asarray(y[0]) - mean).astype(np.int64)
    enc = Encoder()
    enc.encode_with_table(z, tables["z"], np.broadcast_to(np.arange(z.shape[-1]), z.shape))
    enc.encode_with_table(res, tables["y"], idx)
    return enc.finish(verify=False), z.shape, y.shape  # the codec verifies; CompressAI does not

  def decompress(data, zshape, yshape):
    dec = Decoder(data)
    rows = np.broadcast_to(np.arange(zshape[-1]), zshape)
    z = dec.decode_with_table(rows.size, tables["z"], rows.ravel()).reshape(zshape)
    mean, idx = hs(z, yshape[1:3])
    res = dec.decode_with_table(idx.size, tables["y"], idx.ravel()).reshape(idx.shape)
    return np.asarray(synthesize(jnp.asarray((res + mean)[None], jnp.float32)))

  data, zs, ys = compress()
  decompress(data, zs, ys)

  def timed():
    return {"N": 128, "M": 192, "bytes": len(data),
            "compress_seconds": _median_time(compress, reps),
            "decompress_seconds": _median_time(lambda: decompress(data, zs, ys), reps),
            "decoder": "range decoding + integer h_s + synthesis: 3 x (5x5 stride-2 transposed "
                       "convolution to 128 as four phase convolutions, GELU), the same to 3 as "
                       "one sub-pixel convolution"}
  return timed


def peer_comparison(cfg, image: np.ndarray, peer_python: str, reps: int, rounds: int = 3) -> dict:
  """CompressAI (in `peer_python`) and our continuous stream timed in alternation, `rounds` times
  each, so that the machine's drift falls on both; the ratios are of the medians over rounds."""
  ours_timed = continuous_stream_latency(cfg, image, reps)
  peer_runs, our_runs = [], []
  with tempfile.TemporaryDirectory() as tmp:
    from PIL import Image
    path = os.path.join(tmp, "photo.png")
    Image.fromarray(image).save(path)
    for _ in range(rounds):
      r = subprocess.run([peer_python, "-c", PEER_SCRIPT, path, str(reps)],
                         capture_output=True, text=True, timeout=600)
      if r.returncode != 0:
        raise SystemExit(f"--peer-python failed: {r.stderr.strip().splitlines()[-1]}")
      peer_runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
      our_runs.append(ours_timed())
  med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
  peer = {**peer_runs[0], **{k: med(peer_runs, k) for k in ("compress_seconds", "decompress_seconds")}}
  ours = {**our_runs[0], **{k: med(our_runs, k) for k in ("compress_seconds", "decompress_seconds")}}
  both = lambda r: r["compress_seconds"] + r["decompress_seconds"]  # noqa: E731
  return {"compressai": peer, "ours_continuous_stream": ours, "rounds": rounds,
          "per_round": [{"compressai": [p["compress_seconds"], p["decompress_seconds"]],
                         "ours": [o["compress_seconds"], o["decompress_seconds"]]}
                        for p, o in zip(peer_runs, our_runs, strict=True)],
          "ratio_compress": ours["compress_seconds"] / peer["compress_seconds"],
          "ratio_decompress": ours["decompress_seconds"] / peer["decompress_seconds"],
          "ratio_compress_plus_decompress": both(ours) / both(peer)}


# Copies of the photo in the folder that `compress` / `decompress` of a folder are timed on.
FOLDER_FILES = 8


def cli_latency(model: str, image: np.ndarray, reps: int, log) -> dict:
  """Wall seconds of `hybridflow compress` / `decompress` as fresh processes, with and without the
  commands' cache (cli.COMPILE_CACHE_ENV: XLA's compiled programs, and the exported programs of
  codec/programs.py beside them); and of each command on a folder of FOLDER_FILES copies."""
  from PIL import Image
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    Image.fromarray(image).save(tmp / "photo.png")
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    cmd = [sys.executable, "-m", "hybridflow_jax.cli"]

    def wall(cache):
      out = {}
      for name, args in (("compress", ["compress", tmp / "photo.png", tmp / "photo.hfc"]),
                         ("decompress", ["decompress", tmp / "photo.hfc", tmp / "photo.out.png"])):
        t = time.perf_counter()
        subprocess.run([*cmd, *map(str, args), "--model", model, "--force"], check=True,
                       env={**env, "HYBRIDFLOW_COMPILE_CACHE": cache}, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        out[name] = time.perf_counter() - t
      return out

    cache = str(tmp / "cache")
    result = {"empty_cache": wall(cache)}
    for key, setting in (("warm_cache", cache), ("cache_off", "off")):
      runs = [wall(setting) for _ in range(reps)]
      result[key] = {k: statistics.median(r[k] for r in runs) for k in ("compress", "decompress")}
    # A folder of FOLDER_FILES copies, each command run once on the whole folder (warm cache):
    # the seconds per file a user coding many photos waits for.
    folder = tmp / "folder"
    folder.mkdir()
    for i in range(FOLDER_FILES):
      os.link(tmp / "photo.png", folder / f"photo{i}.png")
    result["folder"] = {"files": FOLDER_FILES}
    for name, args in (("compress", ["compress", folder, tmp / "coded"]),
                       ("decompress", ["decompress", tmp / "coded", tmp / "decoded"])):
      t = time.perf_counter()
      subprocess.run([*cmd, *map(str, args), "--model", model], check=True,
                     env={**env, "HYBRIDFLOW_COMPILE_CACHE": cache}, cwd=ROOT,
                     stdout=subprocess.DEVNULL)
      result["folder"][name] = time.perf_counter() - t
      result["folder"][f"{name}_per_file"] = result["folder"][name] / FOLDER_FILES
    programs = list((tmp / "cache").glob("*-cache"))  # beside them: -atime files, a lock
    result["cache_programs"] = len(programs)
    result["cache_bytes"] = sum(p.stat().st_size for p in programs)
    exported = list((tmp / "cache" / "exported").glob("*.jaxexport"))  # codec/programs.py
    result["exported_programs"] = len(exported)
    result["exported_bytes"] = sum(p.stat().st_size for p in exported)
  log(f"command line (s): {result}")
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=str(ROOT / "configs" / "small.py"),
                      help="the config whose train steps are timed (default: the reference recipe)")
  parser.add_argument("--model", default="small",
                      help="the model the codec part times: a shipped name or a bundle path; "
                           "'untrained' times --config's networks with random params")
  parser.add_argument("--out", default=None, help="JSON file to write")
  parser.add_argument("--steps", type=int, default=3, help="timed train steps per stage")
  parser.add_argument("--reps", type=int, default=3, help="timed codec runs")
  parser.add_argument("--peer-python", "--peer_python", dest="peer_python", default=None,
                      help="an interpreter where compressai imports")
  parser.add_argument("--skip", default="",
                      help="comma-separated parts to skip: train,codec,grain,memory,cli")
  parser.add_argument("--batch", type=int, default=None,
                      help="global batch of the train part (default: the config's train.batch_size);"
                           " e.g. 2 to time configs/imagenet256.py's widths on a CPU")
  parser.add_argument("--large-size", type=int, default=2048,
                      help="side of the square photo whose peak memory is measured")
  args = parser.parse_args()
  log = lambda m: print(m, file=sys.stderr, flush=True)
  skip = set(filter(None, args.skip.split(",")))

  import jax

  from hybridflow_jax import config_io
  cfg = config_io.load_config(args.config)
  if args.batch is not None:
    if args.batch < 1:
      parser.error(f"--batch must be a positive number of images, got {args.batch}")
    cfg.train.batch_size = args.batch
  t0 = time.perf_counter()
  peak = matmul_peak()
  log(f"matmul peak: {peak / 1e9:.1f} GFLOP/s")
  result = {
      "device": {"platform": jax.devices()[0].platform, "kind": jax.devices()[0].device_kind,
                 "devices": jax.device_count(), "cpu_count": os.cpu_count(),
                 "machine": platform.machine(), "processor": platform.processor()},
      "jax": jax.__version__, "config": os.path.relpath(args.config, ROOT),
      "batch": cfg.train.batch_size,
      "matmul_peak_flops_per_second": peak,
      # What XLA was told (hybridflow_jax adds its CPU_XLA_FLAG unless the flag is set already).
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  if "train" not in skip:
    result["train"] = train_throughput(cfg, peak, args.steps, log)
  image = photo_768x512()
  if "codec" not in skip:
    result["codec"] = codec_latency(cfg, image, args.reps, log,
                                    None if args.model == "untrained" else args.model)
  if "grain" not in skip:
    result["grain"] = grain_throughput(10, log)
  if "memory" not in skip and args.model != "untrained":
    result["large_image_memory"] = large_image_memory(args.model, args.large_size, log)
  if "cli" not in skip and args.model != "untrained":
    result["cli"] = cli_latency(args.model, image, args.reps, log)
  if args.peer_python:
    result["peer"] = peer_comparison(cfg, image, args.peer_python, args.reps)
  result["total_seconds"] = time.perf_counter() - t0
  text = json.dumps(result, indent=1)
  print(text)
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
  main()
