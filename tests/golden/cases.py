"""The image pairs behind the golden metric values (metrics.json): real photographs that scikit-image
ships, and distortions written in integer numpy arithmetic only, so the same pixels are rebuilt
anywhere (no random number generator, no lossy codec whose output could change between versions).

Used by tests/test_image_metrics.py and by make_golden.py, which computed the stored values with the
reference implementations.
"""

import numpy as np

# (name, photo, (top, left, height, width), distortion). Odd sizes exercise MS-SSIM's padding.
CASES = (
    ("astronaut_blocks", "astronaut", (40, 120, 192, 256), "blocks4"),
    ("coffee_noise_odd", "coffee", (61, 97, 201, 263), "noise12"),
    ("chelsea_quantised", "chelsea", (0, 0, 300, 451), "quantise32"),
    ("rocket_shift_odd", "rocket", (100, 200, 177, 321), "shift2"),
    ("astronaut_identical", "astronaut", (300, 300, 176, 200), "none"),
)


def photo(name: str) -> np.ndarray:
  from skimage import data
  return np.asarray(getattr(data, name)())[..., :3]


def distort(x: np.ndarray, kind: str) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [H, W, 3], integer arithmetic only."""
  x = x.astype(np.int64)
  h, w, _ = x.shape
  if kind == "none":
    y = x
  elif kind == "blocks4":  # 4x4 block means (integer division), edges replicated
    hp, wp = -(-h // 4) * 4, -(-w // 4) * 4
    p = np.pad(x, ((0, hp - h), (0, wp - w), (0, 0)), mode="edge")
    m = p.reshape(hp // 4, 4, wp // 4, 4, 3).sum(axis=(1, 3)) // 16
    y = np.repeat(np.repeat(m, 4, 0), 4, 1)[:h, :w]
  elif kind == "noise12":  # a fixed integer hash in [-12, 12]
    i, j, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    v = (i * 73856093 ^ j * 19349663 ^ c * 83492791) % 25 - 12
    y = x + v
  elif kind == "quantise32":
    y = x // 32 * 32 + 16
  elif kind == "shift2":  # content moved 2 px right and 1 down, with a brightness change
    y = np.pad(x, ((1, 0), (2, 0), (0, 0)), mode="edge")[:h, :w] + 6
  else:
    raise ValueError(kind)
  return np.clip(y, 0, 255).astype(np.uint8)


def pair(case) -> tuple[np.ndarray, np.ndarray]:
  """(reference, distorted) uint8 [H, W, 3] of one case."""
  _, name, (top, left, height, width), kind = case
  ref = np.ascontiguousarray(photo(name)[top:top + height, left:left + width])
  assert ref.shape == (height, width, 3), (name, ref.shape)
  return ref, distort(ref, kind)
