"""The base configuration every file in `configs/` starts from, and its validation.

Each number is a choice; its comment says where it came from ("ours" when the paper gives none).
Config files override what differs, e.g. `configs/tiny.py`; any value can also be overridden from the
command line with `--config.model.vq.num_codes=512`.
"""

from __future__ import annotations

import ml_collections

STAGES = ("vq", "continuous", "transformer", "bridge", "joint")


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "pipeline"          # one of STAGES, or "pipeline" to run them in order
  c.seed = 0
  c.image_size = 256            # training crop (pixels); ImageNet-256 as in MaskGIT
  c.eval_size = 256             # held-out center crop for evaluation during training (pixels)

  m = c.model = ml_collections.ConfigDict()
  m.vq = ml_collections.ConfigDict(dict(
      channels=128,                     # MaskGIT's VQGAN tokenizer width
      channel_mult=(1, 1, 2, 2, 4),     # 4 downsamplings -> stride 16 (VQGAN f16)
      num_res_blocks=2,                 # MaskGIT's VQGAN
      embed_dim=256,                    # D: MaskGIT's VQGAN code dimension
      num_codes=1024,                   # K: MaskGIT / VQGAN f16 codebook; log2(K) = 10 bits/index
      distance="l2",                    # "l2" (VQ-VAE) or "cosine" (ViT-VQGAN)
      groups=32,                        # GroupNorm groups (VQGAN)
  ))
  m.continuous = ml_collections.ConfigDict(dict(
      channels=128,                     # N: Minnen et al. 2018's low-rate size
      latent_channels=192,              # M: Minnen et al. 2018's low-rate size
      hyper_channels=128,               # Nz = N, as in Minnen et al. 2018
      head_channels=64,                 # light synthesis head used in the `continuous` stage (ours)
      quantization="noise",             # training proxy: "noise" (Ballé) or "ste"
  ))
  m.transformer = ml_collections.ConfigDict(dict(
      dim=768, depth=24, heads=16, mlp_dim=3072,   # MaskGIT's ImageNet-256 transformer
      dropout=0.1,                      # MaskGIT
      decode_steps=8,                   # T iterative rounds (MaskGIT uses 8-12; ours)
  ))
  m.bridge = ml_collections.ConfigDict(dict(
      fusion_hidden=128,                # width of each zero-initialised fusion layer (ours)
  ))
  m.masking = ml_collections.ConfigDict(dict(
      schedules=("1_2", "1_4", "1_9", "1_16"),   # the paper's candidate schedules (fig. 3)
      region=4,                         # dynamic-masking region, in tokens (64 px; ours)
      score="gradient",                 # complexity score: "gradient" or "variance" (ours: gradient)
      target_keep=0.125,                # dynamic masking's mean keep ratio (between 1_4 and 1_9)
      train_region_mix=0.5,             # P(per-region schedules) when sampling training masks (ours)
      train_extra_mask=0.1,             # P(a transmitted token is masked anyway) in training (ours)
  ))
  m.discriminator = ml_collections.ConfigDict(dict(
      channels=64, layers=3,            # PatchGAN as in VQGAN
  ))

  lo = c.losses = ml_collections.ConfigDict()
  lo.pixel = "l1"                       # reconstruction distance of the vq stage: "l1" or "l2"
  lo.codebook_weight = 1.0              # VQ-VAE
  lo.commitment_weight = 0.25           # beta, VQ-VAE
  lo.rate_lambda = 0.01                 # continuous stage: bpp + lambda * 255^2 * MSE (ours)
  lo.mse_weight = 1.0                   # bridge / joint: weight of MSE on the final image (ours)

  t = c.train = ml_collections.ConfigDict()
  t.batch_size = 64                     # global batch
  t.learning_rate = 1e-4                # AdamW peak (MaskGIT tokenizer uses 1e-4)
  t.steps = ml_collections.ConfigDict(dict(
      vq=500_000, continuous=500_000, transformer=1_000_000, bridge=200_000, joint=0))
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError with one line naming the bad key."""
  from hybridflow_jax.models.masking import COMPLEXITY_SCORES, SCHEDULES

  def bad(key, msg):
    raise ValueError(f"config.{key}: {msg}")

  if c.stage not in (*STAGES, "pipeline"):
    bad("stage", f"must be one of {', '.join(STAGES)} or pipeline, got {c.stage!r}")
  vq = c.model.vq
  stride = 2 ** (len(vq.channel_mult) - 1)
  if stride != 16:
    bad("model.vq.channel_mult", f"needs 5 entries for the stride-16 token grid (gives {stride})")
  if vq.distance not in ("l2", "cosine"):
    bad("model.vq.distance", f"must be l2 or cosine, got {vq.distance!r}")
  if c.model.continuous.quantization not in ("noise", "ste"):
    bad("model.continuous.quantization", "must be noise or ste")
  if c.model.transformer.dim % 4 or c.model.transformer.dim % c.model.transformer.heads:
    bad("model.transformer.dim", "must be a multiple of 4 and of transformer.heads")
  for s in c.model.masking.schedules:
    if s not in SCHEDULES:
      bad("model.masking.schedules", f"unknown schedule {s!r}")
  if c.model.masking.score not in COMPLEXITY_SCORES:
    bad("model.masking.score", f"must be one of {COMPLEXITY_SCORES}")
  if c.image_size % 16:
    bad("image_size", f"must be a multiple of 16, got {c.image_size}")
  if c.losses.pixel not in ("l1", "l2"):
    bad("losses.pixel", "must be l1 or l2")
