"""The training stages, one record each: what a stage trains, what it needs, what it computes, its
loss, what its perceptual and adversarial terms judge, how it starts, and what it evaluates.

    vq ──┬──> transformer ──> bridge ──> joint
    continuous ──┘

The trainer, `plan`, export and the benchmarks iterate over `STAGES`; adding a stage is adding a
record here. Forward functions return everything the stage's loss needs and nothing more; the
parameter groups a stage does not train enter through `stop_gradient`, so their gradients are
exactly zero and the backward pass skips them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections

from hybridflow_jax import config, losses
from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.models.bridge import init_bridge_from_pixel_decoder
from hybridflow_jax.models.entropy import bits, quantize
from hybridflow_jax.models.transformer import decode_tokens, sample_sent_maps, training_mask
from hybridflow_jax.models.vq import kmeans_codebook, restart_dead_codes, update_code_usage
from hybridflow_jax.perceptual import lpips_distance

Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Judged:
  """The image a stage's LPIPS and GAN terms judge (a key of its forward output), and the last
  layer of the decoder that made it (VQGAN's adaptive GAN weight balances gradients there)."""

  output: str
  last_layer: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  trains: tuple[str, ...]         # param path prefixes the stage updates; the rest stay frozen
  needs: tuple[str, ...]          # stages that must be finished first (their params are loaded)
  forward: Callable[..., dict]    # (model, params, x, rng) -> outputs
  loss: Callable[..., tuple[jax.Array, Metrics]]  # (outputs, x, config.losses) -> (loss, metrics)
  judged: Judged | None = None    # LPIPS + GAN on this image; None: neither
  start: Callable[[Any, Any], Any] | None = None  # (params, param shardings) -> params at step 0
  # (params, usage, outputs, rng, config, step) -> (params, usage, metrics), after each update.
  after_update: Callable[..., tuple[Any, jax.Array, Metrics]] | None = None
  training_only: tuple[tuple[str, ...], ...] = ()  # params inference never uses (export drops)
  evaluation: Evaluation | None = None  # the held-out evaluation during and at the end
  part_of_codec: bool = True      # False: a comparator (`baseline`) that export ignores


def trainable(params, stage: str):
  """A pytree of bools like `params`: True where `stage` updates the parameter."""
  prefixes = tuple(p + "/" for p in STAGES[stage].trains)

  def is_trained(path, _):
    name = "/".join(str(getattr(k, "key", k)) for k in path) + "/"
    return name.startswith(prefixes)
  return jax.tree_util.tree_map_with_path(is_trained, params)


def _frozen_apart_from(params, stage: str) -> dict:
  return {"params": jax.tree.map(lambda v, t: v if t else jax.lax.stop_gradient(v), params,
                                 trainable(params, stage))}


def _keys(rng: jax.Array):
  """(continuous, training mask, sent maps, dropout) keys; every stage splits the same way."""
  return jax.random.split(rng, 4)


def _grid(x: jax.Array) -> tuple[int, int]:
  return x.shape[1] // hf.STRIDE, x.shape[2] // hf.STRIDE


# --------------------------------------------------------------------------------------------------
# Forward pieces shared by the later stages.


def _predict_masked(model, p, x, out, y_hat, k_mask, k_drop) -> dict:
  """The transformer on a training mask of the true indices (cross-entropy targets)."""
  mcfg = model.config.masking
  visible = training_mask(k_mask, x.shape[0], _grid(x), region=mcfg.region,
                          schedules=tuple(mcfg.schedules), region_mix=mcfg.train_region_mix,
                          extra_mask=mcfg.train_extra_mask)
  tokens = jnp.where(visible, out["indices"], model.config.vq.num_codes)
  logits = model.apply(p, tokens, jax.lax.stop_gradient(y_hat), True,
                       method=hf.HybridFlow.predict_tokens, rngs={"dropout": k_drop})
  return {"logits": logits, "visible": visible}


def _render_received(model, p, x, out, y_hat, k_sent) -> dict:
  """What a receiver renders: sent indices completed by the frozen transformer, then the bridge."""
  mcfg = model.config.masking
  sent = sample_sent_maps(k_sent, x.shape[0], _grid(x), region=mcfg.region,
                          schedules=tuple(mcfg.schedules), region_mix=mcfg.train_region_mix)
  frozen = jax.lax.stop_gradient(p)
  predict = lambda t, c: model.apply(frozen, t, c, method=hf.HybridFlow.predict_tokens)
  decoded = decode_tokens(predict, out["indices"], sent, jax.lax.stop_gradient(y_hat),
                          model.config.vq.num_codes, model.config.transformer.decode_steps)
  return {"decoded": decoded, "x_hat": model.apply(p, decoded, y_hat, method=hf.HybridFlow.render)}


def _indices_and_rounded_y(model, p, x) -> tuple[dict, jax.Array]:
  out = {"indices": model.apply(p, x, method=hf.HybridFlow.tokenize)["indices"]}
  return out, model.apply(p, x, method=hf.HybridFlow.continuous_stream)["y_hat"]


# --------------------------------------------------------------------------------------------------
# Forwards.


def _vq_forward(model, params, x, rng):
  del rng
  p = _frozen_apart_from(params, "vq")
  tok = model.apply(p, x, method=hf.HybridFlow.tokenize)
  return {**tok, "x_vq": model.apply(p, tok["quantized"], method=hf.HybridFlow.decode_codebook)}


def _continuous_forward(model, params, x, rng):
  k_cont, *_ = _keys(rng)
  p = _frozen_apart_from(params, "continuous")
  return model.apply(p, x, k_cont, True, True, method=hf.HybridFlow.continuous_stream)


def _baseline_forward(model, params, x, rng):
  k_cont, *_ = _keys(rng)
  p = _frozen_apart_from(params, "baseline")
  return model.apply(p, x, k_cont, True, method=hf.HybridFlow.continuous_baseline)


def _transformer_forward(model, params, x, rng):
  _, k_mask, _, k_drop = _keys(rng)
  p = _frozen_apart_from(params, "transformer")
  out, y_hat = _indices_and_rounded_y(model, p, x)
  return {**out, **_predict_masked(model, p, x, out, y_hat, k_mask, k_drop)}


def _bridge_forward(model, params, x, rng):
  _, _, k_sent, _ = _keys(rng)
  p = _frozen_apart_from(params, "bridge")
  out, y_hat = _indices_and_rounded_y(model, p, x)
  return {**out, **_render_received(model, p, x, out, y_hat, k_sent)}


def _joint_forward(model, params, x, rng):
  k_cont, k_mask, k_sent, k_drop = _keys(rng)
  p = _frozen_apart_from(params, "joint")
  out = {"indices": model.apply(p, x, method=hf.HybridFlow.tokenize)["indices"]}
  cont = model.apply(p, x, k_cont, True, method=hf.HybridFlow.continuous_stream)
  # Rate from the training proxy; downstream consumers get rounded values with STE gradients.
  y_hat = quantize(cont["y"], "ste", offset=cont["mean"])
  out.update(cont)
  out.update(_predict_masked(model, p, x, out, y_hat, k_mask, k_drop))
  out.update(_render_received(model, p, x, out, y_hat, k_sent))
  return out


# --------------------------------------------------------------------------------------------------
# Losses: the pixel, rate and token terms (LPIPS and GAN are added by the update step from
# `Stage.judged`). Images are [B, H, W, 3] in [0, 1]; rates in bits per pixel.


def _vq_loss(out, x, cfg):
  m = {"recon": losses.pixel_loss(cfg.pixel, out["x_vq"], x),
       "codebook": out["codebook_loss"], "commitment": out["commitment_loss"]}
  m["loss"] = m["recon"] + cfg.codebook_weight * m["codebook"] \
      + cfg.commitment_weight * m["commitment"]
  return m["loss"], m


def _rate_terms(out, x) -> Metrics:
  """bpp of y_hat and z_hat (the training proxy) and their sum."""
  pixels = x.shape[0] * x.shape[1] * x.shape[2]
  m = {"bpp_y": bits(out["y_likelihood"]) / pixels, "bpp_z": bits(out["z_likelihood"]) / pixels}
  m["bpp"] = m["bpp_y"] + m["bpp_z"]
  return m


def _rd(m: Metrics, distortion_mse: jax.Array, cfg, target: float, hold: bool = False):
  return losses.rate_distortion(m["bpp"], distortion_mse, cfg.rate_lambda, target,
                                cfg.rate_over_weight, hold)


def _continuous_loss(out, x, cfg):
  m = {**_rate_terms(out, x), "mse": losses.mse(out["x_cont"], x)}
  m["loss"] = _rd(m, m["mse"], cfg, cfg.rate_target)
  return m["loss"], m


def _baseline_loss(out, x, cfg):
  m = {**_rate_terms(out, x), "mse": losses.mse(out["x_base"], x)}
  m["loss"] = _rd(m, m["mse"], cfg, cfg.baseline_rate_target, cfg.baseline_rate_hold)
  return m["loss"], m


def _token_terms(out) -> Metrics:
  ce, acc = losses.masked_cross_entropy(out["logits"], out["indices"], out["visible"])
  return {"token_ce": ce, "token_acc": acc}


def _transformer_loss(out, x, cfg):
  m = _token_terms(out)
  m["loss"] = m["token_ce"]
  return m["loss"], m


def _bridge_loss(out, x, cfg):
  # The distortion side of the rate-distortion convention (lambda * 255^2 * MSE); no rate here.
  m = {"mse": losses.mse(out["x_hat"], x)}
  m["loss"] = cfg.rate_lambda * 255.0 ** 2 * m["mse"]
  return m["loss"], m


def _joint_loss(out, x, cfg):
  m = {**_rate_terms(out, x), **_token_terms(out), "mse": losses.mse(out["x_hat"], x)}
  target = cfg.get("joint_rate_target", 0.0) or cfg.rate_target
  m["loss"] = _rd(m, m["mse"], cfg, target) + m["token_ce"]
  return m["loss"], m


# --------------------------------------------------------------------------------------------------
# Start-up and per-step maintenance.


def _bridge_start(params, param_shardings):
  """The bridge starts as an exact copy of the trained pixel decoder (fusion layers output 0)."""
  # Copies, not shared buffers: the update step donates the state, each buffer once.
  decoder = jax.device_put(params["pixel_decoder"], param_shardings["pixel_decoder"],
                           may_alias=False)
  params = flax.core.unfreeze(params)
  params["bridge"] = init_bridge_from_pixel_decoder(params["bridge"], decoder)
  return params


def _codebook_maintenance(params, usage, out, rng, cfg, step):
  """Keeps the codebook on the data: at step 0 it becomes k-means++ centres of the first batch's
  encoder outputs (`train.codebook_init`); every step it tracks codeword usage, and every
  `train.dead_code_every` steps it re-seeds dead codes (used below 1/(10 K)) from this batch.

  Usage is an exponential moving average that starts at zero and is read bias-corrected (divided
  by 1 - decay^t, as Adam does), so a code nobody picks reads as unused from the first steps on
  instead of decaying from a uniform start for hundreds of steps.
  """
  k_init, k_restart = jax.random.split(rng)
  latents = out["latent"].reshape(-1, out["latent"].shape[-1])
  params = flax.core.unfreeze(params)
  codebook = params["quantizer"]["codebook"]
  # (Not when fine-tuning: the codebook of `train.init_from` is already on its data.)
  if cfg.train.codebook_init == "kmeans" and not cfg.train.get("init_from", ""):
    codebook = jax.lax.cond(
        step == 0, lambda: kmeans_codebook(jax.lax.stop_gradient(latents), codebook.shape[0],
                                           k_init, cfg.train.kmeans_iterations).astype(codebook.dtype),
        lambda: codebook)
  decay = cfg.train.code_usage_decay
  usage = update_code_usage(usage, out["code_counts"], decay)
  bias = 1.0 - decay ** (step.astype(jnp.float32) + 1.0)  # the EMA's weight so far
  k = cfg.model.vq.num_codes
  threshold = 1.0 / (10.0 * k)
  if cfg.train.dead_code_every:
    due = (step + 1) % cfg.train.dead_code_every == 0
    fresh, dead = restart_dead_codes(codebook, usage / bias, latents, k_restart, threshold)
    codebook = jnp.where(due, fresh, codebook)
    # A restarted code starts as if used at the uniform rate (in the EMA's raw units).
    usage = jnp.where(due & dead, bias / k, usage)
  params["quantizer"]["codebook"] = codebook
  freq = usage / bias
  freq = freq / jnp.maximum(jnp.sum(freq), 1e-12)
  metrics = {"dead_codes": jnp.sum(freq < threshold),
             "codes_used": jnp.mean(freq >= threshold),
             "perplexity": jnp.exp(-jnp.sum(freq * jnp.log(freq + 1e-10)))}
  return params, usage, metrics


# --------------------------------------------------------------------------------------------------
# Held-out evaluation: each stage measures what it trains, so a failing stage shows where it fails.
# A program maps (params, images [N, S, S, 3] in [0, 1], keep [N, S/16, S/16] bool, side bits [N])
# to (per-image metrics {name: [N]}, reconstructions [N, S, S, 3]); `per_point` programs run at
# every operating point (`schedules.OPERATING_POINTS`), the others once with every index kept.


@dataclasses.dataclass(frozen=True)
class Evaluation:
  name: str                        # what is measured, for the table's title
  per_point: bool                  # run at each operating point, or once
  # (model, config) -> the jittable program (params, LPIPS-Alex weights, x, keep, side bits)
  #   -> (metrics, reconstruction)
  build: Callable[..., Callable]
  # The training-only network (a param path) that renders the reconstruction, where the stage
  # evaluated does not train it: in a fine-tuned run that never trained it, it is still its seed's.
  renders_with: tuple[str, ...] = ()


IMAGE_METRICS = ("psnr", "lpips")   # what an evaluation measures on its reconstruction


def psnr(x_hat: jax.Array, x: jax.Array) -> jax.Array:
  """[N] PSNR in dB of images in [0, 1]."""
  mse = jnp.mean(jnp.square(x_hat - x), axis=(1, 2, 3))
  return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))


def _image_metrics(lpips_weights, x_hat, x) -> Metrics:
  return {"psnr": psnr(x_hat, x), "lpips": lpips_distance("alexnet")(lpips_weights, x_hat, x)}


def _codebook_only(model, cfg):
  def evaluate(params, lpips_weights, x, keep, side_bits):
    p = {"params": params}
    tok = model.apply(p, x, method=hf.HybridFlow.tokenize)
    x_hat = jnp.clip(model.apply(p, tok["indices"], method=hf.HybridFlow.render_codebook), 0, 1)
    k = cfg.model.vq.num_codes
    used = jnp.zeros(k).at[tok["indices"].reshape(-1)].add(1.0) > 0
    return {**_image_metrics(lpips_weights, x_hat, x),
            "codes_used": jnp.full(x.shape[0], jnp.mean(used))}, x_hat
  return evaluate


def _rate_split(enc, pixels) -> Metrics:
  """Per-image estimated bpp of y_hat and z_hat from a forward's likelihoods."""
  return {"bpp_y": -jnp.sum(jnp.log2(enc["y_likelihood"]), axis=(1, 2, 3)) / pixels,
          "bpp_z": -jnp.sum(jnp.log2(enc["z_likelihood"]), axis=(1, 2, 3)) / pixels}


def _continuous_codec(method, output):
  """The evaluation of a continuous codec's own reconstruction `output` and its rate."""
  def build(model, cfg):
    pixels = cfg.eval_size * cfg.eval_size

    def evaluate(params, lpips_weights, x, keep, side_bits):
      out = model.apply({"params": params}, x, None, False, method=method)
      x_hat = jnp.clip(out[output], 0, 1)
      rate = _rate_split(out, pixels)
      return {**_image_metrics(lpips_weights, x_hat, x),
              "bpp_estimated": rate["bpp_y"] + rate["bpp_z"], **rate}, x_hat
    return evaluate
  return build


def _head(module, x, rng, train):
  """The continuous stream with its light synthesis head (a flax method: `module` is bound)."""
  return module.continuous_stream(x, rng, train, True)


def _token_prediction(model, cfg):
  def evaluate(params, lpips_weights, x, keep, side_bits):
    enc = hf.encode(model, params, x, keep)
    predict = lambda t, c: model.apply({"params": params}, t, c, method=hf.HybridFlow.predict_tokens)
    tokens = decode_tokens(predict, enc["indices"], keep, enc["y_hat"], cfg.model.vq.num_codes,
                           cfg.model.transformer.decode_steps)
    hidden = (~keep).astype(jnp.float32)
    right = jnp.sum((tokens == enc["indices"]) * hidden, axis=(1, 2))
    x_hat = jnp.clip(model.apply({"params": params}, tokens, method=hf.HybridFlow.render_codebook),
                     0, 1)
    return {"token_acc": right / jnp.maximum(jnp.sum(hidden, axis=(1, 2)), 1.0),
            **_image_metrics(lpips_weights, x_hat, x), "keep_ratio": jnp.mean(keep, axis=(1, 2))}, x_hat
  return evaluate


def _hybrid(model, cfg):
  pixels = cfg.eval_size * cfg.eval_size

  def evaluate(params, lpips_weights, x, keep, side_bits):
    enc = hf.encode(model, params, x, keep)
    bits = hf.estimate_bits(enc, keep, cfg.model.vq.num_codes, side_bits=side_bits)
    x_hat, _ = hf.decode(model, params, enc["indices"], keep, enc["y_hat"])
    return {"bpp_estimated": bits["total"] / pixels, **_image_metrics(lpips_weights, x_hat, x),
            "keep_ratio": jnp.mean(keep, axis=(1, 2)),
            **{f"bpp_{k}": bits[k] / pixels for k in ("indices", "y", "z", "side")}}, x_hat
  return evaluate


CODEBOOK_ONLY = Evaluation("the pixel decoder G_vq on all true tokens", False, _codebook_only)
CONTINUOUS_ONLY = Evaluation("the continuous stream's own head, with its rate", False,
                             _continuous_codec(_head, "x_cont"))
BASELINE = Evaluation("the continuous-only codec (full synthesis transform), with its rate", False,
                      _continuous_codec(hf.HybridFlow.continuous_baseline, "x_base"))
TOKEN_PREDICTION = Evaluation("tokens predicted by the transformer (accuracy on the unsent ones) "
                              "rendered by G_vq", True, _token_prediction,
                              renders_with=("pixel_decoder",))
HYBRID = Evaluation("the hybrid codec: sent tokens, the transformer, the bridging decoder", True,
                    _hybrid)


# --------------------------------------------------------------------------------------------------
# The records.

_BRIDGE_OUT = Judged("x_hat", ("bridge", "conv_out", "kernel"))

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("vq", trains=("vq_encoder", "quantizer", "pixel_decoder"), needs=(),
          forward=_vq_forward, loss=_vq_loss,
          judged=Judged("x_vq", ("pixel_decoder", "conv_out", "kernel")),
          after_update=_codebook_maintenance,
          # G_vq only teaches the tokenizer; the bridge is its inference-time copy.
          training_only=(("pixel_decoder",),), evaluation=CODEBOOK_ONLY),
    Stage("continuous", trains=("continuous",), needs=(),
          forward=_continuous_forward, loss=_continuous_loss,
          # The light synthesis head only serves to train this stream alone.
          training_only=(("continuous", "synthesis_head"),), evaluation=CONTINUOUS_ONLY),
    Stage("transformer", trains=("transformer",), needs=("vq", "continuous"),
          forward=_transformer_forward, loss=_transformer_loss, evaluation=TOKEN_PREDICTION),
    Stage("bridge", trains=("bridge",), needs=("vq", "continuous", "transformer"),
          forward=_bridge_forward, loss=_bridge_loss, judged=_BRIDGE_OUT, start=_bridge_start,
          evaluation=HYBRID),
    # Joint fine-tuning leaves the tokenizer alone (moving it would change what every index means)
    # and the synthesis head, which only served to train the continuous stream alone.
    Stage("joint", trains=("continuous/analysis", "continuous/hyper_analysis",
                           "continuous/hyper_synthesis", "continuous/factorized_prior",
                           "transformer", "bridge"),
          needs=("vq", "continuous", "transformer", "bridge"),
          forward=_joint_forward, loss=_joint_loss, judged=_BRIDGE_OUT, evaluation=HYBRID),
    # The ablation's continuous-only codec: not part of HybridFlow, never exported with it.
    Stage("baseline", trains=("baseline",), needs=(), forward=_baseline_forward,
          loss=_baseline_loss, judged=Judged("x_base", ("baseline", "synthesis", "conv_out", "kernel")),
          training_only=(("baseline",),), evaluation=BASELINE, part_of_codec=False),
)}
NAMES = tuple(STAGES)
if NAMES != config.STAGES:   # the names configs are checked against, before jax loads
  raise RuntimeError(f"stages {NAMES} differ from config.STAGES {config.STAGES}")


def get(name: str) -> Stage:
  if name not in STAGES:
    raise ValueError(f"unknown stage {name!r}; choose from {', '.join(NAMES)}")
  return STAGES[name]


def stage_list(cfg: ml_collections.ConfigDict) -> list[str]:
  """The stages a config runs: `config.stage`, or for "pipeline" every stage with steps > 0."""
  if cfg.stage == "pipeline":
    return [s for s in NAMES if cfg.train.steps[s] > 0]
  return [cfg.stage]


def codec_stages(cfg: ml_collections.ConfigDict) -> list[str]:
  """The stages of `stage_list` that make the codec (what export and eval load), in order."""
  return [s for s in stage_list(cfg) if STAGES[s].part_of_codec]


def training_only_paths() -> tuple[tuple[str, ...], ...]:
  """Param paths no inference program reads (what an exported bundle leaves out)."""
  return tuple(path for s in STAGES.values() for path in s.training_only)


def seeded_networks(cfg: ml_collections.ConfigDict,
                    trained: Iterable[str]) -> tuple[tuple[str, ...], ...]:
  """The training-only networks (param paths) a run holds as its seed made them: in a fine-tuned
  run (`train.init_from`; a bundle holds only what decoding needs), those of the stages not in
  `trained` (the stages this run trained). Nothing in a run that starts from its seed: each stage
  it trains needs the ones before it."""
  if not cfg.train.get("init_from", ""):
    return ()
  trained = set(trained)
  return tuple(path for s in STAGES.values() if s.name not in trained for path in s.training_only)


def seeded_note(path: tuple[str, ...], cfg: ml_collections.ConfigDict, where: str) -> str:
  """Why a `seeded_networks` path renders nothing worth measuring, for the log."""
  return (f"{'/'.join(path)} is untrained in {where} (fine-tuned from {cfg.train.init_from}, "
          f"whose bundle lacks it)")
