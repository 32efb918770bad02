"""`Codec`: compress images into HybridFlow files and decompress them, from an exported bundle.

    from hybridflow_jax import Codec
    codec = Codec.load("small")                       # a shipped model's name, or a bundle dir
    data = codec.compress(image, schedule="1_4")      # or target_bpp=0.03
    image = codec.decompress(data)                     # uint8 [H, W, 3] (R = G = B if grey)

A file is a small container (`container`) around one payload whose streams `payload.PAYLOAD`
declares, in order; `docs/bitstream.md` describes both. The sender runs its networks once per image
(`latents`), picks an operating point (`rate_control` for a target bitrate) and codes the streams;
the receiver decodes them in the same order, fills the untransmitted indices with the masked token
transformer and renders the image with the bridging decoder (`networks`). The encoder never sends
anything the receiver could not recompute. The mean and table row of every latent come from one
integer network (`entropy_parameters`), so every machine decodes the same symbols from a file.

Nothing here imports the training code: a bundle, flax and the model definition are enough.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import jax
import ml_collections
import numpy as np

from hybridflow_jax import pretrained, schedules
from hybridflow_jax.codec import bundle as bundle_lib
from hybridflow_jax.codec import container, entropy_parameters, files, image_input, rate_control
from hybridflow_jax.codec.coder import CodecError
from hybridflow_jax.codec.container import FormatError
from hybridflow_jax.codec.files import Compressed
from hybridflow_jax.codec.image_input import DEFAULT_MAX_PIXELS, ConversionNotice
from hybridflow_jax.codec.latents import Latents, analyze
from hybridflow_jax.codec.networks import Networks
from hybridflow_jax.codec.payload import CodingModel, Frame
from hybridflow_jax.codec.programs import Programs
from hybridflow_jax.codec.rate_control import RateError
from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.models import masking
from hybridflow_jax.models.hyperprior import HYPER_STRIDE

__all__ = ["DEFAULT_MAX_PIXELS", "DYNAMIC_ALLOCATIONS", "Codec", "CodecError", "Compressed",
           "ConversionNotice", "FormatError", "RateError", "greyscale", "summary", "to_uint8"]

DYNAMIC_ALLOCATIONS = schedules.DYNAMIC_ALLOCATIONS


class Codec:
  """A loaded model bundle that writes and reads HybridFlow files (see the module docstring)."""

  def __init__(self, bundle: dict[str, Any], max_pixels: int = DEFAULT_MAX_PIXELS,
               allocation: str = "rd", program_cache: str | os.PathLike | None = None):
    if allocation not in DYNAMIC_ALLOCATIONS:
      raise ValueError(f"dynamic allocation must be one of {DYNAMIC_ALLOCATIONS}, got {allocation!r}")
    self.allocation = allocation
    self.manifest = bundle["manifest"]
    self.config = ml_collections.ConfigDict(bundle["config"])
    self.fingerprint = bytes.fromhex(self.manifest["fingerprint"])[:container.FINGERPRINT_BYTES]
    self.max_pixels = int(max_pixels)
    self.tables = bundle["tables"]
    mcfg = self.config.model
    self.num_codes = int(mcfg.vq.num_codes)
    self.latent_channels = int(mcfg.continuous.latent_channels)
    self.model = hf.build_model(self.config)
    # One transfer of the whole tree (jnp.asarray leaf by leaf took 0.8 s for `small`).
    self.params = jax.device_put(bundle["params"])
    self.networks = Networks(self.model, self.params, mcfg.masking,
                             Programs(self.manifest["fingerprint"], program_cache))
    self.entropy_parameters = entropy_parameters.on_host_cpu(bundle["entropy_model"])
    self.coding = CodingModel(
        tables=self.tables, hyper_channels=int(mcfg.continuous.hyper_channels), stride=hf.STRIDE,
        hyper_stride=HYPER_STRIDE, region=int(mcfg.masking.region),
        candidates=tuple(mcfg.masking.schedules), entropy_parameters=self.entropy_parameters)

  @classmethod
  def load(cls, model: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
           allocation: str = "rd", program_cache: str | os.PathLike | None = None) -> Codec:
    """Loads (and verifies) a bundle `hybridflow export` wrote: a directory, or the name of a model
    shipped with the package (`pretrained`, e.g. "small"). allocation: how dynamic files choose
    each region's schedule (`DYNAMIC_ALLOCATIONS`). program_cache: a folder to keep the networks'
    traced programs in between processes (`programs`; the command line uses
    `programs.default_dir()`); None keeps them in this process only."""
    return cls(bundle_lib.read(pretrained.resolve(model)), max_pixels=max_pixels,
               allocation=allocation, program_cache=program_cache)

  def __repr__(self) -> str:
    return (f"Codec(fingerprint={self.fingerprint.hex()}, K={self.num_codes}, "
            f"M={self.latent_channels}, max_pixels={self.max_pixels})")

  # ----------------------------------------------------------------------------------------------
  # Encoding.

  def prepare(self, image) -> tuple[np.ndarray, list[str]]:
    """uint8 [H, W, 3] from an array or PIL image, and what was converted; checks the size."""
    return image_input.to_rgb8(image, self.max_pixels)

  def analyze(self, image) -> Latents:
    """Runs the encoder networks once (the schedule does not change them)."""
    rgb, notes = self.prepare(image)
    for note in notes:
      warnings.warn(note, ConversionNotice, stacklevel=3)
    return analyze(rgb, self.coding, self.networks)

  def write(self, lat: Latents, schedule: str, budget: float | None = None) -> Compressed:
    """The file of analysed latents at one operating point. budget: dynamic masking's target keep
    ratio (default: the model config's); of the networks, only dynamic masking runs here (with
    allocation "rd", one decode per candidate schedule, once per `lat`)."""
    choice = None
    if schedule == schedules.DYNAMIC:
      if budget is None:
        budget = float(self.config.model.masking.target_keep)
      choice = self.dynamic_choice(lat, budget)
    return files.write(lat.frame(self.coding, schedule, choice), self.fingerprint, budget)

  def dynamic_choice(self, lat: Latents, budget: float) -> np.ndarray:
    """Each region's schedule [rh, rw] (positions in the candidates) at target keep ratio
    `budget`, by the codec's allocation."""
    if self.allocation == "score":
      return self.networks.dynamic_choice(lat.image, budget)
    if lat.region_distortion is None:
      lat.region_distortion = self.networks.region_distortion(
          lat.image, lat.indices, lat.y_hat, lat.height, lat.width, self.coding.candidates,
          self.coding.region, grey=lat.grey)
    kept = masking.region_keep_counts(lat.indices.shape, self.coding.region, self.coding.candidates)
    return masking.rd_allocation(lat.region_distortion, kept, lat.indices.size, budget)

  def compress_detailed(self, image, schedule: str | None = None,
                        target_bpp: float | None = None, budget: float | None = None) -> Compressed:
    """`compress`, returning the file with its schedule and bit counts (`Compressed`).

    budget: the target keep ratio of dynamic masking (default: the model config's).
    """
    schedule = rate_control.check_request(schedule, target_bpp, budget)
    lat = self.analyze(image)
    if target_bpp is None:
      return self.write(lat, schedule, budget)
    if schedule is None:
      return rate_control.densest_fixed(lambda name: self.write(lat, name), target_bpp)
    return rate_control.largest_budget(lambda b: self.write(lat, schedules.DYNAMIC, b), target_bpp)

  def compress(self, image, schedule: str | None = None, target_bpp: float | None = None) -> bytes:
    """The HybridFlow file of `image` (uint8/uint16/float array [H, W(, C)] or PIL image).

    schedule: "1_1", "1_2", "1_4", "1_9", "1_16" (fraction of codeword indices sent) or "dynamic"
      (per-region schedules: by the codec's `allocation`). Default "1_4" without `target_bpp`.
    target_bpp: the densest fixed schedule whose real file fits (schedule None), or the largest
      dynamic budget that fits (schedule "dynamic"); raises RateError if nothing fits.
    Conversions of the input (grey, alpha, 16-bit, ...) are reported as ConversionNotice warnings.
    """
    return self.compress_detailed(image, schedule, target_bpp).data

  def estimate_bits(self, lat: Latents, c: Compressed) -> dict[str, float]:
    """The model's own estimate of `c`'s payload (`hybridflow.estimate_bits`: the training-time
    likelihoods of y and z, the frozen index prior for the sent indices, log2(#schedules) per
    dynamic region), in bits; add c.bits["header"] to compare with the file."""
    if lat.model_bits is None:
      lat.model_bits = self.networks.model_bits(lat.image)
    side = 0.0
    if c.schedule == schedules.DYNAMIC:
      side = schedules.side_bits(lat.indices.shape, self.coding.region, self.coding.candidates)
    # The index prior is frozen: the model charges what the payload's table costs.
    out = {"y": lat.model_bits[0], "z": lat.model_bits[1], "indices": c.bits["indices"],
           "side": side}
    out["total"] = sum(out.values())
    return out

  # ----------------------------------------------------------------------------------------------
  # Decoding.

  def parse(self, data: bytes) -> container.Bitstream:
    """Checks a file's container against this model without decoding it (fast, no jax); raises
    FormatError with one line."""
    return files.parse(data, self.fingerprint, self.max_pixels)

  def read_symbols(self, data: bytes) -> Frame:
    """Entropy-decodes a file (no networks but the entropy parameters): the receiver's frame, with
    every stream's symbols, the keep-map and y_hat. Raises FormatError / CodecError."""
    return files.read(data, self.coding, self.fingerprint, self.max_pixels)

  def render(self, indices: np.ndarray, keep: np.ndarray, y_hat: np.ndarray, height: int,
             width: int, grey: bool = False) -> np.ndarray:
    """The receiver's networks: uint8 [height, width, 3] from sent indices and y_hat. grey: the
    mean of the three channels in each (a greyscale file: its source had R = G = B, which the
    networks, made for colour, do not keep exactly)."""
    image = self.networks.render(indices, keep, y_hat)[:height, :width]
    return to_uint8(greyscale(image) if grey else image)

  def decompress(self, data: bytes) -> np.ndarray:
    """The image (uint8 [H, W, 3]) of a file `compress` wrote with this model; a greyscale file's
    (an image with R = G = B, `parse(data).grey`) has R = G = B too.

    Raises FormatError (not a file of this model, corrupt, truncated) or CodecError (a stream that
    does not decode), each with a one-line message.
    """
    f = self.read_symbols(data)
    return self.render(f.index_grid(), f.keep, f.y_hat(), f.height, f.width, grey=f.grey)


def greyscale(image: np.ndarray) -> np.ndarray:
  """float [H, W, 3] -> the mean of its three channels, in each of them: how a greyscale file's
  rendering becomes grey."""
  image = np.asarray(image, np.float32)
  return np.repeat(np.mean(image, axis=-1, keepdims=True, dtype=np.float32), 3, axis=-1)


def to_uint8(image: np.ndarray) -> np.ndarray:
  """float [0, 1] -> uint8, rounding to nearest."""
  return np.round(np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def summary(c: Compressed) -> str:
  """One line about a compressed file."""
  return json.dumps({"schedule": c.schedule, "bytes": len(c.data), "bpp": round(c.bpp, 5),
                     "keep_ratio": round(c.keep_ratio, 4)})
