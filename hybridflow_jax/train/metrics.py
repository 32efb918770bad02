"""Training metrics: TensorBoard event files and a JSON-lines log written without TensorFlow, and a
throughput/ETA reporter for the log line.

`MetricWriter` writes to `<logdir>/`:

- `events.out.tfevents.*`: TensorBoard event files (TFRecord-framed `Event` protos from the `tensorboard`
  package, which needs no TensorFlow). Scalars are legacy `simple_value`s, images are PNG-encoded
  `Summary.Image`s and texts are string tensors of the text plugin: all three are what both
  TensorBoard's UI and `EventAccumulator` read. Every writer opens a new event file, so a resumed run
  adds a file next to the old ones instead of rewriting them.
- `metrics.jsonl`: one JSON object per `write_scalars` call, `{"step": int, "time": unix seconds,
  name: float, ...}`, opened for appending so that a resumed run continues the same file. A resumed run
  may repeat steps logged after its checkpoint; readers should keep the last line of each step.
  Non-finite values are written as `null`, since JSON has no NaN or infinity (TensorBoard gets them as
  they are). This file is what tests and scripts read.

Only one process of a multi-host job writes (by default the one with `jax.process_index() == 0`): every
other process's writer is a no-op that creates no files and fetches nothing from devices.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.text import summary_v2 as text_summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

JSONL_NAME = "metrics.jsonl"
HPARAMS_TAG = "config"
# Keys every JSON line has; a scalar of the same name would silently overwrite them.
_RESERVED_KEYS = ("step", "time")


def _host_values(scalars: Mapping[str, Any]) -> dict[str, float]:
  """Python floats from scalar-sized floats, NumPy arrays or JAX arrays, fetched from devices at once."""
  local = {}
  for name, value in scalars.items():
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
      # A global array of a multi-host step: a replicated metric has a full copy on every host, and
      # fetching the whole array would need the shards this host cannot address.
      value = value.addressable_data(0)
    local[name] = value
  # One device_get for the whole mapping starts every transfer before waiting on any of them.
  fetched = jax.device_get(local)
  out = {}
  for name, value in fetched.items():
    array = np.asarray(value)
    if array.size != 1:
      raise ValueError(f"scalar {name!r} has shape {array.shape}; expected a single value")
    out[name] = float(array.reshape(()))
  return out


def _to_uint8_image(name: str, image: np.ndarray) -> np.ndarray:
  """[H, W, C] uint8 from [H, W, C] or [N, H, W, C] (C in {1, 3}), uint8 or float in [0, 1].

  A batch becomes one horizontal strip [H, N * W, C], so that e.g. originals and reconstructions stay
  side by side under one tag and one step slider. Floats are clipped to [0, 1]; NaN becomes black and
  +/-inf white/black, because a diverging run must still be able to log what it produces.
  """
  array = np.asarray(image)
  if array.ndim == 4:
    if array.shape[0] == 0:
      raise ValueError(f"image {name!r} is an empty batch")
    array = np.concatenate(list(array), axis=1)
  if array.ndim != 3 or array.shape[-1] not in (1, 3):
    raise ValueError(
      f"image {name!r} has shape {np.shape(image)}; expected [H, W, C] or [N, H, W, C], C 1 or 3"
    )
  if array.dtype == np.uint8:
    return array
  if not np.issubdtype(array.dtype, np.floating):
    raise TypeError(f"image {name!r} has dtype {array.dtype}; expected uint8 or float in [0, 1]")
  array = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
  return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


def _image_value(tag: str, image: np.ndarray) -> summary_pb2.Summary.Value:
  """A summary value holding `image` ([H, W, C] uint8) as PNG."""
  height, width, channels = image.shape
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if channels == 1 else image).save(buffer, format="PNG")
  encoded = summary_pb2.Summary.Image(
    height=height, width=width, colorspace=channels, encoded_image_string=buffer.getvalue()
  )
  return summary_pb2.Summary.Value(tag=tag, image=encoded)


def _hparams_text(hparams: Any) -> str:
  """Indented JSON of `hparams`, every line indented 4 more spaces.

  The extra indent makes TensorBoard's Markdown renderer show a code block instead of one run-on
  paragraph, and leading whitespace is still valid JSON, so the text parses back with `json.loads`.
  """
  if hasattr(hparams, "to_dict"):  # ml_collections.ConfigDict is not a Mapping
    hparams = hparams.to_dict()
  # default=str: a config may hold values JSON cannot (dtypes, paths); their repr is enough to read.
  text = json.dumps(hparams, indent=2, sort_keys=True, default=str)
  return "\n".join("    " + line for line in text.splitlines())


class MetricWriter:
  """Writes scalars, images and text to TensorBoard event files (TF-free) and to a JSON-lines file.

  Only the writing process (jax.process_index() == 0 by default, or `enabled=False`) writes; others are
  no-ops. Use as a context manager, or call `close()`; `flush()` makes everything written so far
  readable.

  Args:
    logdir: a local (or mounted) directory; created if missing.
    enabled: whether this process writes; None means `jax.process_index() == 0`.
  """

  def __init__(self, logdir: str | os.PathLike, enabled: bool | None = None):
    self.logdir = os.fspath(logdir)
    self.enabled = jax.process_index() == 0 if enabled is None else bool(enabled)
    self._closed = False
    self._events: EventFileWriter | None = None
    self._jsonl = None
    if self.enabled:
      os.makedirs(self.logdir, exist_ok=True)
      # flush_secs bounds how stale TensorBoard's view can be between explicit flushes.
      self._events = EventFileWriter(self.logdir, max_queue_size=64, flush_secs=30)
      self._jsonl = open(os.path.join(self.logdir, JSONL_NAME), "a", encoding="utf-8")

  @property
  def jsonl_path(self) -> str:
    return os.path.join(self.logdir, JSONL_NAME)

  def _active(self) -> bool:
    if not self.enabled:
      return False
    if self._closed:
      raise RuntimeError(f"MetricWriter for {self.logdir} is closed")
    return True

  def _add_summary(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
    event = event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values))
    self._events.add_event(event)

  def write_scalars(self, step: int, scalars: Mapping[str, float | np.ndarray | jax.Array]) -> None:
    """Logs single-valued metrics at `step`: one TensorBoard scalar per name and one JSON line."""
    reserved = [key for key in _RESERVED_KEYS if key in scalars]
    if reserved:
      raise ValueError(f"scalar names {reserved} are reserved for the JSON-lines record")
    if not self._active():
      return
    step = int(step)
    values = _host_values(scalars)
    if values:
      scalar_values = [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()]
      self._add_summary(step, scalar_values)
    record = {"step": step, "time": time.time()}
    record.update({k: v if math.isfinite(v) else None for k, v in values.items()})
    self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
    # Flushed per line: scripts tail this file while training runs, and lines are written rarely.
    self._jsonl.flush()

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Logs PNG images at `step`.

    Each value is [H, W, C] or [N, H, W, C] with C 1 or 3, uint8 or float in [0, 1]; a batch is written
    as one horizontal strip [H, N * W, C] under its tag.
    """
    if not self._active() or not images:
      return
    step = int(step)
    values = []
    for tag, image in images.items():
      values.append(_image_value(tag, _to_uint8_image(tag, jax.device_get(image))))
    self._add_summary(step, values)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    """Logs strings at `step` (TensorBoard renders them as Markdown)."""
    if not self._active() or not texts:
      return
    step = int(step)
    for tag, text in texts.items():
      self._events.add_event(
        event_pb2.Event(wall_time=time.time(), step=step, summary=text_summary.text_pb(tag, str(text)))
      )

  def write_hparams(self, hparams: Mapping) -> None:
    """Logs the run's configuration as JSON text under the tag "config" at step 0."""
    if not self._active():
      return
    self.write_texts(0, {HPARAMS_TAG: _hparams_text(hparams)})

  def flush(self) -> None:
    """Blocks until everything written so far is on disk."""
    if self._active():
      self._events.flush()
      self._jsonl.flush()

  def close(self) -> None:
    """Flushes and closes the files; later writes raise. Closing twice is harmless."""
    if not self.enabled or self._closed:
      return
    self._closed = True
    self._events.close()
    self._jsonl.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _format_number(value: float) -> str:
  """4 significant digits: enough to compare runs by eye, short enough for one line."""
  return f"{value:.4g}"


def _format_rate(value: float) -> str:
  if not math.isfinite(value):
    return "-"
  return f"{value:.1f}" if value >= 1.0 else f"{value:.2g}"


def _format_duration(seconds: float) -> str:
  """`2m03s`, `1h02m03s`; `-` when unknown."""
  if not math.isfinite(seconds):
    return "-"
  total = math.ceil(max(seconds, 0.0))
  hours, rest = divmod(total, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class ProgressReporter:
  """Tracks throughput and ETA: call `update(step, images)` every step or log period; `report()` returns
  a dict {"steps_per_sec", "images_per_sec", "eta_seconds", "progress"} measured over the window since
  the last report (first report after start excludes the first step's compile time if `skip_first=True`).

  `step` is the global step reached (steps completed, counting from 0 at the very start of training) and
  `images` the number of images processed since the previous `update`. With `skip_first=True` the window
  opens at the first `update` instead of at construction, so the first update's step(s) and images, whose
  time is dominated by jit compilation, are not counted. Times are host times of the `update` calls: with
  JAX's asynchronous dispatch they lag the devices by a few steps, which averages out over a window that
  ends at a host sync (fetching the logged metrics).

  A window without progress (two reports in a row) repeats the previous rates; before any measurement
  the rates and ETA are NaN. `progress` is the fraction of `total_steps` done, in [0, 1].

  Args:
    total_steps: the step at which training ends.
    start_step: the step training starts (or resumes) from.
    skip_first: whether to leave the first update out of the measured window.
    clock: seconds from a monotonic clock; injectable for tests.
  """

  def __init__(
    self,
    total_steps: int,
    start_step: int = 0,
    skip_first: bool = True,
    clock: Callable[[], float] = time.monotonic,
  ):
    self.total_steps = int(total_steps)
    self._clock = clock
    self._step = int(start_step)
    self._window_time: float | None = None if skip_first else clock()
    self._window_step = self._step
    self._window_images = 0
    self._last_time = self._window_time
    self._rates = (math.nan, math.nan)

  def update(self, step: int, images: int) -> None:
    now = self._clock()
    step = int(step)
    if self._window_time is None:
      self._window_time, self._window_step = now, step
    else:
      self._window_images += int(images)
    self._step = step
    self._last_time = now

  def _eta(self, step: int, steps_per_sec: float) -> float:
    remaining = max(self.total_steps - step, 0)
    if remaining == 0:
      return 0.0
    return remaining / steps_per_sec if steps_per_sec > 0 else math.nan

  def _progress(self, step: int) -> float:
    return min(max(step / self.total_steps, 0.0), 1.0) if self.total_steps > 0 else 1.0

  def report(self) -> dict[str, float]:
    """Rates over the window since the last report, then starts a new window."""
    if self._window_time is not None:
      elapsed = self._last_time - self._window_time
      steps = self._step - self._window_step
      if elapsed > 0 and steps > 0:
        self._rates = (steps / elapsed, self._window_images / elapsed)
        self._window_time, self._window_step, self._window_images = self._last_time, self._step, 0
    steps_per_sec, images_per_sec = self._rates
    return {
      "steps_per_sec": steps_per_sec,
      "images_per_sec": images_per_sec,
      "eta_seconds": self._eta(self._step, steps_per_sec),
      "progress": self._progress(self._step),
    }

  def format(self, step: int, scalars: Mapping[str, float]) -> str:
    """One human log line, e.g. `step 120/500 (24%)  loss 0.1234  3.1 steps/s  24.8 img/s  ETA 2m03s`.

    Calls `report()`, so it starts a new measurement window; scalars may be floats or device scalars.
    """
    step = int(step)
    rates = self.report()
    parts = [f"step {step}/{self.total_steps} ({math.floor(100 * self._progress(step))}%)"]
    parts += [f"{name} {_format_number(value)}" for name, value in _host_values(scalars).items()]
    parts += [
      f"{_format_rate(rates['steps_per_sec'])} steps/s",
      f"{_format_rate(rates['images_per_sec'])} img/s",
      f"ETA {_format_duration(self._eta(step, rates['steps_per_sec']))}",
    ]
    return "  ".join(parts)
