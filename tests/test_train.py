"""The trainer, run as users run it: `hybridflow train` in subprocesses (tiny config, demo photos).

All runs share one persistent compilation cache, so each distinct program compiles once per session.
"""

import contextlib
import json
import os
import pathlib
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

import flax
import jax
import numpy as np
import pytest
from helpers import ONE_STAGE, PIPELINE_STAGES, ROOT, TINY, TINY_PIPELINE, train
from helpers import ONE_STAGE_STEPS as STEPS
from helpers import run_env as _env
from helpers import train_cmd as _cmd

from hybridflow_jax import config_io, schedules, stages
from hybridflow_jax.errors import UserError
from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.train import checkpoint as ckpt_lib


def cfg_rate_target():
  return config_io.load_config(TINY).losses.rate_target


def final_params(workdir, stage):
  cfg = config_io.load_config(TINY)
  abstract = hf.param_shapes(hf.build_model(cfg))
  return ckpt_lib.load_params(pathlib.Path(workdir) / stage / "params", abstract)


def _flat(tree):
  return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(tree)])


def test_pipeline_runs_every_stage_and_each_learns(compile_cache, tiny_run, tiny_params):
  tmp_path, r = tiny_run
  for stage in PIPELINE_STAGES:
    summary = json.loads((tmp_path / stage / "summary.json").read_text())
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == (40 if stage == "continuous" else 16)
    assert np.mean(losses[-4:]) < np.mean(losses[:4]), (stage, losses)
    assert (tmp_path / stage / "DONE").exists()
    assert list((tmp_path / stage / "metrics").glob("events.out.tfevents.*"))
  results = json.loads((tmp_path / "results.json").read_text())["results"]
  assert set(results) == {*schedules.OPERATING_POINTS, "flat mean"}
  # (On the 4x4 token grid of a 64 px crop, 1_9 keeps 4 of 16 like 1_4.)
  kept = {k: results[k]["keep_ratio"] for k in schedules.OPERATING_POINTS}
  assert kept["1_16"] < kept["1_9"] <= kept["1_4"] and kept["dynamic"] <= 0.125
  assert "PSNR" in r.stdout and "dynamic" in r.stdout and "flat mean" in r.stdout
  # Each stage took the earlier stages' params from memory, not from the files just written.
  assert r.stdout.count("params from this run") == 1 + 2 + 3 + 4, r.stdout
  # Each stage evaluated what it trains, next to the flat-mean-colour reference.
  evals = {s: json.loads((tmp_path / s / "summary.json").read_text())["eval"]
           for s in ("vq", "continuous", "transformer")}
  assert set(evals["vq"]) == {"1_1", "flat mean"} and {"psnr", "codes_used"} <= set(evals["vq"]["1_1"])
  assert {"psnr", "bpp_estimated"} <= set(evals["continuous"]["1_1"])
  assert set(evals["transformer"]) == {*schedules.OPERATING_POINTS, "flat mean"}
  assert 0 <= evals["transformer"]["1_16"]["token_acc"] <= 1
  # The rate is split into its parts, and above its target (0.03 bpp) the side stream's rate is
  # pushed down: HiFiC's targeting weighs it 32x there (the tiny run starts near 0.08 bpp).
  point = results["1_4"]
  parts = ("bpp_indices", "bpp_y", "bpp_z", "bpp_side")
  assert abs(sum(point[k] for k in parts) - point["bpp_estimated"]) < 1e-4, point
  bpp = [h["bpp"] for h in json.loads((tmp_path / "continuous" / "summary.json").read_text())
         ["history"]]
  assert min(bpp) > cfg_rate_target() and np.mean(bpp[-8:]) < 0.95 * np.mean(bpp[:8]), bpp
  # The codebook learns from the start: k-means on the first batch moves it off its random init,
  # and usage (read bias-corrected from zero) shows most codes in use, not a uniform placeholder.
  assert config_io.load_config(TINY).seed == 0  # the seed of `tiny_params`
  start = np.asarray(tiny_params["quantizer"]["codebook"])
  moved = np.abs(np.asarray(final_params(tmp_path, "vq")["quantizer"]["codebook"]) - start)
  assert moved.mean() > 0.25 * np.abs(start).mean(), (moved.mean(), np.abs(start).mean())
  vq_last = json.loads((tmp_path / "vq" / "summary.json").read_text())["history"][-1]
  assert vq_last["codes_used"] >= 0.5 and 16 < vq_last["perplexity"] < 64, vq_last
  # Each stage changed exactly the params it trains: every one of them moved (its gradient reaches
  # it: the loss depends on it) and every other param is the same to the bit (frozen params pass
  # through the step untouched). The run starts from `tiny_params`, computed as the run's init is.
  before = flax.traverse_util.flatten_dict(tiny_params, sep="/")
  for stage in PIPELINE_STAGES:
    params = final_params(tmp_path, stage)
    after = flax.traverse_util.flatten_dict(params, sep="/")
    trained = flax.traverse_util.flatten_dict(stages.trainable(params, stage), sep="/")
    assert after.keys() == before.keys() == trained.keys(), stage
    moved = {k for k in after if not np.array_equal(after[k], before[k])}
    want = {k for k, t in trained.items() if t}
    assert moved == want, (stage, sorted(moved - want)[:5], sorted(want - moved)[:5])
    before = after
  # A pipeline stopped before its transformer stage finished, run again in a new process: the
  # finished stages are skipped, the transformer stage reads theirs from their files, and trains
  # to the same params, to the bit, as in the run that had them in memory.
  before = _flat(final_params(tmp_path, "transformer"))
  shutil.rmtree(tmp_path / "transformer")
  again = train(compile_cache, tmp_path, *TINY_PIPELINE[1:], "train.eval_at_end=False")
  assert again.stdout.count("already finished") == 4, again.stdout
  assert [line.split()[3] for line in again.stdout.splitlines() if "params from" in line] == [
      "vq", "continuous"] and "from this run" not in again.stdout, again.stdout
  np.testing.assert_array_equal(_flat(final_params(tmp_path, "transformer")), before)


def _wait_for_checkpoint(workdir, stage, proc, min_step=1, timeout=300):
  ckdir = pathlib.Path(workdir) / stage / "checkpoints"
  start = time.time()
  while time.time() - start < timeout:
    steps = [int(p.name) for p in ckdir.glob("*") if p.name.isdigit()] if ckdir.exists() else []
    if any(s >= min_step for s in steps):
      return max(steps)
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.05)
  raise TimeoutError("no checkpoint appeared")


def _photos_and_unreadable_files(folder, copies=1):
  """`folder` with the demo training photos (`copies` of each, hard links) and three unreadable
  files (a truncated JPEG, an empty file and text named .png)."""
  from PIL import Image

  from hybridflow_jax.data import demo
  paths = demo.write_folder(folder, "train")
  for path in paths:
    for i in range(1, copies):
      os.link(path, path.with_name(f"{path.stem}_{i}{path.suffix}"))
  Image.open(paths[0]).save(folder / "truncated.jpg", quality=90)
  data = (folder / "truncated.jpg").read_bytes()
  (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
  (folder / "empty.jpg").write_bytes(b"")
  (folder / "notes.png").write_text("this is not an image\n")
  return folder


@pytest.fixture(scope="module")
def one_stage(tmp_path_factory):
  """ONE_STAGE on `_photos_and_unreadable_files`: the overrides of every run below that is
  interrupted or compared."""
  return (*ONE_STAGE, f"data.train={_photos_and_unreadable_files(tmp_path_factory.mktemp('photos'))}")


@pytest.fixture(scope="module")
def straight(compile_cache, one_stage, tmp_path_factory):
  """The workdir of `one_stage` trained without interruption: what resumed runs must reproduce.
  It checkpoints only at its first and last step (orbax takes about a second a save here): how
  often a run checkpoints must not change what it trains."""
  workdir = tmp_path_factory.mktemp("straight")
  r = train(compile_cache, workdir, *one_stage, "train.checkpoint_every=1000",
            "train.profile_steps=3")
  # Steps 3-5 traced (after the two that compile and warm up): a trace TensorBoard and xprof read,
  # and the resumed runs below, traced nowhere, must still end with these params to the bit.
  trace = workdir / "continuous" / "profile" / "process_0"
  assert "[continuous] profile: steps 3-5 traced" in r.stdout and str(trace) in r.stdout, r.stdout
  assert len(list(trace.glob("plugins/profile/*/*.xplane.pb"))) == 1
  return workdir


def test_unreadable_images_are_skipped_and_counted(straight):
  summary = json.loads((straight / "continuous" / "summary.json").read_text())
  assert len(summary["skipped_images"]) == 3
  assert summary["history"][-1]["data/skipped_images"] == 3


def test_killed_then_preempted_run_resumes_bitwise_identical(compile_cache, one_stage, straight,
                                                             tmp_path):
  """SIGKILL mid-run, resume, SIGTERM to the resumed run, resume again: the final params are the
  uninterrupted run's to the bit."""
  # SIGKILL: nothing is saved at the signal; the rerun starts from the last complete checkpoint.
  proc = subprocess.Popen(_cmd(tmp_path, *one_stage), env=_env(compile_cache),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
  at = _wait_for_checkpoint(tmp_path, "continuous", proc, min_step=6)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / "continuous" / "DONE").exists(), "the run finished before it was killed"
  assert at < STEPS
  # SIGTERM as soon as the rerun says where it resumed: it checkpoints the step it has reached
  # (off the checkpoint interval) and exits 0.
  proc = subprocess.Popen(_cmd(tmp_path, *one_stage), env=_env(compile_cache),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if "resumed from step" in line:
      proc.send_signal(signal.SIGTERM)
      break
  out, _ = proc.communicate(timeout=300)
  out = "".join(seen) + out
  assert proc.returncode == 0, out[-3000:]
  assert "resumed from step" in out and "preempted" in out, out[-3000:]
  saved = max(int(p.name) for p in (tmp_path / "continuous" / "checkpoints").glob("*")
              if p.name.isdigit())
  assert not (tmp_path / "continuous" / "DONE").exists()
  assert at < saved < STEPS
  # Its checkpoints hold the params the stage trains; the frozen ones it started from are written
  # once, beside them.
  def arrays(folder, under=""):  # the arrays an orbax tree holds, as "('module', ..., 'name')"
    meta = json.loads((folder / "_METADATA").read_text())["tree_metadata"]
    return {"(" + k[len(under) + 1:] for k, v in meta.items()
            if k.startswith("(" + under) and v["value_metadata"]["value_type"] == "jax.Array"}
  trained = arrays(tmp_path / "continuous" / "checkpoints" / str(saved) / "state", "'params', ")
  frozen = arrays(tmp_path / "continuous" / "frozen")
  flags = stages.trainable(hf.param_shapes(hf.build_model(config_io.load_config(TINY))),
                           "continuous")
  assert len(trained) == sum(jax.tree.leaves(flags)) and not trained & frozen
  assert len(trained) + len(frozen) == len(jax.tree.leaves(flags))
  # Without them a resume stops in one line, and leaves the run as it was.
  (tmp_path / "continuous" / "frozen").rename(tmp_path / "frozen_aside")
  r = subprocess.run(_cmd(tmp_path, *one_stage), env=_env(compile_cache), capture_output=True,
                     text=True, timeout=300, cwd=ROOT)
  assert r.returncode != 0 and "frozen is missing" in r.stderr, r.stderr[-3000:]
  assert len(r.stderr.strip().splitlines()) == 1, r.stderr[-3000:]
  assert not (tmp_path / "continuous" / "frozen").exists()
  (tmp_path / "frozen_aside").rename(tmp_path / "continuous" / "frozen")
  r = train(compile_cache, tmp_path, *one_stage, "train.checkpoint_every=1000")
  assert f"resumed from step {saved}" in r.stdout
  assert (tmp_path / "continuous" / "DONE").read_text().strip() == str(STEPS)
  np.testing.assert_array_equal(_flat(final_params(straight, "continuous")),
                                _flat(final_params(tmp_path, "continuous")))


class _Terminal:
  """`hybridflow train` on a pseudo-terminal that is its controlling terminal (`setsid -c`), with
  grain worker processes: Ctrl-C and a hang-up reach every process of its group, as from a real
  terminal or ssh session."""

  def __init__(self, cmd, env):
    self.master, slave = pty.openpty()
    self.proc = subprocess.Popen(["setsid", "-c", *cmd], env=env, stdin=slave, stdout=slave,
                                 stderr=slave, cwd=ROOT, close_fds=True)
    os.close(slave)
    self.out = ""

  def read_until(self, text, timeout=300):
    start = time.time()
    while text not in self.out:
      assert time.time() - start < timeout, self.out[-3000:]
      if select.select([self.master], [], [], 1.0)[0]:
        try:
          self.out += os.read(self.master, 65536).decode(errors="replace")
        except OSError:  # EIO: every process has closed the terminal
          assert text in self.out, self.out[-3000:]

  def finish(self, timeout=300):
    """Reads what is left and returns the exit status."""
    rc = self.proc.wait(timeout=timeout)
    with contextlib.suppress(OSError):
      while chunk := os.read(self.master, 65536):
        self.out += chunk.decode(errors="replace")
    return rc

  def hang_up(self):
    os.close(self.master)  # what sshd does when the connection drops


def test_a_hang_up_checkpoints_and_exits_0_and_a_second_train_is_refused(compile_cache,
                                                                          one_stage, tmp_path):
  """Closing the terminal that runs `hybridflow train` (SIGHUP to every process of its group: a
  dropped ssh connection) checkpoints the step it reached and exits 0; its grain workers and
  multiprocessing's resource tracker get the hang-up too. Before, the workers died of it, the next
  batch failed (status 1, the steps since the last checkpoint lost), and the tracker died too (a
  traceback per shared buffer). A Ctrl-C typed into a terminal is the launcher test's. Meanwhile a
  second `train` in its directory is refused in one line, naming it."""
  over = (*one_stage, "train.steps.continuous=100000", "train.checkpoint_every=100000",
          "data.workers=1")
  cmd = _cmd(tmp_path, *over)
  term = _Terminal(cmd, _env(compile_cache))
  try:
    term.read_until("[continuous] step 1/")
    again = subprocess.run(cmd, env=_env(compile_cache), capture_output=True, text=True,
                           timeout=300, cwd=ROOT)
    assert again.returncode != 0 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert (f"is being trained by another `hybridflow train` (pid {term.proc.pid} on "
            in again.stderr), again.stderr
    term.read_until("[continuous] step 10/")
    term.hang_up()
    assert term.proc.wait(timeout=300) == 0
  finally:
    if term.proc.poll() is None:
      term.proc.kill()
  ckpts = tmp_path / "continuous" / "checkpoints"
  # The step it reached, not only the start-of-run checkpoint; not finished.
  assert max(int(p.name) for p in ckpts.glob("*") if p.name.isdigit()) >= 10
  assert not (tmp_path / "continuous" / "DONE").exists()


def test_a_second_ctrl_c_stops_at_once_and_the_handlers_are_restored():
  from hybridflow_jax.train import trainer
  before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
  with trainer._StopRequest() as stop:
    assert not stop.raised
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.raised and stop.reason() == "preempted"
    os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C asks for a checkpoint
    assert stop.reason() == "stopped (SIGINT)"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)  # the handler runs between bytecodes
  assert {s: signal.getsignal(s) for s in before} == before


def test_a_stop_while_a_stage_ends_does_not_start_the_next(tiny_config, tmp_path, monkeypatch):
  """SIGTERM during a stage's final evaluation (after its last step's check): the pipeline stops
  before the next stage, not after compiling it and taking a step. The stages themselves are
  stood in for (their stopping is tested above): this is the pipeline's loop."""
  from hybridflow_jax.train import trainer
  started, lines = [], []

  def stage_signalled_as_it_ends(run, stage, stop):
    started.append(stage)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)  # the handler runs between bytecodes
    return {}

  monkeypatch.setattr(trainer, "train_stage", stage_signalled_as_it_ends)
  cfg = tiny_config.copy_and_resolve_references()
  cfg.stage = "pipeline"
  with pytest.raises(trainer.Preempted):
    trainer.train(cfg, tmp_path, log=lines.append)
  assert started == ["vq"]
  assert "[continuous] preempted before it started; rerun the same command to continue" in lines


# Params of at least this many elements are split over the fsdp axis in the sharded comparison (the
# default, 2 ** 14, is above every tiny param).
FSDP_MIN_SIZE = 1024


# Runs in a 4-device process: the trainer's step (steps.stage_step) on one device and on a 2x2
# data x fsdp mesh, from the same params (the session's tiny_params, read from an .npz) and batch;
# prints the largest differences, and whether its initialisation on the mesh drew those params.
SHARDED_SCRIPT = r"""
import json, sys
import flax, jax, numpy as np
from hybridflow_jax import config_io
from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.train import sharding as shard_lib, steps as steps_lib
cfg = config_io.load_config(sys.argv[2], sys.argv[3:])
model = hf.build_model(cfg)
drawn = dict(np.load(sys.argv[1]))
params = flax.traverse_util.unflatten_dict(drawn, sep="/")
abstract = hf.param_shapes(model)
x = jax.random.uniform(jax.random.PRNGKey(1), (cfg.train.batch_size, 64, 64, 3))
out, split = {}, 0
for name, axes, devices in (("one", (("data", 1), ("fsdp", 1)), jax.devices()[:1]),
                            ("four", (("data", 2), ("fsdp", 2)), jax.devices())):
  mesh = shard_lib.make_mesh(axes, devices)
  built = steps_lib.stage_step(model, cfg, "vq", mesh, abstract, 10)
  state = jax.jit(built.make_state, out_shardings=built.state_shardings)(
      jax.tree.map(lambda a: a.copy(), params))
  if name == "four":
    split = sum(not s.is_fully_replicated for s in jax.tree.leaves(built.state_shardings.params))
  state, metrics = built.step(state, jax.device_put(x, built.images_sharding))
  out[name] = (jax.device_get(state.params), float(metrics["loss"]))
# The trainer's initialisation on the 2x2 mesh (params split over fsdp; the random draws hashed
# together, models/batched_rng) gives the session's params, drawn on one device, to the bit.
fresh = jax.jit(lambda r: hf.init_params(model, r), out_shardings=built.state_shardings.params)(
    jax.random.PRNGKey(0))
flat = flax.traverse_util.flatten_dict(jax.device_get(fresh), sep="/")
init_equal = set(flat) == set(drawn) and all(np.array_equal(flat[k], drawn[k]) for k in flat)
(a, la), (b, lb) = out["one"], out["four"]
diff = max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)) / (np.abs(np.asarray(u)) + 1e-2)))
           for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
print(json.dumps({"relative_param_diff": diff, "loss_one": la, "loss_four": lb,
                  "fsdp_split_params": split, "sharded_init_equal": init_equal}))
"""


def test_sharded_step_equals_unsharded(compile_cache, tiny_params, tmp_path):
  # One vq-stage step with the GAN on (generator, adaptive weight and discriminator all active), on one
  # device and on a 2x2 data x fsdp mesh. Every tiny param is below the default sharding_min_size:
  # lowered, the fsdp axis splits params and optimiser states too, not only the batch.
  over = ("--config.train.batch_size=8", "--config.losses.gan_start=0",
          "--config.train.dead_code_every=0", "--config.losses.lpips_weight=0",
          f"--config.sharding_min_size={FSDP_MIN_SIZE}")
  params = tmp_path / "params.npz"
  np.savez(params, **flax.traverse_util.flatten_dict(jax.device_get(tiny_params), sep="/"))
  r = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, params, TINY, *over],
                     env=_env(compile_cache, 4),
                     capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads(r.stdout.strip().splitlines()[-1])
  assert res["fsdp_split_params"] > 0, "nothing for fsdp to split"
  assert res["sharded_init_equal"], "the sharded initialisation drew other params"
  assert res["relative_param_diff"] < 1e-4, res
  assert res["loss_one"] == pytest.approx(res["loss_four"], rel=1e-5)


def test_local_launcher_trains_two_processes_survives_an_interrupt_and_resumes(compile_cache,
                                                                              tmp_path):
  """launch/local.sh 2: two processes (2 CPU devices each) train one run; Ctrl-C in its terminal
  (SIGINT to every process of the group, SIGTERM from the launcher) stops both, which checkpoint and
  exit 0, their last lines shown (before, the Ctrl-C also killed the prefixing seds: process 0 died
  writing to them, process 1 waited for it forever, and the launcher returned 130 at once); the
  same command resumes and finishes, and finishes
  again after an interrupted finish, having recorded the unreadable files both processes met; then
  one process alone restores the 2-process checkpoint and trains on (ONE_STAGE's program, compiled
  once)."""
  photos, run = tmp_path / "photos", tmp_path / "run"
  photos.mkdir()
  # 51 files: the 24 images each process draws in 12 steps are under one epoch of its shard, so
  # each unreadable file is met by one process only.
  _photos_and_unreadable_files(photos, copies=6)
  over = ("stage=continuous", "train.eval_at_end=False", "train.steps.continuous=12",
          "train.crop_size.continuous=64", "train.checkpoint_every=6", f"data.train={photos}")
  cmd = ["bash", str(ROOT / "launch" / "local.sh"), "2", "--config", TINY, "--workdir",
         str(run), *[f"--config.{o}" for o in over]]
  env = _env(compile_cache, devices=2, PYTHON=sys.executable)
  term = _Terminal(cmd, env)
  try:
    term.read_until("[p0] [continuous] step 1/", timeout=600)
    os.write(term.master, b"\x03")  # Ctrl-C, as typed
    rc = term.finish()
  finally:
    if term.proc.poll() is None:
      term.proc.kill()
  out = term.out.replace("\r\n", "\n")
  assert rc == 0, out[-3000:]
  assert not (run / "continuous" / "DONE").exists(), "finished before the interrupt"
  # The launcher exits 0 only if both processes did; process 0 logs for the run.
  assert any(line.startswith("[p0]") and "stopped (SIGINT): checkpoint written" in line
             for line in out.splitlines()), out[-3000:]
  assert "[p0] [mesh] 4 devices (cpu) in 2 processes, data=4 x fsdp=1; batch 4, 1 a" in out, out
  assert "Traceback" not in out, out[-3000:]

  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  assert any(line.startswith("[p0]") and "resumed from step" in line
             for line in r.stdout.splitlines()), r.stdout[-2000:]
  assert (run / "continuous" / "DONE").read_text().strip() == "12"
  sums = {line[:4]: line.split()[-1] for line in r.stdout.splitlines() if "params checksum" in line}
  assert set(sums) == {"[p0]", "[p1]"} and len(set(sums.values())) == 1, sums
  # The data state of both processes is in the checkpoint.
  data = run / "continuous" / "checkpoints" / "12" / "data"
  assert {p.name for p in data.glob("*.json")} == {"process_0-of-2.json", "process_1-of-2.json"}
  # Each process reads its own shard of the photos; the run records what both could not read.
  summary = json.loads((run / "continuous" / "summary.json").read_text())
  assert len(summary["skipped_images"]) == 3, summary["skipped_images"]
  # Interrupted after the final params were written but before DONE: both processes finish again,
  # together (process 0 clears the params it finds; process 1 must not miss that barrier).
  (run / "continuous" / "DONE").unlink()
  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  assert (run / "continuous" / "DONE").read_text().strip() == "12"
  assert {line[:4]: line.split()[-1] for line in r.stdout.splitlines()
          if "params checksum" in line} == sums
  # One process alone restores the 2-process checkpoint and trains on from it.
  (run / "continuous" / "DONE").unlink()
  r = train(compile_cache, run, *ONE_STAGE)
  assert "resumed from step 12" in r.stdout
  assert (run / "continuous" / "DONE").read_text().strip() == str(STEPS)


def test_local_launcher_stops_every_process_when_one_fails(compile_cache, tmp_path):
  # Process 0 cannot serve the coordinator on a port that is taken; process 1 would wait for it for
  # minutes (jax.distributed's initialization timeout) unless the launcher stops it.
  cmd = ["bash", str(ROOT / "launch" / "local.sh"), "2", "--config", TINY, "--workdir",
         str(tmp_path)]
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    env = _env(compile_cache, PYTHON=sys.executable, PORT=str(taken.getsockname()[1]))
    t = time.time()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  # The launcher exits with the failed process's status (jax raises, or sometimes crashes).
  assert r.returncode != 0 and time.time() - t < 120, r.stderr[-2000:]
  assert f"process 0 exited with status {r.returncode}; stopping the others" in r.stderr, r.stderr
  assert any(line.startswith("[p0]") for line in r.stderr.splitlines())
  # Process 1 did not fail by itself (no traceback) nor wait out its timeout: it was stopped.
  assert "[p1] Traceback" not in r.stderr, r.stderr[-2000:]
  r = subprocess.run(["bash", str(ROOT / "launch" / "local.sh"), "zero"], capture_output=True,
                     text=True, timeout=60)
  assert r.returncode == 2 and "usage" in r.stderr


# A test double of `gcloud compute tpus tpu-vm ssh TPU --zone Z --worker=W --command C`: a pod of
# one worker, this machine, C run by bash as sshd runs it. There is no TPU cluster for
# jax.distributed to detect, so it drops HYBRIDFLOW_DISTRIBUTED=auto (one process trains alone).
FAKE_GCLOUD = """#!/usr/bin/env bash
while (($#)); do [[ $1 == --command ]] && { cmd=$2; shift; }; shift; done
exec bash -c "${cmd//HYBRIDFLOW_DISTRIBUTED=auto /}"
"""


def _running(pid):
  """Whether process `pid` runs (a zombie has exited; here nothing may reap it, as its parent
  was the launcher's shell, gone since)."""
  try:
    return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def test_tpu_pod_train_survives_the_ssh_session_and_stop_checkpoints(compile_cache, one_stage,
                                                                     tmp_path):
  """launch/tpu_pod.sh on a one-worker pod of this machine (FAKE_GCLOUD): `train` fails if the
  trainer ends at once, else returns and leaves the trainer in a session of its own, training on
  after the terminal it was launched from hangs up (a dropped ssh connection; before, it ran in
  the ssh session and died with it);
  a second `train` is refused while it runs; `status` shows it; `stop` signals only the trainer
  (not its own shell: a bare 'hybridflow train' pattern made it exit 143) and returns once the
  trainer has checkpointed and exited; `logs` shows its log."""
  bin_dir, checkout, run = tmp_path / "bin", tmp_path / "checkout", tmp_path / "run"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
  (bin_dir / "gcloud").chmod(0o755)
  checkout.mkdir()
  (checkout / ".venv").symlink_to(pathlib.Path(sys.executable).parent.parent)
  env = _env(compile_cache, PATH=f"{bin_dir}:{os.environ['PATH']}", DIR=str(checkout))
  pod = ["bash", str(ROOT / "launch" / "tpu_pod.sh")]
  over = [f"--config.{o}" for o in (*one_stage, "train.steps.continuous=100000",
                                    "train.checkpoint_every=100000")]
  train_cmd = [*pod, "train", "pod", "zone", "--config", TINY, "--workdir", str(run), *over]
  log = checkout / "train.log"

  def run_pod(*args):
    return subprocess.run([*pod, *args, "pod", "zone"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)

  # A trainer that fails at once fails the launch, with the end of its log.
  bad = subprocess.run([*pod, "train", "pod", "zone", "--config", "nowhere.py", "--workdir",
                        str(run)], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert bad.returncode == 1 and "the trainer ended at once" in bad.stderr, bad
  assert "nowhere.py" in bad.stderr.splitlines()[-1], bad.stderr

  term = _Terminal(train_cmd, env)
  pid = None
  try:
    term.read_until("follow it: launch/tpu_pod.sh logs pod zone")
    assert term.finish() == 0, term.out[-3000:]
    pid = int(term.out.split("training (pid ")[1].split(")")[0])
    assert os.getsid(pid) == pid  # a session of its own: no terminal to hang up on it
    term.hang_up()
    deadline = time.time() + 300
    while "[continuous] step 10/" not in (log.read_text() if log.exists() else ""):
      assert time.time() < deadline and _running(pid), (
          log.read_text()[-3000:] if log.exists() else "no train.log")
      time.sleep(0.2)

    again = subprocess.run(train_cmd, env=env, capture_output=True, text=True, timeout=300,
                           cwd=ROOT)
    assert again.returncode == 1 and "a trainer is already running here" in again.stderr, again
    status = run_pod("status")
    assert status.returncode == 0 and f"{pid} " in status.stdout, status
    assert "hybridflow train" in status.stdout, status.stdout

    stop = run_pod("stop")
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop
    assert not _running(pid)  # it returned once the trainer had exited
    text = log.read_text()
    assert "[continuous] preempted: checkpoint written at step" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert "no trainer running" in run_pod("status").stdout

    logs = subprocess.Popen([*pod, "logs", "pod", "zone"], env=env, stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, start_new_session=True)
    time.sleep(3)  # `tail -F` follows until interrupted
    os.killpg(logs.pid, signal.SIGTERM)
    assert "preempted: checkpoint written" in logs.communicate(timeout=60)[0]
  finally:
    if pid is not None and _running(pid):
      os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("gan_start, lpips_weight, on", [(4, 1.0, True), (8, 0.0, False)])
def test_gan_and_lpips_terms_compile_only_when_they_apply(gan_start, lpips_weight, on):
  """A bridge stage of 8 steps with gan_start 8 never applies its GAN: its step has no GAN terms
  (no discriminator or second backward pass to pay for); with gan_start 4 it has them. LPIPS is in
  the loss (and its metrics) when its weight is above 0, and not compiled otherwise."""
  import jax.numpy as jnp

  from hybridflow_jax.train import sharding as shard_lib
  from hybridflow_jax.train import steps as steps_lib
  cfg = config_io.load_config(TINY, [f"--config.losses.gan_start={gan_start}",
                                     f"--config.losses.lpips_weight={lpips_weight}"])
  model = hf.build_model(cfg)
  mesh = shard_lib.make_mesh((("data", -1),))
  built = steps_lib.stage_step(model, cfg, "bridge", mesh, hf.param_shapes(model), 8)
  x = jax.ShapeDtypeStruct((2, built.crop, built.crop, 3), jnp.uint8)
  _, metrics = jax.eval_shape(built.step, built.abstract_state, x)
  assert ("gan_d" in metrics and "gan_g" in metrics) == on
  assert ("lpips" in metrics) == on
  # The discriminator stays in the state either way: checkpoints do not depend on gan_start.
  assert jax.tree.leaves(built.abstract_state.disc_params)


def test_a_run_refuses_another_model_config(tmp_path, tiny_config):
  # A run's stages trained the networks its config.json records, and export builds those: training
  # on with another model (here: a run recorded before model.bridge.norm, i.e. a GroupNorm bridge,
  # resumed under today's LayerNorm default) would export params into the wrong networks.
  from hybridflow_jax.errors import UserError
  from hybridflow_jax.train import trainer
  recorded = tiny_config.to_dict()
  del recorded["model"]["bridge"]["norm"]
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  with pytest.raises(UserError, match=r"model.bridge.norm: recorded 'group', given 'layer'"):
    trainer.train(tiny_config, tmp_path, log=lambda _: None)
  assert not (tmp_path / "vq").exists()
  # The same values, recorded or absent-with-the-old-meaning, pass the check.
  cfg = tiny_config.copy_and_resolve_references()
  cfg.model.bridge.norm = "group"
  from hybridflow_jax.train.rundir import RunDir
  RunDir(tmp_path).check_model(cfg)


def test_fine_tuning_trains_one_stage_from_a_model_bundle(compile_cache, tiny_run,
                                                          untrained_bundle, tmp_path):
  """--config.train.init_from: the bridge stage alone, in an empty workdir, starts from a bundle
  (the untrained tiny model exported from seed 0; this run is seeded 1). The networks it does not
  train end as the bundle has them, and the bridge starts from the bundle's bridge, not from a copy
  of the pixel decoder (the from-scratch start)."""
  from hybridflow_jax.codec import bundle as bundle_lib
  # The tiny pipeline's programs (same bridge steps, GAN switch and losses; the seed is an
  # argument): with `tiny_run` this test runs after it on its worker and reads them from the cache
  # (25 s here) instead of compiling them beside it (58 s).
  r = train(compile_cache, tmp_path, "stage=bridge", "train.eval_at_end=False",
            "train.steps.bridge=16", "losses.gan_start=100", "losses.lpips_weight=0", "seed=1",
            "train.checkpoint_every=1000", f"train.init_from={untrained_bundle}")
  assert "parameter arrays from" in r.stdout and "initialised from seed 1" in r.stdout, r.stdout
  assert (tmp_path / "bridge" / "DONE").read_text().strip() == "16"
  got = bundle_lib.flatten(final_params(tmp_path, "bridge"))
  want = bundle_lib.flatten(bundle_lib.read(untrained_bundle)["params"])
  for key in want:
    if not key.startswith("bridge/"):
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  # Bundles hold what decoding needs: not the pixel decoder, initialised here from seed 1.
  assert "pixel_decoder/conv_in/kernel" not in want
  key = "bridge/conv_in/kernel"
  moved = np.abs(got[key] - want[key]).mean()
  assert 0 < moved < 0.1 * np.abs(got[key] - got["pixel_decoder/conv_in/kernel"]).mean(), moved
  # The run exports: its last stage holds every network (the others as the bundle had them).
  from hybridflow_jax.train import export
  _, params, provenance = export.load_run(tmp_path)
  assert provenance["source"]["init_from"] == str(untrained_bundle)
  np.testing.assert_array_equal(bundle_lib.flatten(params)[key], got[key])
  # The networks only training uses are its seed's here: the ablation leaves out the rows they
  # would render (G_vq's codebook-only rows, the light head's), rather than report their noise.
  from hybridflow_jax.evaluation import ablation
  lines = []
  _, decoders, continuous, _ = ablation.load(tmp_path, prior_images=1, log=lines.append)
  assert "continuous head" not in continuous and "continuous-only" not in continuous
  assert any("pixel_decoder is untrained" in line and "no codebook-only rows" in line
             for line in lines), lines
  assert any("continuous/synthesis_head is untrained" in line for line in lines), lines
  # So does the trainer's evaluation of a stage that renders with one of them (transformer: G_vq
  # on its predicted tokens); a run that trained the vq stage itself measures those pixels.
  cfg = config_io.load_config(TINY, [f"--config.train.init_from={untrained_bundle}"])
  assert stages.seeded_networks(cfg, ["continuous", "transformer"]) == (
      ("pixel_decoder",), ("baseline",))
  assert ("pixel_decoder",) not in stages.seeded_networks(cfg, ["vq", "transformer"])
  assert stages.seeded_networks(config_io.load_config(TINY), []) == ()
  from hybridflow_jax.train import trainer
  for overrides, renders in (([f"--config.train.init_from={untrained_bundle}",
                               "--config.stage=transformer"], False),
                             ([f"--config.train.init_from={untrained_bundle}"], True),
                             (["--config.stage=transformer"], True)):
    run = trainer.Run(config_io.load_config(TINY, overrides), tmp_path / "unused")
    assert run.evaluator("transformer").measures_images is renders, overrides


def test_fine_tuning_refuses_a_bundle_of_another_model(untrained_bundle, tmp_path):
  from hybridflow_jax.errors import UserError
  from hybridflow_jax.train import trainer
  other = config_io.load_config(TINY, ["--config.model.vq.num_codes=32",
                                       f"--config.train.init_from={untrained_bundle}"])
  with pytest.raises(UserError, match=r"another config: model.vq.num_codes: the bundle has \d+, "
                                      r"given 32"):
    trainer.read_init_bundle(other)
  missing = config_io.load_config(TINY, [f"--config.train.init_from={tmp_path / 'none'}"])
  with pytest.raises(UserError, match="config.train.init_from: no model bundle at"):
    trainer.read_init_bundle(missing)
  # Nothing to fine-tune from: the run initialises from its seed, as before.
  assert trainer.read_init_bundle(config_io.load_config(TINY)) is None


def test_a_stage_can_have_its_own_learning_rate():
  """train.stage_learning_rate.<stage> sets that stage's AdamW peak; the others keep
  train.learning_rate. Measured on the optimiser itself: with constant unit gradients Adam's step
  is the schedule's rate, which reaches its peak after the one warm-up step of a 10-step stage.
  (A few params under the model's names: the optimiser picks what a stage trains by name.)"""
  from hybridflow_jax.train import steps as steps_lib
  cfg = config_io.load_config(TINY, ["--config.train.stage_learning_rate.joint=2e-4",
                                     "--config.train.weight_decay=0"])
  params = {name: {"kernel": np.zeros((2, 3), np.float32)}
            for name in ("bridge", "transformer", "vq_encoder", "pixel_decoder")}
  for stage, peak, trained in (("joint", 2e-4, {"bridge", "transformer"}),
                               ("bridge", cfg.train.learning_rate, {"bridge"})):
    tx = steps_lib.make_optimizer(cfg, params, stage, steps=10)
    grads, state = jax.tree.map(np.ones_like, params), tx.init(params)
    for _ in range(2):
      updates, state = tx.update(grads, state, params)
    for name, leaf in updates.items():
      np.testing.assert_allclose(np.abs(leaf["kernel"]), peak if name in trained else 0.0,
                                 rtol=1e-3, err_msg=f"{stage}: {name}")
  with pytest.raises(UserError, match="stage_learning_rate.vq: must be a stage's peak >= 0"):
    config_io.load_config(TINY, ["--config.train.stage_learning_rate.vq=-1"])


def test_the_joint_stage_can_hold_its_own_rate_target():
  """losses.joint_rate_target (0: losses.rate_target) is the rate above which the joint loss
  weighs bits rate_over_weight times; the continuous stage keeps losses.rate_target. Measured on
  the stages' own losses at 0.04 bpp, between the two targets."""
  from hybridflow_jax import stages
  x = np.zeros((1, 8, 8, 3), np.float32)
  out = {"y_likelihood": np.full((1,), 2.0 ** -(0.04 * 64), np.float32),
         "z_likelihood": np.ones((1,), np.float32), "x_hat": x, "x_cont": x,
         "logits": np.zeros((1, 4, 8), np.float32), "indices": np.zeros((1, 4), np.int32),
         "visible": np.ones((1, 4), bool)}
  def loss(stage, *overrides):
    cfg = config_io.load_config(TINY, ["--config.losses.rate_target=0.05", *overrides])
    return float(stages.get(stage).loss(out, x, cfg.losses)[0])
  over = config_io.load_config(TINY).losses.rate_over_weight
  assert loss("continuous", "--config.losses.joint_rate_target=0.03") == pytest.approx(0.04)
  assert loss("joint") == pytest.approx(0.04)
  assert loss("joint", "--config.losses.joint_rate_target=0.03") == pytest.approx(over * 0.04)
  with pytest.raises(UserError, match="losses.joint_rate_target: rate targets are bpp >= 0"):
    config_io.load_config(TINY, ["--config.losses.joint_rate_target=-0.01"])
