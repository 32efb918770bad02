"""`Codec`: compress images into HybridFlow files and decompress them, from an exported bundle.

    from hybridflow_jax import Codec
    codec = Codec.load("model/")
    data = codec.compress(image, schedule="1_4")      # or target_bpp=0.03
    image = codec.decompress(data)                     # uint8 [H, W, 3]

What a file holds, in coding order (one range-coded stream; `docs/bitstream.md` has the layout):
  1. z_hat, the hyper-latent, each channel with its frozen factorized table;
  2. the residuals round(y - mean) of the continuous latent, each with the Gaussian table row of its
     predicted scale (mean and scale come from `entropy_parameters(z_hat)`);
  3. for dynamic masking, the schedule of every region (uniform over the model's schedules);
  4. the sent codeword indices, with the frozen index prior.
The receiver decodes them in that order, fills the untransmitted indices with the masked token
transformer and renders the image with the bridging decoder; the encoder never sends anything the
receiver could not recompute.

Determinism. Only `entropy_parameters` maps network output into the coder's world (the scale table
index of every y symbol, and the mean added back to the residuals). It always runs on the host CPU,
in float32, whatever accelerator runs the rest, so a file decodes to the same image in every process
on CPU machines like the one that wrote it; everything after it is integer arithmetic on frozen
tables. (Encoding on a GPU and decoding on a CPU needs that function in integer arithmetic: planned,
see docs/bitstream.md.)

Nothing here imports the training code: a bundle, flax and the model definition are enough.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hybridflow_jax import imageio
from hybridflow_jax.codec import bundle as bundle_lib
from hybridflow_jax.codec import container
from hybridflow_jax.codec.coder import CodecError, Decoder, Encoder, estimate_bits
from hybridflow_jax.codec.container import FormatError
from hybridflow_jax.codec.tables import scale_to_index
from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.models import masking
from hybridflow_jax.models.hyperprior import HYPER_STRIDE

STRIDE = hf.STRIDE
DEFAULT_SCHEDULE = "1_4"
# Images above this many pixels are refused (not tiled): the decoder's activations at full
# resolution grow with the pixel count. 2**24 is 4096 x 4096; raise it with `max_pixels`.
DEFAULT_MAX_PIXELS = 2**24
# Bounds no real latent comes near; beyond them a stream is corrupt (and float32 would lose them).
MAX_ABS_LATENT = 2**20
DYNAMIC = "dynamic"
# Rate control over dynamic budgets: bisection steps on the target keep ratio.
BUDGET_STEPS = 12


class ConversionNotice(UserWarning):
  """An input image was converted (mode, bit depth, alpha, orientation) before coding."""


class RateError(CodecError):
  """A target bitrate no schedule (or dynamic budget) reaches for this image."""


@dataclasses.dataclass(frozen=True)
class Compressed:
  """A compressed image and what it cost.

  data: the file bytes. schedule: the schedule used ("1_4", ..., "dynamic"). keep_ratio: fraction
  of indices sent. bits: real sizes in bits ("file", "header" = container bytes that are not
  payload) and the tables' ideal cost of each part ("z", "y", "side", "indices"; no stream
  termination). budget: the dynamic target keep ratio, if dynamic. keep: [h, w] bool, which
  codeword indices were sent.
  """

  data: bytes
  height: int
  width: int
  schedule: str
  keep_ratio: float
  bits: dict[str, float]
  budget: float | None = None
  keep: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

  @property
  def bpp(self) -> float:
    return len(self.data) * 8 / (self.height * self.width)


@dataclasses.dataclass
class _Latents:
  """Everything the encoder computes once per image; the schedule only changes what is sent."""

  image: np.ndarray       # float32 [Hp, Wp, 3], padded
  height: int
  width: int
  indices: np.ndarray     # int32 [h, w]
  z: np.ndarray           # int64 [hz, wz, Nz]
  residual: np.ndarray    # int64 [h, w, M]
  scale_index: np.ndarray  # int32 [h, w, M]
  y_hat: np.ndarray       # float32 [h, w, M]
  model_bits: tuple[float, float] | None = None  # the model's (y, z) estimate, once computed


def token_grid(height: int, width: int) -> tuple[int, int]:
  """Token grid of an image: the image is edge-padded to a multiple of the stride."""
  return -(-height // STRIDE), -(-width // STRIDE)


class Codec:
  """A loaded model bundle that writes and reads HybridFlow files (see the module docstring)."""

  def __init__(self, bundle: dict[str, Any], max_pixels: int = DEFAULT_MAX_PIXELS):
    self.manifest = bundle["manifest"]
    self.config = ml_collections.ConfigDict(bundle["config"])
    self.fingerprint = bytes.fromhex(self.manifest["fingerprint"])[:container.FINGERPRINT_BYTES]
    self.max_pixels = int(max_pixels)
    self.tables = bundle["tables"]
    self.scales = np.asarray(bundle["scales"], np.float64)
    mcfg = self.config.model
    self.num_codes = int(mcfg.vq.num_codes)
    self.latent_channels = int(mcfg.continuous.latent_channels)
    self.hyper_channels = int(mcfg.continuous.hyper_channels)
    self.region = int(mcfg.masking.region)
    self.dynamic_names = tuple(mcfg.masking.schedules)
    self.model = hf.build_model(self.config)
    params = jax.tree.map(jnp.asarray, bundle["params"])
    self.params = params
    # The isolated entropy-parameter path: h_s params and program pinned to the host CPU.
    cpu = jax.devices("cpu")[0]
    hs = {"continuous": {"hyper_synthesis": bundle["params"]["continuous"]["hyper_synthesis"]}}
    self._hs_params = jax.device_put(hs, cpu)
    self._cpu = cpu
    model = self.model
    self._hs_fn = jax.jit(
        lambda p, z, hw: model.apply({"params": p}, z, hw, method=_entropy_parameters),
        static_argnums=2)

  @classmethod
  def load(cls, path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Codec:
    """Loads (and verifies) the bundle `hybridflow export` wrote at `path`."""
    return cls(bundle_lib.read(path), max_pixels=max_pixels)

  def __repr__(self) -> str:
    return (f"Codec(fingerprint={self.fingerprint.hex()}, K={self.num_codes}, "
            f"M={self.latent_channels}, max_pixels={self.max_pixels})")

  # ----------------------------------------------------------------------------------------------
  # The programs (jitted once per image shape).

  @functools.cached_property
  def _analyze(self):
    model = self.model

    def fn(params, x):
      p = {"params": params}
      tok = model.apply(p, x, method=hf.HybridFlow.tokenize)
      y = model.apply(p, x, method=lambda m, x: m.continuous.analysis(x))
      z = model.apply(p, y, method=_hyper_analysis)
      return tok["indices"][0], y[0], jnp.round(z[0])
    return jax.jit(fn)

  @functools.cached_property
  def _dynamic(self):
    mcfg = self.config.model.masking
    fn = lambda image, budget: masking.dynamic_mask(
        image, stride=STRIDE, region=self.region, target_keep=budget, names=self.dynamic_names,
        score=mcfg.score)[1]
    return jax.jit(fn)

  @functools.cached_property
  def _render(self):
    model = self.model

    def fn(params, indices, keep, y_hat):
      image, _ = hf.decode(model, params, indices[None], keep[None], y_hat[None])
      return image[0]
    return jax.jit(fn)

  @functools.cached_property
  def _model_bits(self):
    model = self.model

    def fn(params, x):
      enc = hf.encode(model, params, x, None)
      return (-jnp.sum(jnp.log2(enc["y_likelihood"])), -jnp.sum(jnp.log2(enc["z_likelihood"])))
    return jax.jit(fn)

  @functools.cached_property
  def _index_bits(self) -> np.ndarray:
    """[K] bits of each codeword under the frozen index prior."""
    t = self.tables["index"]
    return t.precision - np.log2(t.freqs[0, :self.num_codes].astype(np.float64))

  def estimate_bits(self, lat: _Latents, c: Compressed) -> dict[str, float]:
    """The model's own estimate of `c`'s payload (`hybridflow.estimate_bits`: the training-time
    likelihoods of y and z, the frozen index prior for the sent indices, log2(#schedules) per
    dynamic region), in bits; add c.bits["header"] to compare with the file."""
    if lat.model_bits is None:
      y, z = jax.device_get(self._model_bits(self.params, lat.image[None]))
      lat.model_bits = (float(y), float(z))
    keep = c.keep
    out = {"y": lat.model_bits[0], "z": lat.model_bits[1],
           "indices": float(self._index_bits[lat.indices[keep]].sum()),
           "side": c.bits["side"]}
    out["total"] = sum(out.values())
    return out

  def entropy_parameters(self, z: np.ndarray, hw: tuple[int, int]):
    """(mean float32 [h, w, M], scale-table index int32 [h, w, M]) from z_hat int [hz, wz, Nz].

    The one function whose output the entropy coder depends on: it runs on the host CPU only.
    """
    z = jax.device_put(np.asarray(z, np.float32)[None], self._cpu)
    mean, scale = self._hs_fn(self._hs_params, z, tuple(hw))
    mean, scale = np.asarray(mean[0]), np.asarray(scale[0])
    return mean, scale_to_index(scale, self.scales)

  # ----------------------------------------------------------------------------------------------
  # Encoding.

  def prepare(self, image) -> tuple[np.ndarray, list[str]]:
    """uint8 [H, W, 3] from an array or PIL image, and what was converted; checks the size."""
    if hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image
      buf = imageio.encode_png(np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB")))
      image = imageio.decode(buf)[0]
    rgb, notes = imageio.to_rgb8(image)
    h, w = rgb.shape[:2]
    if max(h, w) > container.MAX_SIDE:
      raise ValueError(f"image is {w}x{h}: the format holds sides up to {container.MAX_SIDE} px")
    if h * w > self.max_pixels:
      raise ValueError(f"image is {w}x{h} = {h * w / 1e6:.1f} MP, above this codec's limit of "
                       f"{self.max_pixels / 1e6:.1f} MP (max_pixels; large images are refused, "
                       "not tiled)")
    return rgb, notes

  def analyze(self, image) -> _Latents:
    """Runs the encoder networks once (the schedule does not change them)."""
    rgb, notes = self.prepare(image)
    for note in notes:
      warnings.warn(note, ConversionNotice, stacklevel=3)
    height, width = rgb.shape[:2]
    h, w = token_grid(height, width)
    padded = np.pad(rgb, ((0, h * STRIDE - height), (0, w * STRIDE - width), (0, 0)), mode="edge")
    x = padded.astype(np.float32) / np.float32(255.0)
    indices, y, z = jax.device_get(self._analyze(self.params, x[None]))
    z = np.asarray(z).astype(np.int64)
    mean, scale_index = self.entropy_parameters(z, (h, w))
    residual = np.round(np.asarray(y) - mean).astype(np.int64)
    return _Latents(image=x, height=height, width=width, indices=np.asarray(indices, np.int32),
                    z=z, residual=residual, scale_index=scale_index,
                    y_hat=(residual.astype(np.float32) + mean))

  def keep_map(self, lat: _Latents, schedule: str, budget: float | None = None):
    """(keep [h, w] bool, per-region choices [rh, rw] int or None) for one operating point."""
    h, w = lat.indices.shape
    if schedule != DYNAMIC:
      return masking.keep_map(schedule, h, w), None
    ids = np.asarray(self._dynamic(lat.image, np.float32(budget)))
    position = {masking.schedule_id(n): i for i, n in enumerate(self.dynamic_names)}
    choice = np.vectorize(position.__getitem__, otypes=[np.int64])(ids)
    return _dynamic_keep(choice, self.dynamic_names, self.region, (h, w)), choice

  def _write(self, lat: _Latents, schedule: str, keep, choice, budget=None) -> Compressed:
    enc = Encoder()
    z_rows = np.broadcast_to(np.arange(self.hyper_channels), lat.z.shape)
    enc.encode_with_table(lat.z, self.tables["z"], z_rows)
    enc.encode_with_table(lat.residual, self.tables["y"], lat.scale_index)
    if choice is not None:
      enc.encode_uniform(choice, len(self.dynamic_names))
    sent = lat.indices[keep]
    enc.encode_with_table(sent, self.tables["index"], 0)
    payload = enc.finish()
    sid = container.SCHEDULE_DYNAMIC if schedule == DYNAMIC else masking.schedule_id(schedule)
    bs = container.Bitstream(lat.height, lat.width, self.fingerprint, sid, [payload])
    data = container.pack(bs)
    bits = {
        "file": 8.0 * len(data),
        "header": 8.0 * (len(data) - len(payload)),
        "z": estimate_bits(lat.z, self.tables["z"], z_rows),
        "y": estimate_bits(lat.residual, self.tables["y"], lat.scale_index),
        "side": 0.0 if choice is None else choice.size * math.log2(len(self.dynamic_names)),
        "indices": estimate_bits(sent, self.tables["index"], 0),
    }
    return Compressed(data=data, height=lat.height, width=lat.width, schedule=schedule,
                      keep_ratio=float(keep.mean()), bits=bits, budget=budget, keep=keep)

  def compress_detailed(self, image, schedule: str | None = None,
                        target_bpp: float | None = None, budget: float | None = None) -> Compressed:
    """`compress`, returning the file with its schedule and bit counts (`Compressed`).

    budget: the target keep ratio of dynamic masking (default: the model config's).
    """
    schedule = _check_schedule(schedule, target_bpp)
    if budget is not None and not 0.0 <= budget <= 1.0:
      raise ValueError(f"budget (a keep ratio) must be in [0, 1], got {budget}")
    lat = self.analyze(image)
    if target_bpp is None:
      if schedule == DYNAMIC and budget is None:
        budget = float(self.config.model.masking.target_keep)
      return self._write(lat, schedule, *self.keep_map(lat, schedule, budget), budget)
    fits = lambda c: c.bpp <= target_bpp
    if schedule is None:  # fixed schedules, densest first; stop at the first that fits
      for name in masking.SCHEDULES:
        out = self._write(lat, name, *self.keep_map(lat, name))
        if fits(out):
          return out
      raise RateError(f"cannot reach {target_bpp:g} bpp: the sparsest schedule ({name}) needs "
                      f"{out.bpp:.4g} bpp for this {lat.width}x{lat.height} image")
    # Dynamic: the largest keep budget whose file fits, by bisection (the keep-map only grows
    # with the budget).
    best = self._write(lat, DYNAMIC, *self.keep_map(lat, DYNAMIC, 0.0), 0.0)
    if not fits(best):
      raise RateError(f"cannot reach {target_bpp:g} bpp: the sparsest dynamic budget needs "
                      f"{best.bpp:.4g} bpp for this {lat.width}x{lat.height} image")
    lo, hi = 0.0, 1.0
    for _ in range(BUDGET_STEPS):
      mid = 0.5 * (lo + hi)
      out = self._write(lat, DYNAMIC, *self.keep_map(lat, DYNAMIC, mid), mid)
      if fits(out):
        lo, best = mid, out
      else:
        hi = mid
    return best

  def compress(self, image, schedule: str | None = None, target_bpp: float | None = None) -> bytes:
    """The HybridFlow file of `image` (uint8/uint16/float array [H, W(, C)] or PIL image).

    schedule: "1_1", "1_2", "1_4", "1_9", "1_16" (fraction of codeword indices sent) or "dynamic"
      (per-region schedules chosen by image complexity). Default "1_4" without `target_bpp`.
    target_bpp: the densest fixed schedule whose real file fits (schedule None), or the largest
      dynamic budget that fits (schedule "dynamic"); raises RateError if nothing fits.
    Conversions of the input (grey, alpha, 16-bit, ...) are reported as ConversionNotice warnings.
    """
    return self.compress_detailed(image, schedule, target_bpp).data

  # ----------------------------------------------------------------------------------------------
  # Decoding.

  def parse(self, data: bytes) -> container.Bitstream:
    """Checks a file's container against this model without decoding it (fast, no jax); raises
    FormatError with one line."""
    bs = container.unpack(data, expected_fingerprint=self.fingerprint)
    if len(bs.sections) != 1:
      raise FormatError(f"malformed file: {len(bs.sections)} sections, this format has 1")
    if bs.schedule != container.SCHEDULE_DYNAMIC and bs.schedule >= len(masking.SCHEDULES):
      raise FormatError(f"unsupported schedule id {bs.schedule}")
    if bs.height * bs.width > self.max_pixels:
      raise FormatError(f"image is {bs.width}x{bs.height}, above this codec's limit of "
                        f"{self.max_pixels / 1e6:.1f} MP (max_pixels)")
    return bs

  def read_symbols(self, data: bytes) -> dict[str, Any]:
    """Entropy-decodes a file (no networks but `entropy_parameters`): z, residuals, keep-map,
    sent indices, y_hat. Raises FormatError / CodecError for anything wrong."""
    bs = self.parse(data)
    h, w = token_grid(bs.height, bs.width)
    hz, wz = -(-h // HYPER_STRIDE), -(-w // HYPER_STRIDE)
    dec = Decoder(bs.sections[0])
    z_rows = np.broadcast_to(np.arange(self.hyper_channels), (hz, wz, self.hyper_channels))
    z = dec.decode_with_table(z_rows.size, self.tables["z"], z_rows.ravel())
    if np.any(np.abs(z) > MAX_ABS_LATENT):
      raise CodecError("corrupt stream: hyper-latent out of range")
    z = z.reshape(z_rows.shape)
    mean, scale_index = self.entropy_parameters(z, (h, w))
    residual = dec.decode_with_table(scale_index.size, self.tables["y"], scale_index.ravel())
    if np.any(np.abs(residual) > MAX_ABS_LATENT):
      raise CodecError("corrupt stream: latent out of range")
    residual = residual.reshape(scale_index.shape)
    if bs.schedule == container.SCHEDULE_DYNAMIC:
      rh, rw = -(-h // self.region), -(-w // self.region)
      choice = dec.decode_uniform(rh * rw, len(self.dynamic_names)).reshape(rh, rw)
      keep = _dynamic_keep(choice, self.dynamic_names, self.region, (h, w))
      schedule = DYNAMIC
    else:
      schedule = masking.SCHEDULES[bs.schedule]
      keep = masking.keep_map(schedule, h, w)
    sent = dec.decode_with_table(int(keep.sum()), self.tables["index"], 0)
    indices = np.zeros((h, w), np.int32)
    indices[keep] = sent
    return {"height": bs.height, "width": bs.width, "schedule": schedule, "z": z,
            "residual": residual, "keep": keep, "indices": indices,
            "y_hat": residual.astype(np.float32) + mean}

  def render(self, indices: np.ndarray, keep: np.ndarray, y_hat: np.ndarray, height: int,
             width: int) -> np.ndarray:
    """The receiver's networks: uint8 [height, width, 3] from sent indices and y_hat."""
    image = np.asarray(self._render(self.params, jnp.asarray(indices, jnp.int32),
                                    jnp.asarray(keep), jnp.asarray(y_hat, jnp.float32)))
    return to_uint8(image[:height, :width])

  def decompress(self, data: bytes) -> np.ndarray:
    """The image (uint8 [H, W, 3]) of a file `compress` wrote with this model.

    Raises FormatError (not a file of this model, corrupt, truncated) or CodecError (a stream that
    does not decode), each with a one-line message.
    """
    s = self.read_symbols(data)
    return self.render(s["indices"], s["keep"], s["y_hat"], s["height"], s["width"])


def to_uint8(image: np.ndarray) -> np.ndarray:
  """float [0, 1] -> uint8, rounding to nearest."""
  return np.round(np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _hyper_analysis(m, y):
  from hybridflow_jax.models.hyperprior import _pad_to_multiple
  return m.continuous.hyper_analysis(_pad_to_multiple(y, HYPER_STRIDE))


def _entropy_parameters(m, z, hw):
  return m.continuous.entropy_parameters(z, hw)


def _dynamic_keep(choice: np.ndarray, names, region: int, hw: tuple[int, int]) -> np.ndarray:
  """[h, w] keep-map from per-region choices (indices into `names`), in numpy."""
  maps = masking.schedule_maps(*hw, names)
  per_token = np.repeat(np.repeat(np.asarray(choice), region, 0), region, 1)[:hw[0], :hw[1]]
  return np.take_along_axis(maps, per_token[None], axis=0)[0]


def _check_schedule(schedule, target_bpp):
  if schedule is not None and schedule != DYNAMIC and schedule not in masking.SCHEDULES:
    raise ValueError(f"unknown schedule {schedule!r}; choose from "
                     f"{', '.join((*masking.SCHEDULES, DYNAMIC))}")
  if target_bpp is None:
    return schedule or DEFAULT_SCHEDULE
  if isinstance(target_bpp, bool) or not isinstance(target_bpp, int | float) or not (
      math.isfinite(target_bpp) and target_bpp > 0):
    raise ValueError(f"target_bpp must be a positive number, got {target_bpp!r}")
  if schedule not in (None, DYNAMIC):
    raise ValueError("target_bpp picks the schedule: give no schedule (fixed schedules) or "
                     "schedule='dynamic' (dynamic budgets), not both")
  return schedule


def summary(c: Compressed) -> str:
  """One line about a compressed file."""
  return json.dumps({"schedule": c.schedule, "bytes": len(c.data), "bpp": round(c.bpp, 5),
                     "keep_ratio": round(c.keep_ratio, 4)})
