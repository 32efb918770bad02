"""Reading images into the one form the model takes, 8-bit RGB, and saying what was converted.

Used by the codec (`compress` accepts arrays and files) and by the data pipeline. Conversions:

- greyscale, greyscale + alpha, palette and CMYK images become RGB (a greyscale image as R = G = B,
  which the codec's files mark, so that it decodes grey again: no note);
- an alpha channel (or palette transparency) is composited onto white;
- 16-bit integer samples are scaled to 8 bits (v / 257, rounded), floats are taken as [0, 1];
- files are oriented by their EXIF orientation tag.

Every conversion that loses or changes information yields a short note ("16-bit samples scaled to
8 bits"), which the command line prints as one line; silent conversion would surprise a user whose
decoded file is 8-bit RGB when the input was not.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# The file names taken as images wherever a folder of them is read: training and evaluation data,
# `prepare-data`, and `compress` of a folder. Compared case-insensitively.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


def to_rgb8(a) -> tuple[np.ndarray, list[str]]:
  """uint8 [H, W, 3] from an image array, and notes on what was converted.

  a: [H, W] or [H, W, C] with C in 1 (grey), 2 (grey + alpha), 3 (RGB), 4 (RGBA); uint8, bool,
  wider integers (taken as 16-bit samples, clipped to [0, 65535]) or floats (taken as [0, 1],
  NaN as 0). Raises ValueError for anything else.
  """
  a = np.asarray(a)
  if a.ndim == 2:
    a = a[..., None]
  if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
    raise ValueError(f"not an image array: shape {a.shape}")
  notes = []
  if a.dtype == np.uint8:
    x = a
  elif a.dtype == np.bool_:
    x = a.astype(np.uint8) * 255
    notes.append("1-bit samples expanded to 8 bits")
  elif np.issubdtype(a.dtype, np.integer):
    x = np.round(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
    notes.append("16-bit samples scaled to 8 bits")
  elif np.issubdtype(a.dtype, np.floating):
    x = np.round(np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0).astype(np.uint8)
    notes.append("floating-point samples (taken as [0, 1]) scaled to 8 bits")
  else:
    raise ValueError(f"not an image array: dtype {a.dtype}")
  channels = x.shape[-1]
  colour = x[..., :3] if channels >= 3 else np.repeat(x[..., :1], 3, axis=-1)
  if channels in (2, 4):
    alpha = x[..., -1:].astype(np.float32) / 255.0
    colour = np.round(colour * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    notes.append("alpha channel composited onto white")
  return np.ascontiguousarray(colour), notes


def decode(payload: bytes) -> tuple[np.ndarray, list[str]]:
  """uint8 [H, W, 3] from encoded image bytes (any format PIL reads), and conversion notes.

  Applies the EXIF orientation. Raises (any exception type) when the data cannot be fully decoded:
  `load()` forces the whole image to be read, so a truncated file fails here rather than later.
  """
  notes = []
  with warnings.catch_warnings():
    # Decompression-bomb and palette warnings: the image is still decoded, or it raises.
    warnings.simplefilter("ignore")
    with Image.open(io.BytesIO(payload)) as img:
      img.load()
      try:
        oriented = ImageOps.exif_transpose(img)
      except Exception:  # a broken EXIF block should not lose a readable image
        oriented = img
      if oriented is not img and img.getexif().get(0x0112, 1) != 1:
        notes.append(f"EXIF orientation {img.getexif().get(0x0112)} applied")
      img = oriented
      mode = img.mode
      if mode in ("I", "F") or mode.startswith("I;16"):
        arr = np.asarray(img)  # 16/32-bit grey: convert("RGB") would clip instead of rescale
      elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        arr = np.asarray(img.convert("RGBA"))
        if mode not in ("RGBA", "LA", "La", "RGBa"):
          notes.append(f"{_mode_name(mode)} image converted to RGB")
        if mode in ("LA", "La"):
          arr = arr[..., [0, 3]]  # keep it greyscale + alpha, so the notes say so
      elif mode in ("L", "1"):
        arr = np.asarray(img.convert("L"))
        if mode == "1":
          notes.append("1-bit image expanded to 8 bits")
      else:
        arr = np.asarray(img.convert("RGB"))
        if mode != "RGB":
          notes.append(f"{_mode_name(mode)} image converted to RGB")
  rgb, more = to_rgb8(arr)
  return rgb, notes + more


def _mode_name(mode: str) -> str:
  return {"P": "palette", "PA": "palette", "CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "Lab",
          "HSV": "HSV"}.get(mode, f"mode {mode}")


def read(path) -> tuple[np.ndarray, list[str]]:
  """`decode` of the file at `path`."""
  with open(path, "rb") as f:
    return decode(f.read())


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of a uint8 [H, W, 3] image."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()
