"""Checkpoints with orbax: train state + grain iterator state + config, async, keep-N, atomic.

Layout of a stage's folder (`WORKDIR/STAGE/`):

    checkpoints/<step>/{state,data,config}   periodic checkpoints (orbax CheckpointManager)
    params/                                  the stage's final params (what later stages load)
    DONE                                     written last: the stage is finished
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp


class StageCheckpoints:
  """Periodic checkpoints of one stage. Every process calls every method (orbax coordinates)."""

  def __init__(self, directory: pathlib.Path, keep: int, every: int):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                           enable_async_checkpointing=True, create=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_names=("state", "data", "config"),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iter, config: ml_collections.ConfigDict,
           force: bool = False) -> bool:
    """Saves if `step` is due (or `force`) and not saved yet; the write finishes in the
    background. Returns whether a save started."""
    if step == self.manager.latest_step():
      return False
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter),
        config=ocp.args.JsonSave(config.to_dict()))
    return self.manager.save(step, args=args, force=force)

  def restore(self, step: int, abstract_state, data_iter=None):
    """Restores the state onto the shardings of `abstract_state` (ShapeDtypeStructs with
    .sharding) and, when given, the data iterator. Returns the state."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def has_data_state(self, step: int) -> bool:
    """Whether this process's iterator state is in the checkpoint (a run restored on a different
    number of processes has none and starts its input afresh)."""
    index, count = jax.process_index(), jax.process_count()
    return (self.directory / str(step) / "data" / f"process_{index}-of-{count}.json").exists()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def save_params(directory: pathlib.Path, params: Any) -> None:
  """Writes final params (synchronously) to `directory`, which must not exist yet."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(pathlib.Path(directory).absolute(), params)
    ckptr.wait_until_finished()


def load_params(directory: pathlib.Path, abstract_params: Any) -> Any:
  """Reads params saved by `save_params` onto the shardings of `abstract_params` (leaves without
  one go to this process's first device, whatever mesh wrote them)."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract_params = jax.tree.map(
      lambda a: a if getattr(a, "sharding", None) is not None else
      jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract_params)
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(pathlib.Path(directory).absolute(), abstract_params)


def write_json(path: pathlib.Path, obj) -> None:
  """Atomic JSON write from process 0 only (temp file + rename)."""
  if jax.process_index() != 0:
    return
  path = pathlib.Path(path)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, default=float))
  tmp.replace(path)
