"""The base configuration every file in `configs/` starts from, and its validation.

Each number is a choice; its comment says where it came from ("ours" when the paper gives none).
Config files override what differs, e.g. `configs/tiny.py`; any value can also be overridden from the
command line with `--config.model.vq.num_codes=512`.
"""

from __future__ import annotations

import json
import math

import ml_collections

from hybridflow_jax import schedules

# The names a config may choose from, kept here (no jax) so that a config is checked before jax is
# imported: the stages in training order (each defined in `stages.py`, which checks it has exactly
# these) and the conv blocks' normalisations (`models.layers.norm_layer`).
STAGES = ("vq", "continuous", "transformer", "bridge", "joint", "baseline")
NORMS = ("group", "layer")

# What a recorded `model` config (a run's config.json, a bundle's) means by a key it lacks: the
# behaviour from before the key existed, so old runs and bundles build the networks they trained.
LEGACY_MODEL_DEFAULTS = {
    "transformer.window": 0,        # global attention, before windowed attention
    "bridge.norm": "group",         # GroupNorm, before model.bridge.norm
}


def legacy_get(model: ml_collections.ConfigDict, key: str):
  """`model`'s value at dotted `key`, or LEGACY_MODEL_DEFAULTS[key] where the config lacks it."""
  node = model
  for part in key.split("."):
    if part not in node:
      return LEGACY_MODEL_DEFAULTS[key]
    node = node[part]
  return node


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def model_differences(recorded: dict, given: dict, recorded_as: str = "recorded") -> str:
  """'model.key: recorded X, given Y' for the first two `model` values that differ between two
  configs (plain dicts, as config.json holds them), with how many more; "" if none. A key the
  recorded one lacks counts as its legacy default."""
  a = _flat(json.loads(json.dumps(recorded)))
  b = _flat(json.loads(json.dumps(given)))      # tuples -> lists, as recorded
  for key, value in LEGACY_MODEL_DEFAULTS.items():
    a.setdefault(key, value)
  def show(flat, k):
    return repr(flat[k]) if k in flat else "(absent)"
  diffs = [f"model.{k}: {recorded_as} {show(a, k)}, given {show(b, k)}"
           for k in sorted(set(a) | set(b)) if (k in a, a.get(k)) != (k in b, b.get(k))]
  more = f" (and {len(diffs) - 2} more)" if len(diffs) > 2 else ""
  return "; ".join(diffs[:2]) + more


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "pipeline"          # a stage (hybridflow_jax/stages.py), or "pipeline": all, in order
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
      # A side stream of <= 0.03 bpp (docs: DESIGN's rate budget), not a full codec: Minnen et al.
      # 2018's N=128 width but M=64 latent channels instead of 192 (ours: at 0.03 bpp most of 192
      # channels would carry nothing, and each still costs h_s output and coder time).
      channels=128,                     # N: Minnen et al. 2018's low-rate size
      latent_channels=64,               # M (ours, see above)
      hyper_channels=64,                # Nz (ours: z costs a few % of y at this rate)
      head_channels=64,                 # light synthesis head used in the `continuous` stage (ours)
      quantization="noise",             # training proxy: "noise" (Ballé) or "ste"
  ))
  m.transformer = ml_collections.ConfigDict(dict(
      dim=768, depth=24, heads=16, mlp_dim=3072,   # MaskGIT's ImageNet-256 transformer
      dropout=0.1,                      # MaskGIT
      decode_steps=8,                   # T iterative rounds (MaskGIT uses 8-12; ours)
      # Attention within windows of this many tokens a side (0: the whole grid): the grid of the
      # transformer's training crop (256 px / 16), so every image decodes on the grids it trained
      # on (ours; global attention generalised poorly from 16x16 to 48x32, docs/results.md).
      window=16,
  ))
  m.bridge = ml_collections.ConfigDict(dict(
      fusion_hidden=128,                # width of each zero-initialised fusion layer (ours)
      # "layer": LayerNorm over the channels at each position, so a decoded pixel depends only on
      # the indices and latents near it; "group": VQGAN's GroupNorm, statistics over the whole
      # image (layers.norm_layer). Ours, measured: with GroupNorm, indices sent 320 px away moved a
      # region's colour, dynamic masking's per-region choices could not gain, and 256 px training
      # crops normalise unlike whole photos. The same runs with "layer": `small` held-out 1_4
      # 22.58 -> 22.89 dB and dynamic 0.016 dB under -> 0.023 above its line; `demo` 1_4 14.16 ->
      # 15.85 dB, LPIPS 0.773 -> 0.696 (docs/results.md). G_vq keeps GroupNorm; the bridge still
      # starts from its weights (same names and shapes). The ablation's continuous-only codec
      # (`baseline` stage) renders with the same normalisation: equal footing.
      norm="layer",
  ))
  m.masking = ml_collections.ConfigDict(dict(
      schedules=schedules.DEFAULT_CANDIDATES,   # dynamic masking's candidates: the paper's (fig. 3)
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
  # One rate-distortion convention wherever there is a rate (continuous, joint, baseline):
  #   w * bpp + rate_lambda * 255^2 * MSE,  MSE on [0, 1]  (CompressAI's form)
  # with HiFiC's rate targeting: w = 1 at or under the target rate, rate_over_weight above it.
  # The bridge has no rate and uses the same distortion term. rate_lambda is HiFiC's MSE weight
  # k_M = 0.075 * 2^-5 (Mentzer et al. 2020), so next to LPIPS x lpips_weight (HiFiC's k_P = 1)
  # fidelity is not drowned: at 20 dB the MSE term is ~1.5, LPIPS ~0.3.
  lo.rate_lambda = 0.075 * 2 ** -5
  lo.rate_target = 0.03                 # bpp of y_hat + z_hat: the side stream's budget (DESIGN)
  # The joint stage's own target (0: rate_target). A fine-tune of every network at once moves the
  # side stream's rate on photos it never saw; its own target holds the files where the
  # `continuous` stage put them (configs/small.py).
  lo.joint_rate_target = 0.0
  lo.rate_over_weight = 32.0            # w above the target: HiFiC's largest lambda_a/lambda_b
  lo.baseline_rate_target = matched_baseline_rate(1024, lo.rate_target)
  # The continuous-only codec is held AT its target (rate term rate_over_weight * |bpp - target|),
  # not merely under it: the ablation compares at matched bits, and left to lambda it settles
  # below the hybrid's rate (measured: 0.024 against the hybrid's 0.030, docs/results.md).
  lo.baseline_rate_hold = True
  lo.lpips_weight = 1.0                 # vq / bridge / joint / baseline: LPIPS (VQGAN, HiFiC k_P)
  lo.lpips_net = "alexnet"              # LPIPS backbone in the loss: "alexnet" (cheap) or "vgg16"
  lo.gan_weight = 0.1                   # hinge GAN weight (MaskGIT's VQGAN)
  lo.gan_start = 20_000                 # step at which the GAN terms switch on (ours, after VQGAN)
  lo.adaptive_gan_weight = True         # VQGAN's gradient-norm balancing at the last decoder layer

  t = c.train = ml_collections.ConfigDict()
  t.batch_size = 64                     # global batch
  t.learning_rate = 1e-4                # AdamW peak (MaskGIT tokenizer uses 1e-4)
  # A stage's own peak, where it differs (0: train.learning_rate), e.g. a fine-tuning stage that
  # starts from trained networks (`learning_rate`).
  t.stage_learning_rate = ml_collections.ConfigDict({s: 0.0 for s in STAGES})
  t.warmup_steps = 5_000                # linear warm-up, then cosine decay to 0 (ours)
  t.weight_decay = 1e-4                 # AdamW decoupled decay (MaskGIT)
  t.grad_clip = 1.0                     # global-norm clipping
  t.disc_learning_rate = 1e-4           # the discriminator's own AdamW (VQGAN)
  t.ema_decay = 0.0                     # EMA of params (0 = off); exported params are the EMA if on
  t.codebook_init = "kmeans"            # "kmeans": k-means++ on the first batch's encoder outputs
                                        # (ours; data-dependent init as in SoundStream); "random"
  t.kmeans_iterations = 10              # Lloyd steps of that init
  t.init_from = ""                      # fine-tuning: a model bundle (shipped name or `hybridflow
                                        # export` dir, same model config) whose arrays start every
                                        # stage that has no checkpoint or finished earlier stage;
                                        # the k-means codebook and the bridge's copy of the pixel
                                        # decoder are then skipped ("": initialise from seed)
  t.code_usage_decay = 0.99             # EMA of codeword usage (vq stage), read bias-corrected
  t.dead_code_every = 1_000             # how often codes used < 1/(10 K) are restarted (0: never)
  t.steps = ml_collections.ConfigDict(dict(
      vq=500_000, continuous=500_000, transformer=1_000_000, bridge=200_000, joint=0,
      baseline=0))                      # the ablation's continuous-only codec (0: not trained)
  # Training crop per stage, in pixels; 0 = image_size. The continuous stream's hyperprior sees
  # the crop at stride 64: a 128 px crop gives it a 2x2 grid that is all border, and its scales
  # then fail to generalise to full-size images (real files cost up to 15 % less than its own
  # estimate said, measured); 256 px crops fix that.
  t.crop_size = ml_collections.ConfigDict(dict(
      vq=0, continuous=0, transformer=0, bridge=0, joint=0, baseline=0))
  t.log_every = 100                     # steps between metric writes
  t.checkpoint_every = 2_000            # steps between checkpoints (plus one at the end)
  t.keep_checkpoints = 3                # how many to keep
  t.eval_every = 10_000                 # steps between held-out evaluations (0: none)
  t.eval_at_end = True                  # evaluate each stage when it finishes
  t.profile_steps = 0                   # N > 0: trace N steps of each stage with jax.profiler,
                                        # after its first 2 (WORKDIR/<stage>/profile/, for
                                        # TensorBoard or xprof; train/profile.py)

  d = c.data = ml_collections.ConfigDict()
  d.train = "tfds:imagenet2012/train"   # "demo", a folder, or "tfds:BUILDER/SPLIT[@DATA_DIR]"
  d.eval = "demo:heldout"               # held-out images for periodic evaluation
  d.eval_limit = 8                      # at most this many held-out images per evaluation
  d.workers = 8                         # grain worker processes per host (0 = in-process)
  d.prefetch = 2                        # batches prefetched per worker
  d.cache_mb = 512                      # decoded images kept per process/worker (MiB; 0: none)

  # Mesh axes and their sizes (-1: all remaining devices); the batch is split over data and fsdp.
  c.mesh = (("data", -1), ("fsdp", 1))
  # Regex searched in "/"-joined param paths -> sharding; first match wins. "fsdp" shards a
  # param's largest divisible dimension over the fsdp axis, "replicate" copies it, a tuple is a
  # PartitionSpec.
  c.sharding_rules = ((".*", "fsdp"),)
  c.sharding_min_size = 2 ** 14         # params smaller than this are always replicated
  return c


def matched_baseline_rate(num_codes: int, rate_target: float, schedule: str = "1_4") -> float:
  """The continuous-only codec's target rate: the hybrid's at `schedule` (its side stream's target
  plus the sent indices at log2(K) bits each, one index per 16x16 pixels), so the ablation
  compares the two at matched bits. Configs that change K or the target call this again."""
  return rate_target + schedules.keep_ratio(schedule) * math.log2(num_codes) / 256.0


def crop_size(c: ml_collections.ConfigDict, stage: str) -> int:
  """The training crop of `stage` in pixels."""
  return int(c.train.crop_size[stage]) or int(c.image_size)


def learning_rate(c: ml_collections.ConfigDict, stage: str) -> float:
  """The AdamW peak of `stage`: its train.stage_learning_rate if set, else train.learning_rate."""
  own = c.train.get("stage_learning_rate", {}).get(stage, 0.0)
  return float(own or c.train.learning_rate)


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError with one line naming the bad key. Imports nothing: a bad config is refused
  before jax loads."""
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
  window, grid = legacy_get(c.model, "transformer.window"), crop_size(c, "transformer") // 16
  if window < 0 or window > grid:
    bad("model.transformer.window", f"must be 0 (global attention) or 1..{grid}, the transformer's "
        f"training grid (crop_size.transformer / 16); got {window}")
  if legacy_get(c.model, "bridge.norm") not in NORMS:
    bad("model.bridge.norm", f"must be one of {', '.join(NORMS)}, got {c.model.bridge.norm!r}")
  if c.model.transformer.dim % 4 or c.model.transformer.dim % c.model.transformer.heads:
    bad("model.transformer.dim", "must be a multiple of 4 and of transformer.heads")
  for s in c.model.masking.schedules:
    if s not in schedules.FIXED:
      bad("model.masking.schedules", f"unknown schedule {s!r}")
  if c.model.masking.score not in schedules.COMPLEXITY_SCORES:
    bad("model.masking.score", f"must be one of {schedules.COMPLEXITY_SCORES}")
  if c.image_size % 16:
    bad("image_size", f"must be a multiple of 16, got {c.image_size}")
  for stage in STAGES:
    crop = c.train.crop_size[stage]
    if crop < 0 or crop % 16:
      bad(f"train.crop_size.{stage}", f"must be 0 or a positive multiple of 16, got {crop}")
  if c.train.codebook_init not in ("kmeans", "random"):
    bad("train.codebook_init", "must be kmeans or random")
  for key in ("rate_target", "joint_rate_target", "baseline_rate_target"):
    if not c.losses.get(key, 0.0) >= 0:
      bad(f"losses.{key}", f"rate targets are bpp >= 0, got {c.losses[key]!r}")
  if c.losses.pixel not in ("l1", "l2"):
    bad("losses.pixel", "must be l1 or l2")
  # Counts the trainer divides by or sizes buffers with: refused here, before a run directory is
  # made, rather than as a traceback (or a pipeline error) after the model was initialised.
  counts = [(f"train.steps.{stage}", c.train.steps[stage], 0) for stage in STAGES]
  counts += [(f"train.{key}", c.train.get(key, least), least) for key, least in (
      ("batch_size", 1), ("log_every", 1), ("checkpoint_every", 1), ("keep_checkpoints", 1),
      ("eval_every", 0), ("warmup_steps", 0), ("dead_code_every", 0), ("kmeans_iterations", 0),
      ("profile_steps", 0))]
  counts += [(f"data.{key}", c.data.get(key, least), least) for key, least in (
      ("eval_limit", 1), ("workers", 0), ("prefetch", 0), ("cache_mb", 0))]
  for key, value, least in counts:
    if not isinstance(value, int) or value < least:
      bad(key, f"must be a whole number >= {least}, got {value!r}")
  if not c.train.learning_rate > 0:
    bad("train.learning_rate", f"must be > 0, got {c.train.learning_rate!r}")
  for stage, lr in c.train.get("stage_learning_rate", {}).items():
    if stage not in STAGES or not lr >= 0:
      bad(f"train.stage_learning_rate.{stage}", f"must be a stage's peak >= 0 (0: "
          f"train.learning_rate), got {lr!r}")
