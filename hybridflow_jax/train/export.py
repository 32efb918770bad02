"""`hybridflow export`: a finished run -> an inference bundle (`hybridflow_jax.codec.bundle`).

    hybridflow export --workdir runs/demo --out models/demo

What is frozen here, once, so that every later file decodes the same:
- the inference params (the final stage's EMA params when EMA is on), without the optimiser and
  discriminator state and without the modules only training uses (G_vq's pixel decoder, the
  continuous stream's light synthesis head);
- the hyper-latent's factorized prior, as one integer CDF per channel (`factorized_table`);
- the Gaussian conditional, as one integer CDF per scale of a log-spaced scale table;
- the hyper-synthesis h_s, which picks each y symbol's mean and table row, as an integer network
  (`codec.entropy_parameters.freeze`), so that files decode the same on every machine;
- the prior of sent codeword indices, from codeword counts measured by tokenizing the run's training
  data (`index_prior_table`; counts are smoothed and mixed with the uniform distribution, so no
  index is ever uncodable); the integer h_s is calibrated on z_hat of the same tiles.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from importlib.metadata import version
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hybridflow_jax import __version__, stages
from hybridflow_jax.codec import bundle as bundle_lib
from hybridflow_jax.codec import entropy_parameters
from hybridflow_jax.codec import tables as tables_lib
from hybridflow_jax.config import validate
from hybridflow_jax.data import pipeline
from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.models.entropy import factorized_host_cdf
from hybridflow_jax.train import checkpoint as ckpt_lib
from hybridflow_jax.train.rundir import RunDir

GAUSSIAN_SCALES = dict(min_scale=0.11, max_scale=256.0, levels=128)
TAIL_MASS = 1e-9
DEFAULT_PRIOR_IMAGES = 1000
_TILE_BATCH = 16
# The integer h_s is calibrated on z_hat of a CALIBRATION_PX centre crop of each of the first
# CALIBRATION_IMAGES training images: a 4x4 z grid, so the 3x3 convolutions see real neighbours.
CALIBRATION_PX = 256
CALIBRATION_IMAGES = 64


def inference_params(params) -> dict[str, Any]:
  """A copy of `params` (host numpy) without the training-only modules."""
  tree = jax.tree.map(lambda a: np.asarray(jax.device_get(a), np.float32), dict(params))
  tree = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
  for path in stages.training_only_paths():
    node = tree
    for key in path[:-1]:
      node = node.get(key, {})
    node.pop(path[-1], None)
  return tree


@dataclasses.dataclass
class TileStatistics:
  """What export measures on the training data (`measure_tiles`).

  counts: int64 [K], how often each codeword was chosen in the tiles; z: int64 [N, 4, 4, Nz], z_hat
  of a 256 px centre crop of each of the first CALIBRATION_IMAGES images (the integer h_s is
  calibrated on it); images, tiles: how many were read.
  """

  counts: np.ndarray
  z: np.ndarray
  images: int
  tiles: int


def measure_tiles(model: hf.HybridFlow, params, data: str, tile: int,
                  limit: int | None = DEFAULT_PRIOR_IMAGES, log=print) -> TileStatistics:
  """Codeword counts of the images of data spec `data`, cut in non-overlapping tiles of `tile` px
  (images smaller than a tile are upscaled first), and z_hat of their centre crops."""
  k = model.config.vq.num_codes
  v = lambda p: {"params": p}  # noqa: E731
  tokenize = jax.jit(lambda p, x: model.apply(v(p), x, method=hf.HybridFlow.tokenize)["indices"])
  hyper = jax.jit(lambda p, x: jnp.round(model.apply(
      v(p), model.apply(v(p), x, method=hf.HybridFlow.analysis),
      method=hf.HybridFlow.hyper_analysis)))
  counts = np.zeros(k, np.int64)
  zs: list[np.ndarray] = []
  tiles: list[np.ndarray] = []
  crops: list[np.ndarray] = []
  images = n_tiles = 0

  def run(program, batch, size):
    x = np.zeros((_TILE_BATCH, size, size, 3), np.float32)
    x[:len(batch)] = np.stack(batch).astype(np.float32) / 255.0
    out = np.asarray(jax.device_get(program(params, jnp.asarray(x))))[:len(batch)]
    batch.clear()
    return out

  # Unreadable images are the trainer's to report: skipped here without a word.
  for _, rgb in pipeline.readable_images(data, limit, log=lambda _: None):
    img = pipeline.upscale_to(rgb, tile)
    images += 1
    for top in range(0, img.shape[0] - tile + 1, tile):
      for left in range(0, img.shape[1] - tile + 1, tile):
        tiles.append(img[top:top + tile, left:left + tile])
        n_tiles += 1
        if len(tiles) == _TILE_BATCH:
          counts += np.bincount(run(tokenize, tiles, tile).ravel(), minlength=k)
    if images <= CALIBRATION_IMAGES:
      big = pipeline.upscale_to(rgb, CALIBRATION_PX)
      top, left = (big.shape[0] - CALIBRATION_PX) // 2, (big.shape[1] - CALIBRATION_PX) // 2
      crops.append(big[top:top + CALIBRATION_PX, left:left + CALIBRATION_PX])
      if len(crops) == _TILE_BATCH:
        zs.extend(run(hyper, crops, CALIBRATION_PX).astype(np.int64))
  if tiles:
    counts += np.bincount(run(tokenize, tiles, tile).ravel(), minlength=k)
  if crops:
    zs.extend(run(hyper, crops, CALIBRATION_PX).astype(np.int64))
  if not n_tiles:
    raise ValueError(f"data spec {data!r}: no readable images to measure the index prior on")
  log(f"index prior: {n_tiles} tiles of {tile} px from {images} images of {data}; entropy "
      f"parameters calibrated on {len(zs)} of them")
  return TileStatistics(counts, np.stack(zs), images, n_tiles)


def build_tables(params, counts: np.ndarray, z_calibration: np.ndarray):
  """(tables {"z", "y", "index"}, Gaussian scales, integer entropy model, statistics) for a model's
  params; counts: codeword counts [K]; z_calibration: z_hat [T, hz, wz, Nz] of training tiles."""
  prior = jax.device_get(params["continuous"]["factorized_prior"])
  channels = np.asarray(prior["matrix0"]).shape[0]
  z_table = tables_lib.factorized_table(factorized_host_cdf(prior), channels, tail_mass=TAIL_MASS)
  scales = tables_lib.gaussian_scale_table(**GAUSSIAN_SCALES)
  y_table = tables_lib.gaussian_tables(scales, tail_mass=TAIL_MASS)
  index_table = tables_lib.index_prior_table(counts)
  hs = jax.device_get(params["continuous"]["hyper_synthesis"])
  entropy_model, hs_stats = entropy_parameters.freeze(hs, scales, z_calibration)
  total = counts.sum()
  p = counts[counts > 0] / max(total, 1)
  stats = {
      "tokens": int(total),
      "codes_used": int((counts > 0).sum()),
      "entropy_bits": float(-(p * np.log2(p)).sum()) if total else None,
      "prior_bits_per_index": tables_lib.expected_bits(index_table, counts) if total else None,
      "uniform_bits_per_index": math.log2(len(counts)),
      "entropy_model": hs_stats,
  }
  return {"z": z_table, "y": y_table, "index": index_table}, scales, entropy_model, stats


def make_bundle(config: ml_collections.ConfigDict, params, *, data: str | None = None,
                prior_images: int | None = DEFAULT_PRIOR_IMAGES, provenance: dict | None = None,
                log=print) -> dict[str, Any]:
  """The in-memory bundle of `params` (a full HybridFlow param tree): what `Codec` takes.

  data: where codeword counts are measured (default: the config's training data).
  """
  model = hf.build_model(config)
  data = data or config.data.train
  tile = int(config.eval_size)
  measured = measure_tiles(model, params, data, tile, prior_images, log)
  tables, scales, entropy_model, stats = build_tables(params, measured.counts, measured.z)
  hs_stats = stats.pop("entropy_model")
  info = {
      "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      "hybridflow_jax": __version__,
      "entropy_coder": "constriction " + version("constriction"),
      **(provenance or {}),
      "index_prior": {"data": data, "images": measured.images, "tiles": measured.tiles,
                      "tile_px": tile, **stats},
      "tables": {"gaussian_scales": GAUSSIAN_SCALES, "tail_mass": TAIL_MASS,
                 "precision_bits": tables_lib.PRECISION},
      "entropy_model": hs_stats,
  }
  return bundle_lib.assemble(config.to_dict(), inference_params(params), tables, scales,
                             entropy_model, info)


def export_params(config: ml_collections.ConfigDict, params, out, *, data: str | None = None,
                  prior_images: int | None = DEFAULT_PRIOR_IMAGES, force: bool = False,
                  provenance: dict | None = None, log=print) -> dict[str, Any]:
  """Writes the bundle of `params` (a full HybridFlow param tree) to `out`; returns the manifest."""
  bundle_lib.check_destination(out, force)  # before the slow part
  b = make_bundle(config, params, data=data, prior_images=prior_images, provenance=provenance,
                  log=log)
  manifest = bundle_lib.store(out, b, force=force)
  log(f"wrote {out} (fingerprint {manifest['fingerprint'][:8]})")
  return manifest


def load_run(workdir) -> tuple[ml_collections.ConfigDict, Any, dict[str, Any]]:
  """(config, final params, provenance) of a finished training run in `workdir`."""
  rundir = RunDir(workdir)
  config = rundir.read_config()
  validate(config)
  run_stages = stages.codec_stages(config)
  if not run_stages:
    raise ValueError(f"{workdir}: the run trains no stage of the codec")
  # A fine-tuned run (train.init_from) took the networks of the stages it did not train from its
  # bundle: its last stage's params hold them all, so that stage is the one that must be finished.
  fine_tuned = config.train.get("init_from", "")
  unfinished = rundir.unfinished(run_stages[-1:] if fine_tuned else run_stages)
  if unfinished:
    raise ValueError(f"{workdir}: stage(s) {', '.join(unfinished)} not finished; a model needs "
                     + (f"its last stage ({run_stages[-1]}), trained from {fine_tuned}"
                        if fine_tuned else f"the whole pipeline ({', '.join(run_stages)})"))
  final = rundir.stage(run_stages[-1])
  model = hf.build_model(config)
  params = ckpt_lib.load_params(final.params, hf.param_shapes(model))
  provenance = {"source": {"workdir": str(rundir.root.resolve()), "stage": run_stages[-1],
                           "step": final.done_step()}}
  if fine_tuned:
    provenance["source"]["init_from"] = fine_tuned
  return config, params, provenance


def export_run(workdir, out, *, data: str | None = None,
               prior_images: int | None = DEFAULT_PRIOR_IMAGES, force: bool = False,
               log=print) -> dict[str, Any]:
  """Exports the final params of a finished training run in `workdir` (see the module docstring)."""
  config, params, provenance = load_run(workdir)
  return export_params(config, params, out, data=data, prior_images=prior_images, force=force,
                       provenance=provenance, log=log)
