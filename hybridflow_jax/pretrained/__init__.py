"""Models that ship inside the package, loaded by a short name instead of a path.

    hybridflow_jax/pretrained/<name>/   a bundle `hybridflow export` wrote (manifest.json,
                                        config.json, params.npz, tables.npz), package data

`Codec.load`, `hybridflow compress`, `decompress` and `eval --model` take a bundle directory or
one of these names; `small` (DEFAULT, docs/results.md) is what `compress` and `decompress` use
without --model. A path that exists wins over a name, and a name is lowercase letters, digits and
'_' (NAME), so a mistyped path is reported as missing, not looked up here. Imports no jax.
"""

from __future__ import annotations

import os
import pathlib
import re

from hybridflow_jax.codec.bundle import BundleError

# The model `compress` and `decompress` use when no --model is given.
DEFAULT = "small"
NAME = re.compile(r"[a-z][a-z0-9_]*")
# A real directory (not importlib.resources): bundles are read file by file with numpy, and the
# package is installed unpacked.
ROOT = pathlib.Path(__file__).resolve().parent


def available() -> list[str]:
  """The names of the shipped models, sorted."""
  return sorted(p.name for p in ROOT.iterdir()
                if NAME.fullmatch(p.name) and (p / "manifest.json").is_file())


def resolve(model: str | os.PathLike) -> pathlib.Path:
  """The bundle directory of `model`: itself if it is a directory, else the shipped model of that
  name. Raises BundleError (one line, naming the shipped models) if it is neither."""
  path = pathlib.Path(model)
  if path.is_dir():
    return path
  if os.fspath(model) in available():
    return ROOT / os.fspath(model)
  why = "not a directory" if path.exists() else "no such directory"
  raise BundleError(f"no model bundle at {model} ({why}, and {_shipped()})")


def _shipped() -> str:
  names = available()
  if not names:
    return "no model ships with this install yet; make one with hybridflow export"
  return f"no shipped model has that name; shipped: {', '.join(names)}"
