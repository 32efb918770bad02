"""The mask-schedule vocabulary: names, wire ids, keep ratios, side information, keep-maps.

A keep-map is a bool array over the token grid, True where a codeword index is sent. The fixed
schedules keep one index per block (HybridFlow, fig. 3):

    1_1   every index (no masking)         1_2   checkerboard, 1/2 kept
    1_4   one per 2x2 block, 1/4 kept      1_9   one per 3x3 block, 1/9 kept
    1_16  one per 4x4 block, 1/16 kept

`dynamic` gives every region of `region` x `region` tokens one schedule from a candidate list
(`config.model.masking.schedules`, densest first); a region's **choice** is its position in that
list, everywhere: in training masks, in the keep-map builder, and on the wire (side information,
coded uniformly over the candidates). How the choices are made from image complexity is
`models/masking.py`'s business; how they turn into a keep-map is this module's, for NumPy (the
codec) and JAX (training and evaluation) alike.

Only NumPy is imported here: the container reads wire ids before jax is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Fixed schedules, densest first. A schedule's wire id is its position here (files store it).
FIXED = ("1_1", "1_2", "1_4", "1_9", "1_16")
DYNAMIC = "dynamic"
# The wire id of a dynamic file (per-region choices follow in the payload); 0..14 are fixed ids.
DYNAMIC_WIRE_ID = 15
ALL = (*FIXED, DYNAMIC)
DEFAULT = "1_4"
# Dynamic masking's default candidates: the paper's four schedules (fig. 3).
DEFAULT_CANDIDATES = ("1_2", "1_4", "1_9", "1_16")
# The operating points the trainer's evaluation and `hybridflow eval` report by default.
OPERATING_POINTS = ("1_4", "1_9", "1_16", DYNAMIC)
# How a sender picks each region's schedule in dynamic files (models/masking.py): "rd" decodes
# every candidate schedule and minimises error + lambda x kept tokens; "score" uses the model
# config's complexity score (no decoding at the sender). Receivers decode either.
DYNAMIC_ALLOCATIONS = ("rd", "score")
# The complexity scores "score" can rank regions by (`models.masking.complexity`).
COMPLEXITY_SCORES = ("gradient", "variance")

_KEEP_RATIO = {"1_1": 1.0, "1_2": 1 / 2, "1_4": 1 / 4, "1_9": 1 / 9, "1_16": 1 / 16}
_BLOCK = {"1_4": 2, "1_9": 3, "1_16": 4}


def check(name: str, dynamic: bool = True) -> str:
  """`name` if it is a schedule (or "dynamic" when allowed); else ValueError with one line."""
  valid = ALL if dynamic else FIXED
  if name not in valid:
    raise ValueError(f"unknown mask schedule {name!r}; choose from {', '.join(valid)}")
  return name


def parse_list(text: str) -> tuple[str, ...]:
  """Comma-separated operating points -> a tuple; ValueError for an unknown or repeated name."""
  names = tuple(s.strip() for s in text.split(",") if s.strip())
  bad = [s for s in names if s not in ALL]
  if bad or not names:
    raise ValueError(f"unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(ALL)}")
  if len(set(names)) != len(names):
    raise ValueError("a schedule is given twice")
  return names


def wire_id(name: str) -> int:
  """The id a file stores for schedule `name`."""
  return DYNAMIC_WIRE_ID if check(name) == DYNAMIC else FIXED.index(name)


def from_wire(wire: int) -> str:
  """The schedule of a stored id; ValueError for an id no schedule has."""
  if wire == DYNAMIC_WIRE_ID:
    return DYNAMIC
  if not 0 <= wire < len(FIXED):
    raise ValueError(f"unsupported schedule id {wire}")
  return FIXED[wire]


def keep_ratio(name: str) -> float:
  """Nominal fraction of indices a fixed schedule keeps (exact on grids divisible by its block)."""
  return _KEEP_RATIO[check(name, dynamic=False)]


def fixed_keep_map(name: str, height: int, width: int) -> np.ndarray:
  """[height, width] bool keep-map of a fixed schedule, for any grid size."""
  check(name, dynamic=False)
  i, j = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  if name == "1_1":
    return np.ones((height, width), bool)
  if name == "1_2":
    return (i + j) % 2 == 0
  n = _BLOCK[name]
  return (i % n == 0) & (j % n == 0)


def candidate_maps(height: int, width: int, candidates: Sequence[str]) -> np.ndarray:
  """[S, height, width] bool: the keep-map of every candidate, in order."""
  return np.stack([fixed_keep_map(n, height, width) for n in candidates])


def region_grid(hw: tuple[int, int], region: int) -> tuple[int, int]:
  """Regions of `region` x `region` tokens over a token grid (edge regions may be smaller)."""
  return -(-hw[0] // region), -(-hw[1] // region)


def side_bits(hw: tuple[int, int], region: int, candidates: Sequence[str]) -> float:
  """Bits of a dynamic file's side information: one uniform choice per region."""
  rh, rw = region_grid(hw, region)
  return rh * rw * math.log2(len(candidates))


def region_keep_map(choice, candidates: Sequence[str], region: int, hw: tuple[int, int], xp=np):
  """Per-region choices [rh, rw] (positions in `candidates`) -> [h, w] bool keep-map.

  The one keep-map builder of dynamic masking: xp=numpy in the codec, xp=jax.numpy in training
  and evaluation (jit- and vmap-able). A decoder rebuilds the keep-map from the side information
  with it.
  """
  maps = xp.asarray(candidate_maps(*hw, candidates))
  per_token = xp.repeat(xp.repeat(xp.asarray(choice), region, axis=0), region, axis=1)
  per_token = per_token[:hw[0], :hw[1]]
  return xp.take_along_axis(maps, per_token[None], axis=0)[0]
