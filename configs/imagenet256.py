"""HybridFlow at paper scale: ImageNet 256x256 crops, K=1024 codes at stride 16, a MaskGIT-size
transformer. Launch on every host of a pod or cluster (README, "Launching on several processes,
pods and clusters") with a work directory every host sees at the same local path (an NFS share,
or a bucket mounted with Cloud Storage FUSE; a gs:// URL is refused):

    hybridflow train --config configs/imagenet256.py --workdir /mnt/shared/hybridflow/imagenet256
    hybridflow info --config configs/imagenet256.py

All sizes are the base config's (see hybridflow_jax/config.py for where each comes from).

Rate: `1_4` sends a quarter of the 1024-code indices, 10 bits per 16x16 pixels / 4 = 0.0098 bpp;
the continuous stream (M=64) is held at losses.rate_target = 0.03 bpp by HiFiC's rate targeting,
so the `1_4` point is planned at ~0.04 bpp + a 16-byte header (0.0003 bpp at 768x512): below 0.05.
The targeting acts on the 256 px training crops; real files on 768x512 photos came out below the
training-crop rate for the reference recipe `small` (docs/results.md), not above it.
"""

from hybridflow_jax.config import base_config


def get_config():
  c = base_config()
  c.train.batch_size = 256              # MaskGIT's transformer batch (ours for the other stages)
  return c
