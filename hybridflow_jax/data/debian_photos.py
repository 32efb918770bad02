"""Real photographs from Debian's wallpaper packages: the reference recipe's training and held-out
sets (`configs/small.py`), reproducible on any Debian/Ubuntu machine without a dataset download.

    sudo apt-get install plasma-workspace-wallpapers
    python -m hybridflow_jax.data.debian_photos --out data/photos
    #  -> data/photos/train/*.png   10 wallpaper photos (short side 768 px) + the 8 bundled demo
    #                                training photos (`hybridflow_jax/data/demo.py`, as shipped)
    #     data/photos/heldout/*.png 3 wallpaper photos, 768x512 center crops (the evaluation size)

    # 45 training photos: the 18 above and 27 more from three other packages (same held-out set)
    sudo apt-get install plasma-workspace-wallpapers mate-backgrounds lomiri-wallpapers-16.04 \
        lomiri-wallpapers-20.04
    python -m hybridflow_jax.data.debian_photos --out data/photos --more
    #  -> data/photos/train45/*.png as well: train/'s 18 photos + 27 (short side 768 px)

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
# The photographs of three more packages (their drawings and renders left out), as paths under the
# folder they install into; written with --more.
SHARE = pathlib.Path("/usr/share/backgrounds")
MORE = {
    "mate-backgrounds": tuple(f"mate/nature/{n}.jpg" for n in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops",
        "Storm", "TwoWings", "Wood", "YellowFlower")),
    "lomiri-wallpapers-16.04": tuple(f"{n}.jpg" for n in (
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
        "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
        "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich",
        "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi",
        "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi")),
    "lomiri-wallpapers-20.04": ("Infinite-Sea_by_Aury88.jpg", "Kleiber_by_Lukas_Baubkus.jpg"),
}
MORE_SPLIT = "train45"
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


def _more_sources(share: pathlib.Path) -> list[pathlib.Path]:
  paths = []
  for package, names in MORE.items():
    for name in names:
      if not (share / name).is_file():
        raise FileNotFoundError(f"{share / name}: not found; install it with "
                                f"`sudo apt-get install {package}`")
      paths.append(share / name)
  return paths


def _save_new(img: Image.Image | np.ndarray, dest: pathlib.Path) -> np.ndarray:
  """Writes a PNG and returns its pixels; a file already there is kept if it holds the same pixels
  (a second run adds what is missing, e.g. --more) and is an error otherwise: nothing is
  overwritten."""
  pixels = np.asarray(img)
  if dest.exists():
    try:
      same = np.array_equal(np.asarray(Image.open(dest).convert("RGB")), pixels)
    except OSError:
      same = False
    if not same:
      raise FileExistsError(f"{dest} exists and holds another image; choose another --out")
    return pixels
  Image.fromarray(pixels).save(dest)
  return pixels


def write(out: str | pathlib.Path, root: pathlib.Path = ROOT, more: bool = False,
          share: pathlib.Path = SHARE) -> dict[str, list[pathlib.Path]]:
  """Writes out/train and out/heldout as PNGs, and with `more` out/train45 (train's photos and
  the 27 of `MORE`). Never overwrites: a file already there must hold the same image."""
  out = pathlib.Path(out)
  more_sources = _more_sources(share) if more else []
  written: dict[str, list[pathlib.Path]] = {"train": [], "heldout": []}
  train = {}  # file name -> pixels, for --more
  for split, names in (("train", TRAIN), ("heldout", HELDOUT)):
    (out / split).mkdir(parents=True, exist_ok=True)
    for name in names:
      dest = out / split / f"{name}.png"
      img = Image.open(source(name, root)).convert("RGB")
      img = _resize_short(img, TRAIN_SHORT_SIDE) if split == "train" else _center(img, HELDOUT_SIZE)
      pixels = _save_new(img, dest)
      if split == "train":
        train[dest.name] = pixels
      written[split].append(dest)
  for name, img in demo.load("train").items():
    dest = out / "train" / f"demo_{name}.png"
    train[dest.name] = _save_new(img, dest)
    written["train"].append(dest)
  if more:
    (out / MORE_SPLIT).mkdir(exist_ok=True)
    written[MORE_SPLIT] = []
    for name, pixels in train.items():
      dest = out / MORE_SPLIT / name
      _save_new(pixels, dest)
      written[MORE_SPLIT].append(dest)
    for path in more_sources:
      img = _resize_short(Image.open(path).convert("RGB"), TRAIN_SHORT_SIDE)
      dest = out / MORE_SPLIT / f"{path.stem.split('_by_')[0]}.png"
      _save_new(img, dest)
      written[MORE_SPLIT].append(dest)
  return written


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="folder to write train/ and heldout/ into")
  p.add_argument("--more", action="store_true",
                 help=f"also write {MORE_SPLIT}/: train/'s photos and 27 from "
                      f"{', '.join(MORE)}")
  ns = p.parse_args(argv)
  try:
    written = write(ns.out, more=ns.more)
  except (FileNotFoundError, FileExistsError) as e:
    print(f"debian_photos: error: {e}", file=sys.stderr)
    return 2
  for split, paths in written.items():
    print(f"{split}: {len(paths)} photos in {pathlib.Path(ns.out) / split}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
