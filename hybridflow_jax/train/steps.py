"""The train state, the optimisers and the jitted update of each stage.

One update computes the stage's forward once and pulls two gradients out of it (reconstruction
terms and the generator's GAN term), so VQGAN's adaptive GAN weight costs one extra backward pass,
not a second forward. Randomness comes from `fold_in(seed, step)`: a resumed run draws the same
noise and masks as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding

from hybridflow_jax import losses, stages
from hybridflow_jax.config import crop_size, learning_rate
from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.models.discriminator import PatchDiscriminator
from hybridflow_jax.perceptual import lpips_distance, lpips_weights
from hybridflow_jax.train import sharding as shard_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32 scalar: updates done
  params: Any                # every HybridFlow param (frozen ones included)
  opt_state: Any
  disc_params: Any           # {} outside the GAN stages
  disc_opt_state: Any
  ema_params: Any            # {} when config.train.ema_decay == 0
  code_usage: jax.Array      # [K] codeword frequencies (EMA from zero), used by the vq stage


def schedule(cfg: ml_collections.ConfigDict, steps: int, peak: float):
  warmup = min(cfg.train.warmup_steps, max(steps // 10, 1))
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), 0.0)


def make_optimizer(cfg, params, stage: str, steps: int) -> optax.GradientTransformation:
  """AdamW with warm-up + cosine and global-norm clipping on the params `stage` trains; the
  frozen ones get no update and no optimiser state."""
  labels = jax.tree.map(lambda t: "train" if t else "freeze", stages.trainable(params, stage))
  train = optax.chain(
      optax.clip_by_global_norm(cfg.train.grad_clip),
      optax.adamw(schedule(cfg, steps, learning_rate(cfg, stage)),
                  weight_decay=cfg.train.weight_decay))
  return optax.multi_transform({"train": train, "freeze": optax.set_to_zero()}, labels)


def make_disc_optimizer(cfg) -> optax.GradientTransformation:
  return optax.adamw(cfg.train.disc_learning_rate, b1=0.5, b2=0.9)  # VQGAN's GAN betas


def discriminator(cfg) -> PatchDiscriminator:
  d = cfg.model.discriminator
  return PatchDiscriminator(d.channels, d.layers)


def init_state(cfg, params, stage: str, tx, disc_tx, rng: jax.Array) -> TrainState:
  """A fresh state for `stage` around given params (jit this with out_shardings to place it)."""
  if stages.STAGES[stage].judged is not None:
    x = jnp.zeros((1, cfg.image_size, cfg.image_size, 3))
    disc_params = discriminator(cfg).init(rng, x)
    disc_opt_state = disc_tx.init(disc_params)
  else:
    disc_params, disc_opt_state = {}, {}
  k = cfg.model.vq.num_codes
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
      disc_params=disc_params, disc_opt_state=disc_opt_state,
      ema_params=params if cfg.train.ema_decay > 0 else {},
      # Zero, read bias-corrected (stages._codebook_maintenance): no code looks used before it is.
      code_usage=jnp.zeros((k,), jnp.float32))


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def gan_switches_on(cfg: ml_collections.ConfigDict, stage: str, total_steps: int) -> bool:
  """Whether `stage` ever applies its GAN terms: it judges an image, the weight is positive and
  `losses.gan_start` falls within its `total_steps`."""
  return (stages.STAGES[stage].judged is not None and cfg.losses.gan_weight > 0
          and cfg.losses.gan_start < total_steps)


def make_train_step(model: hf.HybridFlow, cfg: ml_collections.ConfigDict, stage: str, tx, disc_tx,
                    total_steps: int):
  """(state, images [B, H, W, 3] in [0, 1], LPIPS weights) -> (state, metrics). Pure; jit it with
  shardings. The weights are `step_constants(cfg, stage)` (an argument, not constants compiled in).

  A stage whose GAN never switches on within `total_steps` (`gan_switches_on`) compiles without it:
  no discriminator passes and no second backward pass, which would only be multiplied by zero (in
  `configs/small.py`'s bridge that was a third of the step). Its discriminator state is kept, so
  checkpoints do not depend on it.
  """
  lo, record = cfg.losses, stages.STAGES[stage]
  judged = record.judged
  uses_gan = gan_switches_on(cfg, stage, total_steps)
  uses_lpips = _uses_lpips(cfg, stage)
  lpips = lpips_distance(lo.lpips_net) if uses_lpips else None
  disc = discriminator(cfg)
  seed_key = jax.random.PRNGKey(cfg.seed)

  def step(state: TrainState, x: jax.Array, lpips_weights):
    rng = jax.random.fold_in(seed_key, state.step)
    k_fwd, k_restart = jax.random.split(rng)

    def terms(params):
      out = record.forward(model, params, x, k_fwd)
      loss, m = record.loss(out, x, lo)
      if uses_lpips:
        m["lpips"] = jnp.mean(lpips(lpips_weights, out[judged.output], x))
        loss = loss + lo.lpips_weight * m["lpips"]
      # "loss" is everything but the GAN term, whose weight moves (reported as gan_g, gan_weight).
      m["loss"] = loss
      g = losses.hinge_g_loss(disc.apply(state.disc_params, out[judged.output])) if uses_gan \
          else jnp.zeros(())
      return (loss, g), (m, out)

    (_, g_loss), pull, (m, out) = jax.vjp(terms, state.params, has_aux=True)
    (grads,) = pull((jnp.ones(()), jnp.zeros(())))
    disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
    if uses_gan:
      (grads_gan,) = pull((jnp.zeros(()), jnp.ones(())))
      on = (state.step >= lo.gan_start).astype(jnp.float32)
      weight = lo.gan_weight * on
      if lo.adaptive_gan_weight:
        weight = weight * losses.adaptive_gan_weight(_get(grads, judged.last_layer),
                                                     _get(grads_gan, judged.last_layer))
      grads = jax.tree.map(lambda a, b: a + weight * b, grads, grads_gan)
      m["gan_g"], m["gan_weight"] = g_loss, weight

      fake = jax.lax.stop_gradient(out[judged.output])
      d_loss_fn = lambda dp: losses.hinge_d_loss(disc.apply(dp, x), disc.apply(dp, fake))
      m["gan_d"], d_grads = jax.value_and_grad(d_loss_fn)(disc_params)
      d_updates, new_d_opt = disc_tx.update(d_grads, disc_opt_state, disc_params)
      new_d = optax.apply_updates(disc_params, d_updates)
      # Before gan_start the discriminator does not move at all (not even by weight decay).
      keep_old = lambda new, old: jnp.where(on > 0, new, old)
      disc_params = jax.tree.map(keep_old, new_d, disc_params)
      disc_opt_state = jax.tree.map(keep_old, new_d_opt, disc_opt_state)

    m["grad_norm"] = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    # Frozen params pass through untouched, bit for bit (not plus a zero update): checkpoints leave
    # them out and a resumed stage reads them from what it wrote as it started (checkpoint.py).
    trained = stages.trainable(state.params, stage)
    params = jax.tree.map(lambda p, u, t: optax.apply_updates(p, u) if t else p,
                          state.params, updates, trained)

    usage = state.code_usage
    if record.after_update is not None:
      params, usage, extra = record.after_update(params, usage, out, k_restart, cfg, state.step)
      m.update(extra)

    ema = state.ema_params
    if cfg.train.ema_decay > 0:
      d = cfg.train.ema_decay
      ema = jax.tree.map(lambda e, p, t: d * e + (1 - d) * p if t else e, ema, params, trained)

    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              disc_params=disc_params, disc_opt_state=disc_opt_state,
                              ema_params=ema, code_usage=usage)
    return new_state, m

  return step


def _uses_lpips(cfg: ml_collections.ConfigDict, stage: str) -> bool:
  return stages.STAGES[stage].judged is not None and cfg.losses.lpips_weight > 0


def step_constants(cfg: ml_collections.ConfigDict, stage: str) -> dict:
  """The host arrays a stage's step takes besides state and images: its LPIPS net's weights, or
  nothing."""
  return lpips_weights(cfg.losses.lpips_net) if _uses_lpips(cfg, stage) else {}


class BoundStep:
  """The jitted step called as (state, images): its constants (`step_constants`) are its last
  argument, replicated over the mesh on first use. `lower` takes them as shapes (AOT plans place
  nothing); `compile` gives the executable, called as (state, images) too."""

  def __init__(self, jitted, constants: dict, mesh):
    self._jitted, self._host, self._mesh, self._placed = jitted, constants, mesh, None

  def constants(self):
    if self._placed is None:
      self._placed = shard_lib.put_replicated(self._host, self._mesh)
    return self._placed

  def __call__(self, state, images):
    return self._jitted(state, images, self.constants())

  def lower(self, state, images):
    sharding = shard_lib.replicated(self._mesh)
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                          self._host)
    return self._jitted.lower(state, images, shapes)

  def compile(self, state, images) -> BoundCompiled:
    return BoundCompiled(self.lower(state, images).compile(), self.constants())


class BoundCompiled:
  """A compiled step called as (state, images); XLA's analyses (cost, memory) as jax's own."""

  def __init__(self, compiled, constants):
    self.compiled, self._constants = compiled, constants

  def __call__(self, state, images):
    return self.compiled(state, images, self._constants)

  def cost_analysis(self):
    return self.compiled.cost_analysis()

  def memory_analysis(self):
    return self.compiled.memory_analysis()


def unit_images(images: jax.Array) -> jax.Array:
  """Images as float32 in [0, 1]: uint8 pixels are divided by 255; float images pass through."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / jnp.float32(255.0)
  return images


@dataclasses.dataclass(frozen=True)
class StageStep:
  """A stage's update step compiled for a mesh, with what it takes: build the state with
  `make_state(params)` (jit it with `out_shardings=state_shardings`), feed images sharded with
  `images_sharding`. `abstract_state` carries the shardings (for restoring and AOT compiling)."""

  step: BoundStep               # (state, images) -> (state, metrics); donates the state.
                                # images: uint8 (as the pipeline gives them) or float in [0, 1]
  make_state: Callable[[Any], TrainState]
  abstract_state: Any
  state_shardings: Any
  images_sharding: NamedSharding
  crop: int


def stage_step(model: hf.HybridFlow, cfg: ml_collections.ConfigDict, stage: str, mesh,
               abstract_params, total_steps: int | None = None) -> StageStep:
  """The one place a stage's sharded update is built (trainer, `plan`, benchmarks). `total_steps`
  (default: the stage's `train.steps`) sets the schedule and whether the GAN is compiled in."""
  if total_steps is None:
    total_steps = int(cfg.train.steps[stage]) or 1
  tx = make_optimizer(cfg, abstract_params, stage, total_steps)
  disc_tx = make_disc_optimizer(cfg)
  make_state = lambda params: init_state(cfg, params, stage, tx, disc_tx,
                                         jax.random.PRNGKey(cfg.seed + 1))
  abstract_state = jax.eval_shape(make_state, abstract_params)
  state_shardings = shard_lib.tree_shardings(abstract_state, mesh, cfg.sharding_rules,
                                             cfg.sharding_min_size)
  abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                abstract_state, state_shardings)
  images_sharding = shard_lib.batch_sharding(mesh)
  train_step = make_train_step(model, cfg, stage, tx, disc_tx, total_steps)
  jitted = jax.jit(lambda state, images, consts: train_step(state, unit_images(images), consts),
                   in_shardings=(state_shardings, images_sharding, shard_lib.replicated(mesh)),
                   out_shardings=(state_shardings, shard_lib.replicated(mesh)),
                   donate_argnums=(0,))
  return StageStep(BoundStep(jitted, step_constants(cfg, stage), mesh), make_state,
                   abstract_state, state_shardings, images_sharding, crop_size(cfg, stage))
