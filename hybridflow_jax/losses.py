"""Training losses of each stage, as pure functions of the stage's forward outputs.

Images are [B, H, W, 3] float32 in [0, 1]; rates are bits per pixel of the input image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from hybridflow_jax.models.entropy import bits


def pixel_loss(kind: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean absolute ("l1") or squared ("l2") error."""
  d = a - b
  return jnp.mean(jnp.abs(d)) if kind == "l1" else jnp.mean(d * d)


def mse(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(a - b))


def rate_bpp(y_likelihood: jax.Array, z_likelihood: jax.Array, num_pixels: int) -> jax.Array:
  """Mean over the batch of the continuous stream's bits per pixel (y and z)."""
  batch = y_likelihood.shape[0]
  return (bits(y_likelihood) + bits(z_likelihood)) / (batch * num_pixels)


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, visible: jax.Array):
  """Mean cross-entropy over the positions the transformer could not see, and their accuracy."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  weight = (~visible).astype(jnp.float32)
  n = jnp.maximum(jnp.sum(weight), 1.0)
  accuracy = jnp.sum((jnp.argmax(logits, -1) == targets) * weight) / n
  return jnp.sum(ce * weight) / n, accuracy


def stage_loss(stage: str, out: dict, x: jax.Array, cfg: ml_collections.ConfigDict):
  """The pixel/rate/token part of a stage's loss -> (scalar loss, metrics dict).

  Perceptual (LPIPS) and adversarial terms are added by the trainer on top of this.
  """
  num_pixels = x.shape[1] * x.shape[2]
  m = {}
  loss = 0.0
  if stage == "vq":
    m["recon"] = pixel_loss(cfg.pixel, out["x_vq"], x)
    m["codebook"] = out["codebook_loss"]
    m["commitment"] = out["commitment_loss"]
    loss = m["recon"] + cfg.codebook_weight * m["codebook"] + cfg.commitment_weight * m["commitment"]
  if stage in ("continuous", "joint"):
    m["bpp"] = rate_bpp(out["y_likelihood"], out["z_likelihood"], num_pixels)
    loss = loss + m["bpp"]
  if stage == "continuous":
    m["mse"] = mse(out["x_cont"], x)
    # lambda scales MSE measured on the 0-255 scale, as in CompressAI's rate-distortion loss.
    loss = loss + cfg.rate_lambda * 255.0 ** 2 * m["mse"]
  if stage in ("transformer", "joint"):
    m["token_ce"], m["token_acc"] = masked_cross_entropy(out["logits"], out["indices"],
                                                         out["visible"])
    loss = loss + m["token_ce"]
  if stage in ("bridge", "joint"):
    m["mse"] = mse(out["x_hat"], x)
    loss = loss + cfg.mse_weight * m["mse"]
  m["loss"] = loss
  return loss, m


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """Discriminator hinge loss (Lim & Ye 2017, as in VQGAN)."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def hinge_g_loss(logits_fake: jax.Array) -> jax.Array:
  """Generator side of the hinge GAN."""
  return -jnp.mean(logits_fake)


def adaptive_gan_weight(grad_rec: jax.Array, grad_gan: jax.Array, max_weight: float = 1e4):
  """VQGAN's balance: ||dL_rec/dW|| / ||dL_gan/dW|| at the decoder's last layer W, clipped."""
  w = jnp.linalg.norm(grad_rec) / (jnp.linalg.norm(grad_gan) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))
