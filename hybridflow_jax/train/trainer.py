"""`hybridflow train`: the staged, sharded trainer.

Every process of a multi-host job runs this same program. A stage goes:

    mesh -> input -> model and optimiser -> shard -> update step -> resume -> loop
    (checkpoints, metrics, evaluations, preemption) -> final params -> DONE

Resume order, for each stage: (1) the latest checkpoint in WORKDIR/STAGE/checkpoints; (2) else
the final params of the stages before it (WORKDIR/<earlier stage>/params); (3) else the initial
params: a fresh initialisation, with every array that the model bundle `train.init_from` holds
taken from it (fine-tuning). A stage with WORKDIR/STAGE/DONE is finished and skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import parameter_overview
from jax.experimental import multihost_utils

from hybridflow_jax import config as config_lib
from hybridflow_jax import info, perceptual, pretrained, schedules, stages
from hybridflow_jax.codec import bundle as bundle_lib
from hybridflow_jax.data import pipeline
from hybridflow_jax.errors import UserError
from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.train import checkpoint as ckpt_lib
from hybridflow_jax.train import profile as profile_lib
from hybridflow_jax.train import sharding as shard_lib
from hybridflow_jax.train import steps as steps_lib
from hybridflow_jax.train.metrics import MetricWriter, ProgressReporter
from hybridflow_jax.train.rundir import RunDir


class Preempted(Exception):
  """Raised after the preemption checkpoint is written; the CLI exits 0."""


class _StopRequest:
  """Set by the signals that ask a run to stop, checked once per step (`exchange`): the run
  checkpoints the step it has reached and exits 0, and the same command resumes it.

    SIGTERM  preemption, as pods and SLURM announce it (and `launch/tpu_pod.sh stop`)
    SIGINT   Ctrl-C; a second Ctrl-C stops at once (KeyboardInterrupt), keeping the last checkpoint
    SIGHUP   the terminal or ssh session the run was started from is gone; what the run printed to
             it goes nowhere from then on (writes to a hung-up terminal fail)
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

  def __init__(self):
    self.received: set[int] = set()
    self._interrupts = 0
    self._previous: dict[int, Any] = {}

  @property
  def raised(self) -> bool:
    return bool(self.received)

  def __enter__(self):
    self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def _handle(self, signum, _frame):
    if signum == signal.SIGHUP:
      _detach_from_terminal()
    if signum == signal.SIGINT:
      self._interrupts += 1
      if self._interrupts > 1:
        raise KeyboardInterrupt
      if jax.process_index() == 0:
        # A raw write: the handler may run while print() holds stdout's buffer. Whatever showed
        # stderr may be gone with the same Ctrl-C (a pipeline's other end): then no message.
        with contextlib.suppress(OSError):
          os.write(2, b"\n[train] Ctrl-C: stopping after this step with a checkpoint (Ctrl-C "
                      b"again stops at once, losing the steps since the last checkpoint)\n")
    self.received.add(signum)

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      signal.signal(s, previous)

  def reason(self) -> str:
    """How the stop is logged: "preempted" for SIGTERM alone, as schedulers and our docs call it.
    (Ctrl-C under `launch/local.sh` brings SIGINT from the terminal and SIGTERM from the script.)"""
    for signum in (signal.SIGINT, signal.SIGHUP):
      if signum in self.received:
        return f"stopped ({signal.Signals(signum).name})"
    return "preempted" if self.received else "stopped (another process was signalled)"

  def exchange(self, skipped: np.ndarray) -> tuple[bool, np.ndarray]:
    """(whether any process was asked to stop, the unreadable records every process met this
    step): one exchange between processes per step. Every process must stop at the same step to
    write one consistent checkpoint, and each reads its own shard of the data, so the run's record
    of skipped images (written by process 0) needs the others' too."""
    skipped = np.asarray(skipped, np.int32).reshape(-1)
    if jax.process_count() == 1:
      return self.raised, skipped
    gathered = np.asarray(multihost_utils.process_allgather(
        np.concatenate([np.asarray([self.raised], np.int32), skipped])))
    return bool(gathered[:, 0].any()), gathered[:, 1:].reshape(-1)


def _detach_from_terminal() -> None:
  """Points stdout and stderr at /dev/null where they are a terminal: after a hang-up, writes to
  it fail (EIO) and would end the run before its checkpoint. Files and pipes are left as they are."""
  null = None
  for fd in (1, 2):
    try:
      if os.isatty(fd):
        null = os.open(os.devnull, os.O_WRONLY) if null is None else null
        os.dup2(null, fd)
    except OSError:
      pass
  if null is not None:
    os.close(null)


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    try:
      print(msg, flush=True)
    except OSError:
      # Whatever showed the output is gone: a hung-up terminal (EIO; the write can fail before the
      # SIGHUP handler runs) or the reader of a pipe (`| tee`). Train on quietly, as after SIGHUP:
      # the work directory holds the metrics and checkpoints.
      _detach_from_terminal()
      null = os.open(os.devnull, os.O_WRONLY)
      os.dup2(null, sys.stdout.fileno())
      os.close(null)


def _load_earlier_stages(run: Run, stage: str, params, abstract) -> Any:
  """Params of every finished earlier stage, each contributing the groups it trained: from memory
  when this call trained that stage (`Run.finished`), else from its folder."""
  params = flax.core.unfreeze(params)
  for earlier in stages.NAMES[:stages.NAMES.index(stage)]:
    folder = run.rundir.stage(earlier)
    if not folder.is_done():
      continue
    if earlier in run.finished:
      flat = flax.traverse_util.flatten_dict(params, sep="/")
      where = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract), sep="/")
      for key, value in run.finished[earlier].items():
        # A copy: this stage's update step donates the state it goes into.
        flat[key] = jax.device_put(value, where[key].sharding, may_alias=False)
      params = flax.traverse_util.unflatten_dict(flat, sep="/")
      _log(f"[{stage}] took the {earlier} stage's params from this run")
      continue
    loaded = ckpt_lib.load_params(folder.params, abstract)
    trained = stages.trainable(loaded, earlier)
    params = jax.tree.map(lambda new, old, t: new if t else old, loaded, params, trained)
    _log(f"[{stage}] loaded the {earlier} stage's params from {folder.params}")
  return params


def read_init_bundle(cfg: ml_collections.ConfigDict) -> tuple[str, dict[str, np.ndarray]] | None:
  """(description, {"module/param": array}) of the bundle `train.init_from` names (a shipped model
  or a `hybridflow export` directory), or None without one. UserError (one line) if it is not a
  readable bundle or was made for another model config: its arrays would not fit these networks."""
  name = cfg.train.get("init_from", "")
  if not name:
    return None
  try:
    b = bundle_lib.read(pretrained.resolve(name))
  except bundle_lib.BundleError as e:
    raise UserError(f"config.train.init_from: {e}") from None
  diffs = config_lib.model_differences(b["config"]["model"], cfg.model.to_dict(),
                                       recorded_as="the bundle has")
  if diffs:
    raise UserError(f"config.train.init_from={name} is a model with another config: {diffs}; "
                    "train with its model config (configs or its config.json)")
  fingerprint = b["manifest"]["fingerprint"][:8]
  return f"{name} (fingerprint {fingerprint})", bundle_lib.flatten(b["params"])


def overlay_bundle(params, flat: dict[str, np.ndarray], shardings):
  """`params` with every array that `flat` holds replaced by it, placed on the leaf's sharding
  (from host memory, on every process: the bundle is the same file everywhere)."""
  tree = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  where = flax.traverse_util.flatten_dict(flax.core.unfreeze(shardings), sep="/")
  unknown = sorted(set(flat) - set(tree))
  if unknown:  # a model config that matches builds the same tree; this is a damaged bundle
    raise UserError(f"config.train.init_from: the bundle has arrays this model lacks: {unknown[0]}")
  for key, value in flat.items():
    old = tree[key]
    if value.shape != old.shape:
      raise UserError(f"config.train.init_from: {key} has shape {value.shape} in the bundle, "
                      f"{old.shape} in this model")
    value = np.asarray(value, dtype=old.dtype)
    tree[key] = jax.make_array_from_callback(value.shape, where[key], lambda i, v=value: v[i])
  return flax.traverse_util.unflatten_dict(tree, sep="/")


class Run:
  """What every stage of one `train` call shares: the mesh, the model, its initial params and the
  evaluator (each built or compiled once, not once per stage)."""

  def __init__(self, cfg: ml_collections.ConfigDict, workdir: pathlib.Path):
    self.cfg, self.rundir = cfg, RunDir(workdir)
    self.mesh = shard_lib.make_mesh(cfg.mesh)
    self.data_parallel = int(np.prod([self.mesh.shape[a]
                                      for a in shard_lib.batch_axes(self.mesh)]))
    if cfg.train.batch_size % self.data_parallel or cfg.train.batch_size % jax.process_count():
      raise ValueError(f"config.train.batch_size={cfg.train.batch_size} must divide by the "
                       f"data-parallel size {self.data_parallel} and the process count")
    self.model = hf.build_model(cfg)
    self.abstract_params = hf.param_shapes(self.model)
    self.param_shardings = shard_lib.tree_shardings(self.abstract_params, self.mesh,
                                                    cfg.sharding_rules, cfg.sharding_min_size)
    # Read (and checked against the model) before any stage trains, so a wrong path fails at once;
    # its arrays are dropped once the initial params hold them.
    self._init_bundle = read_init_bundle(cfg)
    self.fine_tuning = self._init_bundle is not None
    self._initial_params = None
    self._evaluators: dict[Any, Evaluator] = {}
    # {stage: {"group/.../param": array}}, the params each stage this call finished trained: later
    # stages take them from here, not from the files just written (the same arrays, to the bit).
    self.finished: dict[str, dict[str, jax.Array]] = {}

  def initial_params(self):
    """Freshly initialised params, with `train.init_from`'s arrays in place of theirs, created on
    their shardings once per process (a resumed stage never needs them)."""
    if self._initial_params is None:
      init = jax.jit(lambda r: hf.init_params(self.model, r), out_shardings=self.param_shardings)
      params = init(jax.random.PRNGKey(self.cfg.seed))
      if self._init_bundle is not None:
        (name, flat), self._init_bundle = self._init_bundle, None
        params = overlay_bundle(params, flat, self.param_shardings)
        total = len(jax.tree.leaves(params))
        _log(f"[init] {len(flat)} of {total} parameter arrays from {name}; the others (networks "
             f"used only in training) initialised from seed {self.cfg.seed}")
      self._initial_params = params
    # Copies: the update step donates its state, and later stages must still find these intact.
    return jax.device_put(self._initial_params, self.param_shardings, may_alias=False)

  def evaluator(self, stage: str) -> Evaluator:
    """The held-out evaluation of `stage` (compiled once per evaluation program)."""
    program = stages.STAGES[stage].evaluation
    run_stages = stages.stage_list(self.cfg)
    trained = run_stages[:run_stages.index(stage) + 1]
    # A fine-tuned run that did not train the network its evaluation renders with has that
    # network as its seed made it: its pixels would measure nothing.
    renders = not program.renders_with or \
        program.renders_with not in stages.seeded_networks(self.cfg, trained)
    if (program, renders) not in self._evaluators:
      if not renders:
        _log(f"[{stage}] {stages.seeded_note(program.renders_with, self.cfg, 'this run')}: the "
             f"held-out evaluation leaves out the images it renders "
             f"({', '.join(stages.IMAGE_METRICS)})")
      self._evaluators[program, renders] = Evaluator(self.model, self.cfg, self.mesh, program,
                                                     measure_images=renders)
    return self._evaluators[program, renders]


def _mesh_line(run: Run) -> str:
  """Where the steps run: '[mesh] 4 devices (cpu) in 2 processes, data=2 x fsdp=2; batch 8, 4 a
  data-parallel replica'."""
  mesh, batch_size = run.mesh, run.cfg.train.batch_size
  platform = mesh.devices.flat[0].platform
  axes = " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
  processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
  return (f"[mesh] {mesh.size} device{'s' * (mesh.size > 1)} ({platform}){processes}, {axes}; "
          f"batch {batch_size}, {batch_size // run.data_parallel} a data-parallel replica")


def train_stage(run: Run, stage: str, stop: _StopRequest) -> dict:
  """Trains one stage to `cfg.train.steps[stage]` steps (resuming if possible); returns the last
  evaluation. Raises Preempted after checkpointing when asked to stop (`_StopRequest`)."""
  cfg, mesh, model = run.cfg, run.mesh, run.model
  record, folder = stages.STAGES[stage], run.rundir.stage(stage)
  total_steps = int(cfg.train.steps[stage])
  # Fine-tuning: the networks a stage needs come from the model bundle when this run has no
  # finished stage of its own to take them from.
  missing = [] if run.fine_tuning else run.rundir.unfinished(record.needs)
  if missing:
    raise ValueError(f"stage {stage} needs the finished {', '.join(missing)} stage(s) in "
                     f"{run.rundir.root} (run config.stage=pipeline, or those stages first)")

  # --- Model, optimiser, shardings and the update step ------------------------------------------
  compiled = steps_lib.stage_step(model, cfg, stage, mesh, run.abstract_params, total_steps)
  abstract_state, images_sharding = compiled.abstract_state, compiled.images_sharding

  # --- Input -------------------------------------------------------------------------------------
  data_iter = pipeline.train_iterator(
      cfg.data.train, crop=compiled.crop, batch_size=cfg.train.batch_size // jax.process_count(),
      seed=cfg.seed, process_index=jax.process_index(), process_count=jax.process_count(),
      workers=cfg.data.workers, prefetch=cfg.data.prefetch, cache_mb=cfg.data.get("cache_mb", 0))

  # --- Resume ------------------------------------------------------------------------------------
  checkpoints = ckpt_lib.StageCheckpoints(folder.checkpoints, folder.frozen,
                                          cfg.train.keep_checkpoints, cfg.train.checkpoint_every,
                                          stages.trainable(run.abstract_params, stage))
  latest = checkpoints.latest_step()
  if latest is not None:
    restore_data = checkpoints.has_data_state(latest)
    state = checkpoints.restore(latest, abstract_state, data_iter if restore_data else None)
    _log(f"[{stage}] resumed from step {latest} ({folder.checkpoints})"
         + ("" if restore_data else "; input restarts (process count changed)"))
  else:
    params = _load_earlier_stages(run, stage, run.initial_params(), abstract_state.params)
    # A stage's start-up (the bridge as a copy of the pixel decoder) is for training from scratch:
    # a model to fine-tune brings its own.
    if record.start is not None and not run.fine_tuning:
      params = record.start(params, run.param_shardings)
    checkpoints.start(params)
    state = jax.jit(compiled.make_state, out_shardings=compiled.state_shardings)(params)
    _log(f"[{stage}] starting at step 0")

  # --- Metrics -----------------------------------------------------------------------------------
  writer = MetricWriter(folder.metrics)
  if latest is None and jax.process_index() == 0:
    overview = parameter_overview.get_parameter_overview(run.abstract_params,
                                                         include_stats=False)
    writer.write_texts(0, {"parameter_overview": overview})
    writer.write_hparams(cfg.to_dict())
    logging.info("parameters:\n%s", overview)
  progress = ProgressReporter(total_steps, start_step=int(state.step))
  bad_file = folder.skipped
  bad_records: set[int] = set(json.loads(bad_file.read_text())) if bad_file.exists() else set()

  # --- Loop --------------------------------------------------------------------------------------
  step = int(state.step)
  images_since_log = 0
  history: list[dict] = []
  result: dict = {}
  profiler = profile_lib.StepProfiler(folder.profile, cfg.train.get("profile_steps", 0), step,
                                     f"[{stage}]")
  while step < total_steps:
    batch = next(data_iter)
    images = jax.make_array_from_process_local_data(images_sharding, batch["image"])
    profiler.before(step)
    state, metrics = compiled.step(state, images)
    step += 1
    if line := profiler.after(step, state):
      _log(line)
    preempted, skipped = stop.exchange(batch["skipped"])
    if new := {int(i) for i in skipped if i >= 0} - bad_records:
      bad_records |= new
      ckpt_lib.write_json(bad_file, sorted(bad_records))
    images_since_log += cfg.train.batch_size

    if step % cfg.train.log_every == 0 or step == total_steps or step == 1:
      # Fetching the metrics waits for the step: only then do the rates measure real work
      # (dispatch is asynchronous and runs ahead of the devices).
      scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
      progress.update(step, images_since_log)
      images_since_log = 0
      scalars["data/skipped_images"] = float(len(bad_records))
      scalars.update({f"perf/{k}": v for k, v in progress.report().items()})
      writer.write_scalars(step, scalars)
      history.append({"step": step, **scalars})
      _log(f"[{stage}] " + progress.format(step, {k: scalars[k] for k in ("loss",) if k in scalars}))

    checkpoints.save(step, state, data_iter, cfg)
    if cfg.train.eval_every and (step % cfg.train.eval_every == 0) and step < total_steps:
      result = run.evaluator(stage).run(_inference_params(state, cfg), writer, step)
    if preempted:
      checkpoints.save(step, state, data_iter, cfg, force=True)
      checkpoints.wait()
      writer.flush()
      _log(f"[{stage}] {stop.reason()}: checkpoint written at step {step}; rerun the same command "
           "to continue")
      raise Preempted()

  # --- Finish ------------------------------------------------------------------------------------
  if line := profiler.finish(step, state):
    _log(line)
  checkpoints.save(step, state, data_iter, cfg, force=True)
  checkpoints.wait()
  final = _inference_params(state, cfg)
  if cfg.train.eval_at_end:
    result = run.evaluator(stage).run(final, writer, step)
  checksum = jax.jit(lambda p: sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(p)),
                     out_shardings=shard_lib.replicated(mesh))(final)
  # Printed by every process: in a multi-host job they must all agree.
  print(f"[{stage}] process {jax.process_index()}: final params checksum "
        f"{float(checksum.addressable_data(0)):.9e}", flush=True)
  # Params left by an interrupted finish are written again.
  ckpt_lib.clear(folder.params)
  ckpt_lib.save_params(folder.params, final)
  trained = flax.traverse_util.flatten_dict(flax.core.unfreeze(stages.trainable(final, stage)),
                                            sep="/")
  run.finished[stage] = {k: v for k, v in flax.traverse_util.flatten_dict(
      flax.core.unfreeze(final), sep="/").items() if trained[k]}
  ckpt_lib.write_json(folder.summary, {
      "stage": stage, "steps": step, "skipped_images": sorted(bad_records),
      "history": history, "eval": result})
  if jax.process_index() == 0:
    folder.mark_done(step)
  multihost_utils.sync_global_devices(f"hybridflow {stage} done")
  writer.close()
  checkpoints.close()
  return result


def _inference_params(state: steps_lib.TrainState, cfg) -> Any:
  return state.ema_params if cfg.train.ema_decay > 0 else state.params


class Evaluator:
  """A stage's held-out evaluation (`Stage.evaluation`): its metrics per operating point (or once,
  with every index kept), original-vs-reconstruction images, and a flat image of each photo's mean
  colour as the reference line every table carries."""

  FLAT = "flat mean"

  def __init__(self, model, cfg, mesh, evaluation: stages.Evaluation,
               measure_images: bool = True):
    # measure_images=False: the reconstruction is not measured (its renderer is untrained here).
    self.measures_images = measure_images
    names, images = pipeline.eval_images(cfg.data.eval, cfg.eval_size, cfg.data.eval_limit)
    if not names:
      raise ValueError(f"config.data.eval={cfg.data.eval!r} holds no readable image")
    self.names, self.images = names, jax.device_put(images, shard_lib.replicated(mesh))
    # The operating points' keep-maps depend only on the images: computed once.
    points = schedules.OPERATING_POINTS if evaluation.per_point else ("1_1",)
    self.points = {}
    for name in points:
      keep, side_bits = hf.keep_maps(self.images, name, cfg.model.masking)
      self.points[name] = (keep, jnp.asarray(np.full(len(names), side_bits), jnp.float32))
    flat = np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape)
    self.flat_psnr = float(np.mean(stages.psnr(jnp.asarray(flat), jnp.asarray(images))))
    self.fn = jax.jit(evaluation.build(model, cfg))
    self.lpips = shard_lib.put_replicated(perceptual.lpips_weights("alexnet"), mesh)

  def run(self, params, writer: MetricWriter, step: int) -> dict:
    table = {}
    for name, (keep, side_bits) in self.points.items():
      metrics, recon = self.fn(params, self.lpips, self.images, keep, side_bits)
      metrics = jax.device_get(metrics)
      table[name] = {k: float(np.mean(v)) for k, v in metrics.items()
                     if self.measures_images or k not in stages.IMAGE_METRICS}
      writer.write_scalars(step, {f"eval/{name}/{k}": v for k, v in table[name].items()})
      if self.measures_images:
        strip = np.concatenate([np.asarray(self.images[:2]), np.asarray(recon[:2])], axis=2)
        writer.write_images(step, {f"eval/{name}/original_vs_reconstruction": strip})
    table[self.FLAT] = {"psnr": self.flat_psnr}
    writer.write_scalars(step, {"eval/flat_mean_psnr": self.flat_psnr})
    writer.flush()
    return table


# Table columns, in order, with their headings and formats; a stage's table shows those it has.
_COLUMNS = (("keep_ratio", "kept", "{:6.3f}"), ("bpp_estimated", "bpp (est.)", "{:10.4f}"),
            ("bpp_indices", "indices", "{:7.4f}"), ("bpp_y", "y", "{:7.4f}"),
            ("bpp_z", "z", "{:7.4f}"), ("token_acc", "token acc", "{:9.3f}"),
            ("psnr", "PSNR (dB)", "{:9.2f}"),
            ("lpips", "LPIPS", "{:7.4f}"), ("codes_used", "codes used", "{:10.3f}"))


def format_table(results: dict) -> str:
  keys = {k for r in results.values() for k in r}
  columns = [c for c in _COLUMNS if c[0] in keys]
  width = lambda fmt: len(fmt.format(0.0))
  lines = [f"{'point':<10s}" + " ".join(f"{head:>{width(fmt)}s}" for _, head, fmt in columns)]
  for name, r in results.items():
    cells = [fmt.format(r[k]) if k in r else " " * width(fmt) for k, _, fmt in columns]
    lines.append(f"{name:<10s}" + " ".join(cells))
  return "\n".join(lines)


def train(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path,
          log: Callable[[str], None] = _log) -> dict:
  """Runs `cfg.stage` (or every stage for "pipeline") in `workdir`; returns the final table."""
  rundir = RunDir(workdir)
  rundir.check_model(cfg)
  rundir.root.mkdir(parents=True, exist_ok=True)
  # Process 0 holds the run directory's lock for the job (every process sees the same directory);
  # all processes stop if it is taken.
  lock = rundir.training_lock()
  holder = lock.acquire() if jax.process_index() == 0 else None
  if _on_any_process(holder is not None):
    raise UserError(f"{rundir.root} is being trained by another `hybridflow train` "
                    f"({holder or 'process 0 found its lock taken'}): stop that run first, or "
                    "use another --workdir")
  try:
    return _train_locked(cfg, rundir, log)
  finally:
    lock.release()


def _on_any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.asarray(multihost_utils.process_allgather(np.asarray([flag], np.int32))).any())


def _train_locked(cfg: ml_collections.ConfigDict, rundir: RunDir,
                  log: Callable[[str], None]) -> dict:
  if jax.process_index() == 0:
    rundir.write_config(cfg)
  start = time.time()
  results: dict[str, dict] = {}
  run = Run(cfg, rundir.root)
  log(info.overview(cfg) + "\n")
  log(_mesh_line(run))
  with _StopRequest() as stop:
    for stage in stages.stage_list(cfg):
      if rundir.stage(stage).is_done():
        log(f"[{stage}] already finished, skipping")
        results[stage] = rundir.stage(stage).final_eval()
        continue
      # Asked to stop while the stage before was evaluated: not after this one's compilation.
      if stop.exchange(np.zeros(0, np.int32))[0]:
        log(f"[{stage}] {stop.reason()} before it started; rerun the same command to continue")
        raise Preempted()
      results[stage] = train_stage(run, stage, stop)
  # The final table is the codec's: its last stage (a comparator such as `baseline` reports its
  # own table when it finishes).
  final = (stages.codec_stages(cfg) or stages.stage_list(cfg))[-1]
  result = results.get(final, {})
  if result:
    last = stages.STAGES[final].evaluation
    log(f"\nheld-out images ({cfg.data.eval}), center {cfg.eval_size} px crops: {last.name}; "
        "estimated rate:")
    log(format_table(result))
    ckpt_lib.write_json(rundir.results, {
        "config": cfg.stage, "eval_data": cfg.data.eval, "eval_size": cfg.eval_size,
        "results": result, "seconds": time.time() - start})
    log(f"wrote {rundir.results}")
  return result
