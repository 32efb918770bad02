"""The codebook stream: a VQGAN-style tokenizer (encoder, codebook, pixel decoder).

Images enter as [B, H, W, 3] float32 in [0, 1]; the encoder works in [-1, 1] internally. The token
grid is at stride 2 ** (len(channel_mult) - 1) (16 in every shipped config).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hybridflow_jax.models.layers import (
  Downsample,
  ResBlock,
  Upsample,
  ZeroFusion,
  norm_layer,
  num_groups,
)


class VQEncoder(nn.Module):
  """[B, H, W, 3] in [0, 1] -> [B, H/s, W/s, embed_dim] continuous pre-quantisation latent."""

  channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  embed_dim: int
  groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array, *, stop: int | None = None,
               start: int | None = None) -> jax.Array:
    """x: image [B, H, W, 3] in [0, 1] -> the latent [B, H/s, W/s, embed_dim].

    Level i runs at stride 2 ** i. `stop=k` returns the features entering level k (after level
    k - 1's down-sampling) instead of the latent; `start=k` takes such features as `x` and
    finishes. The codec encodes large images by running the first levels window by window
    (`Networks.tokenize_windows`).
    """
    top = len(self.channel_mult) - 1
    for name, level in (("stop", stop), ("start", start)):
      if level is not None and not 0 <= level <= top:
        raise ValueError(f"VQEncoder {name} must be a level in 0..{top}, got {level}")
    if start is None:
      h = nn.Conv(self.channels, (3, 3), name="conv_in")(x * 2.0 - 1.0)
    else:
      h = x
    for i, mult in enumerate(self.channel_mult):
      if i < (start or 0):
        continue
      if i == stop:
        return h
      for j in range(self.num_res_blocks):
        h = ResBlock(self.channels * mult, self.groups, name=f"down{i}_res{j}")(h)
      if i < len(self.channel_mult) - 1:
        h = Downsample(self.channels * mult, name=f"down{i}_sample")(h)
    h = ResBlock(h.shape[-1], self.groups, name="mid_res0")(h)
    h = ResBlock(h.shape[-1], self.groups, name="mid_res1")(h)
    h = nn.swish(nn.GroupNorm(num_groups(h.shape[-1], self.groups), name="norm_out")(h))
    return nn.Conv(self.embed_dim, (1, 1), name="conv_out")(h)


class PixelDecoder(nn.Module):
  """[B, h, w, embed_dim] codewords -> [B, h*s, w*s, 3] image in (about) [0, 1].

  With `fuse=True` the same network also takes a conditioning map (the continuous latent) that is
  injected at every scale through `ZeroFusion` layers. Those layers start at zero and every other
  parameter keeps its name, so a fused decoder initialised from a plain decoder's params computes
  exactly the same image: this is the bridging correction network's "duplicate decoder".
  """

  channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  groups: int = 32
  fuse: bool = False
  fusion_hidden: int = 64
  norm: str = "group"     # layers.norm_layer's kind: "layer" makes every output pixel local

  @nn.compact
  def __call__(self, q: jax.Array, cond: jax.Array | None = None, *, stop: int | None = None,
               start: int | None = None) -> jax.Array:
    """q: codewords [B, h, w, D] -> image [B, 16h, 16w, 3].

    The decoder runs its levels from the coarsest (len(channel_mult) - 1, the token grid) down to
    0 (full resolution). `stop=k` returns the features entering level k instead of the image (at
    stride 2 ** k, before level k's fusion); `start=k` takes such features as `q` and finishes the
    image. The two halves compose to the whole decoder, parameter for parameter: the codec renders
    large images by running levels >= k once and levels < k in overlapping tiles (`tiling`).
    """
    if self.fuse and cond is None:
      raise ValueError("a fused PixelDecoder needs the conditioning latent `cond`")
    top = len(self.channel_mult) - 1
    for name, level in (("stop", stop), ("start", start)):
      if level is not None and not 0 <= level <= top:
        raise ValueError(f"PixelDecoder {name} must be a level in 0..{top}, got {level}")
    levels = list(enumerate(self.channel_mult))[::-1]
    if start is None:
      h = nn.Conv(self.channels * self.channel_mult[-1], (3, 3), name="conv_in")(q)
      h = ResBlock(h.shape[-1], self.groups, self.norm, name="mid_res0")(h)
      h = ResBlock(h.shape[-1], self.groups, self.norm, name="mid_res1")(h)
    else:
      h, levels = q, [(i, m) for i, m in levels if i <= start]
    for i, mult in levels:
      if i == stop:
        return h
      if self.fuse:
        h = ZeroFusion(h.shape[-1], self.fusion_hidden, name=f"fuse{i}")(h, cond)
      for j in range(self.num_res_blocks):
        h = ResBlock(self.channels * mult, self.groups, self.norm, name=f"up{i}_res{j}")(h)
      if i > 0:
        h = Upsample(self.channels * mult, name=f"up{i}_sample")(h)
    h = nn.swish(norm_layer(self.norm, h.shape[-1], self.groups, "norm_out")(h))
    return nn.Conv(3, (3, 3), name="conv_out")(h) * 0.5 + 0.5


def encoder_reach(channel_mult: Sequence[int], num_res_blocks: int, stop: int) -> int:
  """How far, in image pixels, the features a `VQEncoder` computes before level `stop` (its
  `stop=` argument) reach into the image, once its GroupNorms' statistics are fixed (as they are
  when it runs in windows: `codec/window_norm.py`): `conv_in` 1 pixel, each 3x3 convolution of a
  ResBlock at level i 2 ** i pixels, each down-sampling (3x3, stride 2, padded after) 2 ** (i + 1)
  past its own footprint. tests/test_codec_windows.py checks it against what a changed pixel moves.
  """
  if not 0 < stop < len(channel_mult):
    raise ValueError(f"stop must be a level in 1..{len(channel_mult) - 1}, got {stop}")
  return 1 + sum((2 * num_res_blocks + 2) * 2**i for i in range(stop))


def decoder_reach(channel_mult: Sequence[int], num_res_blocks: int, start: int,
                  stride: int = 16) -> int:
  """How far, in output pixels, a `PixelDecoder(norm="layer")` run from level `start` (its
  `start=` argument) reaches: an output pixel depends only on the features within this many pixels
  of it and on the conditioning latent's values within this many pixels (of the token's edge).

  The features path: every 3x3 convolution at level i reaches 2 ** i pixels (each ResBlock has
  two, each up-sampling one, and `conv_out` one). The conditioning latent enters every level
  through `ZeroFusion`: a bilinear resize (up to one token, `stride` pixels) and two 3x3
  convolutions, then the rest of the features path. tests/test_model.py checks the bound against
  what a changed input actually moves.
  """
  if not 0 <= start < len(channel_mult):
    raise ValueError(f"start must be a level in 0..{len(channel_mult) - 1}, got {start}")
  feature_path = sum((2 * num_res_blocks + (i > 0)) * 2**i for i in range(start + 1)) + 1
  return feature_path + 2 * 2**start + stride


class VectorQuantizer(nn.Module):
  """Nearest-codeword lookup in a learned K x D codebook, with straight-through gradients.

  `distance` is "l2" (VQ-VAE) or "cosine" (codes and latents l2-normalised first, as in ViT-VQGAN;
  it keeps more codes alive).
  """

  num_codes: int
  code_dim: int
  distance: str = "l2"

  def setup(self):
    if self.distance not in ("l2", "cosine"):
      raise ValueError(f"vq distance must be 'l2' or 'cosine', got {self.distance!r}")
    self.codebook = self.param(
        "codebook", nn.initializers.variance_scaling(1.0, "fan_in", "uniform"),
        (self.num_codes, self.code_dim))

  def _prepare(self, v: jax.Array) -> jax.Array:
    if self.distance == "cosine":
      return v * jax.lax.rsqrt(jnp.sum(v * v, axis=-1, keepdims=True) + 1e-12)
    return v

  def codewords(self) -> jax.Array:
    """[K, D] the vectors that indices stand for (normalised under the cosine distance)."""
    return self._prepare(self.codebook)

  def lookup(self, indices: jax.Array) -> jax.Array:
    """[...] int -> [..., D] codewords."""
    return jnp.take(self.codewords(), indices, axis=0)

  def __call__(self, z: jax.Array) -> dict[str, jax.Array]:
    """z: [B, h, w, D]. Returns quantised (straight-through), indices, losses and code counts."""
    z = self._prepare(z)
    codes = self.codewords()
    flat = z.reshape(-1, z.shape[-1])
    dist = (jnp.sum(flat * flat, axis=1, keepdims=True) - 2.0 * flat @ codes.T +
            jnp.sum(codes * codes, axis=1)[None, :])
    indices = jnp.argmin(dist, axis=1)
    q = jnp.take(codes, indices, axis=0).reshape(z.shape)
    return {
        "quantized": z + jax.lax.stop_gradient(q - z),
        "indices": indices.reshape(z.shape[:-1]),
        # VQ-VAE's two terms: move codes toward encoder outputs, and keep the encoder committed.
        "codebook_loss": jnp.mean(jnp.square(jax.lax.stop_gradient(z) - q)),
        "commitment_loss": jnp.mean(jnp.square(z - jax.lax.stop_gradient(q))),
        "code_counts": jnp.zeros(self.num_codes, jnp.float32).at[indices].add(1.0),
        "latent": z,
    }


def kmeans_codebook(latents: jax.Array, num_codes: int, rng: jax.Array,
                    iterations: int = 10) -> jax.Array:
  """A data-dependent codebook: k-means on encoder outputs, seeded by k-means++.

  latents: [N, D] (any N >= 1; with N < K some seeds repeat and a little noise separates them).
  Returns [K, D]. Seeds are drawn with probability proportional to the squared distance to the
  nearest seed so far (k-means++), then `iterations` Lloyd steps; a centre that loses every latent
  keeps its position. Jit-able: the vq stage runs it on its first batch so that every code starts
  near the data (a random init leaves most codes unreachable, and they barely move in a short run).
  """
  n = latents.shape[0]
  k_first, k_seeds, k_noise = jax.random.split(rng, 3)
  sq = lambda c: jnp.sum(jnp.square(latents - c), axis=1)
  first = latents[jax.random.randint(k_first, (), 0, n)]
  centres = jnp.zeros((num_codes, latents.shape[1]), latents.dtype).at[0].set(first)

  def seed(i, carry):
    centres, d2 = carry
    j = jax.random.categorical(jax.random.fold_in(k_seeds, i), jnp.log(d2 + 1e-20))
    return centres.at[i].set(latents[j]), jnp.minimum(d2, sq(latents[j]))

  centres, _ = jax.lax.fori_loop(1, num_codes, seed, (centres, sq(first)))
  centres = centres + 1e-3 * (jnp.std(latents) + 1e-6) * jax.random.normal(k_noise, centres.shape)

  def lloyd(_, centres):
    dist = jnp.sum(centres * centres, axis=1)[None, :] - 2.0 * latents @ centres.T
    assign = jnp.argmin(dist, axis=1)
    sums = jax.ops.segment_sum(latents, assign, num_segments=num_codes)
    counts = jax.ops.segment_sum(jnp.ones(n, latents.dtype), assign, num_segments=num_codes)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centres)

  return jax.lax.fori_loop(0, iterations, lloyd, centres)


def update_code_usage(usage: jax.Array, counts: jax.Array, decay: float) -> jax.Array:
  """Exponential moving average of per-code usage frequencies ([K], sums to about 1)."""
  freq = counts / jnp.maximum(jnp.sum(counts), 1.0)
  return decay * usage + (1.0 - decay) * freq


def restart_dead_codes(codebook: jax.Array, usage: jax.Array, latents: jax.Array,
                       rng: jax.Array, min_usage: float) -> tuple[jax.Array, jax.Array]:
  """Re-seeds codes whose usage fell below `min_usage` with randomly drawn encoder outputs.

  codebook: [K, D]; usage: [K] frequencies; latents: [N, D] recent encoder outputs (N >= 1).
  Returns the new codebook and a [K] bool mask of the codes that were restarted. Pure and jit-able.
  """
  dead = usage < min_usage
  picks = jax.random.randint(rng, (codebook.shape[0],), 0, latents.shape[0])
  # A little noise keeps two restarted codes that drew the same latent from staying identical.
  noise = 1e-3 * jax.random.normal(jax.random.fold_in(rng, 1), codebook.shape)
  fresh = latents[picks].astype(codebook.dtype) + noise
  return jnp.where(dead[:, None], fresh, codebook), dead
