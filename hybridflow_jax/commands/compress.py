"""`hybridflow compress IN OUT [--model NAME|PATH] [--schedule S | --target-bpp X]`.

IN is an image file and OUT the HybridFlow file to write, or IN is a folder and OUT a folder:
every image under IN (recursive, `imageio.IMAGE_EXTENSIONS`) is written to OUT at the same
relative path with its suffix replaced by `.hfc`, with the model loaded once (a process per file
spends seconds starting and loading for a tenth of a second of coding). Without --model, the
shipped reference model (`pretrained.DEFAULT`).
"""

from __future__ import annotations

import io
import json
import pathlib
import sys
import warnings
from typing import TYPE_CHECKING

import PIL
from PIL import Image

from hybridflow_jax import imageio
from hybridflow_jax.codec.bundle import BundleError
from hybridflow_jax.codec.coder import CodecError
from hybridflow_jax.codec.image_input import DEFAULT_MAX_PIXELS, ConversionNotice
from hybridflow_jax.commands import files
from hybridflow_jax.errors import UserError, reported_as_user_errors

if TYPE_CHECKING:
  from hybridflow_jax.codec.api import Codec


def run(ns) -> None:
  if pathlib.Path(ns.input).is_dir():
    _run_folder(ns)
    return
  out = files.check_output(ns.output, ns.force)
  model = files.model_dir(ns.model)
  limit = ns.max_pixels or DEFAULT_MAX_PIXELS
  # The input is read and decoded before the model loads: a bad file fails in a fraction of a second.
  image, notes = _read_image(ns.input, limit)
  for note in notes:
    print(f"hybridflow compress: note: {note}", file=sys.stderr)
  _compress(_load(model, ns, limit), image, ns, out)


def _run_folder(ns) -> None:
  src = pathlib.Path(ns.input)
  pairs = files.folder_pairs(src, ns.output, imageio.IMAGE_EXTENSIONS, files.HFC_SUFFIX, ns.force,
                             "image")
  model = files.model_dir(ns.model)
  limit = ns.max_pixels or DEFAULT_MAX_PIXELS
  codec = _load(model, ns, limit)

  def code(path: pathlib.Path, out: pathlib.Path) -> None:
    image, notes = _read_image(str(path), limit)
    for note in notes:
      print(f"hybridflow compress: note: {path}: {note}", file=sys.stderr)
    _compress(codec, image, ns, out, source=path)
  files.code_folder(pairs, code, "hybridflow compress", "image")


def _read_image(name: str, limit: int):
  """(uint8 image, conversion notes) of the file `name`; UserError if it cannot be coded."""
  data = files.read_input(name)
  _check_pixels(name, data, limit)
  try:
    return imageio.decode(data)
  except PIL.UnidentifiedImageError:  # its message names an in-memory buffer, not the file
    raise UserError(f"{name}: not an image file this reads (PNG, JPEG, WebP, TIFF, BMP, ...)"
                    ) from None
  except Exception as e:  # noqa: BLE001  (PIL raises many types for unreadable data)
    raise UserError(f"{name}: not a readable image ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else 'no details'})") from None


def _load(model: pathlib.Path, ns, limit: int) -> Codec:
  """The Codec of `model`. jax is imported here, after the command line, the output and (for one
  file) the input were checked: a bad one is refused in a fraction of a second."""
  from hybridflow_jax.codec import programs
  from hybridflow_jax.codec.api import Codec
  with reported_as_user_errors(BundleError):
    return Codec.load(model, max_pixels=limit, allocation=ns.allocation,
                      program_cache=programs.default_dir())


def _compress(codec: Codec, image, ns, out: pathlib.Path, source: pathlib.Path | None = None):
  """Codes `image`, writes `out` atomically and prints its one-line JSON report."""
  prefix = f"{source}: " if source is not None else ""
  with reported_as_user_errors(CodecError, ValueError, prefix=prefix), warnings.catch_warnings():
    warnings.simplefilter("ignore", ConversionNotice)  # the notes covered conversions
    result = codec.compress_detailed(image, schedule=ns.schedule, target_bpp=ns.target_bpp)
  files.write_atomically(out, lambda p: p.write_bytes(result.data))
  report = {} if source is None else {"input": str(source)}
  report.update({"output": str(out), "width": result.width, "height": result.height,
                 "schedule": result.schedule, "bytes": len(result.data),
                 "bpp": round(result.bpp, 5), "keep_ratio": round(result.keep_ratio, 4),
                 "channels": 1 if result.grey else 3})
  print(json.dumps(report), flush=True)


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
