"""The exported model: an inference bundle, a directory that `Codec.load` reads.

    MODEL_DIR/
      manifest.json   format, version, fingerprint, where the model came from, table statistics
      config.json     the run's config (`model` is what decoding needs)
      params.npz      inference params only, flattened "module/sub/param" -> float32 array
      tables.npz      the frozen entropy-coding tables (integer CDFs), the Gaussian scale table
                      and the integer entropy-parameter network (`hs_*`, codec/entropy_parameters.py)

The fingerprint is the SHA-256 of the decoding-relevant content: the model config, every parameter
(name, shape, dtype, bytes), every table and the integer entropy-parameter network. Files carry its
first 4 bytes, so a file made with another model is refused instead of decoded into garbage; `read`
recomputes it, so a bundle edited after export is refused too.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from hybridflow_jax.codec.entropy_parameters import IntegerEntropyModel
from hybridflow_jax.codec.tables import CdfTable

FORMAT = "hybridflow-bundle"
# 2: the entropy parameters are an integer network stored with the tables (version 1 computed them
# in float32 from params.npz, which does not decode the same on every machine).
VERSION = 2
FILES = ("manifest.json", "config.json", "params.npz", "tables.npz")
TABLES = ("z", "y", "index")  # CdfTables, stored with these prefixes


class BundleError(ValueError):
  """A directory that is not a readable, intact model bundle."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  """{"a": {"b": x}} -> {"a/b": np.asarray(x)}."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "/"))
    else:
      out[name] = np.asarray(value)
  return out


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def fingerprint(model_config: Mapping, params: Mapping[str, np.ndarray],
                tables: Mapping[str, CdfTable], scales: np.ndarray,
                entropy_model: IntegerEntropyModel) -> str:
  """Hex SHA-256 of what decoding depends on (see the module docstring)."""
  h = hashlib.sha256(f"{FORMAT}/{VERSION}\n".encode())
  h.update(json.dumps(model_config, sort_keys=True, default=list).encode())
  for name in sorted(params):
    a = np.ascontiguousarray(params[name])
    h.update(f"\n{name}:{a.dtype.str}:{a.shape}\n".encode())
    h.update(a.astype(a.dtype.newbyteorder("<")).tobytes())
  for name in TABLES:
    h.update(f"\ntable {name}\n".encode())
    h.update(tables[name].digest())
  h.update(np.ascontiguousarray(scales, dtype="<f8").tobytes())
  h.update(b"\nentropy model\n")
  h.update(entropy_model.digest())
  return h.hexdigest()


def assemble(config: Mapping, params: Mapping[str, Any], tables: Mapping[str, CdfTable],
             scales: np.ndarray, entropy_model: IntegerEntropyModel,
             info: Mapping[str, Any]) -> dict[str, Any]:
  """The in-memory bundle `read` would return for these parts (fingerprinted, float32 params):
  what `write` stores, and what `Codec` takes directly (e.g. to evaluate a run without writing)."""
  flat = {k: np.asarray(v, dtype=np.float32) for k, v in flatten(params).items()}
  config = json.loads(json.dumps(config, default=list))
  fp = fingerprint(config["model"], flat, tables, scales, entropy_model)
  manifest = {"format": FORMAT, "version": VERSION, "fingerprint": fp, **info}
  return {"manifest": manifest, "config": config, "params": unflatten(flat), "tables": tables,
          "scales": np.asarray(scales, np.float64), "entropy_model": entropy_model}


def check_destination(out: str | os.PathLike, force: bool = False) -> pathlib.Path:
  """Raises BundleError unless a bundle may be written to `out` (absent or empty, or `force`)."""
  out = pathlib.Path(out)
  if out.exists() and not out.is_dir():
    raise BundleError(f"{out} exists and is not a directory")
  if out.exists() and any(out.iterdir()) and not force:
    raise BundleError(f"{out} exists and is not empty (pass --force to replace it)")
  return out


def store(out: str | os.PathLike, b: Mapping[str, Any], force: bool = False) -> dict[str, Any]:
  """Writes a bundle `assemble` made to `out` and returns its manifest. An existing non-empty
  `out` is refused unless `force`; then it is replaced only once the new bundle is complete
  (written next to it, then renamed)."""
  out = check_destination(out, force)
  flat, config, manifest = flatten(b["params"]), b["config"], b["manifest"]
  tables, scales = b["tables"], b["scales"]
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
  try:
    np.savez(tmp / "params.npz", **flat)
    arrays = {"scales": np.asarray(scales, np.float64)}
    for name in TABLES:
      arrays.update(tables[name].to_arrays(prefix=f"{name}_"))
    arrays.update(b["entropy_model"].to_arrays())
    np.savez(tmp / "tables.npz", **arrays)
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if out.exists():
      old = out.with_name(f".{out.name}.old")
      shutil.rmtree(old, ignore_errors=True)
      out.rename(old)
      tmp.rename(out)
      shutil.rmtree(old)
    else:
      tmp.rename(out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest


def read(path: str | os.PathLike) -> dict[str, Any]:
  """Reads and verifies a bundle: {"manifest", "config", "params" (nested), "tables", "scales",
  "entropy_model"}."""
  path = pathlib.Path(path)
  if not path.is_dir():
    raise BundleError(f"no model bundle at {path} (not a directory; make one with hybridflow export)")
  missing = [f for f in FILES if not (path / f).is_file()]
  if missing:
    raise BundleError(f"{path} is not a model bundle: missing {', '.join(missing)}")
  try:
    manifest = json.loads((path / "manifest.json").read_text())
    config = json.loads((path / "config.json").read_text())
    if manifest.get("format") != FORMAT:
      raise BundleError(f"{path}: manifest.json is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
      raise BundleError(f"{path}: bundle version {manifest.get('version')} is not supported "
                        f"(this reader reads version {VERSION}); export the model again with "
                        "this version's hybridflow export")
    with np.load(path / "params.npz", allow_pickle=False) as f:
      flat = {k: f[k] for k in f.files}
    with np.load(path / "tables.npz", allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
    tables = {name: CdfTable.from_arrays(arrays, prefix=f"{name}_") for name in TABLES}
    scales = arrays["scales"]
    entropy_model = IntegerEntropyModel.from_arrays(arrays)
  except BundleError:
    raise
  except Exception as e:  # json, zip, missing keys, bad tables: all mean a damaged bundle
    raise BundleError(f"{path}: damaged bundle ({type(e).__name__}: {e})") from None
  fp = fingerprint(config["model"], flat, tables, scales, entropy_model)
  if fp != manifest.get("fingerprint"):
    raise BundleError(f"{path}: content does not match its fingerprint (modified or damaged "
                      "after export); export it again")
  return {"manifest": manifest, "config": config, "params": unflatten(flat), "tables": tables,
          "scales": scales, "entropy_model": entropy_model}
