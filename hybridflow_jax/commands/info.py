"""`hybridflow info --config C [--config.FIELD=VALUE ...]`: a config model's parameter counts."""

from __future__ import annotations

from hybridflow_jax import config_io, info


def run(ns) -> None:
  print(info.overview(config_io.load_config(ns.config, ns.overrides)))
