"""`hybridflow info --config C [--config.FIELD=VALUE ...]`: a config model's parameter counts;
`hybridflow info --model NAME|PATH`: a model bundle's, with what its manifest records."""

from __future__ import annotations

from hybridflow_jax import config_io, info, pretrained
from hybridflow_jax.codec import bundle
from hybridflow_jax.errors import UserError, reported_as_user_errors


def run(ns) -> None:
  if (ns.config is None) == (ns.model is None):
    raise UserError("give --config C (a config's model) or --model NAME|PATH (a model bundle), "
                    "one of the two")
  if ns.model is None:
    print(info.overview(config_io.load_config(ns.config, ns.overrides)))
    return
  if ns.overrides:
    raise UserError(f"{ns.overrides[0]}: config overrides apply to --config, not to a model bundle")
  with reported_as_user_errors(bundle.BundleError):
    path = pretrained.resolve(ns.model)
    print(info.bundle_overview(path, bundle.read(path)))
