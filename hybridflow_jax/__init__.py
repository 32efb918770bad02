"""hybridflow-jax: HybridFlow, a learned image codec for extreme low bitrates, in JAX/Flax."""

__version__ = "0.1.0"
