"""`hybridflow export --workdir RUN --out MODEL_DIR`: a finished run -> its inference bundle."""

from __future__ import annotations

from hybridflow_jax.codec.bundle import BundleError
from hybridflow_jax.commands import files
from hybridflow_jax.errors import UserError, reported_as_user_errors
from hybridflow_jax.train import export


def run(ns) -> None:
  out = files.check_output_dir(ns.out, ns.force)
  if ns.prior_images < 1:
    raise UserError("--prior-images must be at least 1")
  with reported_as_user_errors(BundleError, ValueError, FileNotFoundError):
    manifest = export.export_run(ns.workdir, out, data=ns.data, prior_images=ns.prior_images,
                                 force=ns.force)
  prior = manifest["index_prior"]
  print(f"index prior: {prior['prior_bits_per_index']:.3f} bits per index on its data "
        f"(uniform: {prior['uniform_bits_per_index']:.3f})")
