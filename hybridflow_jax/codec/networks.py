"""The networks a codec runs besides the entropy parameters, as exported programs (`programs`:
traced and compiled once per image shape, and kept on disk when given a folder), on the default
device.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hybridflow_jax import schedules
from hybridflow_jax.codec import tiling, window_norm
from hybridflow_jax.codec.programs import Programs
from hybridflow_jax.config import legacy_get
from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.models import masking, vq

# Images whose token grid is larger than WINDOW a side (1280 px) are rendered in windows of at most
# that size (`Networks.render_windows`): the bridge's levels from WINDOW_LEVEL (stride 4) down to
# full resolution, most of its memory, run window by window; the coarser ones once.
WINDOW = 80
WINDOW_LEVEL = 2
# The encoder of images above ANALYSIS_WINDOW_PIXELS likewise (`Networks.analyze_windows`): the
# VQ encoder's levels below ENCODER_WINDOW_LEVEL (full resolution and stride 2) window by window,
# reaching `Networks.encoder_halo` tokens past what each window keeps (`vq.encoder_reach`: 13 px
# for `small`, 19 px with two ResBlocks a level); g_a (four 5x5 stride-2 convolutions, at most
# 2 + 4 + 8 + 16 px past a token's footprint) ANALYSIS_HALO tokens. Its GroupNorms need one pass over
# the windows each, which costs about twice the one program's time (2048x2048: 6.0 against 2.8 s,
# docs/benchmarks.md), so images up to 2**24 pixels (4096x4096, four 16-channel activations: about
# 4 GiB) keep the one program.
ANALYSIS_WINDOW_PIXELS = 2**24
ENCODER_WINDOW_LEVEL = 2
ANALYSIS_HALO = 3


def _window(a: np.ndarray, r: tiling.Span, c: tiling.Span, per_token: int) -> np.ndarray:
  """The part of `a` [H, W, ...] (per_token positions a token) under windows r x c."""
  return a[r.start * per_token:(r.start + r.size) * per_token,
           c.start * per_token:(c.start + c.size) * per_token]


def _keep(out: np.ndarray, window: np.ndarray, r: tiling.Span, c: tiling.Span,
          per_token: int) -> None:
  """Writes the part of a window's output that the window is kept for into `out`."""
  out[r.keep_from * per_token:r.keep_to * per_token, c.keep_from * per_token:c.keep_to * per_token] = (
      window[(r.keep_from - r.start) * per_token:(r.keep_to - r.start) * per_token,
             (c.keep_from - c.start) * per_token:(c.keep_to - c.start) * per_token])


def _region_sums(err, region_px: int):
  """[H, W] per-pixel errors (numpy or jax) -> [ceil(H / region_px), ceil(W / region_px)] sums."""
  xp = jnp if isinstance(err, jax.Array) else np
  err = xp.pad(err, ((0, -err.shape[0] % region_px), (0, -err.shape[1] % region_px)))
  return err.reshape(err.shape[0] // region_px, region_px, err.shape[1] // region_px,
                     region_px).sum(axis=(1, 3))


class Networks:
  """The sender's and the receiver's networks of one model.

  model, params: the model and its inference params; masking: the model config's `masking` part;
  programs: where the traced programs live (default: in this process only, unsalted).
  """

  def __init__(self, model: hf.HybridFlow, params: Any, masking_config: ml_collections.ConfigDict,
               programs: Programs | None = None):
    self.model = model
    self.params = params
    self._masking = masking_config
    self.programs = Programs(salt="") if programs is None else programs

  @functools.cached_property
  def _analysis(self):
    model = self.model

    def fn(params, x):
      p = {"params": params}
      tok = model.apply(p, x, method=hf.HybridFlow.tokenize)
      y = model.apply(p, x, method=hf.HybridFlow.analysis)
      z = model.apply(p, y, method=hf.HybridFlow.hyper_analysis)
      return tok["indices"][0], y[0], jnp.round(z[0])
    return fn

  def analyze(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sender's networks on a padded image x float32 [Hp, Wp, 3] in [0, 1]: (codeword indices
    int32 [h, w], y float32 [h, w, M], z_hat int64 [hz, wz, Nz]).

    An image of more than ANALYSIS_WINDOW_PIXELS pixels runs its full-resolution layers in
    windows (`analyze_windows`), so the encoder's memory stops growing with the image."""
    if x.shape[0] * x.shape[1] > ANALYSIS_WINDOW_PIXELS:
      return self.analyze_windows(x)
    indices, y, z = jax.device_get(
        self.programs.call("analysis", self._analysis, self.params, jnp.asarray(x[None])))
    return np.asarray(indices, np.int32), np.asarray(y), np.asarray(z).astype(np.int64)

  @functools.cached_property
  def encoder_halo(self) -> int:
    """Tokens of context a window of the VQ encoder's first levels needs past what it keeps."""
    cfg = self.model.config.vq
    reach = vq.encoder_reach(cfg.channel_mult, cfg.num_res_blocks, ENCODER_WINDOW_LEVEL)
    return -(-reach // hf.STRIDE)

  def analyze_windows(self, x: np.ndarray,
                      window: int = WINDOW) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`analyze` with the full-resolution layers in windows of `window` tokens a side.

    The VQ encoder's levels below ENCODER_WINDOW_LEVEL run window by window, their GroupNorms
    normalising by whole-image statistics gathered over the windows first (`window_norm`: one
    pass per GroupNorm), its coarser levels and the quantiser once; g_a (convolutions only) runs
    window by window, h_a once on y. The indices can differ from the one-program ones where a
    latent is within float rounding of two codewords (the statistics are summed in another
    order); y and z_hat agree to float rounding.
    """
    h, w = x.shape[0] // hf.STRIDE, x.shape[1] // hf.STRIDE
    rows = tiling.spans(h, window, self.encoder_halo)
    cols = tiling.spans(w, window, self.encoder_halo)
    features, start = x, None
    for stop in range(1, ENCODER_WINDOW_LEVEL + 1):
      features = self._encoder_levels(features, start, stop, rows, cols)
      start = stop
    indices = self.programs.call(f"tokenize_from_{start}", self._tokenize_from(start), self.params,
                                 jnp.asarray(features))
    rows = tiling.spans(h, window, ANALYSIS_HALO)
    cols = tiling.spans(w, window, ANALYSIS_HALO)
    y = np.empty((h, w, self.model.config.continuous.latent_channels), np.float32)
    for r in rows:
      for c in cols:
        out = self.programs.call("analysis_window", self._analysis_window, self.params,
                                 jnp.asarray(_window(x, r, c, hf.STRIDE)))
        _keep(y, np.asarray(out), r, c, 1)
    z = self.programs.call("hyper_analysis", self._hyper_analysis, self.params, jnp.asarray(y))
    return (np.asarray(indices, np.int32), y, np.asarray(z).astype(np.int64))

  def _encoder_levels(self, features: np.ndarray, start: int | None, stop: int, rows, cols):
    """The VQ encoder's levels start..stop - 1 (start None: from the image) in windows: features
    entering `start` [H', W', C] -> those entering `stop`."""
    model = self.model
    per_in = hf.STRIDE // 2 ** (start or 0)               # input positions per token

    def forward(params, window):
      p = {"params": params}
      if start is None:
        return model.apply(p, window[None], stop, method=hf.HybridFlow.tokenize_features)[0]
      return model.apply(p, window[None], start, stop, method=hf.HybridFlow.tokenize_between)[0]

    shape = (rows[0].size * per_in, cols[0].size * per_in, features.shape[-1])
    paths = window_norm.layer_paths(forward, self.params, jax.ShapeDtypeStruct(shape, jnp.float32))
    known: list[tuple[np.ndarray, np.ndarray]] = []
    for n in range(len(paths) + 1):
      def fn(params, window, keep, *stats, n=n):
        pairs = [(stats[2 * i], stats[2 * i + 1]) for i in range(n)]
        return window_norm.window_pass(lambda: forward(params, window),
                                       dict(zip(paths[:n], pairs)), keep, window.shape[:2],
                                       per_in)
      sums, out = 0.0, None
      for r in rows:
        for c in cols:
          keep = np.asarray([r.keep_from - r.start, r.keep_to - r.start, c.keep_from - c.start,
                             c.keep_to - c.start], np.int32)
          result = np.asarray(self.programs.call(
              f"vq_encoder_{start}_{stop}_pass{n}", fn, self.params,
              jnp.asarray(_window(features, r, c, per_in)), jnp.asarray(keep),
              *[jnp.asarray(v) for pair in known for v in pair]))
          if n < len(paths):
            sums = sums + result.astype(np.float64).sum(axis=0)
            continue
          if out is None:
            per_out = result.shape[0] // r.size
            out = np.empty((features.shape[0] // per_in * per_out,
                            features.shape[1] // per_in * per_out, result.shape[-1]), np.float32)
          _keep(out, result, r, c, per_out)
      if n < len(paths):
        known.append(window_norm.statistics(sums))
    return out

  def _tokenize_from(self, level: int):
    model = self.model
    return lambda params, f: model.apply({"params": params}, f[None], level,
                                         method=hf.HybridFlow.tokenize_from)["indices"][0]

  @functools.cached_property
  def _analysis_window(self):
    model = self.model
    return lambda params, x: model.apply({"params": params}, x[None],
                                         method=hf.HybridFlow.analysis)[0]

  @functools.cached_property
  def _hyper_analysis(self):
    model = self.model
    return lambda params, y: jnp.round(model.apply({"params": params}, y[None],
                                                   method=hf.HybridFlow.hyper_analysis)[0])

  @functools.cached_property
  def _dynamic_choice(self):
    m = self._masking
    return lambda image, budget: masking.dynamic_mask(
        image, stride=hf.STRIDE, region=m.region, target_keep=budget, names=tuple(m.schedules),
        score=m.score)[1]

  def dynamic_choice(self, x: np.ndarray, budget: float) -> np.ndarray:
    """Dynamic masking of a padded image x float32 [Hp, Wp, 3] at target keep ratio `budget`: each
    region's choice, int [rh, rw], a position in the model's candidate schedules."""
    return np.asarray(self.programs.call("dynamic_choice", self._dynamic_choice, jnp.asarray(x),
                                         np.float32(budget)))

  @functools.cached_property
  def _region_distortion(self):
    model = self.model

    def fn(params, image, indices, y_hat, maps, valid, region_px, grey):
      def one(keep):
        rec, _ = hf.decode(model, params, indices[None], keep[None], y_hat[None])
        rec = jnp.clip(rec[0], 0.0, 1.0)
        if grey:  # what a greyscale file decodes to: the mean of the channels, in each
          rec = jnp.mean(rec, axis=-1, keepdims=True)
        return _region_sums(jnp.sum((rec - image) ** 2, axis=-1) * valid, region_px)
      # One candidate at a time: the sender holds one decoder's activations, as the receiver does.
      return jax.lax.map(one, maps)
    return fn

  def region_distortion(self, x: np.ndarray, indices: np.ndarray, y_hat: np.ndarray,
                        height: int, width: int, candidates, region: int,
                        grey: bool = False) -> np.ndarray:
    """Rate-distortion dynamic masking's measurements: the image decoded once per candidate
    schedule (every region at that schedule), and each region's squared error (float [0, 1]
    pixels, summed over the region's pixels inside the image and over RGB): float64 [S, rh, rw].
    x: the padded image [Hp, Wp, 3]; indices [h, w]; y_hat [h, w, M]; grey: a greyscale file,
    whose decoder gives the mean of the rendered channels (the errors are that rendering's)."""
    maps = schedules.candidate_maps(*indices.shape, candidates)
    valid = np.zeros(x.shape[:2], np.float32)
    valid[:height, :width] = 1.0
    region_px = int(region) * hf.STRIDE
    if self.window_halo is not None and max(indices.shape) > WINDOW:
      # A large image: each candidate rendered in windows, as the receiver would render it.
      args = jnp.asarray(indices, jnp.int32), jnp.asarray(y_hat, jnp.float32)
      out = []
      for keep in maps:
        rec = self.render_windows(args[0], jnp.asarray(keep), args[1])
        if grey:
          rec = np.mean(rec, axis=-1, keepdims=True, dtype=np.float32)
        out.append(_region_sums(np.sum((rec - x) ** 2, axis=-1, dtype=np.float64) * valid,
                                region_px))
      return np.stack(out)
    out = self.programs.call(
        f"region_distortion_{region_px}{'_grey' if grey else ''}",
        functools.partial(self._region_distortion, region_px=region_px, grey=bool(grey)),
        self.params, jnp.asarray(x), jnp.asarray(indices, jnp.int32),
        jnp.asarray(y_hat, jnp.float32), jnp.asarray(maps), jnp.asarray(valid))
    return np.asarray(out, np.float64)

  @functools.cached_property
  def _render(self):
    model = self.model

    def fn(params, indices, keep, y_hat):
      image, _ = hf.decode(model, params, indices[None], keep[None], y_hat[None])
      return image[0]
    return fn

  @functools.cached_property
  def window_halo(self) -> int | None:
    """Tokens of context a window needs past what it keeps (`tiling`), or None where the bridge
    cannot be rendered in windows (GroupNorm: every pixel depends on the whole image)."""
    cfg = self.model.config
    if legacy_get(cfg, "bridge.norm") != "layer" or len(cfg.vq.channel_mult) <= WINDOW_LEVEL:
      return None
    reach = vq.decoder_reach(cfg.vq.channel_mult, cfg.vq.num_res_blocks, WINDOW_LEVEL, hf.STRIDE)
    return -(-reach // hf.STRIDE)

  def render(self, indices: np.ndarray, keep: np.ndarray, y_hat: np.ndarray) -> np.ndarray:
    """The receiver's networks: the token transformer fills the unsent indices, the bridging
    decoder renders. indices int [h, w] (read where keep), keep bool [h, w], y_hat float32
    [h, w, M] -> float32 [16h, 16w, 3] in [0, 1].

    A grid larger than `WINDOW` tokens on a side is rendered in windows (`render_windows`) where
    the bridge allows it, so memory stops growing with the image beyond the decoder's coarse
    levels; smaller ones in one program."""
    args = (jnp.asarray(indices, jnp.int32), jnp.asarray(keep), jnp.asarray(y_hat, jnp.float32))
    if self.window_halo is None or max(indices.shape) <= WINDOW:
      return np.asarray(self.programs.call("render", self._render, self.params, *args))
    return self.render_windows(*args)

  @functools.cached_property
  def _render_features(self):
    model = self.model

    def fn(params, indices, keep, y_hat):
      tokens = hf.fill_tokens(model, params, indices[None], keep[None], y_hat[None])
      return model.apply({"params": params}, tokens, y_hat[None], WINDOW_LEVEL,
                         method=hf.HybridFlow.render_features)[0]
    return fn

  @functools.cached_property
  def _render_from(self):
    model = self.model

    def fn(params, features, y_hat):
      image = model.apply({"params": params}, features[None], y_hat[None], WINDOW_LEVEL,
                          method=hf.HybridFlow.render_from)
      return jnp.clip(image[0], 0.0, 1.0)
    return fn

  def render_windows(self, indices: jax.Array, keep: jax.Array, y_hat: jax.Array,
                     window: int = WINDOW) -> np.ndarray:
    """`render` in windows of `window` tokens a side: the transformer and the bridge's levels
    above `WINDOW_LEVEL` on the whole grid, the levels below window by window (`tiling`). Each
    window reaches `window_halo` tokens past the part it keeps, the decoder's reach, so every
    pixel is computed from the same inputs as in one program (they agree to float rounding:
    tests/test_codec_windows.py)."""
    features = np.asarray(self.programs.call("render_features", self._render_features,
                                             self.params, indices, keep, y_hat))
    y_hat = np.asarray(y_hat)
    h, w = y_hat.shape[:2]
    per_token = hf.STRIDE // 2**WINDOW_LEVEL           # feature positions per token
    out = np.empty((h * hf.STRIDE, w * hf.STRIDE, 3), np.float32)
    for r in tiling.spans(h, window, self.window_halo):
      for c in tiling.spans(w, window, self.window_halo):
        image = self.programs.call("render_from", self._render_from, self.params,
                                   _window(features, r, c, per_token), _window(y_hat, r, c, 1))
        _keep(out, np.asarray(image), r, c, hf.STRIDE)
    return out

  @functools.cached_property
  def _model_bits(self):
    model = self.model

    def fn(params, x):
      enc = hf.encode(model, params, x, None)
      return (-jnp.sum(jnp.log2(enc["y_likelihood"])), -jnp.sum(jnp.log2(enc["z_likelihood"])))
    return fn

  def model_bits(self, x: np.ndarray) -> tuple[float, float]:
    """The model's own (training-time likelihood) cost of y and z of a padded image, in bits."""
    y, z = jax.device_get(self.programs.call("model_bits", self._model_bits, self.params,
                                             jnp.asarray(x[None])))
    return float(y), float(z)
