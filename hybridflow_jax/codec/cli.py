"""`hybridflow export | compress | decompress`: the codec's command line.

    hybridflow export --workdir runs/demo --out models/demo
    hybridflow compress photo.png photo.hfc --model models/demo [--schedule 1_4 | --target-bpp 0.03]
    hybridflow decompress photo.hfc photo.png --model models/demo

Rules: an existing output is never overwritten without --force; outputs are written to a temporary
file and renamed, so a failure leaves no partial file; every error a user can cause is one line on
stderr and exit status 2. `decompress` checks the file (magic, version, checksum, model fingerprint)
before importing jax, so a wrong file is refused in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import warnings

EXIT_USER_ERROR = 2
# Image formats `decompress` writes (lossless only: re-encoding the decoded image lossily would
# change it again).
OUTPUT_FORMATS = {".png": "PNG", ".bmp": "BMP", ".ppm": "PPM", ".tif": "TIFF", ".tiff": "TIFF"}
_SIGNATURES = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
               b"BM": "a BMP image", b"RIFF": "a RIFF (WebP?) image"}


class UserError(Exception):
  """Printed as one line; exit status 2."""


def _parser(command: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=f"hybridflow {command}")
  if command == "export":
    p.add_argument("--workdir", required=True, help="a finished training run")
    p.add_argument("--out", required=True, help="the bundle directory to write")
    p.add_argument("--data", default=None,
                   help="data spec to measure codeword counts on (default: the run's training data)")
    p.add_argument("--prior-images", "--prior_images", dest="prior_images", type=int, default=1000,
                   help="at most this many images for the codeword counts (default 1000)")
  else:
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--model", required=True, help="a bundle written by hybridflow export")
    p.add_argument("--max-pixels", "--max_pixels", dest="max_pixels", type=int, default=None,
                   help="refuse larger images (default 2**24, 4096x4096)")
  if command == "compress":
    p.add_argument("--schedule", default=None,
                   help="1_1, 1_2, 1_4 (default), 1_9, 1_16 or dynamic")
    p.add_argument("--target-bpp", "--target_bpp", dest="target_bpp", type=float, default=None,
                   help="densest schedule (or, with --schedule dynamic, dynamic budget) that fits")
  p.add_argument("--force", action="store_true", help="replace an existing output")
  return p


def main(command: str, args: list[str]) -> int:
  parser = _parser(command)
  parser.error = lambda message: _fail(command, message)  # one line, not argparse's usage block
  ns = parser.parse_args(args)
  try:
    {"export": _export, "compress": _compress, "decompress": _decompress}[command](ns)
  except UserError as e:
    return _fail(command, str(e))
  return 0


def _fail(command: str, message: str) -> int:
  print(f"hybridflow {command}: error: {message}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def _check_output(path: str, force: bool) -> pathlib.Path:
  out = pathlib.Path(path)
  if out.is_dir():
    raise UserError(f"{out} is a directory")
  if out.exists() and not force:
    raise UserError(f"{out} exists (pass --force to replace it)")
  if not out.parent.is_dir():
    raise UserError(f"{out.parent} is not a directory")
  return out


def _write_atomically(out: pathlib.Path, write) -> None:
  tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
  try:
    write(tmp)
    os.replace(tmp, out)
  finally:
    if tmp.exists():
      tmp.unlink()


def _read_input(path: str) -> bytes:
  p = pathlib.Path(path)
  if not p.is_file():
    raise UserError(f"{p}: no such file")
  try:
    return p.read_bytes()
  except OSError as e:
    raise UserError(f"{p}: {e.strerror}") from None


def _load_codec(ns):
  from hybridflow_jax.codec.api import DEFAULT_MAX_PIXELS, Codec
  from hybridflow_jax.codec.bundle import BundleError
  try:
    return Codec.load(ns.model, max_pixels=ns.max_pixels or DEFAULT_MAX_PIXELS)
  except BundleError as e:
    raise UserError(str(e)) from None


def _export(ns) -> None:
  out = pathlib.Path(ns.out)
  if out.exists() and (not out.is_dir() or any(out.iterdir())) and not ns.force:
    raise UserError(f"{out} exists and is not empty (pass --force to replace it)")
  if ns.prior_images is not None and ns.prior_images < 1:
    raise UserError("--prior-images must be at least 1")
  from hybridflow_jax import export
  from hybridflow_jax.codec.bundle import BundleError
  try:
    manifest = export.export_run(ns.workdir, out, data=ns.data, prior_images=ns.prior_images,
                                 force=ns.force)
  except (BundleError, ValueError, FileNotFoundError) as e:
    raise UserError(str(e).splitlines()[0]) from None
  prior = manifest["index_prior"]
  print(f"index prior: {prior['prior_bits_per_index']:.3f} bits per index on its data "
        f"(uniform: {prior['uniform_bits_per_index']:.3f})")


def _compress(ns) -> None:
  out = _check_output(ns.output, ns.force)
  data = _read_input(ns.input)
  from hybridflow_jax import imageio
  _check_pixels(data, ns)
  try:
    image, notes = imageio.decode(data)
  except Exception as e:  # PIL raises many types for unreadable data
    raise UserError(f"{ns.input}: not a readable image ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else 'no details'})") from None
  for note in notes:
    print(f"hybridflow compress: note: {note}", file=sys.stderr)
  codec = _load_codec(ns)
  from hybridflow_jax.codec.api import ConversionNotice
  from hybridflow_jax.codec.coder import CodecError
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", ConversionNotice)  # the notes above covered conversions
      result = codec.compress_detailed(image, schedule=ns.schedule, target_bpp=ns.target_bpp)
  except (CodecError, ValueError) as e:
    raise UserError(str(e)) from None
  _write_atomically(out, lambda p: p.write_bytes(result.data))
  print(json.dumps({"output": str(out), "width": result.width, "height": result.height,
                    "schedule": result.schedule, "bytes": len(result.data),
                    "bpp": round(result.bpp, 5), "keep_ratio": round(result.keep_ratio, 4)}))


def _decompress(ns) -> None:
  out = _check_output(ns.output, ns.force)
  fmt = OUTPUT_FORMATS.get(out.suffix.lower())
  if fmt is None:
    raise UserError(f"{out}: write a lossless image ({', '.join(OUTPUT_FORMATS)})")
  data = _read_input(ns.input)
  # Everything checkable without jax first: container and model fingerprint.
  from hybridflow_jax.codec import container
  for signature, what in _SIGNATURES.items():
    if data.startswith(signature):
      raise UserError(f"{ns.input} is {what}, not a HybridFlow file (compress it first)")
  fingerprint = _bundle_fingerprint(ns.model)
  try:
    container.unpack(data, expected_fingerprint=fingerprint)
  except container.FormatError as e:
    raise UserError(f"{ns.input}: {e}") from None
  codec = _load_codec(ns)
  from hybridflow_jax.codec.coder import CodecError
  try:
    image = codec.decompress(data)
  except CodecError as e:  # FormatError included
    raise UserError(f"{ns.input}: {e}") from None
  from PIL import Image
  _write_atomically(out, lambda p: Image.fromarray(image).save(p, format=fmt))
  print(json.dumps({"output": str(out), "width": image.shape[1], "height": image.shape[0]}))


def _check_pixels(data: bytes, ns) -> None:
  """Refuses an image above the pixel limit from its header, before decoding its pixels."""
  import io

  from PIL import Image

  from hybridflow_jax.codec.api import DEFAULT_MAX_PIXELS
  limit = ns.max_pixels or DEFAULT_MAX_PIXELS
  try:
    with Image.open(io.BytesIO(data)) as img:
      width, height = img.size
  except Exception:
    return  # not readable: the decoder says why
  if width * height > limit:
    raise UserError(f"{ns.input} is {width}x{height} = {width * height / 1e6:.1f} MP, above the "
                    f"limit of {limit / 1e6:.1f} MP (large images are refused, not tiled; raise "
                    "it with --max-pixels if the machine has the memory)")


def _bundle_fingerprint(model_dir: str) -> bytes:
  from hybridflow_jax.codec.container import FINGERPRINT_BYTES
  manifest = pathlib.Path(model_dir) / "manifest.json"
  if not manifest.is_file():
    raise UserError(f"no model bundle at {model_dir} (no manifest.json; make one with "
                    "hybridflow export)")
  try:
    return bytes.fromhex(json.loads(manifest.read_text())["fingerprint"])[:FINGERPRINT_BYTES]
  except (ValueError, KeyError, TypeError):
    raise UserError(f"{manifest}: damaged manifest") from None
