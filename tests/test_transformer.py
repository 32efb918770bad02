import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridflow_jax import schedules
from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.models.transformer import decode_tokens, from_windows, to_windows, training_mask


@pytest.fixture(scope="module")
def decoder(tiny_model, tiny_params):
  p = {"params": tiny_params}
  cfg = tiny_model.config
  predict = lambda t, c: tiny_model.apply(p, t, c, method=hf.HybridFlow.predict_tokens)
  return jax.jit(lambda tok, keep, ctx: decode_tokens(predict, tok, keep, ctx, cfg.vq.num_codes,
                                                      cfg.transformer.decode_steps))


@pytest.fixture(scope="module")
def case(tiny_model):
  k = tiny_model.config.vq.num_codes
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, k, (2, 4, 4)), jnp.int32)
  keep = jnp.asarray(np.stack([schedules.fixed_keep_map(n, 4, 4) for n in ("1_4", "1_16")]))
  ctx = jnp.asarray(rng.normal(size=(2, 4, 4, tiny_model.config.continuous.latent_channels)),
                    jnp.float32)
  return tokens, keep, ctx


def test_decoder_keeps_sent_tokens_and_fills_every_masked_one(decoder, case, tiny_model):
  tokens, keep, ctx = case
  out = np.asarray(decoder(tokens, keep, ctx))
  np.testing.assert_array_equal(out[np.asarray(keep)], np.asarray(tokens)[np.asarray(keep)])
  assert out.min() >= 0 and out.max() < tiny_model.config.vq.num_codes  # no MASK left


def test_decoder_ignores_what_untransmitted_positions_held(decoder, case):
  tokens, keep, ctx = case
  garbage = jnp.where(keep, tokens, 7)
  np.testing.assert_array_equal(decoder(tokens, keep, ctx), decoder(garbage, keep, ctx))


def test_decoder_is_deterministic(decoder, case):
  tokens, keep, ctx = case
  np.testing.assert_array_equal(decoder(tokens, keep, ctx), decoder(tokens, keep, ctx))


def test_cross_attention_is_wired(decoder, case, tiny_model, tiny_params):
  tokens, keep, ctx = case
  other = jnp.asarray(np.random.default_rng(1).normal(size=ctx.shape) * 3.0, jnp.float32)
  p = {"params": tiny_params}
  masked = jnp.where(keep, tokens, tiny_model.config.vq.num_codes)
  logits = jax.jit(lambda c: tiny_model.apply(p, masked, c, method=hf.HybridFlow.predict_tokens))
  assert not np.allclose(logits(ctx), logits(other))
  assert (np.asarray(decoder(tokens, keep, ctx)) != np.asarray(decoder(tokens, keep, other))).any()


def test_transformer_runs_on_other_grid_sizes(tiny_model, tiny_params):
  # Position embeddings are defined for any grid: a 6x10 grid (96x160 px) works unchanged.
  p = {"params": tiny_params}
  k = tiny_model.config.vq.num_codes
  ctx = jnp.zeros((1, 6, 10, tiny_model.config.continuous.latent_channels))
  predict = jax.jit(lambda t, c: tiny_model.apply(p, t, c, method=hf.HybridFlow.predict_tokens))
  logits = predict(jnp.full((1, 6, 10), k), ctx)
  assert logits.shape == (1, 6, 10, k) and np.isfinite(logits).all()


def test_training_mask_covers_schedules_and_always_masks_something():
  vis = training_mask(jax.random.PRNGKey(0), 256, (4, 4), region=2)
  vis = np.asarray(vis)
  assert (~vis).any(axis=(1, 2)).all()
  ratios = vis.mean(axis=(1, 2))
  # Random schedules plus random reveals: a spread of visible fractions, both sparse and dense.
  assert ratios.min() <= 1 / 16 + 1e-9 and ratios.max() >= 0.75


def test_windows_round_trip_on_grids_that_do_not_divide():
  a = jnp.arange(2 * 5 * 7 * 3).reshape(2, 5, 7, 3)
  w = to_windows(a, 4, fill=-1)
  assert w.shape == (2 * 2 * 2, 4, 4, 3)
  assert int((w == -1).sum()) == (8 * 8 - 35) * 2 * 3          # only the padding is filled
  np.testing.assert_array_equal(from_windows(w, 2, 5, 7), a)


def test_windowed_attention_sees_each_window_alone(tiny_model, tiny_params):
  # The tiny model's window is its 4x4 training grid. On a 6x10 grid (96x160 px) every window,
  # edge windows included, must predict exactly what it predicts as an image of its own: the
  # padding carries no information and no window sees another.
  assert tiny_model.config.transformer.window == 4
  p = {"params": tiny_params}
  k = tiny_model.config.vq.num_codes
  rng = np.random.default_rng(2)
  tokens = jnp.asarray(rng.integers(0, k + 1, (1, 6, 10)), jnp.int32)
  ctx = jnp.asarray(rng.normal(size=(1, 6, 10, tiny_model.config.continuous.latent_channels)),
                    jnp.float32)
  predict = jax.jit(lambda t, c: tiny_model.apply(p, t, c, method=hf.HybridFlow.predict_tokens))
  logits = lambda t, c: np.asarray(predict(t, c))
  whole = logits(tokens, ctx)
  for r0, c0 in ((0, 0), (0, 4), (0, 8), (4, 0), (4, 8)):    # full, full, 4x2, 2x4, 2x2 windows
    part = logits(tokens[:, r0:r0 + 4, c0:c0 + 4], ctx[:, r0:r0 + 4, c0:c0 + 4])
    np.testing.assert_allclose(whole[:, r0:r0 + 4, c0:c0 + 4], part, rtol=1e-4, atol=1e-4)
