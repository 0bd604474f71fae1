"""Learning-rate and EMA-momentum schedules (functions of the step)."""

import jax.numpy as jnp
import optax


def learning_rate(base_lr, batch_size, warmup_steps, total_steps, steps_per_epoch=0):
  """Linear scaling (base_lr at batch 256), linear warm-up, then cosine decay to 0. With steps_per_epoch, the
  cosine steps once an epoch as the MoCo CIFAR-10 Colab's: epoch e (from 1) of E at peak (1 + cos(pi e / E)) / 2."""
  peak = base_lr * batch_size / 256
  if steps_per_epoch:
    epochs = max(total_steps // steps_per_epoch, 1)
    return lambda step: peak * 0.5 * (1 + jnp.cos(jnp.pi * (step // steps_per_epoch + 1) / epochs))
  if warmup_steps:
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, max(total_steps, warmup_steps + 1), 0.0)
  return optax.cosine_decay_schedule(peak, max(total_steps, 1))


def step_learning_rate(base_lr, batch_size, steps_per_epoch, milestones, factor):
  """Linear scaling (base_lr at batch 256), then the rate times `factor` at the start of each milestone epoch, as
  He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning", Sec. 4 (x0.1 at epochs 120
  and 160 of 200): epoch e (from 0) runs at peak * factor ** #{milestones <= e}."""
  return step_decay(base_lr * batch_size / 256, steps_per_epoch, milestones, factor)


def step_decay(peak, steps_per_epoch, milestones, factor):
  """Epoch e (from 0) at peak * factor ** #{milestones <= e}, constant within an epoch."""
  boundaries = jnp.asarray(milestones, jnp.int32) * steps_per_epoch
  return lambda step: peak * factor ** jnp.sum(step >= boundaries)


def poly(peak, steps_per_epoch, epochs, power=0.9):
  """The poly schedule as Van Gansbeke et al. 2021's segmentation code (and Vandenhende et al.'s multi-task code)
  set it at the start of each epoch: epoch e (from 0) of E at peak * (1 - e / E) ** power."""
  return lambda step: peak * (1.0 - (step // steps_per_epoch) / epochs) ** power


def ema_momentum(base, total_steps, kind):
  """Constant m, or a cosine ramp from m to 1 over training (BYOL's schedule)."""
  if kind == 'constant':
    return lambda step: jnp.asarray(base, jnp.float32)
  if kind == 'cosine':
    return lambda step: 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * jnp.minimum(step / max(total_steps, 1), 1.0)) + 1) / 2
  raise ValueError(f'moco.momentum_schedule={kind!r}: use constant or cosine')
