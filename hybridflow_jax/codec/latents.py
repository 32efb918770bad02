"""The sender's side of one image: the networks run once (`analyze`), then each operating point is
only a different frame of the same latents (`Latents.frame`)."""

from __future__ import annotations

import dataclasses

import numpy as np

from hybridflow_jax.codec import image_input, payload
from hybridflow_jax.codec.networks import Networks


@dataclasses.dataclass
class Latents:
  """Everything the encoder computes once per image; the schedule only changes what is sent."""

  image: np.ndarray        # float32 [Hp, Wp, 3] in [0, 1], edge-padded to whole tokens
  height: int              # of the image, in pixels
  width: int
  indices: np.ndarray      # int32 [h, w], every codeword index
  z: np.ndarray            # int64 [hz, wz, Nz], z_hat
  residual: np.ndarray     # int64 [h, w, M], round(y - mean)
  mean: np.ndarray         # float32 [h, w, M], from the entropy parameters
  scale_index: np.ndarray  # int32 [h, w, M], the y table row of each residual
  model_bits: tuple[float, float] | None = None  # the model's (y, z) estimate, once computed
  # Rate-distortion dynamic masking's per-candidate region errors [S, rh, rw], once computed.
  region_distortion: np.ndarray | None = None
  grey: bool = False       # every pixel has R = G = B: the file says so, and decoders give grey

  @property
  def y_hat(self) -> np.ndarray:
    """float32 [h, w, M], as the receiver reconstructs it."""
    return payload.dequantize(self.residual, self.mean)

  def frame(self, model: payload.CodingModel, schedule: str,
            choice: np.ndarray | None = None) -> payload.Frame:
    """The sender's frame at one operating point; choice: dynamic masking's [rh, rw] choices."""
    symbols = {"z": self.z, "y": self.residual}
    if choice is not None:
      symbols["side"] = choice
    frame = payload.Frame(model, self.height, self.width, schedule, symbols,
                          entropy=(self.mean, self.scale_index), grey=self.grey)
    frame.symbols["indices"] = self.indices[frame.keep]
    return frame


def analyze(rgb: np.ndarray, model: payload.CodingModel, networks: Networks) -> Latents:
  """Runs the sender's networks and the entropy parameters on uint8 [H, W, 3]."""
  height, width = rgb.shape[:2]
  grid = model.grid(height, width)
  x = image_input.padded(rgb, grid, model.stride)
  indices, y, z = networks.analyze(x)
  mean, scale_index = model.entropy_parameters(z, grid)
  residual = np.round(y - mean).astype(np.int64)
  grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
  return Latents(image=x, height=height, width=width, indices=indices, z=z, residual=residual,
                 mean=mean, scale_index=scale_index, grey=grey)
