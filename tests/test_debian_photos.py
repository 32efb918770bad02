"""The reference recipe's photo sets (`data.debian_photos`), on stand-in package trees, at small
sizes (writing full-size PNGs is most of what the module's time goes to)."""

import numpy as np
import pytest
from PIL import Image

from hybridflow_jax.data import debian_photos


@pytest.fixture(autouse=True)
def small_sizes(monkeypatch):
  monkeypatch.setattr(debian_photos, "TRAIN_SHORT_SIDE", 48)
  monkeypatch.setattr(debian_photos, "HELDOUT_SIZE", (48, 32))


@pytest.fixture
def wallpapers(tmp_path):
  root = tmp_path / "wallpapers"
  rng = np.random.default_rng(0)
  for name in (*debian_photos.TRAIN, *debian_photos.HELDOUT):
    folder = root / name / "contents" / "images"
    folder.mkdir(parents=True)
    for w, h in ((32, 20), (80, 50)):  # several resolutions; the largest is read
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


@pytest.fixture
def backgrounds(tmp_path):
  share = tmp_path / "backgrounds"
  rng = np.random.default_rng(1)
  for names in debian_photos.MORE.values():
    for name in names:
      (share / name).parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(share / name)
  return share


def test_more_adds_train45_to_an_existing_set_without_touching_it(wallpapers, backgrounds,
                                                                   tmp_path):
  first = debian_photos.write(tmp_path / "out", root=wallpapers)
  before = {p: p.stat().st_mtime_ns for p in (*first["train"], *first["heldout"])}
  written = debian_photos.write(tmp_path / "out", root=wallpapers, more=True, share=backgrounds)
  more = written[debian_photos.MORE_SPLIT]
  n_more = sum(len(names) for names in debian_photos.MORE.values())
  assert len({p.name for p in more}) == len(first["train"]) + n_more == 45
  assert {p.name for p in first["train"]} <= {p.name for p in more}
  assert not {p.name for p in more} & {p.name for p in first["heldout"]}
  assert {p: p.stat().st_mtime_ns for p in before} == before  # kept, not written again
  for p in more:
    if p.name not in {q.name for q in first["train"]}:
      assert min(Image.open(p).size) == debian_photos.TRAIN_SHORT_SIDE


def test_never_overwrites_and_names_the_missing_package(wallpapers, backgrounds, tmp_path):
  written = debian_photos.write(tmp_path / "out", root=wallpapers)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(written["heldout"][0])
  with pytest.raises(FileExistsError, match="another image"):
    debian_photos.write(tmp_path / "out", root=wallpapers)
  with pytest.raises(FileNotFoundError, match="plasma-workspace-wallpapers"):
    debian_photos.write(tmp_path / "other", root=tmp_path / "nothing")
  (backgrounds / debian_photos.MORE["lomiri-wallpapers-20.04"][0]).unlink()
  with pytest.raises(FileNotFoundError, match="lomiri-wallpapers-20.04"):
    debian_photos.write(tmp_path / "third", root=wallpapers, more=True, share=backgrounds)
  assert not (tmp_path / "third").exists()  # checked before anything is written
