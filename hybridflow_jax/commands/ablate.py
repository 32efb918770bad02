"""`hybridflow ablate --workdir RUN --data NAME=SOURCE ... --out DIR` (`evaluation.ablation`).

    hybridflow ablate --workdir runs/small --data photos=data/photos/heldout \
        --data demo=demo:heldout --out runs/small/ablation

Flags and data sources are checked before any model loads; earlier results in --out are replaced
only with --force.
"""

from __future__ import annotations

import pathlib
import sys

from hybridflow_jax import schedules
from hybridflow_jax.commands.eval import parse_data
from hybridflow_jax.data import pipeline
from hybridflow_jax.errors import UserError, reported_as_user_errors
from hybridflow_jax.evaluation import ablation


def run(ns) -> None:
  datasets = parse_data(ns.data)
  with reported_as_user_errors(ValueError, prefix="--schedules: "):
    points = schedules.parse_list(ns.schedules)
  if ablation.REFERENCE_POINT not in points:
    raise UserError(f"--schedules must include {ablation.REFERENCE_POINT} (the matched point)")
  if ns.limit is not None and ns.limit < 1:
    raise UserError("--limit must be at least 1")
  if ns.report_images is not None and ns.report_images < 0:
    raise UserError("--report-images must be 0 (no report) or more")
  out = pathlib.Path(ns.out)
  if out.exists() and not out.is_dir():
    raise UserError(f"--out {out} exists and is not a directory")
  existing = [n for n in ablation.FILES if (out / n).exists()]
  if existing and not ns.force:
    raise UserError(f"{out} already holds {', '.join(existing)} (pass --force to replace them)")
  for spec in datasets.values():
    with reported_as_user_errors(ValueError):
      pipeline.make_source(spec)
  log = lambda m: print(m, file=sys.stderr)  # noqa: E731
  images = ablation.images_of(datasets, ns.limit, log)
  with reported_as_user_errors(ValueError, FileNotFoundError):
    codec, decoders, continuous, _ = ablation.load(
        ns.workdir, baseline_workdir=ns.baseline_workdir, prior_images=ns.prior_images, log=log)
  results = ablation.run(codec, decoders, continuous, images, out, schedules=points,
                         avif=ns.avif, report_images=ns.report_images, log=log)
  print(ablation.table(results))
  print()
  print(ablation.checks_table(results["checks"]))
  print(f"wrote {out}/ ({', '.join(ablation.FILES)})")
