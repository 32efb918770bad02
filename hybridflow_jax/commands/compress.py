"""`hybridflow compress IN OUT [--model NAME|PATH] [--schedule S | --target-bpp X]`: one file.

Without --model, the shipped reference model (`pretrained.DEFAULT`).
"""

from __future__ import annotations

import io
import json
import sys
import warnings

import PIL
from PIL import Image

from hybridflow_jax import imageio
from hybridflow_jax.codec import programs
from hybridflow_jax.codec.api import DEFAULT_MAX_PIXELS, Codec, CodecError, ConversionNotice
from hybridflow_jax.codec.bundle import BundleError
from hybridflow_jax.commands import files
from hybridflow_jax.errors import UserError, reported_as_user_errors


def run(ns) -> None:
  out = files.check_output(ns.output, ns.force)
  model = files.model_dir(ns.model)
  data = files.read_input(ns.input)
  limit = ns.max_pixels or DEFAULT_MAX_PIXELS
  _check_pixels(ns.input, data, limit)
  try:
    image, notes = imageio.decode(data)
  except PIL.UnidentifiedImageError:  # its message names an in-memory buffer, not the file
    raise UserError(f"{ns.input}: not an image file this reads (PNG, JPEG, WebP, TIFF, BMP, ...)"
                    ) from None
  except Exception as e:  # noqa: BLE001  (PIL raises many types for unreadable data)
    raise UserError(f"{ns.input}: not a readable image ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else 'no details'})") from None
  for note in notes:
    print(f"hybridflow compress: note: {note}", file=sys.stderr)
  with reported_as_user_errors(BundleError):
    codec = Codec.load(model, max_pixels=limit, allocation=ns.allocation,
                       program_cache=programs.default_dir())
  with reported_as_user_errors(CodecError, ValueError), warnings.catch_warnings():
    warnings.simplefilter("ignore", ConversionNotice)  # the notes above covered conversions
    result = codec.compress_detailed(image, schedule=ns.schedule, target_bpp=ns.target_bpp)
  files.write_atomically(out, lambda p: p.write_bytes(result.data))
  print(json.dumps({"output": str(out), "width": result.width, "height": result.height,
                    "schedule": result.schedule, "bytes": len(result.data),
                    "bpp": round(result.bpp, 5), "keep_ratio": round(result.keep_ratio, 4),
                    "channels": 1 if result.grey else 3}))


def _check_pixels(name: str, data: bytes, limit: int) -> None:
  """Refuses an image above `limit` pixels from its header, before decoding its pixels."""
  try:
    with Image.open(io.BytesIO(data)) as img:
      width, height = img.size
  except Exception:  # noqa: BLE001
    return  # not readable: the decoder says why
  if width * height > limit:
    raise UserError(f"{name} is {width}x{height} = {width * height / 1e6:.1f} MP, above the "
                    f"limit of {limit / 1e6:.1f} MP (raise it with --max-pixels if the machine "
                    "has the memory)")
