"""GroupNorm over an image that is computed window by window.

GroupNorm normalises each group of channels by its mean and variance over the whole image, so a
network with GroupNorms cannot simply be run on windows: each window would normalise by its own
statistics. Here a window's pass runs the network under a flax method interceptor that treats each
GroupNorm layer in one of two ways:

- its whole-image statistics are known: it normalises with them (flax's formula: (x - mean) *
  (rsqrt(var + epsilon) * scale) + bias, the mean and variance of its group);
- they are not yet known: the pass ends there and returns, per group, the sum and the sum of
  squares of the layer's input over the part of the window that the window is kept for, and the
  count. Summed over the windows these give the whole image's statistics (as flax's GroupNorm
  computes them: variance = mean of squares - squared mean).

So a network with n GroupNorms runs in n + 1 passes over the windows, each one layer further;
every pass's windows reach far enough past what they keep that the kept part is exact (the caller
chooses the halo). The statistics then differ from the one-program ones only by the order of the
sums (float rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class _End(Exception):
  def __init__(self, value):
    super().__init__("a windowed pass reached a GroupNorm without statistics")
    self.value = value


def _is_group_norm(context) -> bool:
  return isinstance(context.module, nn.GroupNorm) and context.method_name == "__call__"


def layer_paths(fn: Callable, *args) -> list[str]:
  """The GroupNorm layers `fn(*args)` applies, in order ("/"-joined module paths); traced
  abstractly (nothing is computed)."""
  paths = []

  def record(next_fun, call_args, kwargs, context):
    if _is_group_norm(context):
      paths.append("/".join(context.module.path))
    return next_fun(*call_args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(fn, *args)
  return paths


def window_pass(fn: Callable[[], jax.Array], known: dict[str, tuple[jax.Array, jax.Array]],
                keep: jax.Array, window_hw: Sequence[int], per_token: int):
  """Runs `fn()` (inside a trace) with the GroupNorms in `known` (path -> per-group mean and
  variance, float32 [G] each) normalising with those statistics. Returns fn's output, or, at the
  first GroupNorm not in `known`, float32 [rows, 3, G]: for each row of its input, the sum, the
  sum of squares and the count of its values per group inside the kept box.

  keep: int32 [4], the kept box in tokens relative to the window (row from, row to, column from,
  column to); window_hw: the window's size in positions of fn's input; per_token: positions of
  fn's input per token.
  """

  def intercept(next_fun, args, kwargs, context):
    if not _is_group_norm(context):
      return next_fun(*args, **kwargs)
    module, x = context.module, args[0]
    path = "/".join(module.path)
    groups = module.num_groups
    b, h, w, c = x.shape
    if path in known:
      mean, var = (jnp.repeat(v, c // groups) for v in known[path])
      params = module.variables["params"]
      mul = jax.lax.rsqrt(var + module.epsilon) * params["scale"]
      return (x - mean) * mul + params["bias"]
    per = h * per_token // window_hw[0]                     # the layer's positions per token
    rows = jnp.arange(h)
    cols = jnp.arange(w)
    inside = (((rows >= keep[0] * per) & (rows < keep[1] * per))[:, None] &
              ((cols >= keep[2] * per) & (cols < keep[3] * per))[None, :])
    # Sums per row only: the caller adds the rows in float64. (One float32 sum over a window's
    # million positions was off by up to 1e-3 relative, enough to move the normalised values of a
    # 24 MP image by 0.003 on average.)
    m = inside.astype(x.dtype)[None, :, :, None, None]
    xg = x.reshape(b, h, w, groups, c // groups)
    count = jnp.broadcast_to(jnp.sum(m, axis=(0, 2, 3, 4))[:, None] * (b * (c // groups)),
                             (h, groups))
    raise _End(jnp.stack([jnp.sum(xg * m, axis=(0, 2, 4)), jnp.sum(xg * xg * m, axis=(0, 2, 4)),
                          count], axis=1))

  try:
    with nn.intercept_methods(intercept):
      return fn()
  except _End as end:
    return end.value


def statistics(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The whole image's per-group mean and variance from `window_pass`' sums added over every
  window and row (float64 [3, G]), as flax's GroupNorm computes them; float32."""
  mean = sums[0] / sums[2]
  var = np.maximum(sums[1] / sums[2] - mean * mean, 0.0)
  return mean.astype(np.float32), var.astype(np.float32)
