"""hybridflow-jax: HybridFlow, a learned image codec for extreme low bitrates, in JAX/Flax.

    from hybridflow_jax import Codec
    codec = Codec.load("model/")     # a bundle written by `hybridflow export`, or a shipped name
"""

import os

__version__ = "0.1.0"

# XLA:CPU hands convolutions to YNNPACK by default (jax 0.10). On the 2-core build machine its
# convolutions, and above all their gradients, run far below XLA's own (Eigen) ones: train steps of
# `configs/small.py` take 1.1-1.6x longer with them (continuous 0.85 -> 0.52 s, bridge 3.9 -> 2.6
# s), compress 0.14 -> 0.12 s and decompress 0.32 -> 0.28 s (docs/benchmarks.md). So, unless the
# process sets this flag itself, YNNPACK keeps only the matrix products (where it is the faster
# library) and convolutions go to Eigen. Read when jax starts its CPU backend: a process that
# started jax before importing hybridflow_jax keeps its own setting. GPUs and TPUs ignore it.
CPU_XLA_FLAG = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"


def _prefer_eigen_convolutions() -> None:
  # An experimental flag: XLA aborts the process on one it does not know, so it is only given to
  # the jaxlib it was measured with (pyproject allows jax 0.10.x).
  from importlib import metadata
  try:
    known = metadata.version("jaxlib").startswith("0.10.")
  except metadata.PackageNotFoundError:
    known = False
  flags = os.environ.get("XLA_FLAGS", "")
  if known and "xla_cpu_experimental_ynn_fusion_type" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {CPU_XLA_FLAG}".strip()


_prefer_eigen_convolutions()

__all__ = ["Codec", "__version__"]


def __getattr__(name):
  # Lazy: `import hybridflow_jax` (the command line, config files) must not import jax.
  if name == "Codec":
    from hybridflow_jax.codec.api import Codec
    return Codec
  raise AttributeError(f"module 'hybridflow_jax' has no attribute {name!r}")
