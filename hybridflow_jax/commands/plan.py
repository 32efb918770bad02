"""`hybridflow plan --config C --devices N [--hbm-gib G] [--fsdp F] [--stage S] [--json PATH]
[--config.FIELD=VALUE ...]`.

Compiles every stage's update step ahead of time for N host devices (`hybridflow_jax/plan.py`) and
prints its figures; exit status 1 if a stage does not fit in G GiB. The CLI has set the device count
before this module (and jax) was imported.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys

from hybridflow_jax import config_io, plan, stages
from hybridflow_jax.errors import UserError, reported_as_user_errors
from hybridflow_jax.train import sharding as shard_lib


def run(ns) -> int:
  if ns.hbm_gib is not None and not ns.hbm_gib > 0:
    raise UserError("--hbm-gib must be positive")
  cfg = config_io.load_config(ns.config, ns.overrides)
  if ns.fsdp is not None:
    if ns.fsdp != -1 and (ns.fsdp < 1 or ns.devices % ns.fsdp):
      raise UserError(f"--fsdp {ns.fsdp} must be -1 or divide --devices {ns.devices}")
    cfg.mesh = (("data", -1 if ns.fsdp != -1 else 1), ("fsdp", ns.fsdp))
  if ns.batch_size is not None:
    cfg.train.batch_size = ns.batch_size
  config_io.validated(cfg)
  names = ns.stage or stages.stage_list(cfg)
  bad = [s for s in names if s not in stages.NAMES]
  if bad:
    raise UserError(f"unknown stage(s) {', '.join(bad)}; choose from {', '.join(stages.NAMES)}")
  with reported_as_user_errors(ValueError):
    mesh = shard_lib.make_mesh(cfg.mesh)
  data_parallel = math.prod(mesh.shape[a] for a in shard_lib.batch_axes(mesh))
  if cfg.train.batch_size % data_parallel:
    raise UserError(f"batch size {cfg.train.batch_size} does not divide by the data-parallel size "
                    f"{data_parallel} (--batch-size to change it)")
  plans = []
  for stage in names:
    print(f"compiling the {stage} step for {ns.devices} devices ...", file=sys.stderr, flush=True)
    plans.append(plan.plan_stage(cfg, stage, mesh))
  print(plan.format_plans(plans, ns.hbm_gib))
  if ns.json:
    with open(ns.json, "w") as f:
      json.dump([{**dataclasses.asdict(p), "memory_per_device": p.memory_per_device}
                 for p in plans], f, indent=1)
  fits = ns.hbm_gib is None or all(p.memory_per_device <= ns.hbm_gib * 2**30 for p in plans)
  return 0 if fits else 1
