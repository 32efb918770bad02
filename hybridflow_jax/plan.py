"""`hybridflow plan`: will a config fit the chips? Answered before paying for them.

    hybridflow plan --config configs/imagenet256.py --devices 64 --hbm-gib 16 [--fsdp -1] [--stage vq]

Without training and without the chips: builds a mesh of N CPU devices (XLA's host-platform device
count, set before jax starts), lowers and compiles the real update step of each stage (the same
`jax.jit` with the same shardings as `hybridflow train`) ahead of time on abstract inputs, and reads
XLA's own analyses of the compiled program:
  - parameters (model; the stage's trainable share) and the state's bytes per device as sharded;
  - FLOPs per step (XLA cost analysis of the partitioned program: per device, and x N in total);
  - memory per device (XLA memory analysis: arguments, outputs, temporaries, generated code; the
    donated state is counted once);
  - whether that fits in G GiB of accelerator memory.
The numbers are XLA:CPU's for the partitioned program: parameter, optimiser and argument bytes are
what a TPU or GPU holds too; temporaries (activations) depend on the backend's fusion and
rematerialisation and are an estimate of the right order, not a promise.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np

from hybridflow_jax import stages
from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.train import steps as steps_lib


@dataclasses.dataclass
class StagePlan:
  stage: str
  devices: int
  mesh: dict[str, int]
  batch: int
  crop: int
  params: int
  trainable: int
  state_bytes_per_device: float
  flops_per_device: float
  argument_bytes: float
  output_bytes: float
  temp_bytes: float
  code_bytes: float
  alias_bytes: float
  compile_seconds: float

  @property
  def memory_per_device(self) -> float:
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes \
        + self.code_bytes


def plan_stage(cfg, stage: str, mesh) -> StagePlan:
  """Compiles `stage`'s update step for `mesh` ahead of time and reads XLA's analyses."""
  model = hf.build_model(cfg)
  abstract_params = hf.param_shapes(model)
  compiled = steps_lib.stage_step(model, cfg, stage, mesh, abstract_params)
  abstract_state, crop = compiled.abstract_state, compiled.crop
  images = jax.ShapeDtypeStruct((cfg.train.batch_size, crop, crop, 3), jax.numpy.uint8)
  t = time.perf_counter()
  compiled = compiled.step.lower(abstract_state, images).compile()
  seconds = time.perf_counter() - t

  def per_device_bytes(leaf) -> float:
    return math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize

  state_bytes = sum(jax.tree.leaves(jax.tree.map(per_device_bytes, abstract_state)))
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  mem = compiled.memory_analysis()
  count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
  flags = jax.tree.leaves(stages.trainable(abstract_params, stage))
  trainable = sum(math.prod(x.shape) for x, t in zip(jax.tree.leaves(abstract_params), flags) if t)
  return StagePlan(
      stage=stage, devices=mesh.size, mesh=dict(mesh.shape), batch=int(cfg.train.batch_size),
      crop=crop, params=count(abstract_params), trainable=trainable,
      state_bytes_per_device=float(state_bytes), flops_per_device=float(cost.get("flops", math.nan)),
      argument_bytes=float(getattr(mem, "argument_size_in_bytes", math.nan)),
      output_bytes=float(getattr(mem, "output_size_in_bytes", math.nan)),
      temp_bytes=float(getattr(mem, "temp_size_in_bytes", math.nan)),
      code_bytes=float(getattr(mem, "generated_code_size_in_bytes", 0.0)),
      alias_bytes=float(getattr(mem, "alias_size_in_bytes", 0.0)),
      compile_seconds=seconds)


def _gib(x: float) -> str:
  return f"{x / 2**30:.3f}"


def format_plans(plans: list[StagePlan], hbm_gib: float | None) -> str:
  head = (f"{'stage':<12s}{'mesh':<22s}{'batch':>7s}{'crop':>6s}{'params':>14s}"
          f"{'trainable':>14s}{'state GiB/dev':>15s}{'TFLOP/step/dev':>16s}{'TFLOP/step':>12s}"
          f"{'mem GiB/dev':>13s}{'temp GiB':>10s}")
  if hbm_gib is not None:
    head += f"{'fits ' + format(hbm_gib, 'g') + ' GiB':>16s}"
  lines = [head, "-" * len(head)]
  for p in plans:
    mesh = ",".join(f"{k}={v}" for k, v in p.mesh.items())
    line = (f"{p.stage:<12s}{mesh:<22s}{p.batch:>7d}{p.crop:>6d}{p.params:>14,d}"
            f"{p.trainable:>14,d}{_gib(p.state_bytes_per_device):>15s}{p.flops_per_device / 1e12:>16.3f}"
            f"{p.flops_per_device * p.devices / 1e12:>12.2f}{_gib(p.memory_per_device):>13s}"
            f"{_gib(p.temp_bytes):>10s}")
    if hbm_gib is not None:
      line += f"{'yes' if p.memory_per_device <= hbm_gib * 2**30 else 'NO':>16s}"
    lines.append(line)
  lines.append("state: params + optimiser (+ discriminator) bytes held per device as sharded; "
               "mem: XLA memory analysis of the compiled step (arguments + outputs - donated + "
               "temporaries + code), on XLA:CPU")
  return "\n".join(lines)
