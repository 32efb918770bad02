"""The bundled demo set: real photographs that scikit-image and scikit-learn ship (no download).

Ten colour photographs in all; two are held out for evaluation. Images are uint8 [H, W, 3].
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np


def _skimage(name):
  def load():
    from skimage import data
    img = getattr(data, name)()
    return img[0] if isinstance(img, tuple) else img
  return load


def _motorcycle(side):
  def load():
    from skimage import data
    return data.stereo_motorcycle()[side]
  return load


def _sklearn(name):
  # The file `sklearn.datasets.load_sample_image` reads, opened the way it opens it (the same
  # array), without importing scikit-learn: that import takes 3-4 s, in every process that loads
  # the demo photos (each training run and each of its data workers).
  def load():
    import importlib.util

    from PIL import Image
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
      raise FileNotFoundError("the demo photos need scikit-learn installed (pip install scikit-learn)")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "datasets" / "images" / name
    with Image.open(path) as img:
      return np.asarray(img)
  return load


TRAIN = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "rocket": _skimage("rocket"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
    "motorcycle_left": _motorcycle(0),
    "china": _sklearn("china.jpg"),
}
HELDOUT = {
    "coffee": _skimage("coffee"),
    "flower": _sklearn("flower.jpg"),
}


def load(split: str = "train") -> dict[str, np.ndarray]:
  """{name: uint8 [H, W, 3]} for split "train", "heldout" or "all"."""
  table = {"train": TRAIN, "heldout": HELDOUT, "all": {**TRAIN, **HELDOUT}}.get(split)
  if table is None:
    raise ValueError(f"demo split must be train, heldout or all, got {split!r}")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return {name: np.ascontiguousarray(fn()[..., :3]).astype(np.uint8)
            for name, fn in table.items()}


def write_folder(out_dir: str | pathlib.Path, split: str = "all") -> list[pathlib.Path]:
  """Writes the demo photos as PNG files into `out_dir` (created); returns their paths."""
  from PIL import Image
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = []
  for name, img in load(split).items():
    path = out / f"{name}.png"
    Image.fromarray(img).save(path)
    paths.append(path)
  return paths
