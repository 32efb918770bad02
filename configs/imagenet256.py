"""HybridFlow at paper scale: ImageNet 256x256 crops, K=1024 codes at stride 16, a MaskGIT-size
transformer. Launch on every host of a pod or cluster:

    hybridflow train --config configs/imagenet256.py --workdir gs://BUCKET/hybridflow/imagenet256
    hybridflow info --config configs/imagenet256.py

All sizes are the base config's (see hybridflow_jax/config.py for where each comes from).
"""

from hybridflow_jax.config import base_config


def get_config():
  c = base_config()
  c.train.batch_size = 256              # MaskGIT's transformer batch (ours for the other stages)
  return c
