"""`config.train.profile_steps` = N traces N update steps of each stage with `jax.profiler`.

The trace starts SKIP steps after the loop starts (or resumes), once the step has compiled and run,
and stops when N steps have finished on the devices. Each process writes its own trace under
`WORKDIR/<stage>/profile/process_<i>/` (`plugins/profile/<time>/<host>.xplane.pb`, which
TensorBoard's profile plugin and xprof open: per-op times on GPUs and TPUs) and the traced steps'
wall time in the log.

On XLA:CPU the trace's op events time the dispatch of each op, not its work: convolutions, matrix
products and fusions run asynchronously on XLA's thread pool, untraced (a 172 ms convolution, a
60 ms fusion and a 77 ms 2048² matrix product each showed as an event of under 0.01 ms, jax
0.10.2). Where a CPU step's time goes takes timing its layers one at a time instead.
"""

from __future__ import annotations

import pathlib
import time

import jax

SKIP = 2           # update steps run before the trace starts: the first compiles the step


class StepProfiler:
  """Traces `steps` update steps of a training loop that starts at update `start`; nothing if
  steps is 0.

  Call `before(step)` before running update `step + 1` (step: the updates done so far) and
  `after(step, state)` once it is dispatched; `after` returns a line for the log when the trace
  ends, and `finish(step, state)` ends a trace that the stage's last step cut short.
  """

  def __init__(self, folder: pathlib.Path, steps: int, start: int, title: str):
    self.folder = pathlib.Path(folder) / f"process_{jax.process_index()}"
    self.steps, self.first, self.title = steps, start + SKIP, title
    self._began: float | None = None

  def before(self, step: int) -> None:
    if self.steps and step == self.first:
      self.folder.mkdir(parents=True, exist_ok=True)
      options = jax.profiler.ProfileOptions()
      # No Python tracer: the input and checkpoint threads would record hundreds of thousands of
      # calls a step and slow the steps being measured.
      options.python_tracer_level = 0
      jax.profiler.start_trace(str(self.folder), profiler_options=options)
      self._began = time.perf_counter()

  def after(self, step: int, state) -> str | None:
    if self._began is not None and step == self.first + self.steps:
      return self.finish(step, state)
    return None

  def finish(self, step: int, state) -> str | None:
    if self._began is None:
      return None
    jax.block_until_ready(state)
    wall = time.perf_counter() - self._began
    jax.profiler.stop_trace()
    self._began = None
    traced = step - self.first
    return (f"{self.title} profile: steps {self.first + 1}-{step} traced, {wall / traced:.4f} s a "
            f"step, in {self.folder}")
