"""The grain input pipeline: bad data, determinism and resume, sharding, upscaling, user errors,
worker processes and TFDS sources."""

import io
import json
import pathlib
import pickle

import numpy as np
import pytest
from PIL import Image

from hybridflow_jax.data import pipeline as pl

BAD_FILES = ("truncated.jpg", "empty.jpg", "bad.png")


def _jpeg_bytes(img, **kw):
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=90, **kw)
  return buf.getvalue()


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.fixture(scope="module")
def photo():
  """uint8 [512, 512, 3]: a real photograph to cut test images from."""
  from skimage import data
  return data.astronaut()


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory, photo):
  """Five good images (nested, mixed formats and case, one grey) and three unreadable files."""
  root = tmp_path_factory.mktemp("bad_folder")
  (root / "sub" / "deeper").mkdir(parents=True)
  Image.fromarray(photo[:48, :64]).save(root / "a.png")
  (root / "b.JPG").write_bytes(_jpeg_bytes(photo[100:160, 50:120]))
  Image.fromarray(photo[200:250, 200:260]).save(root / "sub" / "c.webp")
  Image.fromarray(photo[300:340, 300:380, 1]).save(root / "sub" / "grey.jpeg")
  Image.fromarray(photo[400:456, 0:40]).save(root / "sub" / "deeper" / "e.png")
  whole = _jpeg_bytes(photo[:200, :200])
  (root / "truncated.jpg").write_bytes(whole[:len(whole) // 2])
  (root / "sub" / "empty.jpg").write_bytes(b"")
  (root / "sub" / "deeper" / "bad.png").write_text("this is not a PNG\n")
  (root / "notes.txt").write_text("not an image extension: ignored\n")
  return root


@pytest.fixture(scope="module")
def coded_folder(tmp_path_factory):
  """Eight solid-colour 40x40 images whose grey level 20 * i encodes their name i."""
  root = tmp_path_factory.mktemp("coded")
  for i in range(8):
    Image.fromarray(np.full((40, 40, 3), 20 * i, np.uint8)).save(root / f"img{i}.png")
  return root


def test_bad_files_are_skipped_and_reported(bad_folder):
  spec = f"folder:{bad_folder}"
  source = pl.make_source(spec)
  assert len(source) == 8  # notes.txt is not an image file
  assert [str(pathlib.Path(p).relative_to(bad_folder)) for p in source.paths] == [
      "a.png", "b.JPG", "sub/c.webp", "sub/deeper/bad.png", "sub/deeper/e.png", "sub/empty.jpg",
      "sub/grey.jpeg", "truncated.jpg"]
  it = pl.train_iterator(spec, crop=32, batch_size=4, seed=0, prefetch=0)
  batches = _take(it, 6)  # 24 good images: more than four epochs of draws
  it.close()
  skipped, drawn = set(), set()
  for b in batches:
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.uint8
    assert b["image"].max() > 0   # pixels as decoded: the train step scales them
    assert b["skipped"].shape == (16,) and b["skipped"].dtype == np.int32
    listed = b["skipped"][b["skipped"] >= 0]
    assert len(listed) == b["num_skipped"] and (b["skipped"][len(listed):] == -1).all()
    skipped.update(int(i) for i in listed)
    drawn.update(int(i) for i in b["index"])
  assert {pathlib.Path(pl.describe(source[i])).name for i in skipped} == set(BAD_FILES)
  assert len(drawn) == 5 and not drawn & skipped
  # Evaluation skips them too, in source order.
  names, images = pl.eval_images(str(bad_folder), 24)
  assert [pathlib.Path(n).name for n in names] == ["a.png", "b.JPG", "c.webp", "e.png", "grey.jpeg"]
  assert images.shape == (5, 24, 24, 3) and images.dtype == np.float32
  _, limited = pl.eval_images(str(bad_folder), 24, limit=2)
  np.testing.assert_array_equal(limited, images[:2])


def test_same_seed_same_batches_and_resume_is_exact(bad_folder):
  spec = f"folder:{bad_folder}"
  kw = dict(crop=32, batch_size=3, seed=7)
  first = pl.train_iterator(spec, **kw)
  unprefetched = pl.train_iterator(spec, **kw, prefetch=0)
  expected = _take(first, 3)
  _assert_same_batches(expected, _take(unprefetched, 3))
  other_seed = next(pl.train_iterator(spec, **{**kw, "seed": 8}, prefetch=0))
  assert not np.array_equal(other_seed["image"], expected[0]["image"])

  state = json.loads(json.dumps(first.get_state()))  # as a checkpoint would store it
  after = _take(first, 4)
  resumed = pl.train_iterator(spec, **kw)
  resumed.set_state(state)
  _assert_same_batches(after, _take(resumed, 4))
  for it in (first, unprefetched, resumed):
    it.close()


def test_decoded_image_cache_gives_the_same_batches_and_decodes_each_image_once(tmp_path,
                                                                               monkeypatch):
  rng = np.random.default_rng(11)
  ours = set()
  for i in range(8):
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(tmp_path / f"n{i}.png")
    ours.add((tmp_path / f"n{i}.png").read_bytes())
  decoded = []  # decodes of this test's files (other tests' iterators may still be running)
  real = pl.decode_image
  monkeypatch.setattr(pl, "decode_image",
                      lambda payload: (bytes(payload) in ours and decoded.append(1)) or real(payload))
  kw = dict(crop=16, batch_size=4, seed=5, prefetch=0)
  plain = _take(pl.train_iterator(str(tmp_path), **kw), 6)     # 24 draws of 8 images
  assert len(decoded) == 24
  decoded.clear()
  cached = _take(pl.train_iterator(str(tmp_path), **kw, cache_mb=1), 6)
  assert len(decoded) == 8
  _assert_same_batches(plain, cached)
  # A budget smaller than one image (40x40x3 bytes) keeps nothing; a worker's copy (pickled, as
  # spawned workers get it) starts with an empty cache of the same budget.
  record = pl.make_source(str(tmp_path))[0]
  for budget, decodes in ((100, 2), (4800, 1)):
    decoded.clear()
    transform = pl.DecodeAndCrop(16, cache_bytes=budget)
    for _ in range(2):
      assert transform.random_map(record, np.random.default_rng(0))["ok"]
    assert len(decoded) == decodes, budget
  decoded.clear()
  pickle.loads(pickle.dumps(transform)).random_map(record, np.random.default_rng(0))
  assert len(decoded) == 1


def test_processes_draw_disjoint_images(coded_folder):
  spec = str(coded_folder)
  source = pl.make_source(spec)
  seen = []
  for process_index in range(2):
    it = pl.train_iterator(spec, crop=16, batch_size=2, seed=3, process_index=process_index,
                           process_count=2, prefetch=0)
    batches = _take(it, 2)  # 4 of the 8 images: this process's half of the first epoch
    it.close()
    indices = np.concatenate([b["index"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])
    for i, img in zip(indices, images):
      # The reported index is the image the pixels came from.
      name = pathlib.Path(pl.describe(source[int(i)])).stem
      np.testing.assert_array_equal(img, 20 * int(name[3:]))
    seen.append(set(indices.tolist()))
  assert len(seen[0]) == len(seen[1]) == 4
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(8))


def test_small_images_are_upscaled(tmp_path, photo):
  Image.fromarray(photo[200:220, 200:230]).save(tmp_path / "small.png")  # 20 x 30
  assert pl.upscale_to(photo[200:220, 200:230], 32).shape == (32, 48, 3)
  it = pl.train_iterator(str(tmp_path), crop=32, batch_size=2, seed=0, prefetch=0)
  batch = next(it)
  it.close()
  assert batch["image"].shape == (2, 32, 32, 3) and batch["num_skipped"] == 0
  names, images = pl.eval_images(f"folder:{tmp_path}", 32)
  assert images.shape == (1, 32, 32, 3) and names == ["small.png"]  # relative to the folder


def test_user_errors_are_one_line_value_errors(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "readme.txt").write_text("no images here")
  cases = [
      (f"folder:{tmp_path / 'missing'}", "no such directory"),
      (str(tmp_path / "missing"), "unknown data spec"),
      (f"folder:{tmp_path / 'empty'}", "no image files"),
      (str(tmp_path / "empty"), "no image files"),
      ("s3://bucket/images", "unknown data spec"),
      ("demo:test", "demo split"),
      ("tfds:mnist", "tfds:BUILDER/SPLIT"),
      (f"tfds:no_such_builder_xyz/train@{tmp_path}", "cannot open"),
  ]
  for spec, message in cases:
    with pytest.raises(ValueError, match=message) as e:
      pl.make_source(spec)
    assert "\n" not in str(e.value), spec
  with pytest.raises(ValueError, match="batch_size"):
    pl.train_iterator("demo", crop=32, batch_size=0, seed=0)
  with pytest.raises(ValueError, match="process_index"):
    pl.train_iterator("demo", crop=32, batch_size=2, seed=0, process_index=2, process_count=2)


def test_all_unreadable_data_fails_instead_of_hanging(tmp_path):
  (tmp_path / "a.png").write_text("not a png")
  (tmp_path / "b.jpg").write_bytes(b"")
  it = pl.train_iterator(str(tmp_path), crop=16, batch_size=2, seed=0, prefetch=0)
  with pytest.raises(ValueError, match="unreadable records in a row"):
    next(it)
  it.close()
  with pytest.raises(ValueError, match="no readable images"):
    pl.eval_images(str(tmp_path), 16)


def test_decoding_handles_modes_and_exif(photo):
  def png(img, **kw):
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()

  grey = pl.decode_image(png(Image.fromarray(photo[:10, :12, 0])))
  assert grey.shape == (10, 12, 3) and (grey[..., 0] == grey[..., 2]).all()
  rgba = np.zeros((4, 4, 4), np.uint8)  # black but fully transparent: composited onto white
  assert (pl.decode_image(png(Image.fromarray(rgba))) == 255).all()
  deep = pl.decode_image(png(Image.fromarray(np.full((3, 5), 65535, np.uint16))))
  assert deep.shape == (3, 5, 3) and (deep == 255).all()
  palette = pl.decode_image(png(Image.fromarray(photo[:8, :8]).convert("P")))
  assert palette.shape == (8, 8, 3) and palette.dtype == np.uint8
  exif = Image.Exif()
  exif[0x0112] = 6  # orientation: stored rotated, to be shown turned by 90 degrees
  rotated = pl.decode_image(_jpeg_bytes(photo[:20, :40], exif=exif.tobytes()))
  assert rotated.shape == (40, 20, 3)
  assert pl.decode_image(np.zeros((5, 6, 1), np.float32)).shape == (5, 6, 3)


def test_demo_source_is_lazy_and_picklable():
  source = pl.make_source("demo:heldout")
  assert len(source) == 2 and len(pickle.dumps(source)) < 1000  # names only, no pixels
  assert pl.describe(source[0]) == "demo:coffee"
  assert len(pl.make_source("demo")) == 8
  names, images = pl.eval_images("demo:heldout", 48, limit=1)
  assert names == ["demo:coffee"] and images.shape == (1, 48, 48, 3)


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_processes_give_the_same_batches(bad_folder, workers):
  # Workers decode single images and batching happens in the main process, and grain interleaves
  # the workers' outputs back in order, so the batches do not depend on the number of workers.
  spec = str(bad_folder)
  kw = dict(crop=32, batch_size=4, seed=5)
  in_process = pl.train_iterator(spec, **kw, prefetch=0)
  expected = _take(in_process, 4)
  in_process.close()
  it = pl.train_iterator(spec, **kw, workers=workers)
  try:
    _assert_same_batches(expected[:2], _take(it, 2))
    state = it.get_state()
    _assert_same_batches(expected[2:], _take(it, 2))
    it.set_state(state)  # rewinds the workers
    _assert_same_batches(expected[2:], _take(it, 2))
  finally:
    it.close()


# Runs in a fresh process (its multiprocessing resource tracker not yet started): a training
# iterator with grain workers; prints each child process's kind and ignored-signal mask.
SIGNALS_SCRIPT = r"""
import json, os, pathlib, sys
from hybridflow_jax.data import pipeline as pl
it = pl.train_iterator(sys.argv[1], crop=32, batch_size=2, seed=0, workers=1)
next(it)
children = {}
for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
  try:
    if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != os.getpid():
      continue
    cmdline = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
    status = (stat.parent / "status").read_text()
  except (FileNotFoundError, ProcessLookupError):
    continue
  kind = "worker" if "spawn_main" in cmdline else "tracker" if "resource_tracker" in cmdline else ""
  mask = int(next(l.split()[1] for l in status.splitlines() if l.startswith("SigIgn:")), 16)
  children.setdefault(kind, []).append(mask)
it.close()
print(json.dumps(children))
"""


def test_worker_processes_and_the_resource_tracker_ignore_ctrl_c_and_hang_ups(bad_folder):
  """A terminal's Ctrl-C (SIGINT) and hang-up (SIGHUP) reach every process of its group: grain's
  workers, dying of them, failed the trainer's next batch before it could checkpoint, and the
  resource tracker (which ignores SIGINT itself), dying of SIGHUP, printed a traceback for every
  shared buffer released after it. The trainer stops its workers itself."""
  import signal
  import subprocess
  import sys
  r = subprocess.run([sys.executable, "-c", SIGNALS_SCRIPT, str(bad_folder)], capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  children = json.loads(r.stdout.strip().splitlines()[-1])
  assert len(children.get("worker", [])) == 1 and len(children.get("tracker", [])) == 1, children
  hup, intr = 1 << (signal.SIGHUP - 1), 1 << (signal.SIGINT - 1)
  assert children["worker"][0] & hup and children["worker"][0] & intr, children
  assert children["tracker"][0] & hup and children["tracker"][0] & intr, children


def test_tfds_array_record_source_without_tensorflow(tmp_path, photo):
  import tensorflow_datasets as tfds

  def png(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()

  # Images go in already encoded: encoding arrays would need TensorFlow.
  examples = [png(photo[i * 40:i * 40 + 30, :50]) for i in range(5)] + [b"corrupt image bytes"]

  with tfds.core.registered.skip_registration():
    class HybridflowTinyPhotos(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version("1.0.0")

      def _info(self):
        features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(None, None, 3))})
        return tfds.core.DatasetInfo(builder=self, features=features)

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

      def _generate_examples(self):
        for i, image in enumerate(examples):
          yield i, {"image": image}

  HybridflowTinyPhotos(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  spec = f"tfds:hybridflow_tiny_photos/train@{tmp_path}"
  source = pl.make_source(spec)
  assert len(source) == 6
  assert pl.describe(source[2]) == "tfds:hybridflow_tiny_photos/train[2]"
  assert len(pickle.loads(pickle.dumps(source))) == 6  # the reader is reopened lazily
  it = pl.train_iterator(spec, crop=24, batch_size=5, seed=0, prefetch=0)
  batches = _take(it, 2)
  it.close()
  assert all(b["image"].shape == (5, 24, 24, 3) for b in batches)
  skipped = {int(i) for b in batches for i in b["skipped"] if i >= 0}
  assert len(skipped) == 1  # TFDS shuffles records when preparing: find the corrupt one by content
  assert [source[i]["payload"] == examples[-1] for i in range(6)].index(True) in skipped
  good = min(set(range(6)) - skipped)
  assert pl.decode_image(pickle.loads(pickle.dumps(source))[good]["payload"]).shape == (30, 50, 3)
  names, images = pl.eval_images(spec, 24)
  assert len(names) == 5 and images.shape == (5, 24, 24, 3)
