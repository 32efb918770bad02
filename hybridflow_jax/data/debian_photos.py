"""Real photographs from Debian's wallpaper packages: the reference recipe's training and held-out
sets (`configs/small.py`), reproducible on any Debian/Ubuntu machine without a dataset download.

    sudo apt-get install plasma-workspace-wallpapers
    python -m hybridflow_jax.data.debian_photos --out data/photos
    #  -> data/photos/train/*.png   10 wallpaper photos (short side 768 px) + the 8 bundled demo
    #                                training photos (`hybridflow_jax/data/demo.py`, as shipped)
    #     data/photos/heldout/*.png 3 wallpaper photos, 768x512 center crops (the evaluation size)

Only photographs are used (the packages also ship drawings and renders). The held-out photos are
never training photos; the demo's held-out photos (coffee, flower) stay held out too.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
from PIL import Image

from hybridflow_jax.data import demo

ROOT = pathlib.Path("/usr/share/wallpapers")
PACKAGE = "plasma-workspace-wallpapers"
# Wallpaper name -> the photo's role. Each wallpaper ships several resolutions; the largest is read.
TRAIN = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "Grey", "Kite", "MilkyWay",
         "OneStandsOut", "summer_1am", "Volna")
HELDOUT = ("EveningGlow", "FallenLeaf", "Path")
TRAIN_SHORT_SIDE = 768     # training photos at about the scale of the 768x512 evaluation images
HELDOUT_SIZE = (768, 512)  # width, height


def source(name: str, root: pathlib.Path = ROOT) -> pathlib.Path:
  """The largest image a wallpaper ships."""
  images = sorted((root / name / "contents" / "images").glob("*.*"))
  if not images:
    raise FileNotFoundError(f"{root / name}: not found; install it with "
                            f"`sudo apt-get install {PACKAGE}`")
  return max(images, key=lambda p: Image.open(p).size[0])


def _resize_short(img: Image.Image, short: int) -> Image.Image:
  s = short / min(img.size)
  return img.resize((round(img.size[0] * s), round(img.size[1] * s)), Image.Resampling.LANCZOS)


def _center(img: Image.Image, size: tuple[int, int]) -> Image.Image:
  w, h = size
  s = max(w / img.size[0], h / img.size[1])
  img = img.resize((round(img.size[0] * s), round(img.size[1] * s)), Image.Resampling.LANCZOS)
  left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
  return img.crop((left, top, left + w, top + h))


def write(out: str | pathlib.Path, root: pathlib.Path = ROOT) -> dict[str, list[pathlib.Path]]:
  """Writes out/train and out/heldout as PNGs; refuses to overwrite existing files."""
  out = pathlib.Path(out)
  written: dict[str, list[pathlib.Path]] = {"train": [], "heldout": []}
  for split, names in (("train", TRAIN), ("heldout", HELDOUT)):
    (out / split).mkdir(parents=True, exist_ok=True)
    for name in names:
      dest = out / split / f"{name}.png"
      if dest.exists():
        raise FileExistsError(f"{dest} exists; choose another --out")
      img = Image.open(source(name, root)).convert("RGB")
      img = _resize_short(img, TRAIN_SHORT_SIDE) if split == "train" else _center(img, HELDOUT_SIZE)
      Image.fromarray(np.asarray(img)).save(dest)
      written[split].append(dest)
  for name, img in demo.load("train").items():
    dest = out / "train" / f"demo_{name}.png"
    if dest.exists():
      raise FileExistsError(f"{dest} exists; choose another --out")
    Image.fromarray(img).save(dest)
    written["train"].append(dest)
  return written


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="folder to write train/ and heldout/ into")
  ns = p.parse_args(argv)
  try:
    written = write(ns.out)
  except (FileNotFoundError, FileExistsError) as e:
    print(f"debian_photos: error: {e}", file=sys.stderr)
    return 2
  for split, paths in written.items():
    print(f"{split}: {len(paths)} photos in {pathlib.Path(ns.out) / split}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
