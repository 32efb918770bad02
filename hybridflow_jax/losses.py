"""The loss terms the stages combine (`hybridflow_jax.stages`), as pure functions.

Images are [B, H, W, 3] float32 in [0, 1]; rates are bits per pixel of the input image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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


def rate_distortion(bpp: jax.Array, mse_01: jax.Array, lam: float, target: float,
                    over_weight: float, hold: bool = False) -> jax.Array:
  """The rate-distortion objective every stage with a rate uses: w * bpp + lam * 255^2 * MSE.

  MSE is measured on [0, 1] and scaled to the 0-255 range, as in CompressAI's loss. `w` is 1 while
  the batch's rate is at or under `target` bpp and `over_weight` above it (HiFiC's rate
  targeting, Mentzer et al. 2020, sec. 3.2), so a run lands near a chosen rate without a sweep
  over lam. target <= 0 switches the targeting off (w = 1).

  hold=True holds the rate AT the target from both sides: the rate term is
  over_weight * |bpp - target|, so a model that would settle below the target (lam too small to
  pull it up) spends the bits too. The ablation's continuous-only codec uses it to sit at the
  hybrid's rate.
  """
  if hold and target > 0:
    return over_weight * jnp.abs(bpp - target) + lam * 255.0 ** 2 * mse_01
  w = jnp.where((target > 0) & (bpp > target), over_weight, 1.0)
  return jax.lax.stop_gradient(w) * bpp + lam * 255.0 ** 2 * mse_01


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, visible: jax.Array):
  """Mean cross-entropy over the positions the transformer could not see, and their accuracy."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  weight = (~visible).astype(jnp.float32)
  n = jnp.maximum(jnp.sum(weight), 1.0)
  accuracy = jnp.sum((jnp.argmax(logits, -1) == targets) * weight) / n
  return jnp.sum(ce * weight) / n, accuracy


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
