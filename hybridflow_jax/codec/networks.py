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
from hybridflow_jax.codec.programs import Programs
from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.models import masking


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
    int32 [h, w], y float32 [h, w, M], z_hat int64 [hz, wz, Nz])."""
    indices, y, z = jax.device_get(
        self.programs.call("analysis", self._analysis, self.params, jnp.asarray(x[None])))
    return np.asarray(indices, np.int32), np.asarray(y), np.asarray(z).astype(np.int64)

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

    def fn(params, image, indices, y_hat, maps, valid, region_px):
      def one(keep):
        rec, _ = hf.decode(model, params, indices[None], keep[None], y_hat[None])
        err = jnp.sum((jnp.clip(rec[0], 0.0, 1.0) - image) ** 2, axis=-1) * valid
        h, w = err.shape
        err = jnp.pad(err, ((0, -h % region_px), (0, -w % region_px)))
        return err.reshape(err.shape[0] // region_px, region_px, err.shape[1] // region_px,
                           region_px).sum(axis=(1, 3))
      # One candidate at a time: the sender holds one decoder's activations, as the receiver does.
      return jax.lax.map(one, maps)
    return fn

  def region_distortion(self, x: np.ndarray, indices: np.ndarray, y_hat: np.ndarray,
                        height: int, width: int, candidates, region: int) -> np.ndarray:
    """Rate-distortion dynamic masking's measurements: the image decoded once per candidate
    schedule (every region at that schedule), and each region's squared error (float [0, 1]
    pixels, summed over the region's pixels inside the image and over RGB): float64 [S, rh, rw].
    x: the padded image [Hp, Wp, 3]; indices [h, w]; y_hat [h, w, M]."""
    maps = schedules.candidate_maps(*indices.shape, candidates)
    valid = np.zeros(x.shape[:2], np.float32)
    valid[:height, :width] = 1.0
    region_px = int(region) * hf.STRIDE
    out = self.programs.call(
        f"region_distortion_{region_px}", functools.partial(self._region_distortion,
                                                            region_px=region_px),
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

  def render(self, indices: np.ndarray, keep: np.ndarray, y_hat: np.ndarray) -> np.ndarray:
    """The receiver's networks: the token transformer fills the unsent indices, the bridging
    decoder renders. indices int [h, w] (read where keep), keep bool [h, w], y_hat float32
    [h, w, M] -> float32 [16h, 16w, 3] in [0, 1]."""
    return np.asarray(self.programs.call(
        "render", self._render, self.params, jnp.asarray(indices, jnp.int32), jnp.asarray(keep),
        jnp.asarray(y_hat, jnp.float32)))

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
