"""`hybridflow prepare-data folder --name N --split SPLIT=DIR ... --data-dir D`, or
`hybridflow prepare-data imagenet2012 | open_images_v4 --data-dir D`: TFDS array_record for grain."""

from __future__ import annotations

from hybridflow_jax.data import prepare
from hybridflow_jax.errors import UserError


def run(ns) -> None:
  if ns.kind == "folder":
    if not ns.name or not ns.split:
      raise UserError("folder needs --name NAME and at least one --split SPLIT=DIR")
    spec = prepare.prepare_folder(ns.name, _splits(ns.split), ns.data_dir)
  else:
    if ns.name or ns.split:
      raise UserError(f"--name and --split are for folders, not {ns.kind}")
    spec = prepare.prepare_tfds(ns.kind, ns.data_dir, ns.manual_dir)
  print(f"prepared: train with --config.data.train={spec}")


def _splits(items: list[str]) -> dict[str, str]:
  """{split: folder} from --split SPLIT=DIR arguments."""
  splits = {}
  for item in items:
    split, sep, folder = item.partition("=")
    if not sep or not prepare.TFDS_NAME.match(split) or not folder:
      raise UserError(f"--split {item!r}: expected SPLIT=DIR with a lower-case split name")
    if split in splits:
      raise UserError(f"--split {split} is given twice")
    splits[split] = folder
  return splits
