"""Tiny HybridFlow: for tests and quick checks on a CPU (64 px crops, a few seconds a stage).

    hybridflow train --config configs/tiny.py --workdir /tmp/hf_tiny
    hybridflow info --config configs/tiny.py

Every size here is ours, chosen only to be small; the architecture is the full one.
"""

from hybridflow_jax.config import base_config


def get_config():
  c = base_config()
  c.image_size = 64
  c.model.vq.update(channels=8, channel_mult=(1, 1, 2, 2, 2), num_res_blocks=1, embed_dim=16,
                    num_codes=64, groups=4)
  c.model.continuous.update(channels=16, latent_channels=16, hyper_channels=8, head_channels=8)
  c.model.transformer.update(dim=32, depth=2, heads=2, mlp_dim=64, dropout=0.0, decode_steps=4,
                             window=4)  # the 4x4 grid of its 64 px training crops
  c.model.bridge.fusion_hidden = 8
  c.model.masking.region = 2            # a 64 px crop is a 4x4 token grid: 2x2 regions
  c.model.discriminator.update(channels=8, layers=2)
  c.eval_size = 64
  c.losses.gan_start = 10               # the GAN terms switch on within a short run
  c.train.batch_size = 4
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 2
  c.train.dead_code_every = 10
  c.train.steps.update(vq=30, continuous=30, transformer=30, bridge=30, joint=0)
  c.train.crop_size.continuous = 256    # the hyperprior's scales then hold on full-size images
  c.train.log_every = 5
  c.train.checkpoint_every = 10
  c.train.eval_every = 0
  c.data.train = "demo"
  c.data.eval = "demo:heldout"
  c.data.eval_limit = 2
  c.data.workers = 0
  return c
