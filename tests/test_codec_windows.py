"""Large images are rendered in overlapping windows (codec/tiling.py, Networks.render_windows):
the same pixels as one program, in bounded memory."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridflow_jax import schedules
from hybridflow_jax.codec import networks, tiling, window_norm
from hybridflow_jax.codec.api import ConversionNotice
from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.models import vq


@given(length=st.integers(1, 400), window=st.integers(7, 90), halo=st.integers(0, 3))
def test_windows_tile_the_grid_with_their_halo(length, window, halo):
  spans = tiling.spans(length, window, halo)
  # What the windows keep covers every token once, in order.
  assert spans[0].keep_from == 0 and spans[-1].keep_to == length
  assert all(a.keep_to == b.keep_from for a, b in zip(spans, spans[1:]))
  assert all(s.keep_from < s.keep_to for s in spans)
  # One size, at most `window`, inside the grid; each keeps only what it sees `halo` tokens
  # around, except at the grid's own edges.
  assert len({s.size for s in spans}) == 1 and spans[0].size <= window
  for s in spans:
    assert 0 <= s.start and s.start + s.size <= length
    assert s.keep_from >= (s.start if s.start == 0 else s.start + halo)
    assert s.keep_to <= (length if s.start + s.size == length else s.start + s.size - halo)
  # The fewest windows that can: each keeps at most window - 2 * halo past the edges' halos.
  assert len(spans) == (1 if length <= window else -(-(length - 2 * halo) // (window - 2 * halo)))


def test_a_window_that_holds_only_its_halo_is_refused():
  with pytest.raises(ValueError, match="leaves nothing"):
    tiling.spans(100, 6, 3)


def test_decoder_reach_bounds_what_a_changed_input_moves(codec):
  """A change to the features entering WINDOW_LEVEL, or to one token of y_hat, moves no output
  pixel farther away than `vq.decoder_reach` (the trained tiny bridge: its fusion layers are not
  zero), and does move pixels nearby."""
  level, cfg = networks.WINDOW_LEVEL, codec.config.model
  reach = vq.decoder_reach(cfg.vq.channel_mult, cfg.vq.num_res_blocks, level)
  h, w = 6, 16
  p = {"params": codec.params}
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, codec.num_codes, (1, h, w)), jnp.int32)
  y = jnp.asarray(rng.normal(size=(1, h, w, codec.latent_channels)), jnp.float32)
  feats = jax.jit(lambda t, y: codec.model.apply(p, t, y, level,
                                                 method=hf.HybridFlow.render_features))(tokens, y)
  render = jax.jit(lambda f, y: codec.model.apply(p, f, y, level, method=hf.HybridFlow.render_from))
  base = np.asarray(render(feats, y))
  per_token = hf.STRIDE // 2**level
  col = 8                                           # token column 8: pixels 128..143
  for f2, y2 in ((feats.at[:, :, col * per_token].add(3.0), y), (feats, y.at[:, :, col].add(3.0))):
    moved = np.abs(np.asarray(render(f2, y2)) - base).max(axis=(0, 1, 3))
    cols = np.nonzero(moved)[0]
    assert cols.size and cols.min() >= col * hf.STRIDE - reach
    assert cols.max() < (col + 1) * hf.STRIDE + reach


@pytest.mark.parametrize("num_res_blocks", [1, 2])
def test_encoder_reach_bounds_what_a_changed_pixel_moves(num_res_blocks):
  """With its GroupNorms' statistics fixed, as in windows, the VQ encoder's first levels are local:
  a changed pixel column moves no feature farther than `vq.encoder_reach`, and moves some."""
  level, mult = networks.ENCODER_WINDOW_LEVEL, (1, 2, 2, 2, 2)
  encoder = vq.VQEncoder(channels=4, channel_mult=mult, num_res_blocks=num_res_blocks,
                         embed_dim=4, groups=2)
  x = jax.random.uniform(jax.random.PRNGKey(0), (1, 32, 160, 3))
  params = encoder.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda a: a + 0.1, params)                 # non-zero biases too
  forward = lambda v: encoder.apply(params, v, stop=level)
  paths = window_norm.layer_paths(forward, x)
  assert len(paths) == 2 * num_res_blocks * level
  known = {path: (jnp.zeros(2), jnp.ones(2)) for path in paths}
  keep = jnp.asarray([0, 2, 0, 10], jnp.int32)
  run = jax.jit(lambda v: window_norm.window_pass(lambda: forward(v), known, keep, v.shape[1:3],
                                                  hf.STRIDE))
  col, per = 80, 2**level                                          # pixel column; pixels a feature
  moved = np.abs(np.asarray(run(x.at[:, :, col].add(1.0)) - run(x))).max(axis=(0, 1, 3))
  cols = np.nonzero(moved)[0]
  reach = vq.encoder_reach(mult, num_res_blocks, level)
  # Feature j covers pixels per * j .. per * j + per - 1 and sees `reach` past them.
  assert cols.size and (cols.min() + 1) * per - 1 >= col - reach and cols.max() * per <= col + reach


@pytest.fixture(scope="module")
def large(codec, photos):
  """A 320x464 photo's latents (20 x 29 tokens) at 1_4, and its one-program rendering."""
  top = np.concatenate([photos["astronaut"], photos["coffee"][:, :80]], axis=1)
  bottom = np.concatenate([photos["chelsea"][:64], photos["chelsea"][:64, :80]], axis=1)
  photo = np.concatenate([top, bottom], axis=0)
  lat = codec.analyze(photo)
  frame = codec.read_symbols(codec.write(lat, "1_4").data)
  args = (jnp.asarray(frame.index_grid(), jnp.int32), jnp.asarray(frame.keep),
          jnp.asarray(frame.y_hat(), jnp.float32))
  whole = np.asarray(codec.networks.programs.call("render", codec.networks._render,
                                                  codec.params, *args))
  return photo, lat, args, whole


def test_windows_render_the_same_pixels_as_one_program(codec, large):
  _, _, args, whole = large
  assert codec.networks.window_halo == 3             # tiny's decoder reaches 45 px from level 2
  tiled = codec.networks.render_windows(*args, window=16)   # 20 x 29 tokens: 2 x 3 windows
  assert tiled.shape == whole.shape
  np.testing.assert_allclose(tiled, whole, rtol=0, atol=2e-6)


def test_a_large_image_decodes_in_windows(codec, large, monkeypatch):
  """Above WINDOW tokens a side the codec renders in windows; the decoded file is the one-program
  decoding, and rate-distortion dynamic masking measures its regions the same way."""
  photo, lat, args, whole = large
  # What rate-distortion masking measures: each candidate map rendered in one program, its
  # squared error summed per region (4x4 tokens, 64 px).
  net = codec.networks
  expected_regions = []
  for keep in schedules.candidate_maps(*lat.indices.shape, codec.coding.candidates):
    rec = np.asarray(net.programs.call("render", net._render, codec.params,
                                       jnp.asarray(lat.indices), jnp.asarray(keep), args[2]))
    err = np.sum((rec - lat.image) ** 2, axis=-1)[:lat.height, :lat.width]
    px = codec.coding.region * hf.STRIDE
    err = np.pad(err, ((0, -err.shape[0] % px), (0, -err.shape[1] % px)))
    expected_regions.append(err.reshape(err.shape[0] // px, px, -1, px).sum(axis=(1, 3)))
  calls = []
  monkeypatch.setattr(networks, "WINDOW", 16)
  render_windows = codec.networks.render_windows
  monkeypatch.setattr(codec.networks, "render_windows",
                      lambda *a, **k: calls.append(1) or render_windows(*a, **k))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConversionNotice)
    data = codec.compress(photo, schedule="1_4")
  decoded = codec.decompress(data)
  assert calls
  expected = np.round(np.clip(whole[:photo.shape[0], :photo.shape[1]], 0, 1) * 255)
  assert np.abs(decoded.astype(int) - expected).max() <= 1
  region_windows = codec.networks.region_distortion(
      lat.image, lat.indices, lat.y_hat, lat.height, lat.width, codec.coding.candidates,
      codec.coding.region)
  np.testing.assert_allclose(region_windows, np.stack(expected_regions), rtol=1e-4)


def test_the_encoder_in_windows_computes_what_one_program_does(codec, large, monkeypatch):
  """Above ANALYSIS_WINDOW_PIXELS the encoder runs its full-resolution layers in windows, its
  GroupNorms with whole-image statistics gathered over the windows: the same latents (indices
  but where float rounding tips a latent between two codewords), and the same file."""
  photo, lat, _, _ = large
  windowed = codec.networks.analyze_windows(lat.image, window=16)
  assert np.mean(windowed[0] == lat.indices) > 0.99
  y_program = codec.networks.programs.call("analysis", codec.networks._analysis, codec.params,
                                           jnp.asarray(lat.image[None]))[1]
  np.testing.assert_allclose(windowed[1], np.asarray(y_program), rtol=0, atol=2e-5)
  np.testing.assert_array_equal(windowed[2], lat.z)
  one_program = codec.compress(photo, schedule="1_4")
  monkeypatch.setattr(networks, "ANALYSIS_WINDOW_PIXELS", 100 * 100)
  monkeypatch.setattr(networks, "WINDOW", 16)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConversionNotice)
    data = codec.compress(photo, schedule="1_4")
  assert data == one_program or abs(len(data) - len(one_program)) <= 4
  assert codec.decompress(data).shape == photo.shape
