"""The training input pipeline, on grain: sources, robust decoding, augmentation and batching.

A data spec names where images come from (see `make_source`):
  "demo", "demo:train", "demo:heldout", "demo:all"  the bundled photographs (`demo.py`)
  "folder:DIR" or an existing directory DIR          every png/jpg/jpeg/webp file under DIR, recursively
  "tfds:BUILDER/SPLIT[@DATA_DIR]"                    a prepared array_record TFDS set with an "image"

Per process, `train_iterator` runs
  source -> global shuffle (reshuffled every epoch) -> decode + random crop/flip -> repeat forever
  -> shard [process_index::process_count] -> (worker processes) -> drop unreadable records + batch
  -> a background thread that keeps `prefetch` batches ready.
Workers decode single images and batching happens in the main process, so the batches do not depend
on the number of workers: `workers=0` and `workers=N` give the same batches for the same seed.

A record that cannot be decoded never stops the run: it is left out of the batch and its source index is
reported in the batch's "skipped" array, and logged once per iterator.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np
from absl import logging
from PIL import Image

from hybridflow_jax import imageio
from hybridflow_jax.data import demo

DEMO_SPLITS = ("train", "heldout", "all")
# "skipped" holds this many source indices per batch image; further skips are only counted.
SKIPPED_PER_IMAGE = 4

_SPEC_HELP = ("expected demo[:train|heldout|all], folder:DIR, tfds:BUILDER/SPLIT[@DATA_DIR] "
              "or an existing directory")


# ------------------------------------------------------------------------------------------------
# Sources. A raw record is a dict {"index": int source index, "name": str (what `describe` returns),
# "payload": encoded image bytes | uint8 array | None, "error": str ("" unless reading failed)}.
# Sources hold only names and paths, so they pickle cheaply into worker processes.


def _record(index: int, name: str, payload: Any = None, error: str = "") -> dict[str, Any]:
  return {"index": index, "name": name, "payload": payload, "error": error}


def _error_text(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class FolderSource:
  """Image files under a directory; records carry the file's bytes, named by the file's path."""

  def __init__(self, root: str, paths: Sequence[str]):
    self.root = root
    self.paths = list(paths)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    path = self.paths[index]
    try:
      with open(path, "rb") as f:
        return _record(index, path, f.read())
    except OSError as e:  # deleted or unreadable since listing: skip it like a corrupt file
      return _record(index, path, None, _error_text(e))

  def __repr__(self) -> str:
    return f"FolderSource({self.root!r}, {len(self)} files)"


@functools.cache
def _demo_photo(name: str) -> np.ndarray:
  """uint8 [H, W, C] of one bundled photo, loaded once per process."""
  table = {**demo.TRAIN, **demo.HELDOUT}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return np.asarray(table[name]())


class DemoSource:
  """The bundled demo photographs of one split, loaded lazily (in the worker that reads them)."""

  def __init__(self, split: str):
    tables = {"train": demo.TRAIN, "heldout": demo.HELDOUT, "all": {**demo.TRAIN, **demo.HELDOUT}}
    self.split = split
    self.names = list(tables[split])

  def __len__(self) -> int:
    return len(self.names)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    name = f"demo:{self.names[index]}"
    try:
      return _record(index, name, _demo_photo(self.names[index]))
    except Exception as e:  # a photo that fails to load is skipped like bad data
      return _record(index, name, None, _error_text(e))

  def __repr__(self) -> str:
    return f"DemoSource({self.split!r}, {len(self)} photos)"


class TfdsSource:
  """A prepared TFDS data set read through `tfds.data_source`; records carry the encoded "image" bytes.

  The TFDS reader is opened lazily and dropped when pickled, so each worker opens its own.
  """

  def __init__(self, builder: str, split: str, data_dir: str | None):
    self.builder, self.split, self.data_dir = builder, split, data_dir
    self._source = None
    source = self._open()
    features = getattr(source.dataset_info, "features", None)
    if features is None or "image" not in features.keys():
      raise ValueError(f"{self.spec}: records have no 'image' feature")
    self._len = len(source)

  @property
  def spec(self) -> str:
    return f"tfds:{self.builder}/{self.split}" + (f"@{self.data_dir}" if self.data_dir else "")

  def _open(self):
    if self._source is None:
      import tensorflow_datasets as tfds  # slow to import: only when a tfds spec is used
      try:
        # The image bytes are decoded by `decode_image` (EXIF, modes, bad data), not by TFDS.
        self._source = tfds.data_source(
            self.builder, split=self.split, data_dir=self.data_dir, download=False,
            decoders={"image": tfds.decode.SkipDecoding()})
      except Exception as e:  # TFDS raises many types; the user needs one line
        raise ValueError(f"{self.spec}: cannot open the data set ({_error_text(e)})") from e
    return self._source

  def __getstate__(self):
    return {**self.__dict__, "_source": None}

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    name = f"tfds:{self.builder}/{self.split}[{index}]"
    try:
      return _record(index, name, self._open()[index]["image"])
    except Exception as e:  # a record that fails to parse is skipped like bad data
      return _record(index, name, None, _error_text(e))

  def __repr__(self) -> str:
    return f"TfdsSource({self.spec!r}, {len(self)} records)"


def _folder_source(folder: str, spec: str) -> FolderSource:
  root = pathlib.Path(folder).expanduser()
  if not root.is_dir():
    raise ValueError(f"data spec {spec!r}: no such directory {str(root)!r}")
  paths = sorted(str(p) for p in root.rglob("*")
                 if p.suffix.lower() in imageio.IMAGE_EXTENSIONS and p.is_file())
  if not paths:
    kinds = "/".join(e[1:] for e in imageio.IMAGE_EXTENSIONS)
    raise ValueError(f"data spec {spec!r}: no image files ({kinds}) under {str(root)!r}")
  return FolderSource(str(root), paths)


def make_source(spec: str):
  """A picklable random-access source (len, __getitem__) of raw records for the data spec `spec`.

  Specs: "demo" (= "demo:train"), "demo:heldout", "demo:all"; "folder:DIR" or a plain existing DIR
  (png/jpg/jpeg/webp files, any case, recursive, sorted by path); "tfds:BUILDER/SPLIT" or
  "tfds:BUILDER/SPLIT@DATA_DIR" (a prepared array_record data set whose records have an "image").
  A record is a dict {"index", "name", "payload", "error"}; pass it to `describe` for a human name.
  Raises ValueError with one line for an unknown spec, a missing or empty folder, or a TFDS data set
  that cannot be opened.
  """
  if not isinstance(spec, str) or not spec:
    raise ValueError(f"data spec {spec!r}: {_SPEC_HELP}")
  kind, _, rest = spec.partition(":")
  if kind == "demo":
    split = rest or "train"
    if split not in DEMO_SPLITS:
      raise ValueError(f"data spec {spec!r}: demo split must be one of {', '.join(DEMO_SPLITS)}")
    return DemoSource(split)
  if kind == "folder":
    return _folder_source(rest, spec)
  if kind == "tfds":
    name, _, data_dir = rest.partition("@")
    builder, _, split = name.rpartition("/")  # the builder may name a config: "BUILDER/CONFIG/SPLIT"
    if not builder or not split:
      raise ValueError(f"data spec {spec!r}: expected tfds:BUILDER/SPLIT[@DATA_DIR]")
    source = TfdsSource(builder, split, data_dir or None)
    if not len(source):
      raise ValueError(f"data spec {spec!r}: the split has no records")
    return source
  if os.path.isdir(os.path.expanduser(spec)):
    return _folder_source(spec, spec)
  raise ValueError(f"unknown data spec {spec!r} (not an existing directory either): {_SPEC_HELP}")


def describe(record) -> str:
  """A human name for a raw record: the file path (folders), "demo:NAME" or "tfds:BUILDER/SPLIT[i]"."""
  if isinstance(record, dict) and "name" in record:
    return str(record["name"])
  if isinstance(record, str | os.PathLike):
    return os.fspath(record)
  return repr(record)[:80]


# ------------------------------------------------------------------------------------------------
# Decoding and augmentation.


def _array_to_rgb(a: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] from an image array (see `hybridflow_jax.imageio.to_rgb8`)."""
  return imageio.to_rgb8(a)[0]


def decode_image(payload) -> np.ndarray:
  """uint8 [H, W, 3] from encoded image bytes (any format PIL reads) or an image array.

  Applies the EXIF orientation; converts modes as `hybridflow_jax.imageio` does. Raises (any
  exception type) when the data cannot be fully decoded, so a truncated file fails here.
  """
  if isinstance(payload, np.ndarray):
    return _array_to_rgb(payload)
  if not isinstance(payload, bytes | bytearray | memoryview):
    raise TypeError(f"no image data (got {type(payload).__name__})")
  return imageio.decode(bytes(payload))[0]


def upscale_to(img: np.ndarray, short: int) -> np.ndarray:
  """uint8 [H', W', 3]: `img` [H, W, 3] upscaled (bicubic) so that its short side is `short`, or
  unchanged if it already is at least that."""
  h, w = img.shape[:2]
  if min(h, w) >= short:
    return img
  scale = short / min(h, w)
  size = (max(short, round(w * scale)), max(short, round(h * scale)))
  return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC))


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
  """uint8 [size, size, 3] from the middle of `img` [H, W, 3] (upscaled first when smaller)."""
  img = upscale_to(img, size)
  top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
  return img[top:top + size, left:left + size]


class DecodeAndCrop(grain.transforms.RandomMap):
  """Raw record -> {"image": uint8 [crop, crop, 3], "index": int, "ok": bool, "name", "error"}.

  A random crop and a random horizontal flip; images smaller than the crop are upscaled first. An
  undecodable record gives ok=False and a zero image (the same structure, so it can cross processes).

  Decoded (and upscaled) images are kept, by source index, until they fill `cache_bytes` per
  process: a small dataset is then decoded once per process instead of once per draw (on a 2-core
  machine decoding took the cores the train step needed; docs/benchmarks.md). Decoding is
  deterministic, so batches are the same with or without the cache.
  """

  def __init__(self, crop: int, cache_bytes: int = 0):
    self.crop = crop
    self.cache_bytes = int(cache_bytes)
    self._cache: dict[int, np.ndarray] = {}
    self._cached = 0
    self._lock = threading.Lock()

  def __getstate__(self):  # workers are spawned: each builds its own cache
    return {"crop": self.crop, "cache_bytes": self.cache_bytes}

  def __setstate__(self, state):
    self.__init__(state["crop"], state["cache_bytes"])

  def _decoded(self, record: dict[str, Any]) -> np.ndarray:
    index = int(record["index"])
    img = self._cache.get(index)
    if img is None:
      img = upscale_to(decode_image(record["payload"]), self.crop)
      with self._lock:
        if index not in self._cache and self._cached + img.nbytes <= self.cache_bytes:
          img.setflags(write=False)
          self._cache[index] = img
          self._cached += img.nbytes
    return img

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    out = {"index": int(record["index"]), "name": record["name"], "ok": False, "error": record["error"]}
    if not out["error"]:
      try:
        img = self._decoded(record)
        top = int(rng.integers(0, img.shape[0] - self.crop + 1))
        left = int(rng.integers(0, img.shape[1] - self.crop + 1))
        img = img[top:top + self.crop, left:left + self.crop]
        if rng.random() < 0.5:
          img = img[:, ::-1]
        out.update(image=np.ascontiguousarray(img), ok=True)
      except Exception as e:  # bad data of any kind must not stop training
        out["error"] = _error_text(e)
    if not out["ok"]:
      out["image"] = np.zeros((self.crop, self.crop, 3), np.uint8)
    return out


# ------------------------------------------------------------------------------------------------
# Skipping unreadable records and batching.


@dataclasses.dataclass(frozen=True)
class _BatchOptions:
  batch_size: int
  max_consecutive_skips: int  # this many unreadable records in a row means the data is unusable
  spec: str


class SkipAndBatchIterDataset(grain.IterDataset):
  """Batches the valid elements of a `DecodeAndCrop` stream and reports the invalid ones.

  Batches: {"image": uint8 [B, crop, crop, 3], "index": int32 [B],
  "skipped": int32 [B * SKIPPED_PER_IMAGE] padded with -1, "num_skipped": int32 []}.
  """

  def __init__(self, parent: grain.IterDataset, options: _BatchOptions):
    super().__init__(parent)
    self._options = options

  def __iter__(self) -> _SkipAndBatchIterator:
    return _SkipAndBatchIterator(self._parent.__iter__(), self._options)

  def __str__(self) -> str:
    return f"SkipAndBatchIterDataset(batch_size={self._options.batch_size})"


class _SkipAndBatchIterator(grain.DatasetIterator):
  """Pulls parent elements until a batch is full. Nothing is buffered between batches, so the state is
  the parent's state."""

  def __init__(self, parent: grain.DatasetIterator, options: _BatchOptions):
    super().__init__(parent)
    self._options = options
    self._warned: set[int] = set()  # log each bad record once, not once per epoch

  def __next__(self) -> dict[str, np.ndarray]:
    opts = self._options
    images, indices, skipped = [], [], []
    in_a_row = 0
    while len(images) < opts.batch_size:
      element = next(self._parent)
      index = int(element["index"])
      if element["ok"]:
        images.append(element["image"])
        indices.append(index)
        in_a_row = 0
        continue
      skipped.append(index)
      in_a_row += 1
      if index not in self._warned:
        self._warned.add(index)
        logging.warning("skipping unreadable image %s: %s", element["name"], element["error"])
      if in_a_row >= opts.max_consecutive_skips:
        raise ValueError(f"data spec {opts.spec!r}: {in_a_row} unreadable records in a row, the last "
                         f"{element['name']} ({element['error']}); is the data usable?")
    listed = np.full(opts.batch_size * SKIPPED_PER_IMAGE, -1, np.int32)
    kept = skipped[:listed.size]
    listed[:len(kept)] = kept
    return {
        # uint8: a quarter of the bytes to copy to the devices, and the train step converts to
        # [0, 1] on the device (`train.steps.unit_images`) instead of on the host's busy cores.
        "image": np.stack(images),
        "index": np.asarray(indices, np.int32),
        "skipped": listed,
        "num_skipped": np.int32(len(skipped)),
    }

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])

  def __str__(self) -> str:
    return f"SkipAndBatchIterator(batch_size={self._options.batch_size})"


def _ensure_absl_flags_parsed() -> None:
  """grain's worker start-up reads absl flags, which raises unless they were parsed (no absl.app)."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _worker_ignores_interrupts(worker_index: int, worker_count: int) -> None:
  """grain worker start-up: Ctrl-C (SIGINT) and a hang-up (SIGHUP) reach every process of the
  terminal's process group. Each worker would die of them with a traceback, failing the next batch
  before the trainer could checkpoint; the trainer stops its workers itself when it has."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _start_resource_tracker() -> None:
  """Starts multiprocessing's resource tracker (the process that frees the workers' shared memory)
  ignoring hang-ups, as it ignores SIGINT and SIGTERM itself: started by grain, a hang-up killed it
  and every later release of shared memory printed a traceback."""
  if threading.current_thread() is not threading.main_thread():
    return  # signal dispositions can only be changed from the main thread
  from multiprocessing import resource_tracker
  previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited by the process it starts
  try:
    resource_tracker.ensure_running()
  finally:
    signal.signal(signal.SIGHUP, previous)


def train_iterator(spec: str, *, crop: int, batch_size: int, seed: int, process_index: int = 0,
                   process_count: int = 1, workers: int = 0, prefetch: int = 2,
                   cache_mb: int = 0) -> grain.DatasetIterator:
  """An infinite iterator of this process's training batches from the data spec `spec`.

  Each batch is a dict of numpy arrays:
    "image":       uint8 [batch_size, crop, crop, 3], random crops, randomly h-flipped (the train
                   step takes it as it is and scales it to [0, 1] on the device)
    "index":       int32 [batch_size] source index of each image (see `make_source`, `describe`)
    "skipped":     int32 [batch_size * SKIPPED_PER_IMAGE] source indices of unreadable records met while
                   assembling this batch, padded with -1 (so the dict has fixed shapes)
    "num_skipped": int32 [] how many were skipped; more than the length of "skipped" when some are not
                   listed
  Batches are assembled in this process from per-image elements, so the result is the same for any
  `workers`. The order is a global shuffle with `seed`, reshuffled each epoch; process `process_index`
  takes every `process_count`-th element of it, so processes see disjoint images within an epoch.

  Args:
    crop: side of the square crops in pixels; smaller images are upscaled (bicubic) to fit.
    batch_size: images per batch in THIS process.
    seed: seeds the shuffle and the augmentation; the same seed gives the same batches.
    workers: decode in this many worker processes (spawned; 0 decodes in threads of this process).
    prefetch: batches kept ready by a background thread (0: none, everything runs synchronously).
    cache_mb: decoded images kept per process (and per worker), in MiB (0: decode every draw).

  The iterator supports `get_state()` / `set_state(state)` (JSON-serialisable state): a fresh
  iterator built with the same arguments and given a saved state continues with the same batches.
  Call `close()` when done with it to stop worker processes early.
  """
  limits = (("crop", crop, 1), ("batch_size", batch_size, 1), ("seed", seed, 0),
            ("process_count", process_count, 1), ("workers", workers, 0), ("prefetch", prefetch, 0),
            ("cache_mb", cache_mb, 0))
  for name, value, low in limits:
    if int(value) < low:
      raise ValueError(f"{name} must be >= {low}, got {value}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
  source = make_source(spec)

  ds = grain.MapDataset.source(source).seed(seed)
  ds = ds.shuffle()  # shuffles epoch e with seed + e: index e * len + i is element i of epoch e
  # Seeded by the global index, so epochs crop differently.
  ds = ds.random_map(DecodeAndCrop(crop, cache_mb * 2**20))
  ds = ds.repeat()
  ds = ds[process_index::process_count]

  # Threads overlap file reads and PIL decoding (which releases the GIL).
  threads = 0 if prefetch == 0 else (min(8, os.cpu_count() or 1) if workers == 0 else 2)
  buffer = max(threads, prefetch * batch_size) if threads else 0
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=buffer))
  if workers > 0:
    _ensure_absl_flags_parsed()
    _start_resource_tracker()
    # Each worker decodes every workers-th element and grain interleaves them back in order.
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(1, prefetch * batch_size // workers)),
        worker_init_fn=_worker_ignores_interrupts)
  options = _BatchOptions(batch_size=batch_size, spec=spec,
                          max_consecutive_skips=100 + min(10 * len(source), 10_000))
  it_ds = SkipAndBatchIterDataset(it_ds, options)
  if prefetch > 0:
    it_ds = grain.experimental.ThreadPrefetchIterDataset(it_ds, prefetch_buffer_size=prefetch)
  return iter(it_ds)


def readable_images(spec: str, limit: int | None = None,
                    log: Callable[[str], None] | None = None) -> Iterator[tuple[str, np.ndarray]]:
  """(name, uint8 [H, W, 3]) of every readable image of data spec `spec`, in source order.

  The one reader of "the images of a data spec" outside training (evaluation, the exporter's index
  prior, the trainer's held-out crops). Names are `describe` names, relative to the folder for
  folder sources. Unreadable images are reported through `log` (default: a logging warning) and
  skipped; at most `limit` readable images are yielded. Raises ValueError for a bad spec.
  """
  source = make_source(spec)
  root = getattr(source, "root", None)
  log = log or logging.warning
  count = 0
  for i in range(len(source)):
    if limit is not None and count >= limit:
      return
    record = source[i]
    name = describe(record)
    if root is not None:
      name = os.path.relpath(name, root)
    error = record["error"]
    if not error:
      try:
        rgb = decode_image(record["payload"])
      except Exception as e:  # noqa: BLE001  (one bad file must not stop the caller)
        error = _error_text(e)
    if error:
      log(f"skipping unreadable image {name}: {error}")
      continue
    count += 1
    yield name, rgb


def eval_images(spec: str, size: int, limit: int | None = None) -> tuple[list[str], np.ndarray]:
  """Deterministic center crops of the images of `spec`, in source order.

  Returns (names, images): names as `readable_images` gives them and float32 [N, size, size, 3] in
  [0, 1], N <= `limit`. Images whose short side is below `size` are upscaled (bicubic) first;
  unreadable ones are skipped with a warning. Raises ValueError if none is readable.
  """
  names, crops = [], []
  for name, rgb in readable_images(spec, limit):
    names.append(name)
    crops.append(center_crop(rgb, size))
  if not crops and limit != 0:
    raise ValueError(f"data spec {spec!r}: no readable images")
  images = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
  return names, images.astype(np.float32) / np.float32(255.0)
