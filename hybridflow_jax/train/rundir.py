"""The layout of a training run's directory: the contract between the trainer and its readers
(export, `eval --workdir`, the tests).

    WORKDIR/
      config.json               the run's config, written by the first `train` in this directory
      train.lock                locked (flock) while a `train` runs here; says which process
      results.json              the held-out table of the last stage that ran
      STAGE/                    one folder per stage (vq, continuous, ...)
        frozen/                 the params the stage does not train, written when it starts
        checkpoints/<step>/     periodic checkpoints: what the stage changes (its params,
                                optimiser), input state, config (train.checkpoint)
        params/                 the stage's final params: what later stages and export load
        metrics/                TensorBoard event files and metrics.jsonl
        summary.json            steps, skipped images, metric history, the final evaluation
        skipped_images.json     indices of the unreadable training records met so far
        DONE                    written last, holding the step count: the stage is finished

Plain file operations only: which process writes is the caller's decision.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import socket
import time

import ml_collections
from absl import logging

from hybridflow_jax import config as config_lib
from hybridflow_jax.errors import UserError, check_local_path


class StageDir:
  """WORKDIR/STAGE/ (see the module docstring)."""

  def __init__(self, root):
    self.root = pathlib.Path(root)
    self.checkpoints = self.root / "checkpoints"
    self.frozen = self.root / "frozen"
    self.params = self.root / "params"
    self.metrics = self.root / "metrics"
    self.profile = self.root / "profile"
    self.summary = self.root / "summary.json"
    self.skipped = self.root / "skipped_images.json"
    self._done = self.root / "DONE"

  def is_done(self) -> bool:
    return self._done.is_file()

  def done_step(self) -> int:
    return int(self._done.read_text().strip())

  def mark_done(self, step: int) -> None:
    self._done.write_text(f"{step}\n")

  def final_eval(self) -> dict:
    """The evaluation a finished stage recorded ({} if none)."""
    return json.loads(self.summary.read_text()).get("eval", {}) if self.summary.exists() else {}


class TrainingLock:
  """WORKDIR/train.lock, locked with flock while a `train` runs in WORKDIR: a second one there
  would write the same checkpoints. The kernel releases the lock when the process ends, however it
  ends, so a killed run never blocks its rerun. NFS (v4) supports it; where the file system has no
  locks (some FUSE mounts), a warning says so and nothing is locked."""

  def __init__(self, path):
    self.path = pathlib.Path(path)
    self._fd: int | None = None

  def acquire(self) -> str | None:
    """None once held (or where nothing can be locked); else who holds it, as it wrote."""
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
      os.close(fd)
      return holder or "another process"
    except OSError as e:
      os.close(fd)
      logging.warning("%s: this file system has no file locks (%s); nothing stops a second "
                      "`hybridflow train` in this directory", self.path, e.strerror)
      return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n".encode(), 0)
    self._fd = fd
    return None

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the last descriptor releases the flock
      self._fd = None


class RunDir:
  """WORKDIR/ (see the module docstring)."""

  def __init__(self, root):
    check_local_path(root, "run directory ")
    self.root = pathlib.Path(root)
    self.config_file = self.root / "config.json"
    self.results = self.root / "results.json"

  def stage(self, name: str) -> StageDir:
    return StageDir(self.root / name)

  def training_lock(self) -> TrainingLock:
    return TrainingLock(self.root / "train.lock")

  def check_model(self, cfg: ml_collections.ConfigDict) -> None:
    """UserError (one line) if this run recorded another `model` config than `cfg`'s: its stages'
    params were trained for those networks, and export and eval build what config.json says."""
    if not self.config_file.is_file():
      return
    recorded = json.loads(self.config_file.read_text()).get("model", {})
    diffs = config_lib.model_differences(recorded, cfg.model.to_dict())
    if diffs:
      raise UserError(f"{self.root} was trained with another model config: {diffs}; train it "
                      "with the recorded values or use a new --workdir")

  def write_config(self, cfg: ml_collections.ConfigDict) -> None:
    """Records the run's config once; a resumed run keeps the first one. Written whole (a temporary
    file renamed): the other processes of a job read it while process 0 writes."""
    if not self.config_file.exists():
      tmp = self.config_file.with_suffix(".json.tmp")
      tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
      tmp.replace(self.config_file)

  def read_config(self) -> ml_collections.ConfigDict:
    if not self.config_file.is_file():
      raise ValueError(f"{self.root} is not a training run (no config.json); train first")
    return ml_collections.ConfigDict(json.loads(self.config_file.read_text()))

  def unfinished(self, stages) -> list[str]:
    return [s for s in stages if not self.stage(s).is_done()]
