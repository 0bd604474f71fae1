"""The kNN-MoCo train step (Van Gansbeke et al. 2021, "Revisiting Contrastive Methods for Unsupervised Learning of
Visual Representations", Algorithm 2, in the order of He et al. 2020, "Momentum Contrast for Unsupervised Visual
Representation Learning", Algorithm 1), written as per-device code and mapped over the 1-D device mesh axis 'data'
with jax.shard_map.

Order within a step: EMA update of f' from the current f; encode the anchors with f' after a batch shuffle;
losses on the positives from f; SGD update of f with gradients averaged over devices; enqueue of the gathered anchors
(and, for the NN-precision diagnostic of a labelled source, of their labels).
"""

import dataclasses
import functools
from typing import Any
from typing import Callable
from typing import NamedTuple
from typing import Optional

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
  # 'loss_then_enqueue' (Van Gansbeke et al. 2021, Sec. 4.3) or 'enqueue_then_mine' (appendix B, the authors' scripts)
  nn_order: str
  queue_size: int
  normalization: str = 'imagenet'  # a key of normalization.NORMALIZATION
  symmetric: bool = False  # the MoCo CIFAR-10 Colab's symmetric loss (two crops, each the query for the other's key)
  nn_features: str = 'backbone'  # the kNN term mines Q_g with backbone features, or Q_h with projections ('head')


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
    nn_features=m.nn_features,
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
  all_anchors = jax.lax.all_gather(anchors, AXIS, tiled=True)
  perm = shuffle.batch_permutation(key, all_anchors.shape[0])
  mine = all_anchors[_this_devices_rows(perm, anchors.shape[0])]
  features, projections, batch_stats = _encode(encoder, ema_params, ema_batch_stats, mine, statistics)
  inverse = shuffle.inverse_permutation(perm)
  features = jax.lax.all_gather(features, AXIS, tiled=True)[inverse]
  projections = jax.lax.all_gather(projections, AXIS, tiled=True)[inverse]
  return jax.lax.stop_gradient(features), jax.lax.stop_gradient(projections), batch_stats


def _recent_fraction(indices, start, batch, size):
  """Fraction of neighbour picks in the queue slots [start, start + batch) (mod K)."""
  return jnp.mean(((indices - start) % size) < batch)


def _this_devices_rows(gathered, local):
  """This device's rows of an array gathered (tiled) over the devices."""
  return jax.lax.dynamic_slice_in_dim(gathered, jax.lax.axis_index(AXIS) * local, local)


class MomentumKeys(NamedTuple):
  """What the momentum encoder f' gives a step."""

  backbone: jax.Array  # [B, C_g] backbone keys of the global batch's anchors (for Q_g)
  anchor: jax.Array  # [local, C] projection keys of this device's anchors
  enqueued: jax.Array  # the projection keys that enter Q_h, of the global batch
  positive: Optional[jax.Array]  # [local, C] projection keys of this device's positives (symmetric loss only)
  batch_stats: Any  # f''s new BN statistics


def momentum_keys(encoder, ema_params, ema_batch_stats, batch, key, statistics) -> MomentumKeys:
  """The anchors' keys, all of which enter Q_h."""
  keys_g, keys_h, ema_batch_stats = encode_keys_shuffled(
    encoder, ema_params, ema_batch_stats, batch['anchor'], key, statistics
  )
  return MomentumKeys(keys_g, _this_devices_rows(keys_h, batch['anchor'].shape[0]), keys_h, None, ema_batch_stats)


def symmetric_momentum_keys(encoder, ema_params, ema_batch_stats, batch, key, statistics) -> MomentumKeys:
  """The anchors' keys and the positives' (their own shuffle), enqueued as the MoCo CIFAR-10 Colab enqueues them:
  [positive keys, anchor keys]."""
  keys = momentum_keys(encoder, ema_params, ema_batch_stats, batch, key, statistics)
  _, positive_keys_h, ema_batch_stats = encode_keys_shuffled(
    encoder, ema_params, keys.batch_stats, batch['positive'], jax.random.fold_in(key, 1), statistics
  )
  return keys._replace(
    positive=_this_devices_rows(positive_keys_h, batch['positive'].shape[0]),
    enqueued=jnp.concatenate([positive_keys_h, keys.enqueued]),
    batch_stats=ema_batch_stats,
  )


class Mining(NamedTuple):
  """The kNN term's inputs besides the features: the queue it mines (Q_g, or Q_h with nn_features='head'; before or
  after this step's enqueue, by `nn_order`; None without the term), the slot where this step's anchors start, the
  term's weight, and for the NN-precision diagnostic (None where the state keeps no labels) the labels of the mined
  queue's rows, of the same moment, and of this device's images."""

  queue: Optional[jax.Array]
  recent_start: Optional[jax.Array]
  global_batch: int
  weight: jax.Array
  queue_labels: Optional[jax.Array] = None
  labels: Optional[jax.Array] = None


def _enqueued_labels(state: TrainState, keys: MomentumKeys, labels):
  """The label queue after this step's enqueue (None where the state keeps none): the labels of the global batch's
  images, gathered over the devices as the anchors' keys are, in the rows their keys take in Q_h."""
  if state.queue_labels is None:
    return None
  if labels is None:
    raise ValueError("the state keeps the queue's labels (queue_labels), but the batch has no 'label'")
  gathered = jax.lax.all_gather(labels, AXIS, tiled=True)
  # Each image's keys in Q_h, once per image (the symmetric loss, which the config checks keep from the NN loss and
  # so from the labels, would enqueue two per image).
  per_image = keys.enqueued.shape[0] // gathered.shape[0]
  return queues.enqueue(state.queue_labels, jnp.tile(gathered, per_image), state.queue_ptr)


def _enqueue(state: TrainState, keys: MomentumKeys, cfg: StepConfig, global_batch, labels):
  """The state's queues after this step's enqueue (Q_h; Q_g, None unless the kNN term mines backbone features; the
  labels, None unless kept), and what the kNN term mines."""
  queue_g = None
  if state.queue_g is not None:
    queue_g = queues.enqueue(state.queue_g, l2_normalize(keys.backbone), state.queue_ptr)
  queued = state.replace(
    queue_h=queues.enqueue(state.queue_h, keys.enqueued, state.queue_ptr),
    queue_g=queue_g,
    queue_labels=_enqueued_labels(state, keys, labels),
  )
  weight = cfg.nn_weight * (state.step >= cfg.nn_warmup_steps)
  if cfg.nn_weight == 0:
    return queued, Mining(None, None, global_batch, weight)
  mined, start = (
    (queued, state.queue_ptr) if cfg.nn_order == 'enqueue_then_mine' else (state, state.queue_ptr - global_batch)
  )
  queue = mined.queue_h if cfg.nn_features == 'head' else mined.queue_g
  return queued, Mining(queue, start, global_batch, weight, mined.queue_labels, labels)


def _online_views(encoder, params, batch_stats, batch, statistics):
  """The online encoder f on the positive and then its small crops (the BN statistics chained): backbone features
  [local, views, C_g], projections [local, views, C], new BN statistics."""
  features, projections, batch_stats = _encode(encoder, params, batch_stats, batch['positive'], statistics)
  features, projections = features[:, None], projections[:, None]
  if 'small' in batch:
    small = batch['small']
    local, num_small = small.shape[:2]
    f_s, p_s, batch_stats = _encode(encoder, params, batch_stats, small.reshape((-1,) + small.shape[2:]), statistics)
    features = jnp.concatenate([features, f_s.reshape(local, num_small, -1)], axis=1)
    projections = jnp.concatenate([projections, p_s.reshape(local, num_small, -1)], axis=1)
  return features, projections, batch_stats


def _instance_terms(projections, keys, queue_h, temperature):
  """InfoNCE of each view [local, views, C] against its image's key [local, C] and Q_h: loss, accuracy, l_neg."""
  local, views = projections.shape[:2]
  positives = projections.reshape(local * views, -1)
  # Logits use Q_h before this step's enqueue in both orders (appendix B's "mismatch" in the second).
  l_pos, l_neg = losses.contrastive_logits(positives, jnp.repeat(keys, views, axis=0), queue_h)
  return (*losses.instance_loss(l_pos, l_neg, temperature), l_neg)


def _total_loss(loss_inst, accuracy, features, projections, l_neg, mining: Mining, cfg: StepConfig):
  """The instance loss plus, with a queue to mine, the weighted kNN term (Van Gansbeke et al. 2021, Eq. 2), the
  neighbours mined with the views' backbone features or (nn_features='head') their projections: (loss, metrics)."""
  metrics = {'loss_inst': loss_inst, 'acc_inst': accuracy}
  loss = loss_inst
  if mining.queue is not None:
    mined = projections if cfg.nn_features == 'head' else features
    indices = losses.nearest_neighbours(mined.reshape(-1, mined.shape[-1]), mining.queue, cfg.nn_topk)
    loss_nn = losses.nn_loss(l_neg, indices, cfg.temperature)
    loss = loss + mining.weight * loss_nn
    recent_start = mining.recent_start % cfg.queue_size
    metrics.update(
      loss_nn=loss_nn, nn_recent_fraction=_recent_fraction(indices, recent_start, mining.global_batch, cfg.queue_size)
    )
    if mining.queue_labels is not None:  # a diagnostic of the mined neighbours: nothing of it reaches the loss
      views = mined.shape[1]
      metrics['nn_precision'] = queues.label_precision(
        indices, mining.queue_labels, jnp.repeat(mining.labels, views, total_repeat_length=indices.shape[0])
      )
  metrics['loss'] = loss
  return loss, metrics


def moco_loss(params, state: TrainState, batch, keys: MomentumKeys, mining: Mining, *, encoder, cfg: StepConfig):
  """Each view of the positive as the query for its anchor's key. Returns (loss, (BN statistics, metrics))."""
  features, projections, batch_stats = _online_views(encoder, params, state.batch_stats, batch, cfg.normalization)
  loss_inst, accuracy, l_neg = _instance_terms(projections, keys.anchor, state.queue_h, cfg.temperature)
  loss, metrics = _total_loss(loss_inst, accuracy, features, projections, l_neg, mining, cfg)
  return loss, (batch_stats, metrics)


def symmetric_loss(params, state: TrainState, batch, keys: MomentumKeys, mining: Mining, *, encoder, cfg: StepConfig):
  """The MoCo CIFAR-10 Colab's symmetric loss: moco_loss's term plus the anchor as the query for the positive's
  key, summed as the Colab sums them (accuracy: their mean)."""
  features, projections, batch_stats = _online_views(encoder, params, state.batch_stats, batch, cfg.normalization)
  loss_inst, accuracy, l_neg = _instance_terms(projections, keys.anchor, state.queue_h, cfg.temperature)
  _, anchor_projections, batch_stats = _encode(encoder, params, batch_stats, batch['anchor'], cfg.normalization)
  loss_back, accuracy_back, _ = _instance_terms(
    anchor_projections[:, None], keys.positive, state.queue_h, cfg.temperature
  )
  accuracy = (accuracy + accuracy_back) / 2
  loss, metrics = _total_loss(loss_inst + loss_back, accuracy, features, projections, l_neg, mining, cfg)
  return loss, (batch_stats, metrics)


def train_step(state: TrainState, batch, *, encoder, tx, cfg: StepConfig, lr_fn: Callable, momentum_fn: Callable):
  """Per-device step: state replicated, batch the local shard. Returns (state, metrics), both replicated."""
  batch = device_augment.apply_to_batch(batch)  # views tf.data left to the accelerator (config.crops.augment_on_device)
  # The variant decides which keys f' encodes and which loss f's gradient comes from.
  encode_keys, loss_fn = (symmetric_momentum_keys, symmetric_loss) if cfg.symmetric else (momentum_keys, moco_loss)
  # One key per step, not folded with the device: the shuffle permutation must agree on every device.
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  momentum = momentum_fn(state.step)
  ema_params = jax.tree.map(lambda e, p: momentum * e + (1.0 - momentum) * p, state.ema_params, state.params)
  keys = encode_keys(encoder, ema_params, state.ema_batch_stats, batch, key, cfg.normalization)
  global_batch = batch['anchor'].shape[0] * jax.lax.psum(1, AXIS)
  queued, mining = _enqueue(state, keys, cfg, global_batch, batch.get('label'))

  loss_fn = functools.partial(loss_fn, state=state, batch=batch, keys=keys, mining=mining, encoder=encoder, cfg=cfg)
  grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(jax.lax.pmean(grads, AXIS), state.opt_state, state.params)
  enqueued = keys.enqueued.shape[0]
  metrics.update(
    lr=lr_fn(state.step),
    ema_momentum=momentum,
    nn_weight=mining.weight,
    queue_fill=jnp.minimum((state.step + 1) * enqueued, cfg.queue_size) / cfg.queue_size,
  )
  new_state = queued.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    # Running BN statistics are averaged over devices (as over split-BN groups) so the state stays replicated.
    batch_stats=jax.lax.pmean(batch_stats, AXIS),
    ema_params=ema_params,
    ema_batch_stats=jax.lax.pmean(keys.batch_stats, AXIS),
    opt_state=opt_state,
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
