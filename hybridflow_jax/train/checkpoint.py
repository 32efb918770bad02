"""Checkpoints with orbax: train state + grain iterator state + config, async, keep-N, atomic.

Layout of a stage's folder (`WORKDIR/STAGE/`):

    frozen/                                  the params the stage does not train, written once
    checkpoints/<step>/{state,data,config}   periodic checkpoints (orbax CheckpointManager)
    params/                                  the stage's final params (what later stages load)
    DONE                                     written last: the stage is finished

A stage's frozen params (the earlier stages', `train.init_from`'s or the seed's) never change while
it trains, so they are written once, when it starts, and each checkpoint holds only what the stage
changes: the params it trains (and their EMA), the optimiser, discriminator and codebook-usage
states. In `configs/imagenet256.py` the `continuous` stage trains 1 % of the params' elements and
`bridge` 11 %: their checkpoints are that much smaller than ones holding every param.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import flax
import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from hybridflow_jax.errors import UserError


class StageCheckpoints:
  """Periodic checkpoints of one stage. Every process calls every method (orbax coordinates).

  directory: the checkpoints (`checkpoints/`); frozen: where the frozen params go (`frozen/`);
  trained: a pytree of bools like the params (`stages.trainable`), True for those the stage trains.
  """

  def __init__(self, directory: pathlib.Path, frozen: pathlib.Path, keep: int, every: int,
               trained):
    self.directory = pathlib.Path(directory).absolute()
    self.frozen = pathlib.Path(frozen).absolute()
    self._trained = _flat(trained)
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

  def _keep(self, tree, trained: bool):
    """`tree` (params-like) with None in place of the params the stage trains (trained=False) or
    of those it keeps frozen (trained=True)."""
    return flax.traverse_util.unflatten_dict(
        {k: v if self._trained[k] == trained else None for k, v in _flat(tree).items()}, sep="/")

  def _changing(self, state):
    """`state` (a TrainState or its abstract shapes) without the frozen params and their EMA."""
    return state.replace(params=self._keep(state.params, True),
                         ema_params=self._keep(state.ema_params, True) if state.ema_params else {})

  def start(self, params) -> None:
    """Writes the frozen params of a stage that starts at step 0 (synchronously, before its first
    checkpoint), replacing any left by a start that never reached one."""
    clear(self.frozen)
    save_params(self.frozen, self._keep(params, False))

  def save(self, step: int, state, data_iter, config: ml_collections.ConfigDict,
           force: bool = False) -> bool:
    """Saves if `step` is due (or `force`) and not saved yet; the write finishes in the
    background. Returns whether a save started."""
    if step == self.manager.latest_step():
      return False
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(self._changing(state)),
        data=grain.checkpoint.CheckpointSave(data_iter),
        config=ocp.args.JsonSave(config.to_dict()))
    return self.manager.save(step, args=args, force=force)

  def restore(self, step: int, abstract_state, data_iter=None):
    """Restores the state onto the shardings of `abstract_state` (ShapeDtypeStructs with
    .sharding), its frozen params from `frozen/`, and, when given, the data iterator. Returns the
    state."""
    items = {"data": grain.checkpoint.CheckpointRestore(data_iter)} if data_iter is not None else {}
    if not self.frozen.exists():
      if self._holds_only_trained(step):
        raise UserError(f"{self.frozen} is missing: the checkpoints beside it hold only the params "
                        "the stage trains; put it back, or remove "
                        f"{self.directory.parent} to train the stage again")
      # Checkpoints written before the frozen params were kept apart hold every param: the
      # frozen ones are written apart now, for the checkpoints this run will write.
      items["state"] = ocp.args.StandardRestore(abstract_state)
      state = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
      self.start(state.params)
      return state
    items["state"] = ocp.args.StandardRestore(self._changing(abstract_state))
    state = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
    frozen = _flat(load_params(self.frozen, self._keep(abstract_state.params, False)))

    def fill(tree, copy: bool):
      out = {}
      for k, v in _flat(tree).items():
        if v is None:
          v = jax.device_put(frozen[k], frozen[k].sharding, may_alias=False) if copy else frozen[k]
        out[k] = v
      return flax.traverse_util.unflatten_dict(out, sep="/")
    # The EMA of a frozen param is the param itself (steps.make_train_step), as copies: the update
    # step donates its state, each buffer once.
    return state.replace(params=fill(state.params, False),
                         ema_params=fill(state.ema_params, True) if state.ema_params else {})

  def _holds_only_trained(self, step: int) -> bool:
    """Whether checkpoint `step` left the frozen params out (read from orbax's tree metadata)."""
    meta = self.directory / str(step) / "state" / "_METADATA"
    if not meta.exists():
      return False
    tree = json.loads(meta.read_text()).get("tree_metadata", {})
    return any(k.startswith("('params',") and v.get("value_metadata", {}).get("value_type") == "None"
               for k, v in tree.items())

  def has_data_state(self, step: int) -> bool:
    """Whether this process's iterator state is in the checkpoint (a run restored on a different
    number of processes has none and starts its input afresh)."""
    index, count = jax.process_index(), jax.process_count()
    return (self.directory / str(step) / "data" / f"process_{index}-of-{count}.json").exists()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def clear(directory: pathlib.Path) -> None:
  """Removes `directory` if process 0 sees it, then waits for every process. Process 0's view
  decides for all at once: a process that looked after process 0 had removed it would otherwise
  skip the barrier."""
  if bool(multihost_utils.broadcast_one_to_all(np.asarray(pathlib.Path(directory).exists()))):
    if jax.process_index() == 0:
      shutil.rmtree(directory)
    multihost_utils.sync_global_devices(f"hybridflow {pathlib.Path(directory).absolute()} cleared")


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


def _flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def write_json(path: pathlib.Path, obj) -> None:
  """Atomic JSON write from process 0 only (temp file + rename)."""
  if jax.process_index() != 0:
    return
  path = pathlib.Path(path)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, default=float))
  tmp.replace(path)
