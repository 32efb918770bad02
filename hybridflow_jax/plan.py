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

import argparse
import dataclasses
import math
import os
import sys

EXIT_USER_ERROR = 2
MAX_DEVICES = 4096


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


def _set_device_count(n: int) -> None:
  """Asks XLA for n host devices; must happen before jax initialises its backends."""
  if "jax" in sys.modules:
    import jax
    if jax.device_count() == n:
      return
    raise RuntimeError("plan needs to set the device count before jax starts")
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n}"])
  os.environ["JAX_PLATFORMS"] = "cpu"


def plan_stage(cfg, stage: str, mesh) -> StagePlan:
  """Compiles `stage`'s update step for `mesh` ahead of time and reads XLA's analyses."""
  import time

  import jax
  import numpy as np

  from hybridflow_jax.config import crop_size
  from hybridflow_jax.models import hybridflow as hf
  from hybridflow_jax.train import sharding as shard_lib
  from hybridflow_jax.train import steps as steps_lib

  model = hf.build_model(cfg)
  abstract_params = hf.param_shapes(model)
  total = int(cfg.train.steps[stage]) or 1
  tx = steps_lib.make_optimizer(cfg, abstract_params, stage, total)
  disc_tx = steps_lib.make_disc_optimizer(cfg)
  make_state = lambda p: steps_lib.init_state(cfg, p, stage, tx, disc_tx, jax.random.PRNGKey(0))
  abstract_state = jax.eval_shape(make_state, abstract_params)
  shardings = shard_lib.tree_shardings(abstract_state, mesh, cfg.sharding_rules,
                                       cfg.sharding_min_size)
  crop = crop_size(cfg, stage)
  images = jax.ShapeDtypeStruct((cfg.train.batch_size, crop, crop, 3), jax.numpy.float32)
  step = jax.jit(steps_lib.make_train_step(model, cfg, stage, tx, disc_tx),
                 in_shardings=(shardings, shard_lib.batch_sharding(mesh)),
                 out_shardings=(shardings, shard_lib.replicated(mesh)), donate_argnums=(0,))
  t = time.perf_counter()
  compiled = step.lower(abstract_state, images).compile()
  seconds = time.perf_counter() - t

  def per_device_bytes(leaf, sharding) -> float:
    shard = sharding.shard_shape(leaf.shape)
    return math.prod(shard) * np.dtype(leaf.dtype).itemsize

  state_bytes = sum(jax.tree.leaves(jax.tree.map(per_device_bytes, abstract_state, shardings)))
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  mem = compiled.memory_analysis()
  count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
  flags = jax.tree.leaves(hf.trainable(abstract_params, stage))
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


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="hybridflow plan")
  p.add_argument("--config", required=True, help="a config file (configs/*.py)")
  p.add_argument("--devices", type=int, required=True, help="number of devices to plan for")
  p.add_argument("--hbm-gib", "--hbm_gib", dest="hbm_gib", type=float, default=None,
                 help="accelerator memory per device, GiB: say whether each stage fits")
  p.add_argument("--fsdp", type=int, default=None,
                 help="size of the fsdp mesh axis (-1 = every device; default: the config's mesh)")
  p.add_argument("--stage", action="append", default=None,
                 help="stage(s) to plan (repeatable; default: every stage the config trains)")
  p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
                 help="global batch (default: the config's)")
  p.add_argument("--json", default=None, help="also write the figures to this JSON file")
  return p


def main(args: list[str]) -> int:
  parser = _parser()
  parser.error = _fail
  ns = parser.parse_args(args)
  if not 1 <= ns.devices <= MAX_DEVICES:
    _fail(f"--devices must be in [1, {MAX_DEVICES}]")
  if ns.hbm_gib is not None and not ns.hbm_gib > 0:
    _fail("--hbm-gib must be positive")
  _set_device_count(ns.devices)
  from hybridflow_jax import config_io
  from hybridflow_jax.config import STAGES, validate
  try:
    cfg = config_io.load_config(ns.config)
  except (OSError, ImportError, SyntaxError, AttributeError) as e:
    _fail(f"cannot load --config {ns.config}: {e}")
  if ns.fsdp is not None:
    if ns.fsdp != -1 and (ns.fsdp < 1 or ns.devices % ns.fsdp):
      _fail(f"--fsdp {ns.fsdp} must be -1 or divide --devices {ns.devices}")
    cfg.mesh = (("data", -1 if ns.fsdp != -1 else 1), ("fsdp", ns.fsdp))
  if ns.batch_size is not None:
    cfg.train.batch_size = ns.batch_size
  try:
    validate(cfg)
  except ValueError as e:
    _fail(str(e))
  from hybridflow_jax.train.trainer import stage_list
  stages = ns.stage or stage_list(cfg)
  bad = [s for s in stages if s not in STAGES]
  if bad:
    _fail(f"unknown stage(s) {', '.join(bad)}; choose from {', '.join(STAGES)}")
  from hybridflow_jax.train import sharding as shard_lib
  try:
    mesh = shard_lib.make_mesh(cfg.mesh)
  except ValueError as e:
    _fail(str(e))
  data_parallel = math.prod(mesh.shape[a] for a in shard_lib.batch_axes(mesh))
  if cfg.train.batch_size % data_parallel:
    _fail(f"batch size {cfg.train.batch_size} does not divide by the data-parallel size "
          f"{data_parallel} (--batch-size to change it)")
  plans = []
  for stage in stages:
    print(f"compiling the {stage} step for {ns.devices} devices ...", file=sys.stderr, flush=True)
    plans.append(plan_stage(cfg, stage, mesh))
  print(format_plans(plans, ns.hbm_gib))
  if ns.json:
    import json
    with open(ns.json, "w") as f:
      json.dump([{**dataclasses.asdict(p), "memory_per_device": p.memory_per_device}
                 for p in plans], f, indent=1)
  if ns.hbm_gib is not None and any(p.memory_per_device > ns.hbm_gib * 2**30 for p in plans):
    return 1
  return 0


def _fail(message: str):
  print(f"hybridflow plan: error: {message}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)
