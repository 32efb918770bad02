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

COMMANDS = {
    "info": "print a parameter overview of a config's model (allocates nothing)",
    "demo": "train every stage briefly on the bundled photos and report held-out results",
}


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


def cmd_info(_):
  from hybridflow_jax import info
  print(info.overview(_config()))


def cmd_demo(_):
  from hybridflow_jax import demo
  if not FLAGS.workdir:
    raise UserError("--workdir is required")
  demo.run(_config(), FLAGS.workdir)


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
