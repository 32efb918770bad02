"""models/batched_rng: a traced initialisation replayed with its hashes batched computes the same
params to the bit, in a program with a handful of hashes instead of one per draw."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from hybridflow_jax.models import batched_rng
from hybridflow_jax.models import hybridflow as hf

KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


class _Block(nn.Module):
  """Every way the model's modules draw randomness: initialisers (truncated normal, uniform,
  normal, zeros) under flax's per-path keys, a split of a module's own rng stream, an embedding."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.Conv(8, (3, 3), kernel_init=nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal"))(x)
    x = nn.Dense(5, kernel_init=nn.initializers.uniform(0.1),
                 bias_init=nn.initializers.normal(0.5))(x)
    table = nn.Embed(7, 5)(jnp.arange(3))
    a, b = jax.random.split(self.make_rng("params"), 2)
    noise = jax.random.normal(a, (4,)) + jax.random.uniform(b, (4,))
    offset = self.param("offset", lambda k: noise + jax.random.bernoulli(k, 0.5, (4,)))
    return x.sum() + table.sum() + offset.sum()


class _Model(nn.Module):
  @nn.compact
  def __call__(self, x):
    return _Block()(x) + _Block(name="second")(x)


def _traced_init(module, x_shape):
  init = lambda rng: module.init({"params": rng}, jnp.zeros(x_shape))["params"]
  closed, shapes = jax.make_jaxpr(init, return_shape=True)(KEY)
  return closed, jax.tree.structure(shapes)


def _bits(tree):
  return [np.asarray(a).view(np.uint32) if a.dtype == np.float32 else np.asarray(a)
          for a in jax.tree.leaves(tree)]


@pytest.mark.parametrize("seed", [0, 7])
def test_batched_init_is_the_plain_init_to_the_bit(seed):
  closed, treedef = _traced_init(_Model(), (1, 8, 8, 3))
  batched = batched_rng.batched_replay(closed)
  assert isinstance(batched, batched_rng._Program), "fell back to the plain replay"
  key = jax.random.PRNGKey(seed)
  plain_params = jax.jit(lambda r: treedef.unflatten(jax_core.jaxpr_as_fun(closed)(r)))(key)
  batched_params = jax.jit(lambda r: treedef.unflatten(batched(r)))(key)
  for a, b in zip(_bits(plain_params), _bits(batched_params), strict=True):
    np.testing.assert_array_equal(a, b)
  # Two blocks of draws: one hash per wave of independent draws instead of one per draw.
  plain = batched_rng.hash_count(jax_core.jaxpr_as_fun(closed), KEY)
  assert plain >= 20
  assert batched_rng.hash_count(batched, KEY) <= 4 < plain


def test_the_models_initialisation_is_batched(tiny_model):
  """The tiny model's init (what `hf.init_params` compiles) holds a few hashes, not hundreds."""
  program, _ = hf._init_program(tiny_model, 64)
  assert batched_rng.hash_count(program, KEY) <= 4
  init = lambda rng: tiny_model.init({"params": rng}, jnp.zeros((1, 64, 64, 3)),
                                     jax.random.PRNGKey(0))["params"]
  assert batched_rng.hash_count(init, KEY) > 300


def test_programs_it_cannot_batch_are_replayed_as_they_are():
  """An effect (here a debug print) makes it return the plain replay: same results."""
  def fn(rng):
    jax.debug.print("drawing")
    return jax.random.normal(rng, (3,)) + jax.random.normal(jax.random.fold_in(rng, 1), (3,))
  closed = jax.make_jaxpr(fn)(KEY)
  replay = batched_rng.batched_replay(closed)
  assert not isinstance(replay, batched_rng._Program)
  key = jax.random.PRNGKey(3)
  np.testing.assert_array_equal(jax.jit(replay)(key)[0], jax.jit(fn)(key))
