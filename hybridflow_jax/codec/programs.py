"""The codec's networks as exported programs (`jax.export`), optionally kept on disk.

A fresh process that decodes one photo with `small` spends about 1 s tracing the flax model into a
program (flax checks every parameter against its initialiser on each trace; measured on a slow
2-core machine, where running it takes 0.65-0.85 s). `Programs` traces each network once per
argument shapes, exports the program and, given a folder, serialises it there, so later processes
read it back (milliseconds), lower a call to it (about 0.2 s) and compile that (a hit in jax's
persistent compilation cache, which the command line sets up beside it: `cli.use_compile_cache`).

Every call runs through the exported program, whether just traced or read back: the program is the
same StableHLO either way, so results do not depend on what the folder held (checked bitwise in
tests/test_codec_programs.py).

A stored program is found by the SHA-256 of everything that shapes it: the bundle's fingerprint
(its config and parameters), the network's name, the arguments' tree, shapes and dtypes, the jax
and jaxlib versions, the backend, x64 mode and the source of this package (a changed model
definition traces another program). Files are written atomically, unreadable ones are traced again,
and the least recently used ones are dropped past `MAX_BYTES`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import Any

import jax

# The folder inside a jax compilation cache folder (`JAX_COMPILATION_CACHE_DIR`) that holds the
# exported programs. jax only touches its own `*-cache` files there.
SUBDIR = "exported"
SUFFIX = ".jaxexport"
# About 110 kB per network and image shape for `small`: thousands of shapes before eviction.
MAX_BYTES = 256 * 2**20
_FORMAT = b"hybridflow-exported-1"


def default_dir(environ=os.environ) -> str | None:
  """The folder beside jax's persistent compilation cache (set by the command line, or by the
  user's own JAX_COMPILATION_CACHE_DIR); None without one, where compiling dominates anyway."""
  base = environ.get("JAX_COMPILATION_CACHE_DIR")
  return os.path.join(base, SUBDIR) if base else None


@functools.cache
def _source_digest() -> bytes:
  """SHA-256 of this package's Python source: programs traced by other code are other programs."""
  h = hashlib.sha256()
  root = pathlib.Path(__file__).resolve().parents[1]
  for path in sorted(root.rglob("*.py")):
    h.update(str(path.relative_to(root)).encode())
    h.update(path.read_bytes())
  return h.digest()


def _leaf_signature(x: Any) -> str:
  shape = getattr(x, "shape", ())
  dtype = getattr(x, "dtype", None)
  if dtype is None:  # a Python scalar: the dtype jax gives it
    dtype = jax.numpy.asarray(x).dtype
  return f"{tuple(shape)}:{jax.numpy.dtype(dtype).name}"


class Programs:
  """Exported programs of one model's networks.

  salt: what identifies the model (the bundle fingerprint); directory: where programs persist
  between processes (None: in this process only).
  """

  def __init__(self, salt: str, directory: str | os.PathLike | None = None,
               max_bytes: int = MAX_BYTES):
    self.salt = salt
    self.directory = None if directory is None else pathlib.Path(directory)
    self.max_bytes = int(max_bytes)
    self._quick: dict[tuple, tuple[Callable[..., Any], tuple]] = {}
    self.traced = 0  # programs traced by this process (the rest came from the folder)

  def key(self, name: str, args: tuple) -> str:
    leaves, tree = jax.tree_util.tree_flatten(args)
    h = hashlib.sha256(_FORMAT)
    for part in (self.salt, name, str(tree), ",".join(map(_leaf_signature, leaves)),
                 jax.__version__, jax.lib.__version__, jax.default_backend(),
                 str(jax.config.jax_enable_x64)):
      h.update(part.encode())
      h.update(b"\0")
    h.update(_source_digest())
    return h.hexdigest()

  def call(self, name: str, fn: Callable[..., Any], *args):
    """fn(*args) through its exported program (fn: a jittable function of arrays only; bind
    anything static into it and into `name`)."""
    # In this process a program is found without hashing the params' tree (1.5 ms for `small`):
    # arrays by shape and dtype, Python scalars by value, other arguments (the params) by
    # identity, which the entry keeps alive. The folder's key (`key`) is computed on a miss.
    quick, held = [name], []
    for a in args:
      if hasattr(a, "shape") and hasattr(a, "dtype"):
        quick.append((a.shape, a.dtype.name))
      elif isinstance(a, (bool, int, float)):
        quick.append((type(a), a))
      else:
        quick.append((type(a), id(a)))
        held.append(a)
    quick = tuple(quick)
    hit = self._quick.get(quick)
    if hit is None:
      key = None if self.directory is None else self.key(name, args)
      exported = None if key is None else self._read(key)
      if exported is None:
        exported = jax.export.export(jax.jit(fn))(*args)
        self.traced += 1
        if key is not None:
          self._write(key, exported)
      hit = self._quick[quick] = (jax.jit(exported.call), tuple(held))
    return hit[0](*args)

  def _path(self, key: str) -> pathlib.Path:
    return self.directory / f"{key}{SUFFIX}"

  def _read(self, key: str):
    path = self._path(key)
    try:
      data = path.read_bytes()
    except OSError:
      return None
    try:
      exported = jax.export.deserialize(bytearray(data))
    except Exception:  # damaged, or written by an incompatible jax: trace it again  # noqa: BLE001
      return None
    try:
      os.utime(path)  # recently used: evicted last
    except OSError:
      pass
    return exported

  def _write(self, key: str, exported) -> None:
    try:
      self.directory.mkdir(parents=True, exist_ok=True)
      fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
      try:
        with os.fdopen(fd, "wb") as f:
          f.write(exported.serialize())
        os.replace(tmp, self._path(key))
      except BaseException:
        os.unlink(tmp)
        raise
      self._evict()
    except OSError:
      pass  # a read-only or full disk: this process still has the program

  def _evict(self) -> None:
    entries = []
    for path in self.directory.glob(f"*{SUFFIX}"):
      try:
        st = path.stat()
      except OSError:
        continue
      entries.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
      if total <= self.max_bytes:
        break
      try:
        path.unlink()
        total -= size
      except OSError:
        pass
