"""Device mesh and sharding rules: one code path from one CPU to a pod.

The mesh comes from the config (`config.mesh`: axis names and sizes, -1 for the rest); params are
sharded by regex rules on their "/"-joined paths (`config.sharding_rules`); the batch is split
over every mesh axis that is not "model".
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(axes, devices=None) -> Mesh:
  """axes: ((name, size), ...) with at most one size -1 (= the remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  names = tuple(a for a, _ in axes)
  sizes = [int(s) for _, s in axes]
  known = math.prod(s for s in sizes if s != -1)
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {axes}")
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"config.mesh: {len(devices)} devices do not divide by {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"config.mesh: {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, "
                     f"have {len(devices)}")
  # Mesh built directly: its axes are Auto, so jit propagates shardings (jax.make_mesh would
  # default to Explicit axes).
  return Mesh(np.asarray(devices).reshape(sizes), names)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  return tuple(a for a in mesh.axis_names if a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Host arrays, the same in every process -> global arrays replicated over `mesh`."""
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda a: jax.make_array_from_callback(a.shape, sharding, lambda index: a[index]), tree)


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _fsdp_spec(shape, axis_size: int) -> P:
  """Shard the largest dimension that the fsdp axis divides; replicate if none does."""
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % axis_size == 0 and shape[dim] >= axis_size:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def spec_for(name: str, shape, rules, mesh: Mesh, min_size: int) -> P:
  """The PartitionSpec of one param, from the first rule whose regex is found in its path."""
  if math.prod(shape) < min_size:
    return P()
  for pattern, rule in rules:
    if re.search(pattern, name):
      if rule == "replicate":
        return P()
      if rule == "fsdp":
        size = mesh.shape.get("fsdp", 1)
        return P() if size == 1 else _fsdp_spec(shape, size)
      return P(*rule)
  return P()


def tree_shardings(tree: Any, mesh: Mesh, rules, min_size: int) -> Any:
  """NamedShardings for every leaf of a (shape) pytree, by path. Optimiser states work too: their
  moment trees repeat the param paths under a prefix, so rules written for params match them."""
  def one(path, leaf):
    shape = getattr(leaf, "shape", ())
    return NamedSharding(mesh, spec_for(_path_name(path), shape, rules, mesh, min_size))
  return jax.tree_util.tree_map_with_path(one, tree)
