import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PIPELINE_STAGES

from hybridflow_jax import schedules, stages
from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.models.bridge import init_bridge_from_pixel_decoder
from hybridflow_jax.models.vq import restart_dead_codes, update_code_usage


def _groups(tree, depth=2):
  """{'bridge/fuse0': subtree, ...}: parameter groups two levels down."""
  out = {}
  for k, v in tree.items():
    if depth > 1 and isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()):
      out.update({f"{k}/{kk}": vv for kk, vv in _groups(v, depth - 1).items()})
    else:
      out[k] = v
  return out


def _norm(tree):
  return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))


# The stages the tiny pipeline trains are checked on its trained params instead (each changed
# exactly what it trains, test_train.py), which costs no compilation of its own.
@pytest.mark.parametrize("stage", [s for s in stages.NAMES if s not in PIPELINE_STAGES])
def test_gradients_reach_every_group_the_stage_trains(stage, tiny_config, tiny_model,
                                                      tiny_params, images):
  record = stages.STAGES[stage]

  def loss_fn(p):
    out = record.forward(tiny_model, p, images, jax.random.PRNGKey(1))
    return record.loss(out, images, tiny_config.losses)

  (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(tiny_params)
  assert np.isfinite(float(loss)) and float(metrics["loss"]) == float(loss)
  trained = _groups(stages.trainable(tiny_params, stage))
  for name, sub in _groups(grads).items():
    if all(jax.tree.leaves(trained[name])):
      assert _norm(sub) > 0, f"{stage}: no gradient reaches {name}"
    else:
      assert _norm(sub) == 0, f"{stage}: frozen group {name} gets a gradient"
  assert any(all(jax.tree.leaves(t)) for t in trained.values())


def test_stage_records_are_consistent(tiny_params):
  """Each stage needs only stages before it, trains existing params, and judges an image its
  decoder makes; export drops only params some stage trains."""
  flat = {"/".join(k) for k in flax.traverse_util.flatten_dict(flax.core.unfreeze(tiny_params))}
  for i, (name, record) in enumerate(stages.STAGES.items()):
    assert record.name == name and set(record.needs) <= set(stages.NAMES[:i]), name
    for prefix in record.trains:
      assert any(p.startswith(prefix + "/") for p in flat), (name, prefix)
    if record.judged is not None:
      assert "/".join(record.judged.last_layer) in flat, name
  for path in stages.training_only_paths():
    assert any(path[0] in stages.STAGES[s].trains or "/".join(path) in stages.STAGES[s].trains
               for s in stages.NAMES), path
  with pytest.raises(ValueError, match="unknown stage 'vqq'"):
    stages.get("vqq")


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_bridge_starts_from_the_pixel_decoder(norm, tiny_config, tiny_params, images):
  # The bridge copies G_vq's weights. With G_vq's own normalisation (GroupNorm) and zero fusion it
  # is exactly G_vq; with the default per-position LayerNorm it is another function of the same
  # weights (what the bridge stage then trains), still blind to y_hat until fusion learns.
  config = tiny_config.copy_and_resolve_references()
  config.model.bridge.norm = norm
  model = hf.build_model(config)
  apply = jax.jit(model.apply, static_argnames="method")   # one program per method, not op by op
  params = flax.core.unfreeze(tiny_params)
  params["bridge"] = init_bridge_from_pixel_decoder(params["bridge"], params["pixel_decoder"])
  p = {"params": params}
  indices = apply(p, images, method=hf.HybridFlow.tokenize)["indices"]
  y_shape = apply(p, images, method=hf.HybridFlow.continuous_stream)["y_hat"].shape
  # Untrained, y_hat rounds to zero; any latent must leave the output unchanged, so use a big one.
  y_hat = jnp.round(3.0 * jax.random.normal(jax.random.PRNGKey(2), y_shape))
  plain = apply(p, indices, method=hf.HybridFlow.render_codebook)
  bridged = apply(p, indices, y_hat, method=hf.HybridFlow.render)
  np.testing.assert_array_equal(bridged, apply(p, indices, 0 * y_hat, method=hf.HybridFlow.render))
  if norm == "group":
    np.testing.assert_array_equal(plain, bridged)
  else:
    assert not np.allclose(plain, bridged)
  # And the continuous latent does reach it once the fusion layers are no longer zero.
  leaves, tree = jax.tree.flatten(params["bridge"])
  keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  params["bridge"] = jax.tree.unflatten(
      tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  moved = apply({"params": params}, indices, y_hat, method=hf.HybridFlow.render)
  moved2 = apply({"params": params}, indices, y_hat * 2, method=hf.HybridFlow.render)
  assert not np.allclose(moved, moved2)


def test_bridge_init_rejects_a_decoder_of_another_size(tiny_params):
  wrong = jax.tree.map(lambda x: jnp.zeros(x.shape + (1,)), tiny_params["pixel_decoder"])
  with pytest.raises(ValueError, match="shape mismatch"):
    init_bridge_from_pixel_decoder(tiny_params["bridge"], wrong)


@functools.cache
def _encode(model):
  return jax.jit(lambda p, x, keep: hf.encode(model, p, x, keep))


@functools.cache
def _decode(model):
  return jax.jit(lambda p, indices, keep, y_hat: hf.decode(model, p, indices, keep, y_hat))


@pytest.mark.parametrize("schedule", ["1_4", "1_16", "dynamic"])
def test_encode_decode_round(schedule, tiny_config, tiny_model, tiny_params, images):
  keep, side_bits = hf.keep_maps(images, schedule, tiny_config.model.masking)
  # Jitted: op by op, the first schedule took 20 s of dispatching on 2 cores.
  enc = _encode(tiny_model)(tiny_params, images, keep)
  assert enc["indices"].shape == (2, 4, 4) and enc["y_hat"].shape[:3] == (2, 4, 4)
  # Transmitted latents are integers around the predicted mean; likelihoods are probabilities.
  assert np.all((enc["y_likelihood"] > 0) & (enc["y_likelihood"] <= 1))
  image, tokens = _decode(tiny_model)(tiny_params, enc["indices"], keep, enc["y_hat"])
  assert image.shape == images.shape and float(image.min()) >= 0 and float(image.max()) <= 1
  np.testing.assert_array_equal(np.asarray(tokens)[np.asarray(keep)],
                                np.asarray(enc["indices"])[np.asarray(keep)])
  # Dynamic masking sends one choice per region (2x2 regions here), uniformly over its candidates.
  region, candidates = tiny_config.model.masking.region, tiny_config.model.masking.schedules
  assert side_bits == (0 if schedule != schedules.DYNAMIC else
                       schedules.side_bits((4, 4), region, candidates))
  assert side_bits == (0 if schedule != schedules.DYNAMIC else 4 * 2)


def test_quantizer_picks_the_nearest_code(tiny_model, tiny_params, images):
  # Jitted: op by op, the first call compiles every operation on its own (about 8 s here).
  tokenize = jax.jit(lambda p, x: tiny_model.apply({"params": p}, x, method=hf.HybridFlow.tokenize))
  out = tokenize(tiny_params, images)
  codes = tiny_params["quantizer"]["codebook"]
  z = out["latent"].reshape(-1, codes.shape[1])
  brute = np.argmin(((np.asarray(z)[:, None] - np.asarray(codes)[None]) ** 2).sum(-1), axis=1)
  np.testing.assert_array_equal(out["indices"].reshape(-1), brute)
  assert float(out["code_counts"].sum()) == z.shape[0]


def test_dead_codes_are_restarted_and_live_ones_kept():
  codebook = jnp.arange(12.0).reshape(4, 3)
  usage = update_code_usage(jnp.full(4, 0.25), jnp.asarray([10.0, 0.0, 5.0, 0.0]), decay=0.0)
  latents = jnp.full((5, 3), 100.0)
  new, dead = restart_dead_codes(codebook, usage, latents, jax.random.PRNGKey(0), 1e-3)
  np.testing.assert_array_equal(dead, [False, True, False, True])
  np.testing.assert_array_equal(new[0], codebook[0])
  np.testing.assert_array_equal(new[2], codebook[2])
  assert np.allclose(new[1], 100.0, atol=0.01) and np.allclose(new[3], 100.0, atol=0.01)


def test_kmeans_codebook_finds_separated_clusters():
  from hybridflow_jax.models.vq import kmeans_codebook
  rng = np.random.default_rng(0)
  centres = np.asarray([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]], np.float32)
  latents = np.concatenate([c + 0.1 * rng.normal(size=(50, 2)) for c in centres]).astype(np.float32)
  for seed in range(3):  # k-means++ seeding: no cluster left without a code, whatever the draw
    codebook = np.asarray(kmeans_codebook(jnp.asarray(latents), 4, jax.random.PRNGKey(seed), 10))
    nearest = np.min(np.linalg.norm(centres[:, None] - codebook[None], axis=-1), axis=1)
    assert nearest.max() < 0.2, (seed, codebook)
  # Fewer latents than codes: every code is still finite and near the data.
  few = np.asarray(kmeans_codebook(jnp.asarray(latents[:3]), 8, jax.random.PRNGKey(0), 5))
  assert np.isfinite(few).all() and np.abs(few - latents[0]).max() < 1.0


def test_strided_conv_has_nn_conv_forward_and_gradients():
  """StridedConv is nn.Conv(strides=2) with its input gradient computed by phases: the same params
  and forward bit for bit, and the same gradients (to float rounding) for 3x3, 4x4 and 5x5 kernels,
  odd and even sizes and every padding, on inputs wide enough to take the phase path."""
  import flax.linen as nn

  from hybridflow_jax.models.layers import PHASE_GRAD_MIN_CHANNELS, StridedConv

  channels = PHASE_GRAD_MIN_CHANNELS + 1
  for k in (3, 4, 5):
    for hw in ((8, 12), (7, 9)):
      for padding in ("SAME", "VALID", ((2, 1), (0, 3))):
        x = jax.random.normal(jax.random.PRNGKey(k), (2, *hw, channels))
        ours, ref = StridedConv(6, (k, k), padding=padding), nn.Conv(6, (k, k), (2, 2), padding)
        params = ref.init(jax.random.PRNGKey(1), x)
        assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == \
            jax.tree.map(jnp.shape, params)
        np.testing.assert_array_equal(ours.apply(params, x), ref.apply(params, x))
        loss = lambda m: lambda p, u: jnp.sum(jnp.sin(m.apply(p, u)))
        # The phase path is the one taken (a custom gradient in the traced program).
        assert "custom_vjp_call" in str(jax.make_jaxpr(loss(ours))(params, x))
        got = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, x)
        want = jax.jit(jax.grad(loss(ref), argnums=(0, 1)))(params, x)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
          np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-5)


def test_transposed_conv5x5_is_the_transposed_convolution():
  """Both forms of the layer (four phase convolutions; one sub-pixel convolution for narrow
  outputs) equal a 5x5 stride-2 transposed convolution (CompressAI's padding 2, output padding 1),
  computed here as the gradient of the strided convolution it transposes, on odd and even sizes."""
  from hybridflow_jax.models.layers import TransposedConv5x5

  wide = TransposedConv5x5.SUBPIXEL_MAX_FEATURES + 4
  for features in (3, wide):
    layer = TransposedConv5x5(features)
    for h, w in ((5, 7), (4, 6)):
      x = jax.random.normal(jax.random.PRNGKey(h), (2, h, w, 3))
      params = layer.init(jax.random.PRNGKey(1), x)
      params = jax.tree.map(lambda a: a + 0.1, params)             # a non-zero bias too
      kernel, bias = params["params"]["kernel"], params["params"]["bias"]   # [5, 5, in, out]
      # conv(u)[i] = sum_k u[2i + k - 2] kernel[k]: [2h, 2w, out] -> [h, w, in]; its transpose
      # maps x to out[o] = sum_{2i + k - 2 = o} x[i] kernel[k], the transposed convolution.
      conv = lambda u, k=kernel: jax.lax.conv_general_dilated(
          u, k.transpose(0, 1, 3, 2), (2, 2), ((2, 1), (2, 1)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
      _, transpose = jax.vjp(conv, jnp.zeros((2, 2 * h, 2 * w, features)))
      (want,) = transpose(x)
      got = layer.apply(params, x)
      assert got.shape == (2, 2 * h, 2 * w, features)
      np.testing.assert_allclose(got, want + bias, atol=1e-5)


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_layer_norm_decoder_is_local(norm):
  """With norm="layer" a decoded pixel depends only on the codewords in its receptive field, so a
  region's dynamic-masking choice cannot shift the rest of the image; GroupNorm's whole-image
  statistics carry a change anywhere everywhere (measured on the first shipped bridges: sending
  more indices 320 px away moved a region's colour by 1-2 %)."""
  from hybridflow_jax.models.vq import PixelDecoder
  decoder = PixelDecoder(channels=8, channel_mult=(1, 2), num_res_blocks=1, groups=4, norm=norm)
  q = jax.random.normal(jax.random.PRNGKey(0), (1, 16, 16, 4))
  params = decoder.init(jax.random.PRNGKey(1), q)
  # Pixels of the 4 leftmost tokens, 11 tokens from the changed column.
  _check_locality(jax.jit(lambda v: decoder.apply(params, v)), q, norm, left_px=8, right_px=2)


def _check_locality(render, x, norm, left_px, right_px):
  """Adds 3 to the last column of x [1, 16, 16, C]: the change reaches the rightmost `right_px`
  pixel columns; the leftmost `left_px` do not move with norm "layer" and do with "group"."""
  diff = np.abs(np.asarray(render(x.at[:, :, 15].add(3.0)) - render(x)))
  assert diff[:, :, -right_px:].max() > 1e-3
  left = diff[:, :, :left_px].max()
  assert left == 0.0 if norm == "layer" else left > 1e-4


def test_unknown_norm_is_one_clear_error():
  from hybridflow_jax.models.layers import norm_layer
  with pytest.raises(ValueError, match="norm must be one of"):
    norm_layer("batch", 8, 4, "n")


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_baseline_synthesis_normalises_as_the_bridge(norm, tiny_config, tiny_params):
  # The ablation's continuous-only codec renders with the bridge's normalisation, so the two
  # codecs compare on equal footing: local with "layer", whole-image with "group".
  config = tiny_config.copy_and_resolve_references()
  config.model.bridge.norm = norm
  model = hf.build_model(config)
  m = config.model.continuous.latent_channels
  y = jax.random.normal(jax.random.PRNGKey(0), (1, 16, 16, m))
  render = jax.jit(lambda v: model.apply({"params": tiny_params}, v,
                                         method=lambda mod, v: mod.baseline.synthesis(v)))
  # Pixels of the 2 leftmost latents, 13 from the changed column.
  _check_locality(render, y, norm, left_px=32, right_px=32)
