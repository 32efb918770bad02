"""The `hybridflow` command: `hybridflow COMMAND [--flags]`.

Commands take absl flags; `--config PATH` loads a `get_config()` file and `--config.a.b=value`
overrides any field. Errors a user can cause print one line and exit non-zero.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, results.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, to run as one of several processes (jax.distributed). "
                    "On TPU pods and SLURM leave it unset: the cluster is detected.")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")

COMMANDS = {
    "train": "train a stage, or every stage in order (config.stage=pipeline); resumes by itself",
    "info": "print a parameter overview of a config's model (allocates nothing)",
    "export": "write the inference bundle of a finished run (--workdir RUN --out MODEL_DIR)",
    "compress": "compress an image into a HybridFlow file (IN OUT --model MODEL_DIR)",
    "decompress": "decompress a HybridFlow file into an image (IN OUT --model MODEL_DIR)",
    "eval": "evaluate a model on image sets: real files, PSNR, MS-SSIM, LPIPS, baselines, plots "
            "(--model MODEL_DIR --data NAME=SOURCE --out DIR)",
    "plan": "compile a config's update steps ahead of time for N devices: params, FLOPs, memory "
            "(--config C --devices N [--hbm-gib G])",
    "prepare-data": "image folders, imagenet2012 or open_images_v4 -> TFDS array_record for grain",
}
# Commands with their own argparse front end (hybridflow_jax/codec/cli.py): they must fail fast,
# before jax is imported, on bad input.
CODEC_COMMANDS = ("export", "compress", "decompress")


class UserError(Exception):
  """An error the user can fix; printed as one line, exit code 2."""


def _config():
  try:
    config = FLAGS.config
    if config is not None:
      config.stage  # noqa: B018  (a config that failed to load raises on first access)
  except (OSError, ImportError, SyntaxError) as e:
    # config_flags reports a load failure lazily, as a multi-line message; its last line says why.
    reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
    raise UserError(f"cannot load --config: {reason}") from None
  if config is None:
    raise UserError("--config is required (e.g. --config configs/tiny.py)")
  from hybridflow_jax.config import validate
  try:
    validate(config)
  except ValueError as e:
    raise UserError(str(e)) from None
  return config


def _init_distributed() -> None:
  """Joins a multi-process job when there is one; a single process needs nothing."""
  import os

  import jax
  if FLAGS.coordinator_address:
    if FLAGS.num_processes is None or FLAGS.process_id is None:
      raise UserError("--coordinator_address needs --num_processes and --process_id")
    if jax.config.jax_platforms in (None, "", "cpu") and "cpu" in os.environ.get("JAX_PLATFORMS", "cpu"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif (os.environ.get("HYBRIDFLOW_DISTRIBUTED") == "auto"
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ):
    jax.distributed.initialize()  # the cluster (Cloud TPU, SLURM) is detected by JAX


def cmd_train(_):
  if not FLAGS.workdir:
    raise UserError("--workdir is required")
  config = _config()
  _init_distributed()
  from hybridflow_jax.train import trainer
  try:
    trainer.train(config, FLAGS.workdir)
  except trainer.Preempted:
    sys.exit(0)
  except ValueError as e:
    raise UserError(str(e)) from None


def cmd_info(_):
  from hybridflow_jax import info
  print(info.overview(_config()))


def _usage() -> str:
  lines = ["usage: hybridflow COMMAND [--flags]", "", "commands:"]
  lines += [f"  {name:<10s} {help_}" for name, help_ in COMMANDS.items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(_usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  command = argv[1]
  if command in CODEC_COMMANDS:
    from hybridflow_jax.codec import cli as codec_cli
    sys.exit(codec_cli.main(command, argv[2:]))
  if command == "eval":
    from hybridflow_jax import evaluate
    sys.exit(evaluate.main(argv[2:]))
  if command == "prepare-data":
    from hybridflow_jax.data import prepare
    sys.exit(prepare.main(argv[2:]))
  if command == "plan":  # sets the device count before jax starts: its own front end
    from hybridflow_jax import plan
    sys.exit(plan.main(argv[2:]))
  if command not in COMMANDS:
    print(f"hybridflow: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    sys.exit(2)
  fn = globals()[f"cmd_{command.replace('-', '_')}"]

  def run(args):
    if not FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # keep jax's backend probing off the user's screen
    try:
      fn(args)
    except UserError as e:
      print(f"hybridflow {command}: error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(run, argv=[f"hybridflow {command}", *argv[2:]])


if __name__ == "__main__":
  main()
