"""Inputs and outputs of the file commands (`export`, `compress`, `decompress`), checked up front:
the model they read, the files they read and write.

An existing output is never replaced without --force, and outputs are written to a temporary file
and renamed, so a failure leaves no partial file.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Callable

from hybridflow_jax import pretrained
from hybridflow_jax.codec import container
from hybridflow_jax.codec.bundle import BundleError
from hybridflow_jax.errors import UserError, reported_as_user_errors

# The suffix of HybridFlow files that `compress` gives them and `decompress` of a folder looks for.
HFC_SUFFIX = ".hfc"


def model_dir(model: str | None) -> pathlib.Path:
  """The bundle directory of --model: a directory or a shipped model's name; without --model, the
  shipped `pretrained.DEFAULT` (by name only). UserError if there is none."""
  if model is not None:
    with reported_as_user_errors(BundleError):
      return pretrained.resolve(model)
  if pretrained.DEFAULT not in pretrained.available():
    raise UserError(f"no --model given, and the default model {pretrained.DEFAULT!r} does not ship "
                    "with this install; pass --model NAME|PATH (a bundle made with hybridflow "
                    "export)")
  return pretrained.ROOT / pretrained.DEFAULT


def bundle_fingerprint(model_dir: pathlib.Path) -> bytes:
  """The file fingerprint of the bundle at `model_dir`, from its manifest alone (no jax)."""
  manifest = model_dir / "manifest.json"
  if not manifest.is_file():
    raise UserError(f"no model bundle at {model_dir} (no manifest.json; make one with "
                    "hybridflow export)")
  try:
    return bytes.fromhex(json.loads(manifest.read_text())["fingerprint"])[:container.FINGERPRINT_BYTES]
  except (ValueError, KeyError, TypeError):
    raise UserError(f"{manifest}: damaged manifest") from None


def check_output(path: str, force: bool) -> pathlib.Path:
  """The output file `path`, if it may be written (UserError if not)."""
  out = pathlib.Path(path)
  if out.is_dir():
    raise UserError(f"{out} is a directory")
  if out.exists() and not force:
    raise UserError(f"{out} exists (pass --force to replace it)")
  if not out.parent.exists():
    raise UserError(f"{out.parent}: no such directory (create it first)")
  if not out.parent.is_dir():
    raise UserError(f"{out.parent} is not a directory")
  return out


def check_output_dir(path: str, force: bool) -> pathlib.Path:
  """The output directory `path`, if it is new, empty or --force replaces it (UserError if not)."""
  out = pathlib.Path(path)
  if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
    raise UserError(f"{out} exists and is not empty (pass --force to replace it)")
  return out


def folder_pairs(src: pathlib.Path, out_dir: str, suffixes: tuple[str, ...], out_suffix: str,
                 force: bool, kind: str) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """(input, output) for every file under the folder `src` (recursive; hidden files and folders
  skipped) whose suffix is one of `suffixes`: the output is at the same path under `out_dir` with
  `out_suffix`. Checked before any work, so that nothing is half done: UserError if there is no
  input, if two inputs would write one output, or if an output exists (without `force`). Creates
  `out_dir`."""
  out = pathlib.Path(out_dir)
  if out.exists() and not out.is_dir():
    raise UserError(f"{out} is a file: with a folder as input the output is a folder")
  inputs = sorted(
      p for p in src.rglob("*")
      if p.suffix.lower() in suffixes and not any(part.startswith(".") for part in
                                                  p.relative_to(src).parts) and p.is_file())
  if not inputs:
    raise UserError(f"{src}: no {kind} files ({', '.join(suffixes)}) in it or below it")
  pairs = [(p, out / p.relative_to(src).with_suffix(out_suffix)) for p in inputs]
  first: dict[pathlib.Path, pathlib.Path] = {}
  for p, o in pairs:
    if o in first:
      raise UserError(f"{first[o]} and {p} would both be written to {o} (rename one)")
    first[o] = p
  if dirs := [o for _, o in pairs if o.is_dir()]:
    raise UserError(f"{dirs[0]} is a directory")
  if (existing := [o for _, o in pairs if o.exists()]) and not force:
    more = f" (and {len(existing) - 1} more of the outputs)" if len(existing) > 1 else ""
    raise UserError(f"{existing[0]} exists{more}: pass --force to replace them")
  out.mkdir(parents=True, exist_ok=True)
  return pairs


def code_folder(pairs: list[tuple[pathlib.Path, pathlib.Path]],
                code: Callable[[pathlib.Path, pathlib.Path], None], prog: str, kind: str) -> None:
  """code(input, output) for each of `folder_pairs`' pairs; a UserError is printed as one line
  naming the file and the others go on. UserError at the end if any failed."""
  failed = 0
  for path, out in pairs:
    try:
      out.parent.mkdir(parents=True, exist_ok=True)
      code(path, out)
    except UserError as e:
      failed += 1
      print(f"{prog}: error: {e}", file=sys.stderr)
  if failed:
    raise UserError(f"{failed} of {len(pairs)} {kind} files failed (each named above); the other "
                    f"{len(pairs) - failed} were written")


def write_atomically(out: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
  """Calls write(temporary path) and renames the result to `out`; removes it if write fails."""
  tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
  try:
    write(tmp)
    os.replace(tmp, out)
  finally:
    if tmp.exists():
      tmp.unlink()


def read_input(path: str) -> bytes:
  """The bytes of the input file `path` (UserError if it cannot be read)."""
  p = pathlib.Path(path)
  if p.is_dir():
    raise UserError(f"{p} is a directory, not a file")
  if not p.is_file():
    raise UserError(f"{p}: no such file")
  try:
    return p.read_bytes()
  except OSError as e:
    raise UserError(f"{p}: {e.strerror}") from None
