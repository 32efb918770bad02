"""The trainer: stages, sharding, checkpoints, metrics."""
