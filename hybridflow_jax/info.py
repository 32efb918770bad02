"""Parameter overview of a config's model, computed from shapes alone (`jax.eval_shape`), and of a
model bundle (its config's model, what it stores and what its manifest records)."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from clu import parameter_overview

from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.models.discriminator import PatchDiscriminator


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def overview(cfg: ml_collections.ConfigDict, details: bool = False) -> str:
  """A per-component table of parameter counts (and the full table when `details`)."""
  model = hf.build_model(cfg)
  shapes = hf.param_shapes(model)
  d = cfg.model.discriminator
  disc = jax.eval_shape(
      lambda r, x: PatchDiscriminator(d.channels, d.layers).init(r, x)["params"],
      jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jax.numpy.float32))
  # The ablation's continuous-only codec is a separate model: counted apart from HybridFlow.
  comparator = {"baseline": shapes.pop("baseline")}
  rows = [(name, _count(tree)) for name, tree in shapes.items()]
  rows += [(f"continuous/{k}", _count(v)) for k, v in shapes["continuous"].items()]
  total = _count(shapes)
  lines = []
  if details:
    lines += [parameter_overview.get_parameter_overview(shapes, include_stats=False), ""]
  lines += [f"{'component':<32s} {'parameters':>14s}", "-" * 47]
  lines += [f"{name:<32s} {n:>14,d}" for name, n in rows]
  lines += ["-" * 47, f"{'HybridFlow total':<32s} {total:>14,d}",
            f"{'discriminator (training only)':<32s} {_count(disc):>14,d}",
            f"{'baseline (ablation, not HybridFlow)':<32s} {_count(comparator):>14,d}"]
  vq = cfg.model.vq
  lines += ["", f"codebook K={vq.num_codes} x D={vq.embed_dim}, token stride {hf.STRIDE}, "
                f"transformer {cfg.model.transformer.depth} x {cfg.model.transformer.dim}"]
  return "\n".join(lines)


def bundle_overview(path: pathlib.Path, b: Mapping[str, Any]) -> str:
  """`overview` of a bundle's model (b: `codec.bundle.read`'s dict) and its manifest's record:
  fingerprint, provenance, what it stores and its codeword prior."""
  m, cfg = b["manifest"], ml_collections.ConfigDict(dict(b["config"]))
  size = sum(f.stat().st_size for f in pathlib.Path(path).iterdir() if f.is_file())
  stored = _count(b["params"])
  lines = [overview(cfg), "",
           f"{'model bundle':<16s} {path}",
           f"{'fingerprint':<16s} {m['fingerprint'][:8]} ({m['fingerprint']})",
           f"{'created':<16s} {m.get('created', '?')} by hybridflow-jax "
           f"{m.get('hybridflow_jax', '?')}, entropy coder {m.get('entropy_coder', '?')}"]
  source = m.get("source") or {}
  if source:
    lines.append(f"{'trained':<16s} {source.get('workdir', '?')}: stage {source.get('stage', '?')}, "
                 f"step {source.get('step', '?')}; data {cfg.get('data', {}).get('train', '?')}")
  lines.append(f"{'stores':<16s} {stored:,d} parameters (the networks that code and decode), "
               f"{size / 2**20:.1f} MiB on disk")
  prior = m.get("index_prior") or {}
  if prior:
    lines.append(f"{'codeword prior':<16s} {prior.get('prior_bits_per_index', float('nan')):.3f} "
                 f"bits per index (uniform {prior.get('uniform_bits_per_index', float('nan')):.3f}), "
                 f"counted on {prior.get('images', '?')} images of {prior.get('data', '?')}")
  return "\n".join(lines)
