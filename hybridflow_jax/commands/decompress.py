"""`hybridflow decompress IN OUT [--model NAME|PATH]`: a HybridFlow file -> a lossless image.

Or a folder IN of `.hfc` files (recursive) into a folder OUT of PNG images at the same relative
paths, the model loaded once. Without --model, the shipped reference model (`pretrained.DEFAULT`).

The file is checked (magic, version, checksum, model fingerprint) before jax is imported, so a wrong
file is refused in a fraction of a second.
"""

from __future__ import annotations

import json
import pathlib

from PIL import Image

from hybridflow_jax.codec import container
from hybridflow_jax.codec.bundle import BundleError
from hybridflow_jax.codec.coder import CodecError
from hybridflow_jax.commands import files
from hybridflow_jax.errors import UserError, reported_as_user_errors

# Image formats written (lossless only: re-encoding the decoded image lossily would change it again).
OUTPUT_FORMATS = {".png": "PNG", ".bmp": "BMP", ".ppm": "PPM", ".tif": "TIFF", ".tiff": "TIFF"}
_SIGNATURES = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
               b"BM": "a BMP image", b"RIFF": "a RIFF (WebP?) image"}


def run(ns) -> None:
  if pathlib.Path(ns.input).is_dir():
    _run_folder(ns)
    return
  out = files.check_output(ns.output, ns.force)
  fmt = OUTPUT_FORMATS.get(out.suffix.lower())
  if fmt is None:
    raise UserError(f"{out}: write a lossless image ({', '.join(OUTPUT_FORMATS)})")
  model = files.model_dir(ns.model)
  data, header = _read_file(ns.input, files.bundle_fingerprint(model))
  _decompress(_Loader(model, ns), data, header, out, fmt, ns.input)


def _run_folder(ns) -> None:
  pairs = files.folder_pairs(pathlib.Path(ns.input), ns.output, (files.HFC_SUFFIX,), ".png",
                             ns.force, "HybridFlow")
  model = files.model_dir(ns.model)
  fingerprint, codec = files.bundle_fingerprint(model), _Loader(model, ns)

  def code(path: pathlib.Path, out: pathlib.Path) -> None:
    data, header = _read_file(str(path), fingerprint)
    _decompress(codec, data, header, out, "PNG", str(path), report_input=True)
  files.code_folder(pairs, code, "hybridflow decompress", "HybridFlow")


def _read_file(name: str, fingerprint: bytes):
  """(bytes, header) of the HybridFlow file `name`, checked against the model's fingerprint."""
  data = files.read_input(name)
  for signature, what in _SIGNATURES.items():
    if data.startswith(signature):
      raise UserError(f"{name} is {what}, not a HybridFlow file (compress it first)")
  with reported_as_user_errors(container.FormatError, prefix=f"{name}: "):
    return data, container.unpack(data, expected_fingerprint=fingerprint)


class _Loader:
  """The codec, loaded on first use: files are checked before jax is imported."""

  def __init__(self, model: pathlib.Path, ns):
    self.model, self.ns, self.codec = model, ns, None

  def __call__(self):
    if self.codec is None:
      # The one deferred import of the command line: a file is sound and made by this model, so
      # now (and only now) load jax and the codec.
      from hybridflow_jax.codec import programs
      from hybridflow_jax.codec.api import DEFAULT_MAX_PIXELS, Codec
      with reported_as_user_errors(BundleError):
        self.codec = Codec.load(self.model,
                                max_pixels=self.ns.max_pixels or DEFAULT_MAX_PIXELS,
                                program_cache=programs.default_dir())
    return self.codec


def _decompress(codec: _Loader, data: bytes, header, out: pathlib.Path, fmt: str, name: str,
                report_input: bool = False) -> None:
  """Decodes `data` (the file `name`), writes the image to `out` atomically and prints its one-line
  JSON report."""
  with reported_as_user_errors(CodecError, container.FormatError, prefix=f"{name}: "):
    image = codec().decompress(data)
  # A greyscale file (its source had R = G = B) is written with one channel, as it came.
  picture = Image.fromarray(image[..., 0] if header.grey else image)
  files.write_atomically(out, lambda p: picture.save(p, format=fmt))
  report = {"input": name} if report_input else {}
  report.update({"output": str(out), "width": image.shape[1], "height": image.shape[0],
                 "channels": 1 if header.grey else 3})
  print(json.dumps(report), flush=True)
