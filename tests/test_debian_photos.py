"""The reference recipe's photo sets (`data.debian_photos`), on a stand-in wallpaper tree."""

import numpy as np
import pytest
from PIL import Image

from hybridflow_jax.data import debian_photos


@pytest.fixture
def wallpapers(tmp_path):
  root = tmp_path / "wallpapers"
  rng = np.random.default_rng(0)
  for name in (*debian_photos.TRAIN, *debian_photos.HELDOUT):
    folder = root / name / "contents" / "images"
    folder.mkdir(parents=True)
    for w, h in ((320, 200), (1600, 1000)):  # several resolutions; the largest is read
      Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{w}x{h}.png")
  return root


def test_writes_disjoint_train_and_heldout_sets_at_their_sizes(wallpapers, tmp_path):
  written = debian_photos.write(tmp_path / "out", root=wallpapers)
  train = {p.name for p in written["train"]}
  heldout = {p.name for p in written["heldout"]}
  assert not train & heldout
  assert len(train) == len(debian_photos.TRAIN) + 8  # with the bundled demo training photos
  for p in written["heldout"]:
    assert Image.open(p).size == debian_photos.HELDOUT_SIZE
  for p in written["train"]:
    if not p.name.startswith("demo_"):
      assert min(Image.open(p).size) == debian_photos.TRAIN_SHORT_SIDE


def test_never_overwrites_and_names_the_missing_package(wallpapers, tmp_path):
  debian_photos.write(tmp_path / "out", root=wallpapers)
  with pytest.raises(FileExistsError):
    debian_photos.write(tmp_path / "out", root=wallpapers)
  with pytest.raises(FileNotFoundError, match="plasma-workspace-wallpapers"):
    debian_photos.write(tmp_path / "other", root=tmp_path / "nothing")
