"""The masked token transformer: predicts untransmitted codeword indices (MaskGIT-style).

Input: the index grid with untransmitted positions set to MASK (= K), and the continuous latent
y_hat of the same image. Each block is self-attention over tokens, cross-attention from tokens to
y_hat (projected to the model width), and an MLP; the output is logits over the K codewords at
every position. Decoding is iterative and deterministic: argmax predictions, the most confident
ones fixed first, transmitted tokens never changed.

Attention is windowed: a grid larger than `window` x `window` tokens is cut into windows of that
size (the edge ones padded and the padding masked out of attention), each attending within itself
to its own tokens and its own part of y_hat. With `window` the grid of the training crops, the
model decodes every image on grids exactly like those it trained on; global attention over a
768x512 photo's 48x32 grid instead predicted 3 % of the unsent tokens of the held-out photos
against 12 % windowed (docs/results.md), and its cost grows with the square of the image area.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from hybridflow_jax import schedules as schedules_lib


def sincos_2d(h: int, w: int, dim: int) -> jax.Array:
  """[h*w, dim] fixed 2-D sine-cosine position embeddings; defined for any grid size.

  Half the channels encode the row, half the column (as in MAE), so a model trained on 16x16 grids
  runs unchanged on the 48x32 grid of a 768x512 image.
  """
  if dim % 4:
    raise ValueError(f"transformer width must be a multiple of 4, got {dim}")
  freqs = 1.0 / (10000.0 ** (jnp.arange(dim // 4, dtype=jnp.float32) / (dim // 4)))
  rows = jnp.arange(h, dtype=jnp.float32)[:, None] * freqs[None]
  cols = jnp.arange(w, dtype=jnp.float32)[:, None] * freqs[None]
  row = jnp.concatenate([jnp.sin(rows), jnp.cos(rows)], -1)           # [h, dim/2]
  col = jnp.concatenate([jnp.sin(cols), jnp.cos(cols)], -1)           # [w, dim/2]
  emb = jnp.concatenate([jnp.repeat(row[:, None], w, 1), jnp.repeat(col[None], h, 0)], -1)
  return emb.reshape(h * w, dim)


class Block(nn.Module):
  """Pre-LayerNorm block: self-attention, cross-attention to the continuous latent, MLP."""

  dim: int
  heads: int
  mlp_dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, train: bool,
               mask: jax.Array | None = None) -> jax.Array:
    """mask: None, or [B, 1, 1, n] bool: the keys (tokens and context alike) that exist."""
    drop = nn.Dropout(self.dropout, deterministic=not train)
    h = nn.LayerNorm(name="ln_self")(x)
    x = x + drop(nn.MultiHeadDotProductAttention(self.heads, name="self_attn")(h, h, mask=mask))
    h = nn.LayerNorm(name="ln_cross")(x)
    x = x + drop(nn.MultiHeadDotProductAttention(self.heads, name="cross_attn")(
        h, context, mask=mask))
    h = nn.LayerNorm(name="ln_mlp")(x)
    h = nn.Dense(self.mlp_dim, name="mlp_in")(h)
    h = nn.Dense(self.dim, name="mlp_out")(drop(nn.gelu(h)))
    return x + drop(h)


def to_windows(a: jax.Array, window: int, fill=0) -> jax.Array:
  """[B, h, w, ...] -> [B * nh * nw, window, window, ...]: windows in row-major order, the grid
  padded with `fill` to whole windows (nh = ceil(h / window), nw likewise)."""
  b, h, w = a.shape[:3]
  rest = a.shape[3:]
  ph, pw = -h % window, -w % window
  a = jnp.pad(a, [(0, 0), (0, ph), (0, pw)] + [(0, 0)] * len(rest), constant_values=fill)
  nh, nw = (h + ph) // window, (w + pw) // window
  a = a.reshape(b, nh, window, nw, window, *rest).swapaxes(2, 3)
  return a.reshape(b * nh * nw, window, window, *rest)


def from_windows(a: jax.Array, b: int, h: int, w: int) -> jax.Array:
  """The inverse of `to_windows`: [B * nh * nw, window, window, ...] -> [B, h, w, ...]."""
  window = a.shape[1]
  nh, nw = -(-h // window), -(-w // window)
  a = a.reshape(b, nh, nw, window, window, *a.shape[3:]).swapaxes(2, 3)
  return a.reshape(b, nh * window, nw * window, *a.shape[5:])[:, :h, :w]


class MaskedTokenTransformer(nn.Module):
  """tokens [B, h, w] int (K = MASK), context [B, h, w, M] -> logits [B, h, w, K].

  window: attention runs within windows of window x window tokens (0: over the whole grid).
  """

  num_codes: int
  dim: int
  depth: int
  heads: int
  mlp_dim: int
  dropout: float = 0.0
  window: int = 0

  @property
  def mask_token(self) -> int:
    return self.num_codes

  @nn.compact
  def __call__(self, tokens: jax.Array, context: jax.Array, train: bool = False) -> jax.Array:
    grid = tokens.shape
    windowed = bool(self.window) and (grid[1] > self.window or grid[2] > self.window)
    mask = None
    if windowed:
      if context.shape[1:3] != grid[1:]:
        raise ValueError(f"windowed attention needs y_hat on the token grid {grid[1:]}, got "
                         f"{context.shape[1:3]}")
      exists = to_windows(jnp.ones(grid, bool), self.window, fill=False)
      mask = exists.reshape(exists.shape[0], 1, 1, -1)
      tokens = to_windows(tokens, self.window, fill=self.mask_token)
      context = to_windows(context, self.window)
    b, h, w = tokens.shape
    x = nn.Embed(self.num_codes + 1, self.dim, name="token_embed")(tokens.reshape(b, h * w))
    x = x + sincos_2d(h, w, self.dim)[None]
    ch, cw = context.shape[1:3]
    c = nn.Dense(self.dim, name="context_proj")(context.reshape(b, ch * cw, -1))
    c = nn.LayerNorm(name="context_ln")(c + sincos_2d(ch, cw, self.dim)[None])
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i in range(self.depth):
      x = Block(self.dim, self.heads, self.mlp_dim, self.dropout, name=f"block{i}")(
          x, c, train, mask)
    x = nn.LayerNorm(name="ln_out")(x)
    logits = nn.Dense(self.num_codes, name="head")(x).reshape(b, h, w, self.num_codes)
    return from_windows(logits, *grid) if windowed else logits


def sample_sent_maps(rng: jax.Array, batch: int, hw: tuple[int, int], *, region: int,
                     schedules=schedules_lib.DEFAULT_CANDIDATES, region_mix: float = 0.5) -> jax.Array:
  """[B, h, w] bool keep-maps as a codec would send them, drawn at random.

  Each example takes one schedule from `schedules` for the whole image or, with probability
  `region_mix`, one per region of `region` x `region` tokens, as dynamic masking does.
  """
  h, w = hw
  k_sched, k_mix, k_region = jax.random.split(rng, 3)
  whole = jax.random.randint(k_sched, (batch,), 0, len(schedules))
  rh, rw = schedules_lib.region_grid(hw, region)
  per_region = jax.random.randint(k_region, (batch, rh, rw), 0, len(schedules))
  use_regions = jax.random.bernoulli(k_mix, region_mix, (batch, 1, 1))
  choice = jnp.where(use_regions, per_region, whole[:, None, None])
  return jax.vmap(lambda c: schedules_lib.region_keep_map(c, schedules, region, hw, xp=jnp))(choice)


def training_mask(rng: jax.Array, batch: int, hw: tuple[int, int], *, region: int,
                  schedules=schedules_lib.DEFAULT_CANDIDATES, region_mix: float = 0.5,
                  extra_mask: float = 0.1) -> jax.Array:
  """[B, h, w] bool: which tokens the transformer sees during training (the rest are MASK).

  Mirrors what the decoder meets: (1) transmitted tokens from `sample_sent_maps`; (2) a random
  fraction of the untransmitted tokens revealed, like the decoder's intermediate rounds (the
  fraction follows MaskGIT's cosine schedule); (3) each transmitted token masked with probability
  `extra_mask`, so the model never leans on one exact layout. At least one token stays masked.
  """
  h, w = hw
  k_sent, k_frac, k_reveal, k_extra = jax.random.split(rng, 4)
  sent = sample_sent_maps(k_sent, batch, hw, region=region, schedules=schedules,
                          region_mix=region_mix)
  frac = 1.0 - jnp.cos(0.5 * math.pi * jax.random.uniform(k_frac, (batch, 1, 1)))
  revealed = jax.random.uniform(k_reveal, (batch, h, w)) < frac
  dropped = jax.random.bernoulli(k_extra, extra_mask, (batch, h, w))
  visible = (sent & ~dropped) | (~sent & revealed)
  # Never a fully visible grid: that example would carry no loss.
  none_masked = visible.all(axis=(1, 2), keepdims=True)
  first = jnp.zeros((h, w), bool).at[0, 0].set(True)
  return jnp.where(none_masked & first, False, visible)


def decode_tokens(apply_fn, tokens: jax.Array, keep: jax.Array, context: jax.Array,
                  num_codes: int, steps: int) -> jax.Array:
  """Fills every untransmitted position in `steps` deterministic rounds.

  apply_fn(tokens [B, h, w], context) -> logits [B, h, w, K]. tokens: [B, h, w] int (values at
  ~keep are ignored); keep: [B, h, w] bool, True where transmitted. Each round predicts all masked
  positions by argmax and fixes the most confident ones, so that the number still masked follows
  MaskGIT's cosine schedule; ties go to the lower position (stable sort), the last round fixes all.
  Transmitted tokens are never changed. Jit-able (a lax.fori_loop).
  """
  b, h, w = tokens.shape
  n = h * w
  mask_token = num_codes
  keep = keep.reshape(b, n)
  current = jnp.where(keep, tokens.reshape(b, n), mask_token).astype(jnp.int32)
  initially_masked = jnp.sum(~keep, axis=1)                           # [B]

  def body(t, current):
    known = current != mask_token
    logits = apply_fn(current.reshape(b, h, w), context).reshape(b, n, num_codes)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    pred = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    conf = jnp.where(known, -1.0, jnp.max(probs, axis=-1))
    ratio = jnp.cos(0.5 * math.pi * (t + 1) / steps)
    still_masked = jnp.maximum(jnp.floor(initially_masked * ratio), 0).astype(jnp.int32)
    n_fix = jnp.sum(~known, axis=1) - still_masked                    # [B]
    order = jnp.argsort(-conf, axis=1, stable=True)
    rank = jnp.zeros_like(order).at[jnp.arange(b)[:, None], order].set(jnp.arange(n)[None])
    fix = (~known) & (rank < n_fix[:, None])
    return jnp.where(fix, pred, current)

  out = jax.lax.fori_loop(0, steps, body, current)
  return out.reshape(b, h, w)
