"""The demo: train every stage briefly on the bundled photos, then measure held-out photos.

It runs the real model and losses with a plain optimiser loop: a few steps per stage, enough to show
each stage learning and every operating point working end to end. (The full trainer, with sharding,
checkpoints and metrics, is `hybridflow train`.)
"""

from __future__ import annotations

import json
import pathlib
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hybridflow_jax import losses
from hybridflow_jax.data import demo as demo_data
from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.models.bridge import init_bridge_from_pixel_decoder

EVAL_SCHEDULES = ("1_4", "1_9", "1_16", "dynamic")


def random_crops(photos: list[np.ndarray], rng: np.random.Generator, batch: int,
                 size: int) -> np.ndarray:
  """[batch, size, size, 3] float32 in [0, 1]: random crops with random horizontal flips."""
  out = np.empty((batch, size, size, 3), np.float32)
  for b in range(batch):
    img = photos[rng.integers(len(photos))]
    top = rng.integers(img.shape[0] - size + 1)
    left = rng.integers(img.shape[1] - size + 1)
    crop = img[top:top + size, left:left + size]
    out[b] = (crop[:, ::-1] if rng.random() < 0.5 else crop) / 255.0
  return out


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
  top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
  return img[top:top + size, left:left + size].astype(np.float32) / 255.0


def train_stage(model, params, stage: str, cfg: ml_collections.ConfigDict, photos, steps: int,
                rng: np.random.Generator, log=print):
  """A few AdamW steps of one stage; returns (params, first loss, last loss)."""
  labels = jax.tree.map(lambda t: "train" if t else "freeze", hf.trainable(params, stage))
  tx = optax.multi_transform({"train": optax.adamw(cfg.train.learning_rate),
                              "freeze": optax.set_to_zero()}, labels)
  opt_state = tx.init(params)

  def loss_fn(p, x, key):
    return losses.stage_loss(stage, hf.forward(model, p, x, key, stage), x, cfg.losses)

  @jax.jit
  def step(p, o, x, key):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, x, key)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, metrics

  history = []
  for i in range(steps):
    x = random_crops(photos, rng, cfg.train.batch_size, cfg.image_size)
    params, opt_state, metrics = step(params, opt_state, x, jax.random.PRNGKey(i))
    history.append(float(metrics["loss"]))
  log(f"  {stage:<12s} {steps:4d} steps   loss {history[0]:9.4f} -> {history[-1]:9.4f}")
  return params, history[0], history[-1]


def evaluate(model, params, cfg, photos: dict[str, np.ndarray], size: int) -> dict:
  """Estimated bpp and PSNR per operating point on center crops of held-out photos."""
  x = jnp.asarray(np.stack([center_crop(p, size) for p in photos.values()]))
  num_codes, pixels = cfg.model.vq.num_codes, size * size
  decode = jax.jit(lambda i, k, y: hf.decode(model, params, i, k, y)[0])
  results = {}
  for schedule in EVAL_SCHEDULES:
    keep, ids = hf.keep_maps(x, schedule, cfg.model.masking)
    enc = hf.encode(model, params, x, keep)
    bits = hf.estimate_bits(enc, keep, ids, num_codes,
                            num_schedules=len(cfg.model.masking.schedules))
    x_hat = decode(enc["indices"], keep, enc["y_hat"])
    mse = jnp.mean(jnp.square(x_hat - x), axis=(1, 2, 3))
    results[schedule] = {
        "bpp_estimated": float(jnp.mean(bits["total"]) / pixels),
        "psnr": float(jnp.mean(10 * jnp.log10(1.0 / mse))),
        "keep_ratio": float(jnp.mean(keep)),
    }
  return results


def run(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, log=print) -> dict:
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.time()
  train, heldout = demo_data.load("train"), demo_data.load("heldout")
  log(f"demo: {len(train)} training photos, {len(heldout)} held out; crops of "
      f"{cfg.image_size} px, batch {cfg.train.batch_size}")
  model = hf.build_model(cfg)
  params = flax.core.unfreeze(hf.init_params(model, jax.random.PRNGKey(cfg.seed), cfg.image_size))
  rng = np.random.default_rng(cfg.seed)
  photos = list(train.values())
  stages = {}
  for stage in ("vq", "continuous", "transformer", "bridge"):
    if stage == "bridge":
      params["bridge"] = init_bridge_from_pixel_decoder(params["bridge"], params["pixel_decoder"])
    params, first, last = train_stage(model, params, stage, cfg, photos,
                                      cfg.train.steps[stage], rng, log)
    stages[stage] = {"first_loss": first, "last_loss": last, "steps": cfg.train.steps[stage]}
  results = evaluate(model, params, cfg, heldout, cfg.eval_size)
  log(f"\nheld-out photos ({', '.join(heldout)}), center {cfg.eval_size} px crops:")
  log(f"  {'schedule':<9s} {'kept':>6s} {'bpp (est.)':>11s} {'PSNR (dB)':>10s}")
  for name, r in results.items():
    log(f"  {name:<9s} {r['keep_ratio']:6.3f} {r['bpp_estimated']:11.4f} {r['psnr']:10.2f}")
  summary = {"stages": stages, "heldout": results, "seconds": time.time() - start}
  (workdir / "demo_results.json").write_text(json.dumps(summary, indent=2))
  log(f"\nwrote {workdir / 'demo_results.json'} ({summary['seconds']:.0f} s)")
  return summary
