"""Rate control: the operating point whose real file fits a target bitrate.

Over the fixed schedules, the densest that fits; over dynamic masking, the largest budget (target
keep ratio) that fits, by bisection. Candidates are judged by their real file size: the networks
run once per image and only the entropy coding is repeated (`write` is that coding).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from hybridflow_jax import schedules
from hybridflow_jax.codec.coder import CodecError
from hybridflow_jax.codec.files import Compressed

# Bisection steps on the dynamic budget: it is then within 2**-12 of the largest that fits.
BUDGET_STEPS = 12


class RateError(CodecError):
  """A target bitrate no schedule (or dynamic budget) reaches for this image."""


def check_request(schedule: str | None, target_bpp: float | None, budget: float | None) -> str | None:
  """The schedule that `compress` options ask for: `schedule` or the default without a target;
  with one, None (the fixed schedules) or "dynamic" (its budgets). ValueError for bad options."""
  if schedule is not None:
    schedules.check(schedule)
  if budget is not None and not 0.0 <= budget <= 1.0:
    raise ValueError(f"budget (a keep ratio) must be in [0, 1], got {budget}")
  if target_bpp is None:
    return schedule or schedules.DEFAULT
  if isinstance(target_bpp, bool) or not isinstance(target_bpp, int | float) or not (
      math.isfinite(target_bpp) and target_bpp > 0):
    raise ValueError(f"target_bpp must be a positive number, got {target_bpp!r}")
  if schedule not in (None, schedules.DYNAMIC):
    raise ValueError("target_bpp picks the schedule: give no schedule (fixed schedules) or "
                     "schedule='dynamic' (dynamic budgets), not both")
  return schedule


def densest_fixed(write: Callable[[str], Compressed], target_bpp: float) -> Compressed:
  """The file of the densest fixed schedule that fits `target_bpp`; `write(schedule)` codes one.
  Raises RateError if the sparsest does not fit."""
  for name in schedules.FIXED:
    out = write(name)
    if out.bpp <= target_bpp:
      return out
  raise RateError(f"cannot reach {target_bpp:g} bpp: the sparsest schedule ({name}) needs "
                  f"{out.bpp:.4g} bpp for this {out.width}x{out.height} image")


def largest_budget(write: Callable[[float], Compressed], target_bpp: float) -> Compressed:
  """The file of the largest dynamic budget that fits `target_bpp`; `write(budget)` codes one.
  Raises RateError if budget 0 does not fit."""
  best = write(0.0)
  if best.bpp > target_bpp:
    raise RateError(f"cannot reach {target_bpp:g} bpp: the sparsest dynamic budget needs "
                    f"{best.bpp:.4g} bpp for this {best.width}x{best.height} image")
  # The keep-map only grows with the budget, so "fits" flips once along [0, 1].
  lo, hi = 0.0, 1.0
  for _ in range(BUDGET_STEPS):
    mid = 0.5 * (lo + hi)
    out = write(mid)
    if out.bpp <= target_bpp:
      lo, best = mid, out
    else:
      hi = mid
  return best
