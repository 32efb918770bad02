"""The layout of a training run's directory: the contract between the trainer and its readers
(export, `eval --workdir`, the tests).

    WORKDIR/
      config.json               the run's config, written by the first `train` in this directory
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

import json
import pathlib

import ml_collections

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


class RunDir:
  """WORKDIR/ (see the module docstring)."""

  def __init__(self, root):
    check_local_path(root, "run directory ")
    self.root = pathlib.Path(root)
    self.config_file = self.root / "config.json"
    self.results = self.root / "results.json"

  def stage(self, name: str) -> StageDir:
    return StageDir(self.root / name)

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
