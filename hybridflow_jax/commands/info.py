"""`hybridflow info --config C [--config.FIELD=VALUE ...]`: a config model's parameter counts;
`hybridflow info --model NAME|PATH`: a model bundle's, with what its manifest records;
`hybridflow info --file X.hfc [--model NAME|PATH]`: a HybridFlow file's header, and which model
made it (read without jax: nothing is decoded)."""

from __future__ import annotations

from hybridflow_jax import config_io, pretrained, schedules
from hybridflow_jax.codec import bundle, container
from hybridflow_jax.commands import files
from hybridflow_jax.errors import UserError, reported_as_user_errors


def run(ns) -> None:
  if ns.file is not None:
    if ns.config is not None or ns.overrides:
      raise UserError("--file takes no --config or config overrides (a file names its model by "
                      "fingerprint; --model NAME|PATH checks it against one)")
    print(file_overview(ns.file, files.read_input(ns.file), ns.model))
    return
  if (ns.config is None) == (ns.model is None):
    raise UserError("give --config C (a config's model), --model NAME|PATH (a model bundle) or "
                    "--file X.hfc (a HybridFlow file), one of the three")
  if ns.model is None:
    config = config_io.load_config(ns.config, ns.overrides)   # a bad one is refused before jax loads
    from hybridflow_jax import info  # jax: only for the parameter overviews
    print(info.overview(config))
    return
  from hybridflow_jax import info
  if ns.overrides:
    raise UserError(f"{ns.overrides[0]}: config overrides apply to --config, not to a model bundle")
  with reported_as_user_errors(bundle.BundleError):
    path = pretrained.resolve(ns.model)
    print(info.bundle_overview(path, bundle.read(path)))


def file_overview(name: str, data: bytes, model: str | None = None) -> str:
  """What a HybridFlow file's header says (checksum and fields checked, nothing decoded), and
  which model made it: the shipped one whose fingerprint it carries, or `model`'s (checked)."""
  expected = None if model is None else files.bundle_fingerprint(files.model_dir(model))
  with reported_as_user_errors(container.FormatError, prefix=f"{name}: "):
    bs = container.unpack(data, expected_fingerprint=expected)
    try:
      schedule = schedules.from_wire(bs.schedule)
    except ValueError as e:
      raise container.FormatError(str(e)) from None
  payload = sum(len(s) for s in bs.sections)
  if model is not None:
    made_by = f"{model} (checked)"
  else:
    shipped = [n for n in pretrained.available()
               if files.bundle_fingerprint(pretrained.ROOT / n) == bs.fingerprint]
    made_by = (f"the shipped model {shipped[0]}" if shipped else
               "not a model shipped with this install (decode it with --model PATH)")
  lines = [
      f"{'HybridFlow file':<16s} {name}: {len(data):,d} bytes, {bs.width}x{bs.height} pixels, "
      f"{8 * len(data) / (bs.width * bs.height):.5f} bpp",
      f"{'format':<16s} version {container.VERSION}, schedule {schedule}, "
      f"{'greyscale' if bs.grey else 'colour'}; header {len(data) - payload} bytes, payload "
      f"{payload:,d} bytes",
      f"{'model':<16s} fingerprint {bs.fingerprint.hex()}: {made_by}",
  ]
  return "\n".join(lines)
