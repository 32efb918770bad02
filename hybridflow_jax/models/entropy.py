"""Entropy models for the continuous stream: probabilities of quantised latents, in bits.

- `FactorizedPrior`: Ballé et al. 2018's non-parametric density, one per channel (for z).
- `GaussianConditional`: a Gaussian with predicted mean and scale, integrated over each integer
  bin (for y), with lower bounds on the scale and on the likelihood.

Likelihoods are probabilities of the bin [v - 0.5, v + 0.5] that holds each quantised value, so the
rate of a tensor is `bits(likelihood)`. The codec (`hybridflow_jax.codec`) freezes both models into
integer tables; nothing here runs at decode time on a different machine.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

QUANTIZATION_MODES = ("noise", "ste", "round")


def quantize(x: jax.Array, mode: str, rng: jax.Array | None = None,
             offset: jax.Array | float = 0.0) -> jax.Array:
  """Quantises `x` to the grid `offset + Z`.

  mode: "noise" adds U(-0.5, 0.5) (the differentiable training proxy; needs `rng`), "ste" rounds
  with a straight-through gradient, "round" rounds (inference).
  """
  if mode == "noise":
    if rng is None:
      raise ValueError("quantize(mode='noise') needs an rng")
    return x + jax.random.uniform(rng, x.shape, x.dtype, -0.5, 0.5)
  rounded = jnp.round(x - offset) + offset
  if mode == "ste":
    return x + jax.lax.stop_gradient(rounded - x)
  if mode == "round":
    return rounded
  raise ValueError(f"quantization mode must be one of {QUANTIZATION_MODES}, got {mode!r}")


def bits(likelihood: jax.Array, axis=None) -> jax.Array:
  """Information content, -sum(log2 p), over `axis` (all axes by default)."""
  return -jnp.sum(jnp.log2(likelihood), axis=axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _lower_bound(x: jax.Array, bound: float) -> jax.Array:
  """max(x, bound) whose gradient still pushes x up when it sits below the bound.

  A plain maximum has zero gradient below the bound, which would freeze a scale or likelihood that
  fell there for good; like tensorflow-compression's lower_bound we let a gradient through below the
  bound when descent would move x back up.
  """
  return jnp.maximum(x, bound)


def _lower_bound_fwd(x, bound):
  return jnp.maximum(x, bound), x


def _lower_bound_bwd(bound, x, g):
  # Descent moves x by -g: let the gradient through where x is above the bound or g < 0.
  return (jnp.where((x >= bound) | (g < 0), g, 0.0),)


_lower_bound.defvjp(_lower_bound_fwd, _lower_bound_bwd)


def factorized_logits_cumulative(matrices, biases, factors, x, xp=jnp):
  """The factorized prior's cumulative network: x [C, 1, N] -> [C, 1, N] logits of the CDF.

  The one definition, for the model (xp=jax.numpy, float32) and for the frozen tables the exporter
  builds from its params (xp=numpy, float64: `factorized_host_cdf`).
  """
  for k, (matrix, bias) in enumerate(zip(matrices, biases)):
    # softplus keeps the matrices positive (a monotone CDF); centre the uniform(0, 1) bias init.
    x = xp.matmul(xp.logaddexp(matrix, 0.0), x) + (bias - 0.5)
    if k < len(factors):
      x = x + xp.tanh(factors[k]) * xp.tanh(x)
  return x


def factorized_host_cdf(prior_params: dict) -> Callable[[np.ndarray], np.ndarray]:
  """The cumulative of a trained factorized prior as a float64 NumPy function [C, n] -> [C, n]
  (the exporter's integer tables are built from it); `prior_params` are its flax params."""
  count = len([k for k in prior_params if k.startswith("matrix")])
  p = {k: np.asarray(v, np.float64) for k, v in prior_params.items()}
  matrices = [p[f"matrix{k}"] for k in range(count)]
  biases = [p[f"bias{k}"] for k in range(count)]
  factors = [p[f"factor{k}"] for k in range(count - 1)]

  def cdf(points: np.ndarray) -> np.ndarray:
    x = np.asarray(points, np.float64)[:, None, :]          # [C, 1, N]
    logits = factorized_logits_cumulative(matrices, biases, factors, x, np)
    return 0.5 * (1.0 + np.tanh(0.5 * logits[:, 0, :]))      # sigmoid, stable in float64
  return cdf


class FactorizedPrior(nn.Module):
  """Per-channel learned density (Ballé et al. 2018, appendix 6.1), for inputs [..., C].

  The cumulative of each channel is a small monotone network c(x) = f_K(...f_1(x)); `filters` are its
  hidden widths and `init_scale` the initial width of the density (both as in the paper).
  """

  channels: int
  filters: Sequence[int] = (3, 3, 3)
  init_scale: float = 10.0
  likelihood_bound: float = 1e-9

  def setup(self):
    dims = (1, *self.filters, 1)
    scale = self.init_scale ** (1.0 / (len(self.filters) + 1))
    matrices, biases, factors = [], [], []
    for k in range(len(self.filters) + 1):
      init = math.log(math.expm1(1.0 / scale / dims[k + 1]))
      matrices.append(self.param(f"matrix{k}", nn.initializers.constant(init),
                                 (self.channels, dims[k + 1], dims[k])))
      biases.append(self.param(f"bias{k}", nn.initializers.uniform(1.0),
                               (self.channels, dims[k + 1], 1)))
      if k < len(self.filters):
        factors.append(self.param(f"factor{k}", nn.initializers.zeros,
                                  (self.channels, dims[k + 1], 1)))
    self.matrices, self.biases, self.factors = matrices, biases, factors

  def logits_cumulative(self, x: jax.Array) -> jax.Array:
    """x: [C, 1, N] -> [C, 1, N] logits of the cumulative distribution at x."""
    return factorized_logits_cumulative(self.matrices, self.biases, self.factors, x, jnp)

  def __call__(self, values: jax.Array) -> jax.Array:
    """values: [..., C] (already quantised or noised) -> likelihoods [..., C]."""
    shape = values.shape
    x = jnp.moveaxis(values.reshape(-1, shape[-1]), -1, 0)[:, None, :]
    lower = self.logits_cumulative(x - 0.5)
    upper = self.logits_cumulative(x + 0.5)
    # Evaluate on the side of the median where the sigmoid is not saturated (numerical stability).
    sign = jax.lax.stop_gradient(-jnp.sign(lower + upper))
    p = jnp.abs(jax.nn.sigmoid(sign * upper) - jax.nn.sigmoid(sign * lower))
    p = jnp.moveaxis(p[:, 0, :], 0, -1).reshape(shape)
    return _lower_bound(p, self.likelihood_bound)


def gaussian_likelihood(values: jax.Array, mean: jax.Array, scale: jax.Array,
                        scale_bound: float = 0.11, likelihood_bound: float = 1e-9) -> jax.Array:
  """Probability of the unit bin around `values` under N(mean, scale^2), elementwise.

  scale_bound 0.11 and likelihood_bound 1e-9 follow Minnen et al. 2018 / CompressAI's defaults.
  """
  scale = _lower_bound(scale, scale_bound)
  v = jnp.abs(values - mean)
  # Both tails measured on the same (left) side: accurate far from the mean.
  upper = jax.scipy.special.ndtr((0.5 - v) / scale)
  lower = jax.scipy.special.ndtr((-0.5 - v) / scale)
  return _lower_bound(upper - lower, likelihood_bound)


class GaussianConditional(nn.Module):
  """Mean-scale Gaussian conditional, parameter-free: the hyper-synthesis supplies mean and scale."""

  scale_bound: float = 0.11
  likelihood_bound: float = 1e-9

  def __call__(self, values: jax.Array, mean: jax.Array, scale: jax.Array) -> jax.Array:
    return gaussian_likelihood(values, mean, scale, self.scale_bound, self.likelihood_bound)
