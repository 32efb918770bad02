"""Loading `get_config()` files by path (the same files `--config` takes on the command line)."""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

from hybridflow_jax.config import validate


def load_config(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Runs `get_config()` of the Python file at `path` and validates the result."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file not found: {path}")
  spec = importlib.util.spec_from_file_location(f"hybridflow_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  validate(config)
  return config
