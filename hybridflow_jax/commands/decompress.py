"""`hybridflow decompress IN OUT [--model NAME|PATH]`: a HybridFlow file -> a lossless image.

Without --model, the shipped reference model (`pretrained.DEFAULT`).

The file is checked (magic, version, checksum, model fingerprint) before jax is imported, so a wrong
file is refused in a fraction of a second.
"""

from __future__ import annotations

import json

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
  out = files.check_output(ns.output, ns.force)
  fmt = OUTPUT_FORMATS.get(out.suffix.lower())
  if fmt is None:
    raise UserError(f"{out}: write a lossless image ({', '.join(OUTPUT_FORMATS)})")
  model = files.model_dir(ns.model)
  data = files.read_input(ns.input)
  for signature, what in _SIGNATURES.items():
    if data.startswith(signature):
      raise UserError(f"{ns.input} is {what}, not a HybridFlow file (compress it first)")
  with reported_as_user_errors(container.FormatError, prefix=f"{ns.input}: "):
    header = container.unpack(data, expected_fingerprint=files.bundle_fingerprint(model))
  # The one deferred import of the command line: the file is sound and made by this model, so
  # now (and only now) load jax and the codec.
  from hybridflow_jax.codec import programs
  from hybridflow_jax.codec.api import DEFAULT_MAX_PIXELS, Codec
  with reported_as_user_errors(BundleError):
    codec = Codec.load(model, max_pixels=ns.max_pixels or DEFAULT_MAX_PIXELS,
                       program_cache=programs.default_dir())
  with reported_as_user_errors(CodecError, container.FormatError, prefix=f"{ns.input}: "):
    image = codec.decompress(data)
  # A greyscale file (its source had R = G = B) is written with one channel, as it came.
  picture = Image.fromarray(image[..., 0] if header.grey else image)
  files.write_atomically(out, lambda p: picture.save(p, format=fmt))
  print(json.dumps({"output": str(out), "width": image.shape[1], "height": image.shape[0],
                    "channels": 1 if header.grey else 3}))
