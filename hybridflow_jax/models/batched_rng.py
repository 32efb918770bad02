"""Replays a traced program with its Threefry hashes batched: the same values, a much smaller program.

A model's initialisation draws every parameter from its own key: flax folds each module's path into
the seed and every initialiser asks for its own random bits, so `model.init` of the tiny config
holds about 600 separate Threefry hashes. XLA compiles each one as its own unrolled loop of integer
rounds: on 2 CPU cores 150 such draws take 17 s to compile and the same draws as one vectorised
hash 0.4 s, and the tiny model's initialisation compiled in 16.6 s (at XLA's -O0) of which almost
all was hashing.

The hash (`threefry2x32`) is elementwise in its four uint32 operands (two key words, two counter
words), so any set of hashes that do not feed each other can be computed by one call on their
operands laid end to end. `batched_replay` inlines the program's calls, expands each high-level
random primitive (`random_bits`, `random_fold_in`, `random_split`) into the hashes its lowering
would emit (the lowering's own functions, traced), orders the result in waves (a hash's wave is
the number of hashes on the longest chain that feeds it) and evaluates each wave's hashes as one
call: bit for bit what the original program computes, with as many hash calls as the longest
chain of dependent draws (three for every config here) instead of one per draw.

Anything it does not know how to batch (an effect, a call primitive it cannot inline, a random
primitive on another implementation's keys) makes it return the plain replay instead: the result
is the same either way, only the compile time differs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jax_core

# Hashes computed by one call at most (elements of each operand): bounds the memory a wave's
# operands take (6 uint32 arrays of this size) while keeping the number of hashes small.
MAX_BATCH = 1 << 22

_CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call")
_EXPANDED = ("random_bits", "random_fold_in", "random_split")
_HASH = "threefry2x32"


class _Unsupported(Exception):
  pass


def batched_replay(closed: jax_core.ClosedJaxpr) -> Callable[..., list[Any]]:
  """A function computing `closed`'s outputs from its inputs (as `jaxpr_as_fun(closed)` does)
  with its independent Threefry hashes batched; the plain replay if it cannot be batched."""
  try:
    program = _Program(closed)
  except _Unsupported:
    return jax_core.jaxpr_as_fun(closed)
  return program


def hash_count(fn: Callable, *args) -> int:
  """The number of Threefry hashes in `fn`'s program for `args`, calls and random primitives
  expanded as above (what batching is for; a check for tests and benchmarks)."""
  graph, _, _ = _Graph.flatten(jax.make_jaxpr(fn)(*args))
  return sum(op.prim.name == _HASH for op in graph.ops)


class _Op:
  __slots__ = ("prim", "params", "ins", "outs", "wave")

  def __init__(self, prim, params, ins, outs):
    self.prim, self.params, self.ins, self.outs, self.wave = prim, params, ins, outs, 0


class _Graph:
  """A program flattened to primitive ops over value ids, calls inlined and random primitives
  expanded into their hashes."""

  def __init__(self):
    self.ops: list[_Op] = []
    self.consts: dict[int, Any] = {}
    self._next = 0

  @classmethod
  def flatten(cls, closed: jax_core.ClosedJaxpr) -> tuple[_Graph, list[int], list[int]]:
    """`closed` as a graph, with the ids of its inputs and outputs."""
    graph = cls()
    inputs = [graph.fresh() for _ in closed.jaxpr.invars]
    outputs = graph.inline(closed.jaxpr, [graph.const(c) for c in closed.consts], inputs)
    return graph, inputs, outputs

  def fresh(self) -> int:
    self._next += 1
    return self._next

  def const(self, value) -> int:
    ref = self.fresh()
    self.consts[ref] = value
    return ref

  def inline(self, jaxpr: jax_core.Jaxpr, const_refs, in_refs) -> list[int]:
    env: dict[Any, int] = dict(zip(jaxpr.constvars, const_refs))
    env.update(zip(jaxpr.invars, in_refs))

    def read(atom):
      return self.const(atom.val) if isinstance(atom, jax_core.Literal) else env[atom]

    for eqn in jaxpr.eqns:
      if eqn.effects:
        raise _Unsupported(f"{eqn.primitive.name} has effects")
      ins = [read(a) for a in eqn.invars]
      name = eqn.primitive.name
      if name in _CALLS:
        sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
        if not isinstance(sub, jax_core.ClosedJaxpr):
          raise _Unsupported(f"{name} without a closed jaxpr")
        outs = self.inline(sub.jaxpr, [self.const(c) for c in sub.consts], ins)
      elif name in _EXPANDED:
        outs = self._expand(eqn, ins)
      else:
        outs = [self.fresh() for _ in eqn.outvars]
        self.ops.append(_Op(eqn.primitive, eqn.params, ins, outs))
      for var, ref in zip(eqn.outvars, outs):
        env[var] = ref
    return [read(a) for a in jaxpr.outvars]

  def _expand(self, eqn, ins) -> list[int]:
    """A random primitive as its lowering computes it: unwrap the keys, the implementation's
    function (vmapped over the key array's shape), wrap the keys it returns."""
    keys_aval = eqn.invars[0].aval
    impl = getattr(keys_aval.dtype, "_impl", None)
    if impl is None or getattr(impl, "name", None) != "threefry2x32":
      raise _Unsupported("not Threefry keys")
    avals = tuple(v.aval for v in eqn.invars)
    closed = _physical_program(eqn.primitive.name, avals, tuple(sorted(eqn.params.items())))
    unwrap_p, wrap_p = _wrap_primitives()
    raw = self.fresh()
    self.ops.append(_Op(unwrap_p, {}, [ins[0]], [raw]))
    out, = self.inline(closed.jaxpr, [self.const(c) for c in closed.consts], [raw, *ins[1:]])
    if eqn.primitive.name == "random_bits":
      return [out]
    keys = self.fresh()
    self.ops.append(_Op(wrap_p, {"impl": impl}, [out], [keys]))
    return [keys]


@functools.cache
def _wrap_primitives():
  """random_unwrap and random_wrap, the primitives (read off a trace: no private import)."""
  k = jax.random.PRNGKey(0)
  eqns = jax.make_jaxpr(lambda raw: jax.random.key_data(jax.random.wrap_key_data(raw)))(k).eqns
  prims = {e.primitive.name: e.primitive for e in eqns}
  return prims["random_unwrap"], prims["random_wrap"]


@functools.lru_cache(maxsize=256)
def _physical_program(name: str, avals, params) -> jax_core.ClosedJaxpr:
  """The traced function that `name`'s lowering runs on raw key data."""
  from jax._src import core as src_core
  from jax._src.random import prng as src_prng
  keys_aval, *rest = avals
  impl, p = keys_aval.dtype._impl, dict(params)
  if name == "random_bits":
    fn = src_prng.iterated_vmap_unary(
        keys_aval.ndim, lambda k: impl.random_bits(k, p["bit_width"], p["shape"]))
  elif name == "random_split":
    fn = src_prng.iterated_vmap_unary(keys_aval.ndim, lambda k: impl.split(k, p["shape"]))
  else:
    fn = src_prng.iterated_vmap_binary_bcast(keys_aval.shape, rest[0].shape, impl.fold_in)
  raw = src_core.physical_aval(keys_aval)
  args = [jax.ShapeDtypeStruct(raw.shape, raw.dtype)]
  args += [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in rest]
  return jax.make_jaxpr(fn)(*args)


class _Program:
  """The flattened program in waves, callable (under jit) like `jaxpr_as_fun(closed)`."""

  def __init__(self, closed: jax_core.ClosedJaxpr):
    try:
      graph, self.inputs, self.outputs = _Graph.flatten(closed)
    except _Unsupported:
      raise
    except Exception as e:  # an internal API that moved: the plain replay still works
      raise _Unsupported(repr(e)) from e
    self.consts = graph.consts
    # Only what the outputs need (the forward pass `init` runs to infer shapes is not).
    needed, ops = set(self.outputs), []
    for op in reversed(graph.ops):
      if needed.intersection(op.outs):
        needed.update(op.ins)
        ops.append(op)
    ops.reverse()
    # A value's wave: hashes on the longest chain that produces it.
    wave_of: dict[int, int] = {}
    for op in ops:
      op.wave = max((wave_of.get(r, 0) for r in op.ins), default=0)
      for r in op.outs:
        wave_of[r] = op.wave + (op.prim.name == _HASH)
    self.waves: list[tuple[list[_Op], list[_Op]]] = [
        ([], []) for _ in range(1 + max((op.wave for op in ops), default=0))]
    for op in ops:
      self.waves[op.wave][op.prim.name == _HASH].append(op)

  def __call__(self, *args):
    vals = dict(self.consts)
    vals.update(zip(self.inputs, args))
    for plain, hashes in self.waves:
      for op in plain:
        out = op.prim.bind(*(vals[r] for r in op.ins), **op.prim.get_bind_params(op.params))
        vals.update(zip(op.outs, out if op.prim.multiple_results else [out]))
      for chunk in _chunks(hashes, vals):
        _hash_together(chunk, vals)
    return [vals[r] for r in self.outputs]


def _shape(op, vals) -> tuple[int, ...]:
  return jnp.broadcast_shapes(*(jnp.shape(vals[r]) for r in op.ins))


def _chunks(hashes: list[_Op], vals):
  chunk, size = [], 0
  for op in hashes:
    n = math.prod(_shape(op, vals))
    if chunk and size + n > MAX_BATCH:
      yield chunk
      chunk, size = [], 0
    chunk.append(op)
    size += n
  if chunk:
    yield chunk


def _hash_together(ops: list[_Op], vals) -> None:
  """One threefry2x32 call for every op of `ops`: operands broadcast, flattened and laid end to
  end, results cut back into each op's shape."""
  if len(ops) == 1:
    op, = ops
    vals.update(zip(op.outs, op.prim.bind(*(vals[r] for r in op.ins), **op.params)))
    return
  shapes = [_shape(op, vals) for op in ops]
  operands = [
      lax.concatenate([jnp.broadcast_to(vals[op.ins[i]], s).reshape(-1)
                       for op, s in zip(ops, shapes)], 0)
      for i in range(4)]
  results = ops[0].prim.bind(*operands, **ops[0].params)
  start = 0
  for op, s in zip(ops, shapes):
    n = math.prod(s)
    vals.update((ref, lax.slice_in_dim(res, start, start + n).reshape(s))
                for ref, res in zip(op.outs, results))
    start += n
