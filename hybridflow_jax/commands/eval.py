"""`hybridflow eval --model NAME|PATH | --workdir RUN --data NAME=SOURCE ... --out DIR`.

    hybridflow eval --model models/demo --data kodak=/data/kodak --out results/run1
    hybridflow eval --workdir runs/demo --data demo=demo:heldout --out /tmp/eval

Every flag is checked, and every data source opened, before the model loads. Per data set, OUT/NAME/
gets results.json, per_image.csv, summary.csv, rd_*.png, grid.png, report.html (with its crops in
report/) and files/*.hfc (see `hybridflow_jax.evaluation`); existing results are replaced only with
--force.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence

from hybridflow_jax import schedules
from hybridflow_jax.errors import UserError, reported_as_user_errors


def run(ns) -> None:
  datasets = parse_data(ns.data)
  with reported_as_user_errors(ValueError, prefix="--schedules: "):
    points = schedules.parse_list(ns.schedules)
  # After the checks that need nothing else (a mistyped flag answers at once, not after ~3 s of
  # importing jax, the codec and the plotting).
  from hybridflow_jax.data import pipeline
  from hybridflow_jax.evaluation import baselines, loop, plots, references, report
  chosen = None if ns.baselines is None else [
      b.strip() for b in ns.baselines.split(",") if b.strip() and b.strip() != "none"]
  baseline_codecs = baselines.baselines(chosen)
  if ns.limit is not None and ns.limit < 1:
    raise UserError("--limit must be at least 1")
  if ns.report_images < 0:
    raise UserError("--report-images must be 0 (no report) or more")
  out = pathlib.Path(ns.out)
  if out.exists() and not out.is_dir():
    raise UserError(f"--out {out} exists and is not a directory")
  for name in datasets:
    if (out / name).exists() and any((out / name).iterdir()) and not ns.force:
      raise UserError(f"{out / name} exists and is not empty (pass --force to replace it)")
  curves_root = references.INSTALLED
  if ns.references is not None:
    curves_root = pathlib.Path(ns.references)
    if not curves_root.is_dir():
      raise UserError(f"--references {ns.references}: not a directory")
  for spec in datasets.values():  # fail on a bad source before the slow part
    with reported_as_user_errors(ValueError):
      pipeline.make_source(spec)
  codec = _load(ns)
  for name, spec in datasets.items():
    target = out / name
    _clear(target)
    rows, samples, crops = loop.evaluate(
        codec, name, spec, target, schedules=points, baselines=baseline_codecs, limit=ns.limit,
        report_images=ns.report_images, progress=ns.progress,
        log=lambda m: print(m, file=sys.stderr))
    results = report.summarize(rows, codec=codec, name=name, spec=spec, schedules=points,
                               baselines=baseline_codecs)
    report.write(target, results, rows)
    plots.rate_distortion(results, references.reference_curves(name, curves_root), target)
    plots.grid(samples, rows, target / "grid.png")
    if crops:
      report.write_visual(target, crops, rows, results)
    print(report.table(results))
    print(f"wrote {target}/ (results.json, per_image.csv, summary.csv, rd_*.png, grid.png"
          f"{', report.html' if crops else ''}); peak memory {results['peak_rss_gib']:.2f} GiB")


def parse_data(specs: Sequence[str]) -> dict[str, str]:
  """{"NAME": "SOURCE"} from --data NAME=SOURCE arguments (names must be unique and plain)."""
  out: dict[str, str] = {}
  for spec in specs:
    name, sep, source = spec.partition("=")
    if not sep or not name or not source:
      raise UserError(f"--data {spec!r}: expected NAME=SOURCE (e.g. kodak=/data/kodak)")
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
      raise UserError(f"--data {spec!r}: NAME may use letters, digits, '-', '_' and '.' only")
    if name in out:
      raise UserError(f"--data: the name {name!r} is given twice")
    out[name] = source
  return out


def _load(ns):
  """The codec of --model (a directory or a shipped model's name), or of --workdir's final params
  (its bundle built in memory)."""
  from hybridflow_jax.codec.api import Codec
  from hybridflow_jax.codec.bundle import BundleError
  from hybridflow_jax.train import export
  if ns.model:
    with reported_as_user_errors(BundleError):
      return Codec.load(ns.model)
  with reported_as_user_errors(ValueError, FileNotFoundError):
    config, params, provenance = export.load_run(ns.workdir)
    return Codec(export.make_bundle(config, params, prior_images=ns.prior_images,
                                    provenance=provenance, log=lambda m: print(m, file=sys.stderr)))


def _clear(target: pathlib.Path) -> None:
  """Removes the outputs of an earlier evaluation (with --force); nothing else in `target`."""
  from hybridflow_jax.evaluation import plots, report, visual
  for name in (*report.FILES, *plots.FILES):
    (target / name).unlink(missing_ok=True)
  visual.clear(target)
  if (target / "files").is_dir():
    for f in (target / "files").glob("*.hfc"):
      f.unlink()
