"""`hybridflow train --config C --workdir W [--config.FIELD=VALUE ...]`: a stage, or the pipeline.

Resumes by itself; on SIGTERM (preemption), Ctrl-C or a hang-up checkpoints and exits 0. With
several processes (`--coordinator_address`, or a cluster JAX detects) each process runs this same
command.
"""

from __future__ import annotations

import faulthandler
import os

from absl import flags, logging

from hybridflow_jax import cli, config_io
from hybridflow_jax.errors import UserError, reported_as_user_errors


def run(ns) -> None:
  if not ns.workdir:
    raise UserError("--workdir is required")
  # The config is loaded and checked before jax is imported: a bad one is refused at once.
  config = config_io.load_config(ns.config, ns.overrides)
  from hybridflow_jax.train import trainer
  # What absl.app used to do for us: grain's worker processes read absl flags (they must count as
  # parsed), log lines go through absl's handler, and jax's backend probing stays off the screen
  # unless --verbosity asks for it; a native crash prints the Python stack.
  flags.FLAGS.mark_as_parsed()
  logging.use_absl_handler()
  logging.set_verbosity(ns.verbosity)
  faulthandler.enable()
  _init_distributed(ns)
  try:
    with reported_as_user_errors(ValueError):
      trainer.train(config, ns.workdir)
  except trainer.Preempted:
    pass  # checkpointed: exit 0, so a scheduler requeues the job


def _init_distributed(ns) -> None:
  """Joins a multi-process job when there is one; a single process needs nothing."""
  import jax
  if ns.coordinator_address:
    if ns.num_processes is None or ns.process_id is None:
      raise UserError("--coordinator_address needs --num_processes and --process_id")
    if jax.config.jax_platforms in (None, "", "cpu") and "cpu" in os.environ.get("JAX_PLATFORMS", "cpu"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(ns.coordinator_address, ns.num_processes, ns.process_id)
  elif cli.joins_a_job(None):
    jax.distributed.initialize()  # the cluster (Cloud TPU, SLURM) is detected by JAX
