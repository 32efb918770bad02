"""HybridFlow's modules. See `hybridflow.py` for how they compose."""
