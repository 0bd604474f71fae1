"""The kNN-MoCo train step (paper 001, Algorithm 2, in the order of paper 002, Algorithm 1), written as
per-device code and mapped over the 1-D device mesh axis 'data' with jax.shard_map.

Order within a step: EMA update of f' from the current f; encode the anchors with f' after a batch shuffle;
losses on the positives from f; SGD update of f with gradients averaged over devices; enqueue of the gathered anchors.
"""

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import optax

from jax_moco import device_augment
from jax_moco import losses
from jax_moco import queues
from jax_moco import shuffle
from jax_moco.normalization import l2_normalize
from jax_moco.normalization import normalize
from jax_moco.sharding import AXIS
from jax_moco.state import TrainState

ENQUEUE_ORDERS = ('loss_then_enqueue', 'enqueue_then_mine')


@dataclasses.dataclass(frozen=True)
class StepConfig:
  temperature: float
  nn_topk: int
  nn_weight: float
  nn_warmup_steps: int
  nn_order: str  # 'loss_then_enqueue' (paper, Sec. 4.3) or 'enqueue_then_mine' (appendix B, authors' scripts)
  queue_size: int
  normalization: str = 'imagenet'  # a key of normalization.NORMALIZATION
  symmetric: bool = False  # the MoCo CIFAR-10 Colab's symmetric loss (two crops, each the query for the other's key)


def step_config(config, steps_per_epoch) -> StepConfig:
  m = config.moco
  return StepConfig(
    temperature=m.temperature,
    nn_topk=m.nn_topk,
    nn_weight=m.nn_weight,
    nn_warmup_steps=int(m.nn_warmup_epochs * steps_per_epoch),
    nn_order=m.nn_order,
    queue_size=m.queue_size,
    normalization=config.model.normalization,
    symmetric=m.symmetric,
  )


def _encode(encoder, params, batch_stats, images, statistics):
  (features, projections), updates = encoder.apply(
    {'params': params, 'batch_stats': batch_stats}, normalize(images, statistics), train=True, mutable=['batch_stats']
  )
  return features, projections, updates['batch_stats']


def encode_keys_shuffled(encoder, ema_params, ema_batch_stats, anchors, key, statistics):
  """Momentum-encoder keys with shuffling BN: the gathered anchors in one random order (the same on every device,
  from the same key), each device encoding its slice in its BN groups. Returns (global backbone keys [B, C_g],
  global projection keys [B, C], new BN statistics), back in the original order of the global batch."""
  device = jax.lax.axis_index(AXIS)
  local = anchors.shape[0]
  all_anchors = jax.lax.all_gather(anchors, AXIS, tiled=True)
  perm = shuffle.batch_permutation(key, all_anchors.shape[0])
  mine = all_anchors[jax.lax.dynamic_slice_in_dim(perm, device * local, local)]
  features, projections, batch_stats = _encode(encoder, ema_params, ema_batch_stats, mine, statistics)
  inverse = shuffle.inverse_permutation(perm)
  features = jax.lax.all_gather(features, AXIS, tiled=True)[inverse]
  projections = jax.lax.all_gather(projections, AXIS, tiled=True)[inverse]
  return jax.lax.stop_gradient(features), jax.lax.stop_gradient(projections), batch_stats


def _recent_fraction(indices, start, batch, size):
  """Fraction of neighbour picks in the queue slots [start, start + batch) (mod K)."""
  return jnp.mean(((indices - start) % size) < batch)


def train_step(state: TrainState, batch, *, encoder, tx, cfg: StepConfig, lr_fn: Callable, momentum_fn: Callable):
  """Per-device step: state replicated, batch the local shard. Returns (state, metrics), both replicated."""
  batch = device_augment.apply_to_batch(batch)  # views tf.data left to the accelerator (config.crops.augment_on_device)
  device = jax.lax.axis_index(AXIS)
  local = batch['anchor'].shape[0]
  global_batch = local * jax.lax.psum(1, AXIS)
  # One key per step, not folded with the device: the shuffle permutation must agree on every device.
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  momentum = momentum_fn(state.step)
  ema_params = jax.tree.map(lambda e, p: momentum * e + (1.0 - momentum) * p, state.ema_params, state.params)
  keys_g, keys_h, ema_batch_stats = encode_keys_shuffled(
    encoder, ema_params, state.ema_batch_stats, batch['anchor'], key, cfg.normalization
  )
  my_keys_h = jax.lax.dynamic_slice_in_dim(keys_h, device * local, local)
  enqueued_h = keys_h
  if cfg.symmetric:  # the positive's keys too (its own shuffle); the Colab enqueues [positive keys, anchor keys]
    _, positive_keys_h, ema_batch_stats = encode_keys_shuffled(
      encoder, ema_params, ema_batch_stats, batch['positive'], jax.random.fold_in(key, 1), cfg.normalization
    )
    my_positive_keys_h = jax.lax.dynamic_slice_in_dim(positive_keys_h, device * local, local)
    enqueued_h = jnp.concatenate([positive_keys_h, keys_h])
  enqueued = enqueued_h.shape[0]

  use_nn = state.queue_g is not None
  queue_h = queues.enqueue(state.queue_h, enqueued_h, state.queue_ptr)
  queue_g = queues.enqueue(state.queue_g, l2_normalize(keys_g), state.queue_ptr) if use_nn else None
  mine_in = queue_g if cfg.nn_order == 'enqueue_then_mine' else state.queue_g
  recent_start = state.queue_ptr if cfg.nn_order == 'enqueue_then_mine' else state.queue_ptr - global_batch
  nn_weight = cfg.nn_weight * (state.step >= cfg.nn_warmup_steps)

  def loss_fn(params):
    encode = lambda images, stats: _encode(encoder, params, stats, images, cfg.normalization)  # noqa: E731
    feats, projs, batch_stats = encode(batch['positive'], state.batch_stats)
    feats, projs = feats[:, None], projs[:, None]
    if 'small' in batch:
      small = batch['small']
      f_s, p_s, batch_stats = encode(small.reshape((-1,) + small.shape[2:]), batch_stats)
      feats = jnp.concatenate([feats, f_s.reshape(local, small.shape[1], -1)], axis=1)
      projs = jnp.concatenate([projs, p_s.reshape(local, small.shape[1], -1)], axis=1)
    views = projs.shape[1]
    positives = projs.reshape(local * views, -1)
    anchors = jnp.repeat(my_keys_h, views, axis=0)
    # Logits use Q_h before this step's enqueue in both orders (appendix B's "mismatch" in the second).
    l_pos, l_neg = losses.contrastive_logits(positives, anchors, state.queue_h)
    loss_inst, accuracy = losses.instance_loss(l_pos, l_neg, cfg.temperature)
    if cfg.symmetric:  # the anchor as the query for the positive's key; the Colab sums the two losses
      _, anchor_projs, batch_stats = encode(batch['anchor'], batch_stats)
      loss_back, accuracy_back = losses.instance_loss(
        *losses.contrastive_logits(anchor_projs, my_positive_keys_h, state.queue_h), cfg.temperature
      )
      loss_inst, accuracy = loss_inst + loss_back, (accuracy + accuracy_back) / 2
    metrics = {'loss_inst': loss_inst, 'acc_inst': accuracy}
    loss = loss_inst
    if use_nn:
      indices = losses.nearest_neighbours(feats.reshape(local * views, -1), mine_in, cfg.nn_topk)
      loss_nn = losses.nn_loss(l_neg, indices, cfg.temperature)
      loss = loss + nn_weight * loss_nn
      metrics.update(
        loss_nn=loss_nn,
        nn_recent_fraction=_recent_fraction(indices, recent_start % cfg.queue_size, global_batch, cfg.queue_size),
      )
    metrics['loss'] = loss
    return loss, (batch_stats, metrics)

  grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  metrics.update(
    lr=lr_fn(state.step),
    ema_momentum=momentum,
    nn_weight=nn_weight,
    queue_fill=jnp.minimum((state.step + 1) * enqueued, cfg.queue_size) / cfg.queue_size,
  )
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    # Running BN statistics are averaged over devices (as over split-BN groups) so the state stays replicated.
    batch_stats=jax.lax.pmean(batch_stats, AXIS),
    ema_params=ema_params,
    ema_batch_stats=jax.lax.pmean(ema_batch_stats, AXIS),
    opt_state=opt_state,
    queue_h=queue_h,
    queue_g=queue_g,
    queue_ptr=queues.advance(state.queue_ptr, enqueued, cfg.queue_size),
  )
  return new_state, jax.lax.pmean(metrics, AXIS)


def make_train_step(mesh, encoder, tx, cfg: StepConfig, lr_fn, momentum_fn, compiler_options=None):
  """jit(shard_map(train_step)): state replicated (P()), batch sharded over 'data', state donated;
  `compiler_options` from jax_moco.xla_cpu.

  check_vma=False: the queues and parameters are replicated outputs built from all_gather / pmean results, which
  are equal on every device by construction (tests check it), but the type system cannot prove it."""
  per_device = functools.partial(train_step, encoder=encoder, tx=tx, cfg=cfg, lr_fn=lr_fn, momentum_fn=momentum_fn)
  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()), check_vma=False)
  return jax.jit(mapped, donate_argnums=0, compiler_options=compiler_options)
