"""Published rate-distortion points that `hybridflow eval` plots next to its own.

The curves installed with the package live in `reference_curves/<dataset>/*.json` (kodak,
clic2020; read through importlib.resources, so they are found in an installed wheel as in the
source tree): CompressAI's result layout (`name`, `results` with `bpp` and metric lists) plus
`source` and `short_source`. docs/results.md lists where each came from.
"""

from __future__ import annotations

import importlib.resources
import json
from importlib.resources.abc import Traversable
from typing import Any

from hybridflow_jax.errors import UserError

INSTALLED = importlib.resources.files(__package__) / "reference_curves"


def reference_curves(dataset: str, root: Traversable = INSTALLED) -> list[dict[str, Any]]:
  """The curves stored under root/<dataset>/*.json, by file name; [] when there is no such folder."""
  folder = root / dataset
  if not folder.is_dir():
    return []
  curves = []
  for path in sorted((p for p in folder.iterdir() if p.name.endswith(".json")), key=lambda p: p.name):
    try:
      curve = json.loads(path.read_text())
      curve["results"]["bpp"]  # noqa: B018
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f"{path}: not a results file ({type(e).__name__}: {e})") from None
    curves.append(curve)
  return curves
