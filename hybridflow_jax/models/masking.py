"""Dynamic masking: which schedule each region of the token grid gets.

Dynamic masking splits the token grid into regions of `region` x `region` tokens and gives some
regions denser schedules than others under a target mean keep ratio. Two ways to choose:

- `dynamic_mask`: complexity-aware, from the pixels alone (a region's texture score). Training
  uses it, and the codec's sender with `allocation="score"`.
- `rd_allocation`: rate-distortion, from what the receiver would decode. The codec's sender (the
  default `allocation="rd"`) renders the image once per candidate schedule, measures each region's
  squared error under each, and picks per region the schedule minimising error + lambda x kept
  tokens, lambda set by bisection to meet the budget. It costs one decode per candidate at the
  sender; the receiver is unchanged (the choices travel as side information either way).

The names, ratios, wire ids and keep-map builder of the schedules themselves live in
`hybridflow_jax.schedules`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hybridflow_jax import schedules
from hybridflow_jax.schedules import COMPLEXITY_SCORES


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


def dynamic_mask(image: jax.Array, *, stride: int, region: int, target_keep: float,
                 names=schedules.DEFAULT_CANDIDATES, score: str = "gradient",
                 iterations: int = 40) -> tuple[jax.Array, jax.Array]:
  """Complexity-aware dynamic masking for one image.

  image: [H, W, 3] in [0, 1], H and W multiples of `stride`; the token grid is [H/stride, W/stride].
  Each region of `region` x `region` tokens takes one schedule from `names` (densest first). A region
  of complexity c wants a keep ratio proportional to c / lambda; it takes the densest schedule that
  does not exceed that (never sparser than the last one). Lambda is found by bisection as the
  smallest value whose exact mean keep ratio is <= `target_keep`, so the budget always holds when
  the sparsest schedule alone meets it, and more complex regions never get sparser schedules.

  Returns (keep_map [h, w] bool, choices [rh, rw] int32: positions in `names`, as sent).
  """
  h, w = image.shape[0] // stride, image.shape[1] // stride
  maps = schedules.candidate_maps(h, w, names)
  kept = _region_sum(jnp.asarray(maps, jnp.float32), region)          # [S, rh, rw]
  ratios = jnp.asarray([schedules.keep_ratio(n) for n in names])       # densest first

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
  return schedules.region_keep_map(choice, names, region, (h, w), xp=jnp), choice


def region_keep_counts(hw: tuple[int, int], region: int, names) -> np.ndarray:
  """float64 [S, rh, rw]: tokens each candidate schedule keeps in each region (edge regions
  smaller)."""
  maps = jnp.asarray(schedules.candidate_maps(*hw, names), jnp.float32)
  return np.asarray(_region_sum(maps, region), np.float64)   # counts: exact in float32


def rd_allocation(distortion: np.ndarray, kept: np.ndarray, tokens: int, target_keep: float,
                  iterations: int = 64) -> np.ndarray:
  """Per-region choices [rh, rw] (positions in the candidates) under a mean keep budget.

  distortion: [S, rh, rw] each region's squared error when every region uses candidate s; kept:
  [S, rh, rw] tokens candidate s keeps there (`region_keep_counts`); tokens: of the whole grid.
  Each region takes argmin_s distortion + lambda * kept; lambda is the smallest (by bisection on
  log lambda) whose mean keep ratio is <= `target_keep`. Kept tokens never increase with lambda,
  so the budget holds whenever the sparsest choice everywhere meets it; otherwise every region
  takes its sparsest candidate. Ties go to the denser candidate (the first).
  """
  distortion, kept = np.asarray(distortion, np.float64), np.asarray(kept, np.float64)
  if distortion.shape != kept.shape or distortion.ndim != 3:
    raise ValueError(f"distortion {distortion.shape} and kept {kept.shape} must both be [S, rh, rw]")
  # The last of equally sparse candidates: argmin over the reversed order.
  sparsest = (kept.shape[0] - 1 - np.argmin(kept[::-1], axis=0)).astype(np.int32)

  def choose(lam: float) -> np.ndarray:
    return np.argmin(distortion + lam * kept, axis=0).astype(np.int32)

  def mean_keep(choice: np.ndarray) -> float:
    return float(np.take_along_axis(kept, choice[None], 0)[0].sum() / tokens)

  if mean_keep(choose(0.0)) <= target_keep:
    return choose(0.0)
  # lambda's scale: a region's distortion range per token; bracket it generously, bisect in logs.
  scale = max(float(np.ptp(distortion)), 1e-30)
  lo, hi = np.log(scale) - 60.0, np.log(scale) + 20.0
  best = choose(float(np.exp(hi)))
  if mean_keep(best) > target_keep:
    return sparsest
  for _ in range(iterations):
    mid = 0.5 * (lo + hi)
    choice = choose(float(np.exp(mid)))
    if mean_keep(choice) <= target_keep:
      hi, best = mid, choice
    else:
      lo = mid
  return best
