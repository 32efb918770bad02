"""The `hybridflow` command line: one parser tree, one-line user errors, config overrides, and the
installed wheel."""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest
from absl import flags
from ml_collections import config_flags

from hybridflow_jax import cli, config_io
from hybridflow_jax.codec import bundle
from hybridflow_jax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
# `python -c JAX_PROBE ARGS` runs `hybridflow ARGS` and prints, last on stderr, whether jax was
# imported ("jax loaded" / "no jax").
JAX_PROBE = ("import sys; from hybridflow_jax import cli\n"
             "try:\n  cli.main(sys.argv[1:])\n"
             "finally:\n  print('jax loaded' if 'jax' in sys.modules else 'no jax', file=sys.stderr)")


def hybridflow(*args, **kw):
  return subprocess.run([sys.executable, "-m", "hybridflow_jax.cli", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, **kw)


def test_info_of_paper_scale_config_counts_without_allocating():
  r = hybridflow("info", "--config", "configs/imagenet256.py")
  assert r.returncode == 0, r.stderr
  lines = {l.split()[0]: l for l in r.stdout.splitlines() if l.strip()}
  for component in ("vq_encoder", "quantizer", "pixel_decoder", "continuous", "transformer",
                    "bridge"):
    assert component in lines
  # K x D codebook of the paper-scale config: 1024 x 256.
  assert lines["quantizer"].split()[-1] == f"{1024 * 256:,d}"
  total = int(next(l for l in r.stdout.splitlines() if "HybridFlow total" in l)
              .split()[-1].replace(",", ""))
  assert total > 100_000_000


def test_config_overrides_reach_the_model():
  # Dashed aliases of the distributed flags are accepted too (info ignores them).
  r = hybridflow("info", "--config", "configs/tiny.py", "--config.model.vq.num_codes", "128",
                 "--num-processes", "1")
  assert r.returncode == 0, r.stderr
  quantizer = next(l for l in r.stdout.splitlines() if l.startswith("quantizer"))
  assert quantizer.split()[-1] == f"{128 * 16:,d}"


def test_info_of_a_file_reads_its_header_without_jax(tmp_path):
  # A file in the shipped model's name (its fingerprint; the payload is never decoded here).
  from hybridflow_jax import pretrained
  from hybridflow_jax.codec import container
  manifest = (pretrained.ROOT / "small" / "manifest.json").read_text()
  fingerprint = bytes.fromhex(__import__("json").loads(manifest)["fingerprint"])[:4]
  path = tmp_path / "x.hfc"
  path.write_bytes(container.pack(container.Bitstream(512, 768, fingerprint, 3, [bytes(1000)],
                                                      grey=True)))
  r = subprocess.run([sys.executable, "-c", JAX_PROBE, "info", "--file", str(path)],
                     capture_output=True, text=True, timeout=60, cwd=ROOT)
  assert r.returncode == 0 and r.stderr.strip() == "no jax", r.stderr
  lines = r.stdout.splitlines()
  assert lines[0].endswith(f"x.hfc: {path.stat().st_size:,d} bytes, 768x512 pixels, "
                           f"{8 * path.stat().st_size / (768 * 512):.5f} bpp")
  assert "schedule 1_9, greyscale; header 16 bytes, payload 1,000 bytes" in lines[1]
  assert lines[2].endswith(f"fingerprint {fingerprint.hex()}: the shipped model small")
  path.write_bytes(container.pack(container.Bitstream(8, 8, b"abcd", 2, [b"x"])))
  r = hybridflow("info", "--file", path)
  assert r.returncode == 0 and "colour" in r.stdout and "not a model shipped" in r.stdout
  r = hybridflow("info", "--file", path, "--model", "small")
  assert r.returncode == 2 and "made with another model (fingerprint 61626364" in r.stderr


@pytest.mark.parametrize("args, message", [
    (("info", "--config", "configs/missing.py"), "cannot load --config"),
    (("info",), "give --config C (a config's model), --model NAME|PATH (a model bundle) or "
                "--file X.hfc"),
    (("info", "--file", "README.md"), "README.md: not a HybridFlow file"),
    (("info", "--file", "x.hfc", "--config", "configs/tiny.py"), "--file takes no --config"),
    (("info", "--config", "configs/tiny.py", "--config.stage=bogus"), "config.stage"),
    (("info", "--config", "configs/tiny.py", "--config.x.y=1"), "--config.x.y: the config has no"),
    (("info", "--config", "configs/tiny.py", "--config.model.transformer.window=8"),
     "config.model.transformer.window: must be 0 (global attention) or 1..4"),
    (("info", "--config", "configs/tiny.py", "--config.model.bridge.norm=batch"),
     "config.model.bridge.norm: must be one of group, layer"),
    (("info", "--config", "configs/tiny.py", "--config.model.vq.num_codes=abc"), "invalid literal"),
    (("info", "--config", "configs/tiny.py", "--config.train.log_every=0"),
     "config.train.log_every: must be a whole number >= 1, got 0"),
    (("info", "--config", "configs/tiny.py", "--config.train.steps.bridge=-5"),
     "config.train.steps.bridge: must be a whole number >= 0, got -5"),
    (("info", "--config", "configs/tiny.py", "--config.data.eval_limit=0"),
     "config.data.eval_limit: must be a whole number >= 1, got 0"),
    (("info", "--config", "configs/tiny.py", "--config.train.learning_rate=0"),
     "config.train.learning_rate: must be > 0"),
    (("info", "--config", "configs/tiny.py", "--bogus"), "unrecognized argument"),
    (("train", "--config", "configs/tiny.py"), "--workdir is required"),
    (("export", "--workdir", "w", "--out", "o", "--config.x=1"), "unrecognized arguments"),
    (("bogus-command",), "invalid choice"),
    (("plan", "--config", "configs/tiny.py", "--devices", "0"), "--devices must be in"),
    (("compress", "README.md", "never-written.hfc"), "README.md: not an image file this reads"),
    (("compress", "configs", "never-written"), "configs: no image files (.png, .jpg"),
    (("compress", "docs", "README.md"), "README.md is a file: with a folder as input the output "
                                        "is a folder"),
    (("decompress", "configs", "never-written"), "configs: no HybridFlow files (.hfc)"),
    (("compress", "README.md", "no-such-folder/x.hfc"),
     "no-such-folder: no such directory (create it first)"),
    (("decompress", "never-there.hfc", "never-written.png"), "never-there.hfc: no such file"),
    # URLs would be local folders named "gs:" (one per machine of a pod): refused, flag by flag.
    (("train", "--config", "configs/tiny.py", "--workdir", "gs://bucket/run"),
     "argument --workdir: gs://bucket/run: a URL; hybridflow reads and writes local paths only"),
    (("export", "--workdir", "runs/x", "--out", "s3://bucket/model"), "argument --out: s3://"),
    (("eval", "--workdir", "gs://b/run", "--data", "a=demo", "--out", "o"),
     "argument --workdir: gs://b/run: a URL"),
    (("ablate", "--workdir", "w", "--baseline-workdir", "gs://b/base", "--data", "a=demo",
      "--out", "o"), "--baseline_workdir: gs://b/base: a URL"),
    (("compress", "README.md", "gs://b/x.hfc"), "argument output: gs://b/x.hfc: a URL"),
    (("plan", "--config", "configs/tiny.py", "--devices", "1", "--json", "file:///tmp/p.json"),
     "argument --json: file:///tmp/p.json: a URL"),
])
def test_user_errors_are_one_line_and_exit_2(args, message, capsys, monkeypatch):
  # In this process (`cli.main`, what the `hybridflow` script runs; a process each took about 2 s
  # of start-up): SUBPROCESS_CASES below run a few as real processes, whose whole stderr counts.
  monkeypatch.chdir(ROOT)
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # `plan` may set it
  with pytest.raises(SystemExit) as exit_info:
    cli.main(list(args))
  _assert_one_line_error(args, exit_info.value.code, capsys.readouterr().err, message)


SUBPROCESS_CASES = [
    (("info", "--config", "configs/missing.py"), "cannot load --config"),
    (("train", "--config", "configs/tiny.py"), "--workdir is required"),
    (("compress", "README.md", "never-written.hfc"), "README.md: not an image file this reads"),
]


@pytest.mark.parametrize("args, message", SUBPROCESS_CASES)
def test_user_errors_of_a_real_process_are_one_line(args, message):
  r = hybridflow(*args)
  _assert_one_line_error(args, r.returncode, r.stderr, message)


def _assert_one_line_error(args, status, stderr, message):
  assert status == 2, (args, stderr)
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], (args, stderr)
  assert lines[0].startswith(f"hybridflow {args[0]}: error: " if args[0] != "bogus-command"
                             else "hybridflow: error: ")


@pytest.mark.parametrize("args, message", [
    (("compress", "README.md", "{tmp}/x.hfc"), "README.md: not an image file this reads"),
    (("decompress", "README.md", "{tmp}/x.png"), "README.md: not a HybridFlow file"),
    # A batch of 0 used to reach the data pipeline, after the run directory and its config.json
    # were written and the model initialised.
    (("train", "--config", TINY, "--workdir", "{tmp}/run", "--config.train.batch_size=0"),
     "config.train.batch_size: must be a whole number >= 1, got 0"),
    (("info", "--config", TINY, "--config.model.masking.score=edges"),
     "config.model.masking.score: must be one of"),
])
def test_bad_inputs_are_refused_before_jax_loads(args, message, tmp_path):
  """A bad input file or config is one line and exit 2 in a fraction of a second: checked before jax is
  imported (about 3 s of a 2-core machine's start-up), and nothing is written."""
  args = [a.format(tmp=tmp_path) for a in args]
  r = subprocess.run([sys.executable, "-c", JAX_PROBE, *args], capture_output=True, text=True,
                     timeout=60, cwd=ROOT)
  *error, jax_line = r.stderr.strip().splitlines()
  _assert_one_line_error(args, r.returncode, "\n".join(error), message)
  assert jax_line == "no jax", r.stderr
  assert not any(tmp_path.iterdir())


def test_a_url_workdir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
  # `train --workdir gs://B/run` used to make ./gs:/B/run/config.json and fail in orbax with a
  # tensorstore path error; the trainer's own entry point refuses it too (not only the CLI).
  from hybridflow_jax import config_io
  from hybridflow_jax.errors import UserError
  from hybridflow_jax.train import trainer
  monkeypatch.chdir(tmp_path)
  with pytest.raises(UserError, match=r"^run directory gs://bucket/run: a URL; "):
    trainer.train(config_io.load_config(TINY), "gs://bucket/run")
  assert not any(tmp_path.iterdir())


def test_a_bad_config_is_refused_before_a_run_directory_is_made(tmp_path, capsys):
  # A checkpoint interval of 0 divided by zero, after the run directory was made.
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["train", "--config", TINY, "--workdir", str(tmp_path / "run"),
              "--config.train.checkpoint_every=0"])
  _assert_one_line_error(("train",), exit_info.value.code, capsys.readouterr().err,
                         "config.train.checkpoint_every")
  assert not (tmp_path / "run").exists()


def test_help_lists_every_command_and_needs_no_jax():
  r = subprocess.run([sys.executable, "-c", JAX_PROBE, "--help"], capture_output=True, text=True,
                     timeout=60, cwd=ROOT)
  assert r.returncode == 0 and r.stderr.strip() == "no jax", r.stderr
  for command in ("train", "info", "export", "compress", "decompress", "eval", "plan",
                  "prepare-data"):
    assert f"    {command}" in r.stdout
    sub = subprocess.run([sys.executable, "-c", JAX_PROBE, command, "--help"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert sub.returncode == 0 and sub.stderr.strip() == "no jax", (command, sub.stderr)
    assert f"usage: hybridflow {command}" in sub.stdout


def test_leaf_modules_import_no_jax():
  leaves = ("hybridflow_jax.errors", "hybridflow_jax.schedules", "hybridflow_jax.config_io",
            "hybridflow_jax.imageio", "hybridflow_jax.codec.container", "hybridflow_jax.codec.bundle",
            "hybridflow_jax.cli", "hybridflow_jax.commands.decompress",
            "hybridflow_jax.evaluation.references")
  probe = f"import sys; import {', '.join(leaves)}; print('jax' in sys.modules)"
  r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
  assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


# --------------------------------------------------------------------------------------------------
# Overrides parse as ml_collections' config_flags parsed them (the command line used it before).

OVERRIDES = [
    ["--config.model.vq.num_codes=128"], ["--config.model.vq.num_codes", "0x10"],
    ["--config.train.steps.vq=5", "--config.train.steps.vq=7"],
    ["--config.losses.codebook_weight=1"], ["--config.losses.codebook_weight=1e-3"],
    ["--config.stage=vq"], ["--config.data.train", "tfds:x/train@/d"],
    ["--config.train.eval_at_end=false"], ["--config.train.eval_at_end=0"],
    ["--config.train.eval_at_end"], ["--noconfig.train.eval_at_end"],
    ["--config.model.vq.channel_mult=(1, 2, 2, 2, 2)"],
    ["--config.model.vq.channel_mult=1", "--config.model.vq.channel_mult=2"],
    ["--config.mesh=(('data', 2), ('fsdp', 4))"],
]


def _tiny():
  return config_io.load_config(TINY)


@pytest.mark.parametrize("words", OVERRIDES, ids=" ".join)
@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # config_flags' loader
def test_overrides_parse_as_config_flags_did(words, monkeypatch):
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  argv = ["hybridflow", "--config", TINY, *words]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
  values(argv)
  ours = _tiny()
  config_io.apply_overrides(ours, words)
  assert ours.to_dict() == values.config.to_dict()


@pytest.mark.parametrize("words, message", [
    (["--config.nope=1"], "--config.nope: the config has no such field"),
    (["--config.model.vq=1"], "cannot be set from the command line"),
    (["--config.stage"], "needs a value"),
    (["--noconfig.stage"], "only a bare boolean field"),
    (["--config.train.eval_at_end=maybe"], "Non-boolean argument"),
    (["stray"], "unrecognized argument 'stray'"),
])
def test_bad_overrides_are_user_errors(words, message):
  with pytest.raises(UserError, match=message):
    config_io.apply_overrides(_tiny(), words)


def test_plan_sets_the_device_count_before_jax_starts():
  probe = ("from hybridflow_jax import cli; cli._set_host_devices(64); import jax; "
           "print(jax.device_count(), jax.default_backend())")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                     env=env)
  assert r.returncode == 0 and r.stdout.split() == ["64", "cpu"], r.stderr[-2000:]


def test_compile_cache_goes_where_the_user_says_and_never_over_jaxs_own_setting(tmp_path):
  from hybridflow_jax.cli import COMPILE_CACHE_ENV, compile_cache_dir, use_compile_cache
  home = {"HOME": str(tmp_path)}
  assert compile_cache_dir(home) == str(tmp_path / ".cache" / "hybridflow" / "jax")
  assert compile_cache_dir({**home, "XDG_CACHE_HOME": "/x"}) == "/x/hybridflow/jax"
  assert compile_cache_dir({**home, COMPILE_CACHE_ENV: "/mine"}) == "/mine"
  for off in ("off", "OFF", "0", ""):
    assert compile_cache_dir({**home, COMPILE_CACHE_ENV: off}) is None
  # jax's own variable applies as the user set it: the commands leave it (and the size) alone.
  env = {**home, COMPILE_CACHE_ENV: "/mine", "JAX_COMPILATION_CACHE_DIR": "/theirs"}
  use_compile_cache(env)
  assert env["JAX_COMPILATION_CACHE_DIR"] == "/theirs" and "JAX_COMPILATION_CACHE_MAX_SIZE" not in env
  env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
  use_compile_cache(env)
  assert pathlib.Path(env["JAX_COMPILATION_CACHE_DIR"]).is_dir()
  assert int(env["JAX_COMPILATION_CACHE_MAX_SIZE"]) > 0      # bounded: old programs are evicted
  # A folder that cannot be made: the default is skipped quietly, the user's choice is an error.
  (tmp_path / "file").write_text("")
  env = {"XDG_CACHE_HOME": str(tmp_path / "file")}
  use_compile_cache(env)
  assert "JAX_COMPILATION_CACHE_DIR" not in env
  with pytest.raises(UserError, match=f"{COMPILE_CACHE_ENV}=.*cannot create it"):
    use_compile_cache({COMPILE_CACHE_ENV: str(tmp_path / "file" / "cache")})


def test_train_knows_when_it_is_one_process_of_a_job():
  # Such processes get no default compile cache (cli.main) and join the job (commands/train.py).
  from hybridflow_jax.cli import joins_a_job
  assert not joins_a_job(None, {}) and not joins_a_job(None, {"SLURM_NTASKS": "1"})
  assert joins_a_job("127.0.0.1:1234", {})
  for env in ({"SLURM_NTASKS": "4"}, {"TPU_WORKER_HOSTNAMES": "a,b"},
              {"HYBRIDFLOW_DISTRIBUTED": "auto"}):
    assert joins_a_job(None, env), env


# --------------------------------------------------------------------------------------------------
# The wheel, installed into a fresh virtual environment, without the source tree.


def test_installed_wheel_runs_eval_help_and_reads_its_package_data(tmp_path):
  src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to pyproject.toml
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, src / name)
  shutil.copytree(ROOT / "hybridflow_jax", src / "hybridflow_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  # A stand-in shipped model: packaging goes by file names, so empty files show what a bundle gets.
  probe = src / "hybridflow_jax" / "pretrained" / "probe"
  probe.mkdir()
  for name in bundle.FILES:
    (probe / name).touch()
  (src / "hybridflow_jax" / "pretrained" / "__pycache__").mkdir()
  (src / "hybridflow_jax" / "pretrained" / "__pycache__" / "__init__.cpython-311.pyc").touch()
  run = lambda *cmd, **kw: subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
  r = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", src)
  assert r.returncode == 0, r.stderr[-3000:]
  (wheel,) = (tmp_path / "dist").glob("hybridflow_jax-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  assert "hybridflow_jax/evaluation/reference_curves/kodak/vtm.compressai.json" in names
  assert {f"hybridflow_jax/pretrained/probe/{name}" for name in bundle.FILES} <= set(names)
  assert not any("__pycache__" in n for n in names)

  # The dependencies come from this environment's site-packages through a .pth path line (the
  # editable install of the source tree there is a .pth of its own, which a path line does not run).
  venv = tmp_path / "venv"
  r = run(sys.executable, "-m", "venv", "--without-pip", venv)
  assert r.returncode == 0, r.stderr
  r = run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
          "--no-deps", "--no-index", wheel)
  assert r.returncode == 0, r.stderr[-3000:]
  (site,) = (venv / "lib").glob("python3*/site-packages")
  (site / "dependencies.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")))

  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  r = run(venv / "bin" / "hybridflow", "eval", "--help", cwd=tmp_path, env=env)
  assert r.returncode == 0 and "usage: hybridflow eval" in r.stdout, r.stderr[-3000:]
  probe = ("import hybridflow_jax; from hybridflow_jax import pretrained; "
           "from hybridflow_jax.evaluation import references; print(hybridflow_jax.__file__); "
           "print(len(references.reference_curves('kodak'))); print(pretrained.resolve('probe'))")
  r = run(venv / "bin" / "python", "-c", probe, cwd=tmp_path, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  package_file, curves, shipped = r.stdout.split()
  assert pathlib.Path(package_file).is_relative_to(site) and int(curves) >= 5
  assert pathlib.Path(shipped) == site / "hybridflow_jax" / "pretrained" / "probe"
