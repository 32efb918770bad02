"""HybridFlow: the codebook stream, the continuous stream, the masked token transformer and the
bridging decoder, composed.

    x ──E_vq──> indices d ──keep-map──> sent indices ─┐
    │                                                  ├─ transformer (cross-attn to y_hat) ─> d'
    └──g_a──> y ──> y_hat (+ z_hat) ───────────────────┘                                      │
                      └────────────────────────── bridge decoder(codebook[d'], y_hat) ─> x_hat

`HybridFlow` is a flax module holding every parameter; its methods are the primitive pieces. The
functions below it (`encode`, `decode`, `forward`) compose them functionally from params, which
keeps the iterative decoder a plain `lax` loop and lets each training stage pick what it computes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from hybridflow_jax.models import masking as masking_lib
from hybridflow_jax.models.entropy import quantize
from hybridflow_jax.models.hyperprior import ContinuousStream
from hybridflow_jax.models.transformer import (
  MaskedTokenTransformer,
  decode_tokens,
  sample_sent_maps,
  training_mask,
)
from hybridflow_jax.models.vq import PixelDecoder, VectorQuantizer, VQEncoder

STRIDE = 16  # pixels per token, both streams

# Parameter groups (path prefixes) that each training stage updates; the rest stay frozen.
STAGE_TRAINS = {
    "vq": ("vq_encoder", "quantizer", "pixel_decoder"),
    "continuous": ("continuous",),
    "transformer": ("transformer",),
    "bridge": ("bridge",),
    # Joint fine-tuning leaves the tokenizer alone (moving it would change what every index means)
    # and the synthesis head, which only served to train the continuous stream alone.
    "joint": ("continuous/analysis", "continuous/hyper_analysis", "continuous/hyper_synthesis",
              "continuous/factorized_prior", "transformer", "bridge"),
}


def trainable(params, stage: str):
  """A pytree of bools like `params`: True where `stage` updates the parameter."""
  prefixes = tuple(p + "/" for p in STAGE_TRAINS[stage])
  def is_trained(path, _):
    name = "/".join(str(getattr(k, "key", k)) for k in path) + "/"
    return name.startswith(prefixes)
  return jax.tree_util.tree_map_with_path(is_trained, params)


class HybridFlow(nn.Module):
  """All of HybridFlow's parameters. `config` is the `model` part of a config (frozen)."""

  config: ml_collections.FrozenConfigDict

  def setup(self):
    vq, ct, tr = self.config.vq, self.config.continuous, self.config.transformer
    self.vq_encoder = VQEncoder(vq.channels, vq.channel_mult, vq.num_res_blocks, vq.embed_dim,
                                vq.groups)
    self.quantizer = VectorQuantizer(vq.num_codes, vq.embed_dim, vq.distance)
    self.pixel_decoder = PixelDecoder(vq.channels, vq.channel_mult, vq.num_res_blocks, vq.groups)
    self.continuous = ContinuousStream(ct.channels, ct.latent_channels, ct.hyper_channels,
                                       ct.head_channels, ct.quantization)
    self.transformer = MaskedTokenTransformer(vq.num_codes, tr.dim, tr.depth, tr.heads,
                                              tr.mlp_dim, tr.dropout)
    self.bridge = PixelDecoder(vq.channels, vq.channel_mult, vq.num_res_blocks, vq.groups,
                               fuse=True, fusion_hidden=self.config.bridge.fusion_hidden)

  def __call__(self, x: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
    """Touches every parameter once; used by `init`."""
    tok = self.tokenize(x)
    cont = self.continuous(x, rng, train=True, with_head=True)
    return {
        "x_vq": self.pixel_decoder(tok["quantized"]),
        "logits": self.transformer(tok["indices"], cont["y_hat"]),
        "x_hat": self.bridge(tok["quantized"], cont["y_hat"]),
        "x_cont": cont["x_cont"],
    }

  def tokenize(self, x: jax.Array) -> dict[str, jax.Array]:
    """x [B, H, W, 3] -> VectorQuantizer outputs (indices [B, H/16, W/16], quantized, losses)."""
    return self.quantizer(self.vq_encoder(x))

  def continuous_stream(self, x, rng=None, train=False, with_head=False):
    return self.continuous(x, rng, train=train, with_head=with_head)

  def predict_tokens(self, tokens: jax.Array, y_hat: jax.Array, train: bool = False):
    return self.transformer(tokens, y_hat, train=train)

  def render_codebook(self, indices: jax.Array) -> jax.Array:
    """G_vq: indices [B, h, w] -> image [B, 16h, 16w, 3] from codewords alone."""
    return self.pixel_decoder(self.quantizer.lookup(indices))

  def render(self, indices: jax.Array, y_hat: jax.Array) -> jax.Array:
    """The bridging decoder: indices and y_hat -> the final image."""
    return self.bridge(self.quantizer.lookup(indices), y_hat)


def build_model(config: ml_collections.ConfigDict) -> HybridFlow:
  """The model of a full config (`config.model` is frozen into the module)."""
  return HybridFlow(ml_collections.FrozenConfigDict(config.model))


def init_params(model: HybridFlow, rng: jax.Array, image_size: int = 64) -> dict[str, Any]:
  """Initialises every parameter on a [1, image_size, image_size, 3] dummy image."""
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  # Jitted: op-by-op initialisation of this many modules is far slower than one compile.
  init = jax.jit(lambda r: model.init({"params": r}, x, jax.random.PRNGKey(0))["params"])
  return init(rng)


def param_shapes(model: HybridFlow, image_size: int = 64):
  """The parameter tree as ShapeDtypeStructs; allocates nothing (for overviews and AOT plans)."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  init = lambda r, x: model.init({"params": r}, x, jax.random.PRNGKey(0))["params"]
  return jax.eval_shape(init, jax.random.PRNGKey(0), x)


def keep_maps(images: jax.Array, schedule: str, masking: ml_collections.ConfigDict):
  """Keep-maps of a batch for one operating point.

  images: [B, H, W, 3] in [0, 1], H and W multiples of 16. schedule: a name from
  masking.SCHEDULES or "dynamic". Returns (keep [B, H/16, W/16] bool, region schedule ids
  [B, rh, rw] int32 for "dynamic", else None).
  """
  b, hw = images.shape[0], (images.shape[1] // STRIDE, images.shape[2] // STRIDE)
  if schedule != "dynamic":
    keep = jnp.asarray(masking_lib.keep_map(schedule, *hw))
    return jnp.broadcast_to(keep, (b, *hw)), None
  fn = lambda im: masking_lib.dynamic_mask(
      im, stride=STRIDE, region=masking.region, target_keep=masking.target_keep,
      names=tuple(masking.schedules), score=masking.score)
  return jax.vmap(fn)(images)


def encode(model: HybridFlow, params, x: jax.Array, keep: jax.Array) -> dict[str, jax.Array]:
  """What a sender computes: indices (all of them, `keep` says which are sent), y_hat, z_hat and
  their likelihoods under the entropy models (rounded latents, as transmitted)."""
  p = {"params": params}
  tok = model.apply(p, x, method=HybridFlow.tokenize)
  cont = model.apply(p, x, method=HybridFlow.continuous_stream)
  return {"indices": tok["indices"], "keep": keep, "y_hat": cont["y_hat"], "z_hat": cont["z_hat"],
          "y_likelihood": cont["y_likelihood"], "z_likelihood": cont["z_likelihood"]}


def estimate_bits(enc: dict, keep: jax.Array, region_ids: jax.Array | None, num_codes: int,
                  index_bits: jax.Array | None = None, num_schedules: int = 4) -> dict:
  """The model's estimate of each part of the rate, in bits per image ([B] arrays).

  index_bits: [K] cost of each codeword under the frozen index prior; None means uniform,
  log2(K) bits each (the ceiling the prior never exceeds). Dynamic masking adds log2(number of
  schedules) bits per region for the schedule ids. Header bytes are the codec's to add.
  """
  axes = (1, 2, 3)
  if index_bits is None:
    per_index = jnp.full(enc["indices"].shape, jnp.log2(float(num_codes)))
  else:
    per_index = jnp.take(index_bits, enc["indices"])
  out = {
      "indices": jnp.sum(jnp.where(keep, per_index, 0.0), axis=(1, 2)),
      "y": -jnp.sum(jnp.log2(enc["y_likelihood"]), axis=axes),
      "z": -jnp.sum(jnp.log2(enc["z_likelihood"]), axis=axes),
      "side": jnp.zeros(keep.shape[0]) if region_ids is None else
              jnp.full(keep.shape[0], region_ids[0].size * jnp.log2(float(num_schedules))),
  }
  out["total"] = out["indices"] + out["y"] + out["z"] + out["side"]
  return out


def decode(model: HybridFlow, params, indices: jax.Array, keep: jax.Array, y_hat: jax.Array,
           steps: int | None = None) -> tuple[jax.Array, jax.Array]:
  """What a receiver computes: fill the untransmitted indices, then the bridging decoder.

  indices [B, h, w] (only values where `keep` is True are read), keep [B, h, w] bool,
  y_hat [B, h, w, M]. Returns (image [B, 16h, 16w, 3] clipped to [0, 1], completed indices).
  """
  p = {"params": params}
  steps = steps or model.config.transformer.decode_steps
  predict = lambda t, c: model.apply(p, t, c, method=HybridFlow.predict_tokens)
  tokens = decode_tokens(predict, indices, keep, y_hat, model.config.vq.num_codes, steps)
  image = model.apply(p, tokens, y_hat, method=HybridFlow.render)
  return jnp.clip(image, 0.0, 1.0), tokens


def forward(model: HybridFlow, params, x: jax.Array, rng: jax.Array, stage: str) -> dict:
  """The training forward of one stage: everything its loss needs, and nothing more.

  Parameter groups the stage does not train (STAGE_TRAINS) enter through `stop_gradient`, so their
  gradients are exactly zero and the backward pass skips them.
  """
  if stage not in STAGE_TRAINS:
    raise ValueError(f"unknown stage {stage!r}")
  p = {"params": jax.tree.map(lambda v, t: v if t else jax.lax.stop_gradient(v), params,
                              trainable(params, stage))}
  mcfg, num_codes = model.config.masking, model.config.vq.num_codes
  k_cont, k_mask, k_sent, k_drop = jax.random.split(rng, 4)
  b, hw = x.shape[0], (x.shape[1] // STRIDE, x.shape[2] // STRIDE)

  if stage == "vq":
    tok = model.apply(p, x, method=HybridFlow.tokenize)
    x_vq = model.apply(p, tok["quantized"], method=lambda m, q: m.pixel_decoder(q))
    return {**tok, "x_vq": x_vq}
  if stage == "continuous":
    return model.apply(p, x, k_cont, True, True, method=HybridFlow.continuous_stream)

  out: dict[str, Any] = {"indices": model.apply(p, x, method=HybridFlow.tokenize)["indices"]}
  if stage == "joint":
    cont = model.apply(p, x, k_cont, True, method=HybridFlow.continuous_stream)
    # Rate from the training proxy; downstream consumers get rounded values with STE gradients.
    y_hat = quantize(cont["y"], "ste", offset=cont["mean"])
    out.update(cont)
  else:
    y_hat = model.apply(p, x, method=HybridFlow.continuous_stream)["y_hat"]

  if stage in ("transformer", "joint"):
    visible = training_mask(k_mask, b, hw, region=mcfg.region, schedules=tuple(mcfg.schedules),
                            region_mix=mcfg.train_region_mix, extra_mask=mcfg.train_extra_mask)
    tokens = jnp.where(visible, out["indices"], num_codes)
    out["logits"] = model.apply(p, tokens, jax.lax.stop_gradient(y_hat), True,
                                method=HybridFlow.predict_tokens, rngs={"dropout": k_drop})
    out["visible"] = visible
    if stage == "transformer":
      return out

  # bridge / joint: decode from what a receiver would have (sent indices + the transformer).
  sent = sample_sent_maps(k_sent, b, hw, region=mcfg.region, schedules=tuple(mcfg.schedules),
                          region_mix=mcfg.train_region_mix)
  frozen = jax.lax.stop_gradient(p)
  predict = lambda t, c: model.apply(frozen, t, c, method=HybridFlow.predict_tokens)
  out["decoded"] = decode_tokens(predict, out["indices"], sent, jax.lax.stop_gradient(y_hat),
                                 num_codes, model.config.transformer.decode_steps)
  out["x_hat"] = model.apply(p, out["decoded"], y_hat, method=HybridFlow.render)
  return out
