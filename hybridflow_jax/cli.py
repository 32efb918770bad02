"""The `hybridflow` command: `hybridflow COMMAND [flags]`; `hybridflow COMMAND --help` for its flags.

One parser tree for every command. A command's work lives in `hybridflow_jax/commands/<command>.py`
(`run(ns)` -> exit status), imported only once the command line has parsed, so `--help` and a bad
command line never wait for jax. Every error a user can cause is one line on stderr,
`hybridflow COMMAND: error: ...`, and exit status 2 (`errors.py`); `plan` exits 1 when a stage does
not fit.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from hybridflow_jax import pretrained, schedules
from hybridflow_jax.errors import UserError, check_local_path, fail

MAX_DEVICES = 4096
# Commands that compile XLA programs. Their compiled programs stay on disk between runs (jax's
# persistent compilation cache), so a second `hybridflow compress` or a resumed `train` does not
# compile them again.
CACHED_COMMANDS = ("train", "eval", "ablate", "export", "compress", "decompress")
COMPILE_CACHE_ENV = "HYBRIDFLOW_COMPILE_CACHE"
# Least recently used programs are dropped past this size.
COMPILE_CACHE_MAX_BYTES = 2 * 2**30
# Commands whose unknown `--config.FIELD=VALUE` words override fields of the loaded config.
CONFIG_COMMANDS = ("train", "info", "plan")


class _Parser(argparse.ArgumentParser):
  """argparse, with a bad command line reported as one line (no usage block)."""

  def error(self, message):
    fail(self.prog, message)


def _local_path(value: str) -> str:
  """argparse type of the paths hybridflow writes or reads as runs and results: no URLs."""
  try:
    check_local_path(value)
  except UserError as e:
    raise argparse.ArgumentTypeError(str(e)) from None
  return value


def _add_config_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
  """The flags of `train` and `info` (which accepts the training ones, as it always has)."""
  p.add_argument("--config", required=required, help="a config file (configs/*.py)")
  p.add_argument("--workdir", default=None, type=_local_path,
                 help="train: the run directory (checkpoints, metrics, results)")
  p.add_argument("--coordinator_address", "--coordinator-address", default=None,
                 help="train: host:port of process 0, to run as one of several processes "
                      "(jax.distributed). On TPU pods and SLURM leave it unset: the cluster is detected")
  p.add_argument("--num_processes", "--num-processes", type=int, default=None,
                 help="train: number of processes (with --coordinator_address)")
  p.add_argument("--process_id", "--process-id", type=int, default=None,
                 help="train: this process's index (with --coordinator_address)")
  p.add_argument("--verbosity", "-v", type=int, default=-1,
                 help="train: absl logging verbosity, -1 warnings (default), 0 info, 1 debug")


def _add_codec_file_flags(p: argparse.ArgumentParser, inputs: str, outputs: str) -> None:
  p.add_argument("input", help=f"{inputs}, or a folder of them (recursive: each file under it is "
                 "coded, the model loaded once)")
  p.add_argument("output", type=_local_path,
                 help=f"{outputs}; with a folder as input, the folder to write them to, at the "
                      "same relative paths")
  p.add_argument("--model", default=None, metavar="NAME|PATH",
                 help="a bundle directory written by hybridflow export, or the name of a model "
                      f"shipped with hybridflow-jax (default: {pretrained.DEFAULT}, the shipped "
                      "reference model)")
  p.add_argument("--max-pixels", "--max_pixels", dest="max_pixels", type=int, default=None,
                 help="refuse larger images (default 2**26, 8192x8192)")
  p.add_argument("--force", action="store_true", help="replace an existing output")


def _add_data_flags(p: argparse.ArgumentParser, out_help: str, force_help: str) -> None:
  """--data NAME=SOURCE (repeatable), --out, --limit, --prior-images and --force, as `eval` and
  `ablate` take them."""
  p.add_argument("--data", action="append", required=True, metavar="NAME=SOURCE",
                 help="a data set: a folder of images, tfds:BUILDER/SPLIT[@DIR] or demo:SPLIT "
                      "(repeat for several)")
  p.add_argument("--out", required=True, type=_local_path, help=out_help)
  p.add_argument("--limit", type=int, default=None, help="at most this many images per data set")
  p.add_argument("--prior-images", "--prior_images", dest="prior_images", type=int, default=1000,
                 help="with --workdir: images for the codeword prior (default 1000)")
  p.add_argument("--force", action="store_true", help=force_help)


def build_parser() -> argparse.ArgumentParser:
  """The whole command line: one subparser per command."""
  parser = _Parser(prog="hybridflow", description="HybridFlow: a learned image codec for extreme "
                   "low bitrates, trained and served with JAX/Flax.",
                   epilog="hybridflow COMMAND --help lists the flags of COMMAND.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

  def command(name: str, summary: str, **kwargs) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=summary, description=summary, **kwargs)

  overrides = ("--config.FIELD=VALUE overrides any field of the config (e.g. "
               "--config.train.steps.vq=100); an unknown field is an error.")

  p = command("train", "train a stage, or every stage in order (config.stage=pipeline); resumes "
              "by itself", epilog=overrides)
  _add_config_flags(p)

  p = command("info", "print a parameter overview of a config's model (allocates nothing), "
              "of a model bundle with what its manifest records, or a HybridFlow file's header",
              epilog=overrides)
  _add_config_flags(p, required=False)
  p.add_argument("--model", default=None, metavar="NAME|PATH",
                 help="instead of --config: a bundle directory written by hybridflow export, or the "
                      "name of a shipped model (e.g. small); with --file, the model to check the "
                      "file against")
  p.add_argument("--file", default=None, metavar="X.hfc",
                 help="a HybridFlow file: its size, schedule, greyscale flag and the model that "
                      "made it (nothing is decoded)")

  p = command("export", "write the inference bundle of a finished run (--workdir RUN --out "
              "MODEL_DIR)")
  p.add_argument("--workdir", required=True, type=_local_path, help="a finished training run")
  p.add_argument("--out", required=True, type=_local_path, help="the bundle directory to write")
  p.add_argument("--data", default=None,
                 help="data spec to measure codeword counts on (default: the run's training data)")
  p.add_argument("--prior-images", "--prior_images", dest="prior_images", type=int, default=1000,
                 help="at most this many images for the codeword counts (default 1000)")
  p.add_argument("--force", action="store_true", help="replace an existing bundle")

  p = command("compress", "compress an image into a HybridFlow file (IN OUT [--model NAME|PATH]); "
              "or a folder of images into a folder")
  _add_codec_file_flags(p, "an image file (PNG, JPEG, WebP, TIFF, BMP)",
                        "the HybridFlow file to write (.hfc)")
  p.add_argument("--schedule", default=None,
                 help=f"{', '.join(schedules.ALL)} (default {schedules.DEFAULT})")
  p.add_argument("--target-bpp", "--target_bpp", dest="target_bpp", type=float, default=None,
                 help="densest schedule (or, with --schedule dynamic, dynamic budget) that fits")
  p.add_argument("--allocation", choices=schedules.DYNAMIC_ALLOCATIONS, default="rd",
                 help="how --schedule dynamic picks each region's schedule: rd (decode every "
                      "candidate, minimise error + lambda x tokens; default) or score (the model's "
                      "complexity score, no decoding: faster)")

  p = command("decompress", "decompress a HybridFlow file into an image (IN OUT [--model "
              "NAME|PATH]); or a folder of them into a folder of PNG images")
  _add_codec_file_flags(p, "a HybridFlow file (.hfc)",
                        "the lossless image to write (.png, .bmp, .ppm, .tif)")

  p = command("ablate", "the paper's claims on held-out photos with real files: hybrid per "
              "schedule, codebook-only, y_hat zeroed, continuous-only, AVIF (--workdir RUN --data "
              "NAME=SOURCE --out DIR)")
  p.add_argument("--workdir", required=True, type=_local_path, help="a finished training run")
  p.add_argument("--baseline-workdir", "--baseline_workdir", dest="baseline_workdir", default=None,
                 type=_local_path,
                 help="the run whose finished `baseline` stage is the continuous-only codec, "
                      "built as that run's config.json records it (default: --workdir)")
  _add_data_flags(p, "directory for ablation.json/.md/.png, panel.png and report.html",
                  "replace earlier ablation results in --out")
  p.add_argument("--schedules", default=",".join(("1_4", "1_9", "1_16", "dynamic")),
                 help="hybrid operating points, comma-separated; must include 1_4 "
                      "(default 1_4,1_9,1_16,dynamic)")
  p.add_argument("--no-avif", dest="avif", action="store_false", help="leave out the AVIF row")
  p.add_argument("--report-images", "--report_images", dest="report_images", type=int, default=None,
                 help="images whose crops report.html shows, every row side by side (default: "
                      "every image; 0: no report)")

  p = command("eval", "evaluate a model on image sets: real files, PSNR, MS-SSIM, LPIPS, "
              "baselines, plots (--model NAME|PATH --data NAME=SOURCE --out DIR)")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--model", metavar="NAME|PATH",
                   help="a bundle directory written by hybridflow export, or the name of a model "
                        f"shipped with hybridflow-jax (e.g. {pretrained.DEFAULT})")
  src.add_argument("--workdir", type=_local_path,
                   help="a finished training run (its bundle is built in memory)")
  _add_data_flags(p, "results directory (one subdirectory per data set)",
                  "replace existing results of a data set")
  points = ",".join(schedules.OPERATING_POINTS)
  p.add_argument("--schedules", default=points,
                 help=f"operating points, comma-separated (default {points})")
  p.add_argument("--baselines", default=None,
                 help="comma-separated subset of jpeg,webp,avif, or 'none' (default: all available)")
  p.add_argument("--references", default=None, type=_local_path,
                 help="folder of published curves, <dataset>/*.json (default: the curves "
                      "installed with hybridflow-jax, for kodak and clic2020)")
  p.add_argument("--report-images", "--report_images", dest="report_images", type=int, default=3,
                 help="images whose crops report.html shows, every codec side by side "
                      "(default 3; 0: no report)")
  p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

  p = command("plan", "compile a config's update steps ahead of time for N devices: params, "
              "FLOPs, memory (--config C --devices N [--hbm-gib G] [--config.FIELD=VALUE ...])")
  p.add_argument("--config", required=True, help="a config file (configs/*.py)")
  p.add_argument("--devices", type=int, required=True, help="number of devices to plan for")
  p.add_argument("--hbm-gib", "--hbm_gib", dest="hbm_gib", type=float, default=None,
                 help="accelerator memory per device, GiB: say whether each stage fits (exit "
                      "status 1 if one does not)")
  p.add_argument("--fsdp", type=int, default=None,
                 help="size of the fsdp mesh axis (-1 = every device; default: the config's mesh)")
  p.add_argument("--stage", action="append", default=None,
                 help="stage(s) to plan (repeatable; default: every stage the config trains)")
  p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
                 help="global batch (default: the config's)")
  p.add_argument("--json", default=None, type=_local_path,
                 help="also write the figures to this JSON file")

  p = command("prepare-data", "image folders, imagenet2012 or open_images_v4 -> TFDS "
              "array_record for grain")
  p.add_argument("kind", choices=("folder", "imagenet2012", "open_images_v4"),
                 help="folder (any images), or one of TFDS's own builders (these need TensorFlow)")
  p.add_argument("--data-dir", "--data_dir", dest="data_dir", required=True,
                 help="TFDS data directory to write into")
  p.add_argument("--name", default=None, help="folder: the data set's TFDS name (snake_case)")
  p.add_argument("--split", action="append", default=[], metavar="SPLIT=DIR",
                 help="folder: a split and its folder (repeat; e.g. train=/data/train)")
  p.add_argument("--manual-dir", "--manual_dir", dest="manual_dir", default=None,
                 help="imagenet2012: the folder with the downloaded ILSVRC2012 archives")
  return parser


def _set_host_devices(n: int) -> None:
  """Asks XLA for n host (CPU) devices: `plan` compiles for them. XLA reads the count once, when jax
  starts, so this runs before the command's modules import jax."""
  if not 1 <= n <= MAX_DEVICES:
    raise UserError(f"--devices must be in [1, {MAX_DEVICES}]")
  jax = sys.modules.get("jax")  # already started (hybridflow run from a Python program)?
  if jax is not None:
    if jax.device_count() == n:
      return
    raise UserError(f"plan needs {n} devices, but jax has already started with {jax.device_count()}")
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n}"])
  os.environ["JAX_PLATFORMS"] = "cpu"


def compile_cache_dir(environ: dict[str, str]) -> str | None:
  """Where commands keep compiled programs: $HYBRIDFLOW_COMPILE_CACHE ("off" or "0": nowhere), else
  $XDG_CACHE_HOME/hybridflow/jax (XDG_CACHE_HOME defaults to ~/.cache). None also when
  JAX_COMPILATION_CACHE_DIR, jax's own setting, is set: that one then applies as it is."""
  if environ.get("JAX_COMPILATION_CACHE_DIR"):
    return None
  path = environ.get(COMPILE_CACHE_ENV)
  if path is not None:
    return None if path.strip().lower() in ("", "off", "0") else path
  home = environ.get("HOME") or os.path.expanduser("~")
  base = environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
  return os.path.join(base, "hybridflow", "jax")


def joins_a_job(coordinator_address: str | None, environ=os.environ) -> bool:
  """Whether `train` runs as one of several processes: given a coordinator, or in a cluster that
  jax.distributed detects (SLURM with several tasks, a Cloud TPU pod; HYBRIDFLOW_DISTRIBUTED=auto
  for any other that jax knows)."""
  return bool(coordinator_address) or (
      environ.get("HYBRIDFLOW_DISTRIBUTED") == "auto"
      or int(environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in environ)


def use_compile_cache(environ=os.environ) -> None:
  """Points jax's persistent compilation cache at `compile_cache_dir` (through the environment jax
  reads when it starts, which the processes a command starts inherit)."""
  path = compile_cache_dir(environ)
  if path is None:
    return
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    if COMPILE_CACHE_ENV in environ:
      raise UserError(f"{COMPILE_CACHE_ENV}={path}: cannot create it ({e.strerror}); "
                      "set it to a writable folder, or to off") from None
    return  # no writable home: compile every time, as jax does by default
  environ["JAX_COMPILATION_CACHE_DIR"] = path
  environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(COMPILE_CACHE_MAX_BYTES))


def main(args: Sequence[str] | None = None) -> None:
  """Runs `hybridflow ARGS` (default: this process's command line) and exits with its status."""
  args = sys.argv[1:] if args is None else list(args)
  parser = build_parser()
  if not args:
    parser.print_help()
    sys.exit(2)
  if args[0] == "help":  # `hybridflow help [COMMAND]`
    args = [*args[1:], "--help"]
  ns, extra = parser.parse_known_args(args)
  prog = f"hybridflow {ns.command}"
  if extra and ns.command not in CONFIG_COMMANDS:
    fail(prog, f"unrecognized arguments: {' '.join(extra)}")
  ns.overrides = extra
  try:
    if ns.command == "plan":
      _set_host_devices(ns.devices)
    # Not when a Python program runs jax already (its settings are its own), nor for a process of
    # a multi-process job: jax writes the cache from process 0 only and, on CPU at least, the
    # others' programs have other keys, so they compile while process 0 reads. On our 2-core
    # machine that put a 2-process tiny run's processes 27 s apart, near gloo's 30 s rendezvous
    # deadline (two tries of three failed there). Such jobs use JAX_COMPILATION_CACHE_DIR if set.
    if (ns.command in CACHED_COMMANDS and "jax" not in sys.modules
        and not (ns.command == "train" and joins_a_job(ns.coordinator_address))):
      use_compile_cache()
    command = importlib.import_module(f"hybridflow_jax.commands.{ns.command.replace('-', '_')}")
    status = command.run(ns)
  except UserError as e:
    fail(prog, str(e))
  sys.exit(status)


if __name__ == "__main__":
  main()
