"""The continuous stream: a mean-scale hyperprior (Ballé et al. 2018, Minnen et al. 2018).

    x --g_a--> y (stride 16) --h_a--> z (stride 64)
    z_hat: factorized prior;  (mean, scale) = h_s(z_hat);  y_hat: Gaussian conditional.

Channel counts are small: this stream carries the fidelity correction that the codebook stream
misses, not a full image. Nonlinearities are GELU instead of GDN (our choice: it keeps the module
free of reparameterised weights and lets the bridging decoder consume `y_hat` directly).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from hybridflow_jax.models.entropy import FactorizedPrior, GaussianConditional, quantize
from hybridflow_jax.models.layers import StridedConv, Upsample

HYPER_STRIDE = 4  # z is 4x coarser than y (stride 64 in pixels)


class Analysis(nn.Module):
  """g_a: [B, H, W, 3] in [0, 1] -> y [B, H/16, W/16, M]; four 5x5 stride-2 convolutions."""

  channels: int
  latent_channels: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = x * 2.0 - 1.0
    for i in range(3):
      h = nn.gelu(StridedConv(self.channels, (5, 5), name=f"conv{i}")(h))
    return StridedConv(self.latent_channels, (5, 5), name="conv3")(h)


class HyperAnalysis(nn.Module):
  """h_a: y [B, h, w, M] (h, w multiples of 4) -> z [B, h/4, w/4, Nz]."""

  channels: int
  hyper_channels: int

  @nn.compact
  def __call__(self, y: jax.Array) -> jax.Array:
    h = nn.gelu(nn.Conv(self.channels, (3, 3), name="conv0")(y))
    h = nn.gelu(StridedConv(self.channels, (5, 5), name="conv1")(h))
    return StridedConv(self.hyper_channels, (5, 5), name="conv2")(h)


class HyperSynthesis(nn.Module):
  """h_s: z_hat [B, h/4, w/4, Nz] -> (mean, scale) of y, each [B, h, w, M].

  This is the one function whose output feeds the entropy coder's y tables; keep it small and
  free of anything data-dependent besides z_hat, so it can later run on a canonical integer path.
  """

  channels: int
  latent_channels: int

  @nn.compact
  def __call__(self, z_hat: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = nn.gelu(Upsample(self.channels, name="up0")(z_hat))
    h = nn.gelu(Upsample(self.channels, name="up1")(h))
    params = nn.Conv(2 * self.latent_channels, (3, 3), name="conv_out")(h)
    mean, scale = jnp.split(params, 2, axis=-1)
    return mean, jax.nn.softplus(scale)


class SynthesisHead(nn.Module):
  """A light g_s: y_hat [B, h, w, M] -> [B, 16h, 16w, 3], used only to train this stream alone."""

  channels: int

  @nn.compact
  def __call__(self, y_hat: jax.Array) -> jax.Array:
    h = y_hat
    for i in range(4):
      h = Upsample(self.channels, name=f"up{i}")(h)
      h = nn.gelu(h) if i < 3 else h
    return nn.Conv(3, (3, 3), name="conv_out")(h) * 0.5 + 0.5


def pad_to_multiple(y: jax.Array, m: int) -> jax.Array:
  """y [B, h, w, C] edge-padded so that h and w are multiples of m."""
  ph, pw = -y.shape[1] % m, -y.shape[2] % m
  if ph == 0 and pw == 0:
    return y
  return jnp.pad(y, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")


class ContinuousStream(nn.Module):
  """The whole mean-scale hyperprior. Any token grid works: y is edge-padded to a multiple of 4
  before h_a and the predicted mean/scale are cropped back, so no pixels are wasted on padding."""

  channels: int          # N: width of g_a, h_a, h_s
  latent_channels: int   # M: channels of y
  hyper_channels: int    # Nz: channels of z
  head_channels: int     # width of the light synthesis head
  quantization: str = "noise"

  def setup(self):
    self.analysis = Analysis(self.channels, self.latent_channels)
    self.hyper_analysis = HyperAnalysis(self.channels, self.hyper_channels)
    self.hyper_synthesis = HyperSynthesis(self.channels, self.latent_channels)
    self.synthesis_head = SynthesisHead(self.head_channels)
    self.factorized_prior = FactorizedPrior(self.hyper_channels)
    self.gaussian = GaussianConditional()

  def hyper_analyze(self, y: jax.Array) -> jax.Array:
    """h_a on y edge-padded to a multiple of HYPER_STRIDE: y [B, h, w, M] -> z [B, h/4, w/4, Nz]
    (rounded up)."""
    return self.hyper_analysis(pad_to_multiple(y, HYPER_STRIDE))

  def entropy_parameters(self, z_hat: jax.Array, hw: tuple[int, int]):
    """(mean, scale) of y on a grid of size `hw`, from z_hat alone."""
    mean, scale = self.hyper_synthesis(z_hat)
    return mean[:, :hw[0], :hw[1]], scale[:, :hw[0], :hw[1]]

  def __call__(self, x: jax.Array, rng: jax.Array | None = None, train: bool = True,
               with_head: bool = False) -> dict[str, jax.Array]:
    """x: [B, H, W, 3] in [0, 1], H and W multiples of 16.

    Returns y, y_hat, z_hat, mean, scale and the likelihoods of y_hat and z_hat; with `with_head`
    also the head's reconstruction `x_cont`. `train=False` rounds (what the codec transmits).
    """
    mode = self.quantization if train else "round"
    rz = ry = None
    if mode == "noise":
      if rng is None:
        raise ValueError("training with noise quantisation needs an rng")
      rz, ry = jax.random.split(rng)
    y = self.analysis(x)
    z = self.hyper_analyze(y)
    z_hat = quantize(z, mode, rz)
    mean, scale = self.entropy_parameters(z_hat, y.shape[1:3])
    # Rounding around the predicted mean (Minnen et al. 2018) is what the coder sends.
    y_hat = quantize(y, mode, ry, offset=mean)
    out = {
        "y": y, "y_hat": y_hat, "z_hat": z_hat, "mean": mean, "scale": scale,
        "y_likelihood": self.gaussian(y_hat, mean, scale),
        "z_likelihood": self.factorized_prior(z_hat),
    }
    if with_head:
      out["x_cont"] = self.synthesis_head(y_hat)
    return out
