"""hybridflow-jax: HybridFlow, a learned image codec for extreme low bitrates, in JAX/Flax.

    from hybridflow_jax import Codec
    codec = Codec.load("model/")     # a bundle written by `hybridflow export`, or a shipped name
"""

__version__ = "0.1.0"

__all__ = ["Codec", "__version__"]


def __getattr__(name):
  # Lazy: `import hybridflow_jax` (the command line, config files) must not import jax.
  if name == "Codec":
    from hybridflow_jax.codec.api import Codec
    return Codec
  raise AttributeError(f"module 'hybridflow_jax' has no attribute {name!r}")
