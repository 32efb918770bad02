"""HybridFlow: the codebook stream, the continuous stream, the masked token transformer and the
bridging decoder, composed.

    x ──E_vq──> indices d ──keep-map──> sent indices ─┐
    │                                                  ├─ transformer (cross-attn to y_hat) ─> d'
    └──g_a──> y ──> y_hat (+ z_hat) ───────────────────┘                                      │
                      └────────────────────────── bridge decoder(codebook[d'], y_hat) ─> x_hat

`HybridFlow` is a flax module holding every parameter; its methods are the primitive pieces. The
functions below it (`encode`, `decode`) compose them functionally from params, which keeps the
iterative decoder a plain `lax` loop; each training stage composes its own forward from the same
methods (`hybridflow_jax.stages`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from hybridflow_jax import schedules
from hybridflow_jax.config import legacy_get
from hybridflow_jax.models import batched_rng
from hybridflow_jax.models import masking as masking_lib
from hybridflow_jax.models.baseline import ContinuousBaseline
from hybridflow_jax.models.hyperprior import ContinuousStream
from hybridflow_jax.models.transformer import MaskedTokenTransformer, decode_tokens
from hybridflow_jax.models.vq import PixelDecoder, VectorQuantizer, VQEncoder

STRIDE = 16  # pixels per token, both streams

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
    # Runs and bundles recorded before a key existed build what they trained (config.legacy_get).
    self.transformer = MaskedTokenTransformer(vq.num_codes, tr.dim, tr.depth, tr.heads,
                                              tr.mlp_dim, tr.dropout,
                                              legacy_get(self.config, "transformer.window"))
    self.bridge = PixelDecoder(vq.channels, vq.channel_mult, vq.num_res_blocks, vq.groups,
                               fuse=True, fusion_hidden=self.config.bridge.fusion_hidden,
                               norm=legacy_get(self.config, "bridge.norm"))
    # Not part of the codec: the continuous-only codec of the ablation (`models/baseline.py`).
    # Its synthesis normalises as the bridge does: the two codecs render on equal footing.
    self.baseline = ContinuousBaseline(ct.channels, ct.latent_channels, ct.hyper_channels,
                                       vq.channels, vq.channel_mult, vq.num_res_blocks, vq.groups,
                                       ct.quantization, legacy_get(self.config, "bridge.norm"))

  def __call__(self, x: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
    """Touches every parameter once; used by `init`."""
    tok = self.tokenize(x)
    cont = self.continuous(x, rng, train=True, with_head=True)
    return {
        "x_vq": self.pixel_decoder(tok["quantized"]),
        "logits": self.transformer(tok["indices"], cont["y_hat"]),
        "x_hat": self.bridge(tok["quantized"], cont["y_hat"]),
        "x_cont": cont["x_cont"],
        "x_base": self.baseline(x, rng, train=True)["x_base"],
    }

  def tokenize(self, x: jax.Array) -> dict[str, jax.Array]:
    """x [B, H, W, 3] -> VectorQuantizer outputs (indices [B, H/16, W/16], quantized, losses)."""
    return self.quantizer(self.vq_encoder(x))

  def tokenize_features(self, x: jax.Array, level: int) -> jax.Array:
    """The VQ encoder's levels below `level`: x [B, H, W, 3] -> the features entering it."""
    return self.vq_encoder(x, stop=level)

  def tokenize_between(self, features: jax.Array, start: int, stop: int) -> jax.Array:
    """The VQ encoder's levels start..stop - 1, from the features entering `start`."""
    return self.vq_encoder(features, start=start, stop=stop)

  def tokenize_from(self, features: jax.Array, level: int) -> dict[str, jax.Array]:
    """`tokenize` from the features entering `level` (`tokenize_features`' output)."""
    return self.quantizer(self.vq_encoder(features, start=level))

  def continuous_stream(self, x, rng=None, train=False, with_head=False):
    return self.continuous(x, rng, train=train, with_head=with_head)

  def continuous_baseline(self, x, rng=None, train=False):
    """The ablation's continuous-only codec (`models/baseline.py`) on x [B, H, W, 3]."""
    return self.baseline(x, rng, train=train)

  def analysis(self, x: jax.Array) -> jax.Array:
    """g_a: x [B, H, W, 3] in [0, 1] -> y [B, H/16, W/16, M] (unquantised)."""
    return self.continuous.analysis(x)

  def hyper_analysis(self, y: jax.Array) -> jax.Array:
    """h_a: y [B, h, w, M] -> z [B, ceil(h/4), ceil(w/4), Nz] (unquantised)."""
    return self.continuous.hyper_analyze(y)

  def entropy_parameters(self, z_hat: jax.Array, hw: tuple[int, int]):
    """h_s: z_hat [B, hz, wz, Nz] -> (mean, scale) of y, each [B, hw[0], hw[1], M]."""
    return self.continuous.entropy_parameters(z_hat, hw)

  def decode_codebook(self, quantized: jax.Array) -> jax.Array:
    """G_vq on codewords: quantized [B, h, w, D] -> image [B, 16h, 16w, 3]."""
    return self.pixel_decoder(quantized)

  def predict_tokens(self, tokens: jax.Array, y_hat: jax.Array, train: bool = False):
    return self.transformer(tokens, y_hat, train=train)

  def render_codebook(self, indices: jax.Array) -> jax.Array:
    """G_vq: indices [B, h, w] -> image [B, 16h, 16w, 3] from codewords alone."""
    return self.pixel_decoder(self.quantizer.lookup(indices))

  def render(self, indices: jax.Array, y_hat: jax.Array) -> jax.Array:
    """The bridging decoder: indices and y_hat -> the final image."""
    return self.bridge(self.quantizer.lookup(indices), y_hat)

  def render_features(self, indices: jax.Array, y_hat: jax.Array, level: int) -> jax.Array:
    """The bridging decoder's levels above `level`: the features entering it, [B, 16h / 2 **
    level, 16w / 2 ** level, C]."""
    return self.bridge(self.quantizer.lookup(indices), y_hat, stop=level)

  def render_from(self, features: jax.Array, y_hat: jax.Array, level: int) -> jax.Array:
    """The bridging decoder's levels from `level` on: `render_features`' output (or a window of
    it, with the y_hat tokens under that window) -> the image."""
    return self.bridge(features, y_hat, start=level)


def build_model(config: ml_collections.ConfigDict) -> HybridFlow:
  """The model of a full config (`config.model` is frozen into the module)."""
  return HybridFlow(ml_collections.FrozenConfigDict(config.model))


def init_params(model: HybridFlow, rng: jax.Array, image_size: int = 64) -> dict[str, Any]:
  """Initialises every parameter on a [1, image_size, image_size, 3] dummy image; `rng` is a raw
  key (jax.random.PRNGKey)."""
  return _init_program(model, image_size)[0](rng)


def param_shapes(model: HybridFlow, image_size: int = 64):
  """The parameter tree as ShapeDtypeStructs; allocates nothing (for overviews and AOT plans)."""
  # A fresh tree each call (callers may build on it).
  return jax.tree.map(lambda a: a, _init_program(model, image_size)[1])


@functools.lru_cache(maxsize=8)
def _init_program(model: HybridFlow, image_size: int):
  """`model.init` traced once per model (its modules' Python is most of the cost of a trace): the
  jitted initialisation, which replays that trace, and the param shapes read from it. Modules are
  frozen dataclasses, hashed and compared by their fields: equal configs share this."""
  def init(rng):
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return model.init({"params": rng}, x, jax.random.PRNGKey(0))["params"]

  closed, shapes = jax.make_jaxpr(init, return_shape=True)(
      jax.ShapeDtypeStruct((2,), jnp.uint32))
  treedef = jax.tree.structure(shapes)
  # Jitted: op-by-op initialisation of this many modules is far slower than one compile. The
  # replay computes what `init` does, op for op, with its hundreds of independent random draws
  # hashed together (batched_rng): the same params to the bit, a program that compiles in half
  # the time or less.
  replay = batched_rng.batched_replay(closed)
  return jax.jit(lambda rng: treedef.unflatten(replay(rng))), shapes


def keep_maps(images: jax.Array, schedule: str, masking: ml_collections.ConfigDict):
  """Keep-maps of a batch for one operating point.

  images: [B, H, W, 3] in [0, 1], H and W multiples of 16. schedule: a name from
  `schedules.ALL`. Returns (keep [B, H/16, W/16] bool, side information in bits per image: the
  per-region choices of "dynamic", else 0).
  """
  b, hw = images.shape[0], (images.shape[1] // STRIDE, images.shape[2] // STRIDE)
  if schedules.check(schedule) != schedules.DYNAMIC:
    keep = jnp.asarray(schedules.fixed_keep_map(schedule, *hw))
    return jnp.broadcast_to(keep, (b, *hw)), 0.0
  candidates = tuple(masking.schedules)
  fn = lambda im: masking_lib.dynamic_mask(
      im, stride=STRIDE, region=masking.region, target_keep=masking.target_keep,
      names=candidates, score=masking.score)[0]
  return jax.vmap(fn)(images), schedules.side_bits(hw, masking.region, candidates)


def encode(model: HybridFlow, params, x: jax.Array, keep: jax.Array) -> dict[str, jax.Array]:
  """What a sender computes: indices (all of them, `keep` says which are sent), y_hat, z_hat and
  their likelihoods under the entropy models (rounded latents, as transmitted)."""
  p = {"params": params}
  tok = model.apply(p, x, method=HybridFlow.tokenize)
  cont = model.apply(p, x, method=HybridFlow.continuous_stream)
  return {"indices": tok["indices"], "keep": keep, "y_hat": cont["y_hat"], "z_hat": cont["z_hat"],
          "y_likelihood": cont["y_likelihood"], "z_likelihood": cont["z_likelihood"]}


def estimate_bits(enc: dict, keep: jax.Array, num_codes: int, index_bits: jax.Array | None = None,
                  side_bits: float = 0.0) -> dict:
  """The model's estimate of each part of the rate, in bits per image ([B] arrays).

  index_bits: [K] cost of each codeword under the frozen index prior; None means uniform,
  log2(K) bits each (the ceiling the prior never exceeds). side_bits: the mask side information
  (`schedules.side_bits` for dynamic masking). Header bytes are the codec's to add.
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
      "side": jnp.full(keep.shape[0], side_bits, jnp.float32),
  }
  out["total"] = out["indices"] + out["y"] + out["z"] + out["side"]
  return out


def decode(model: HybridFlow, params, indices: jax.Array, keep: jax.Array, y_hat: jax.Array,
           steps: int | None = None) -> tuple[jax.Array, jax.Array]:
  """What a receiver computes: fill the untransmitted indices, then the bridging decoder.

  indices [B, h, w] (only values where `keep` is True are read), keep [B, h, w] bool,
  y_hat [B, h, w, M]. Returns (image [B, 16h, 16w, 3] clipped to [0, 1], completed indices).
  """
  tokens = fill_tokens(model, params, indices, keep, y_hat, steps)
  image = model.apply({"params": params}, tokens, y_hat, method=HybridFlow.render)
  return jnp.clip(image, 0.0, 1.0), tokens


def fill_tokens(model: HybridFlow, params, indices: jax.Array, keep: jax.Array, y_hat: jax.Array,
                steps: int | None = None) -> jax.Array:
  """The receiver's first half: the sent indices with every unsent one filled by the masked token
  transformer (`steps` rounds, default the config's), [B, h, w]."""
  p = {"params": params}
  steps = steps or model.config.transformer.decode_steps
  predict = lambda t, c: model.apply(p, t, c, method=HybridFlow.predict_tokens)
  return decode_tokens(predict, indices, keep, y_hat, model.config.vq.num_codes, steps)
