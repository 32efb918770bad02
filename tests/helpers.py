"""Helpers shared by test modules: running `hybridflow` the way users do, in subprocesses."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
# The tiny pipeline most tests train (once per session, `tiny_run` in conftest.py). Checkpoints only
# at each stage's first and last step (orbax takes ~2 s a save here): the runs that test resuming
# checkpoint more often. No LPIPS in its losses (AlexNet's backward pass in three stages' steps
# cost a fifth of the run); that the steps carry the term when it is on is checked on their traces
# (test_train.py).
TINY_PIPELINE = ("train.log_every=1", "train.steps.vq=16", "train.steps.continuous=40",
                 "train.steps.transformer=16", "train.steps.bridge=16", "train.steps.baseline=16",
                 "losses.gan_start=100", "losses.lpips_weight=0", "train.checkpoint_every=1000")
# The stages it trains (tiny's `joint` has 0 steps), in order: test_train.py checks that each changed
# every param it trains and no other; test_model.py checks the gradients of the stages not here.
PIPELINE_STAGES = ("vq", "continuous", "transformer", "bridge", "baseline")
# Short runs of one stage (interrupted, resumed, compared) share this program: same stage, crop and
# step count, so it compiles once per session. Checkpoints (~0.5 s each) at steps 1, 6, 12, 18 and 24;
# one shows on disk when the next one starts, so a run interrupted as soon as step 6's appears still
# has half of its steps left.
ONE_STAGE_STEPS = 24
ONE_STAGE = ("stage=continuous", "train.eval_at_end=False",
             f"train.steps.continuous={ONE_STAGE_STEPS}", "train.crop_size.continuous=64",
             "train.checkpoint_every=6")
# Images the exported tiny bundle's codeword prior is measured on.
PRIOR_IMAGES = 8


# Subprocesses of tests that compile cheaply (JAX_DISABLE_MOST_OPTIMIZATIONS=1, conftest.py) also
# use XLA:CPU's older loop emitter: a tiny training step compiles in about 25 % less time (bridge
# 14.9 -> 12.1 s, continuous 6.7 -> 3.9 s) and runs as fast. The tests' own process keeps XLA's
# defaults (its flags cannot change after start), so its users' compilations are the users'.
CHEAP_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"
# The run's compilation cache is bounded, so jax locks it: pytest-xdist workers share it.
CACHE_MAX_BYTES = 16 << 30


def run_env(cache, devices=1, **extra):
  """Environment of a CPU subprocess sharing the session's compilation cache."""
  env = dict(os.environ)
  flags = f"--xla_force_host_platform_device_count={devices}"
  if env.get("JAX_DISABLE_MOST_OPTIMIZATIONS") == "1":
    flags += " " + CHEAP_XLA_FLAGS
  env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_COMPILATION_CACHE_MAX_SIZE=str(CACHE_MAX_BYTES),
             JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
  env.update(extra)
  return env


def train_cmd(workdir, *overrides, extra=()):
  return [sys.executable, "-m", "hybridflow_jax.cli", "train", "--config", TINY,
          "--workdir", str(workdir), *[f"--config.{o}" for o in overrides], *extra]


def train(cache, workdir, *overrides, devices=1, timeout=600, env=None):
  r = subprocess.run(train_cmd(workdir, *overrides), env=env or run_env(cache, devices),
                     capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  return r


def hybridflow(*args, env=None, timeout=600, prefix=()):
  """Runs `hybridflow ARGS` (python -m hybridflow_jax.cli); returns the CompletedProcess.

  prefix: a command to run it under (e.g. ("taskset", "-c", "0")).
  """
  return subprocess.run([*prefix, sys.executable, "-m", "hybridflow_jax.cli", *map(str, args)],
                        env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
