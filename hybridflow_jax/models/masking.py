"""Which codeword indices are transmitted: structured schedules and complexity-aware dynamic masking.

A keep-map is a bool array over the token grid, True where the index is sent. The structured
schedules keep one index per block (HybridFlow, fig. 3):

    1_1   every index (no masking)         1_2   checkerboard, 1/2 kept
    1_4   one per 2x2 block, 1/4 kept      1_9   one per 3x3 block, 1/9 kept
    1_16  one per 4x4 block, 1/16 kept

Dynamic masking splits the grid into regions of `region` x `region` tokens, scores each region's
pixels for complexity, and gives detailed regions denser schedules under a target mean keep ratio.
The per-region schedule ids are side information in the bitstream.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Ordered densest first; a schedule's id is its position here (it is written into bitstreams).
SCHEDULES = ("1_1", "1_2", "1_4", "1_9", "1_16")
COMPLEXITY_SCORES = ("gradient", "variance")


def schedule_id(name: str) -> int:
  if name not in SCHEDULES:
    raise ValueError(f"unknown mask schedule {name!r}; choose from {', '.join(SCHEDULES)}")
  return SCHEDULES.index(name)


def keep_map(name: str, height: int, width: int) -> np.ndarray:
  """[height, width] bool keep-map of a structured schedule, for any grid size."""
  i, j = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  if name == "1_1":
    return np.ones((height, width), bool)
  if name == "1_2":
    return (i + j) % 2 == 0
  n = {"1_4": 2, "1_9": 3, "1_16": 4}.get(name)
  if n is None:
    schedule_id(name)  # raises the one-line error
  return (i % n == 0) & (j % n == 0)


def keep_ratio(name: str) -> float:
  """Nominal fraction of indices a schedule keeps (exact on grids divisible by its block)."""
  return {"1_1": 1.0, "1_2": 1 / 2, "1_4": 1 / 4, "1_9": 1 / 9, "1_16": 1 / 16}[name]


def schedule_maps(height: int, width: int, names=SCHEDULES) -> np.ndarray:
  """[S, height, width] bool: the keep-map of every schedule in `names`."""
  return np.stack([keep_map(n, height, width) for n in names])


def _luma(image: jax.Array) -> jax.Array:
  return image @ jnp.asarray([0.299, 0.587, 0.114], image.dtype)


def region_complexity(image: jax.Array, region_px: int, score: str = "gradient") -> jax.Array:
  """Complexity of each region of `region_px` x `region_px` pixels of one image.

  image: [H, W, 3] in [0, 1], H and W multiples of region_px. Returns [H/region_px, W/region_px].
  "gradient": mean squared finite difference of luma (texture and edges);
  "variance": variance of luma (contrast).
  """
  y = _luma(image)
  rh, rw = y.shape[0] // region_px, y.shape[1] // region_px
  if score == "gradient":
    gy = jnp.pad(jnp.diff(y, axis=0), ((0, 1), (0, 0)))
    gx = jnp.pad(jnp.diff(y, axis=1), ((0, 0), (0, 1)))
    energy = gx * gx + gy * gy
    return energy.reshape(rh, region_px, rw, region_px).mean(axis=(1, 3))
  if score == "variance":
    blocks = y.reshape(rh, region_px, rw, region_px)
    return blocks.var(axis=(1, 3))
  raise ValueError(f"complexity score must be one of {COMPLEXITY_SCORES}, got {score!r}")


def _region_sum(x: jax.Array, region: int) -> jax.Array:
  """[..., h, w] -> [..., ceil(h/region), ceil(w/region)] sums over regions (edge regions smaller)."""
  h, w = x.shape[-2:]
  ph, pw = -h % region, -w % region
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)])
  rh, rw = (h + ph) // region, (w + pw) // region
  return x.reshape(*x.shape[:-2], rh, region, rw, region).sum(axis=(-3, -1))


def expand_regions(region_values: jax.Array, region: int, hw: tuple[int, int]) -> jax.Array:
  """[rh, rw] per-region values -> [h, w] per-token values."""
  full = jnp.repeat(jnp.repeat(region_values, region, axis=0), region, axis=1)
  return full[:hw[0], :hw[1]]


def dynamic_keep_map(ids: jax.Array, region: int, hw: tuple[int, int]) -> jax.Array:
  """Per-region schedule ids [rh, rw] (indices into SCHEDULES) -> [h, w] bool keep-map.

  This is how a decoder rebuilds the keep-map from the side information.
  """
  maps = jnp.asarray(schedule_maps(*hw))
  per_token = expand_regions(ids, region, hw)
  return jnp.take_along_axis(maps, per_token[None], axis=0)[0]


def dynamic_mask(image: jax.Array, *, stride: int, region: int, target_keep: float,
                 names=("1_2", "1_4", "1_9", "1_16"), score: str = "gradient",
                 iterations: int = 40) -> tuple[jax.Array, jax.Array]:
  """Complexity-aware dynamic masking for one image.

  image: [H, W, 3] in [0, 1], H and W multiples of `stride`; the token grid is [H/stride, W/stride].
  Each region of `region` x `region` tokens takes one schedule from `names` (densest first). A region
  of complexity c wants a keep ratio proportional to c / lambda; it takes the densest schedule that
  does not exceed that (never sparser than the last one). Lambda is found by bisection as the
  smallest value whose exact mean keep ratio is <= `target_keep`, so the budget always holds when
  the sparsest schedule alone meets it, and more complex regions never get sparser schedules.

  Returns (keep_map [h, w] bool, schedule ids [rh, rw] int32, indices into SCHEDULES).
  """
  h, w = image.shape[0] // stride, image.shape[1] // stride
  maps = schedule_maps(h, w, names)
  kept = _region_sum(jnp.asarray(maps, jnp.float32), region)          # [S, rh, rw]
  ratios = jnp.asarray([keep_ratio(n) for n in names])                 # densest first

  pad = ((0, -h % region * stride), (0, -w % region * stride), (0, 0))
  c = region_complexity(jnp.pad(image, pad, mode="edge"), region * stride, score)
  c = c / (jnp.mean(c) + 1e-12) + 1e-6

  def choose(log_lam):
    want = c / jnp.exp(log_lam)                                        # desired keep ratio
    # Densest schedule whose nominal ratio fits `want`; the sparsest one otherwise.
    fits = ratios[:, None, None] <= want[None]
    return jnp.where(fits.any(0), jnp.argmax(fits, axis=0), len(names) - 1).astype(jnp.int32)

  def mean_keep(choice):
    return jnp.sum(jnp.take_along_axis(kept, choice[None], 0)[0]) / (h * w)

  def step(_, carry):
    lo, hi, best = carry
    mid = 0.5 * (lo + hi)
    choice = choose(mid)
    ok = mean_keep(choice) <= target_keep
    # Carry the choice that was checked: recomputing it at the end could land on the other side
    # of a switching point (the bisection converges onto one) through rounding.
    return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi), jnp.where(ok, choice, best)

  # Mean keep is non-increasing in lambda: keep `hi` feasible, shrink the bracket towards `lo`.
  sparsest = jnp.full(kept.shape[1:], len(names) - 1, jnp.int32)
  init = (jnp.float32(-20.0), jnp.float32(20.0), sparsest)
  _, _, choice = jax.lax.fori_loop(0, iterations, step, init)
  ids = jnp.asarray([schedule_id(n) for n in names], jnp.int32)[choice]
  return dynamic_keep_map(ids, region, (h, w)), ids
