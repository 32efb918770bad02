import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridflow_jax.models.entropy import (
  FactorizedPrior,
  bits,
  factorized_host_cdf,
  gaussian_likelihood,
  quantize,
)

BINS = jnp.arange(-300.0, 301.0)


def test_factorized_prior_sums_to_one_over_integer_bins():
  prior = FactorizedPrior(channels=5)
  values = jnp.broadcast_to(BINS[:, None], (BINS.size, 5))
  for seed in range(3):
    params = prior.init(jax.random.PRNGKey(seed), values)
    # Perturb every parameter so the check is not only about the initial density.
    noise_key = jax.random.PRNGKey(seed + 9)
    params = jax.tree.map(lambda p, k=noise_key: p + 0.3 * jax.random.normal(k, p.shape), params)
    p = prior.apply(params, values)
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-3)


def test_host_cdf_for_the_tables_is_the_model_prior_in_float64():
  """The exporter's float64 NumPy cumulative and the model's float32 likelihoods are one function."""
  prior = FactorizedPrior(channels=3)
  values = jnp.broadcast_to(jnp.arange(-20.0, 21.0)[:, None], (41, 3))
  params = prior.init(jax.random.PRNGKey(0), values)
  params = jax.tree.map(lambda p: p + 0.2 * jax.random.normal(jax.random.PRNGKey(1), p.shape),
                        params)
  cdf = factorized_host_cdf(jax.device_get(params["params"]))
  points = np.asarray(values).T                                       # [C, N]
  from_host = cdf(points + 0.5) - cdf(points - 0.5)
  from_model = np.asarray(prior.apply(params, values)).T
  np.testing.assert_allclose(from_host, from_model, atol=2e-6)


@pytest.mark.parametrize("mean", [-7.3, 0.0, 0.4, 12.0])
@pytest.mark.parametrize("scale", [0.05, 0.2, 1.0, 6.5, 40.0])
def test_gaussian_conditional_sums_to_one_over_integer_bins(mean, scale):
  p = gaussian_likelihood(BINS, jnp.float32(mean), jnp.float32(scale))
  assert abs(float(p.sum()) - 1.0) < 1e-3


def test_bits_fall_as_scale_shrinks_around_the_mean():
  means = jnp.asarray([0.0, 2.3, -5.6])
  scales = [8.0, 4.0, 2.0, 1.0, 0.5, 0.25]
  y = jnp.round(means)  # the bin that holds the mean
  costs = [float(bits(gaussian_likelihood(y, means, jnp.full(3, s)))) for s in scales]
  assert all(a > b for a, b in zip(costs, costs[1:])), costs


def test_quantize_modes():
  x = jnp.asarray([0.2, 1.7, -2.5001, 3.49])
  np.testing.assert_array_equal(quantize(x, "round"), jnp.asarray([0.0, 2.0, -3.0, 3.0]))
  # Rounding is around the offset (the predicted mean), as the codec sends it.
  np.testing.assert_allclose(quantize(x, "round", offset=0.5), [0.5, 1.5, -2.5, 3.5])
  noisy = quantize(x, "noise", jax.random.PRNGKey(0))
  assert jnp.all(jnp.abs(noisy - x) <= 0.5) and not jnp.allclose(noisy, x)
  g = jax.grad(lambda v: jnp.sum(quantize(v, "ste") * 3.0))(x)
  np.testing.assert_allclose(g, 3.0)  # straight-through
  with pytest.raises(ValueError):
    quantize(x, "noise")


def test_lower_bounds_hold_and_let_gradients_recover():
  # A scale below the bound is clamped in value...
  p_small = gaussian_likelihood(jnp.float32(0.0), jnp.float32(0.0), jnp.float32(1e-4))
  p_bound = gaussian_likelihood(jnp.float32(0.0), jnp.float32(0.0), jnp.float32(0.11))
  assert float(p_small) == pytest.approx(float(p_bound))
  # ...but a loss that wants a larger scale still gets a gradient (it is not stuck for good).
  far = jnp.float32(1.0)
  g = jax.grad(lambda s: bits(gaussian_likelihood(far, jnp.float32(0.0), s)))(jnp.float32(1e-4))
  assert float(g) < 0.0
