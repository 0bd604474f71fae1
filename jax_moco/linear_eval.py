"""Linear classification of paper 002, Sec. 4.1 (MoCo's ImageNet protocol): a linear layer on the frozen backbone's
pooled features, BN frozen (inference mode), SGD with momentum 0.9, lr 30, weight decay 0, 100 epochs, lr / 10 at
60 % and 80 % of training, RandomResizedCrop + flip; top-1 on the validation set. Checkpointed every epoch and
resumed from its directory.
"""

import logging
import os

import flax
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from input_pipeline import pipeline
from jax_moco import monitor
from jax_moco import state as state_lib
from jax_moco.step import AXIS
from jax_moco.step import normalize

LR, MOMENTUM, WEIGHT_DECAY, EPOCHS, BATCH_SIZE = 30.0, 0.9, 0.0, 100, 256
MILESTONES = (0.6, 0.8)  # epochs 60 and 80 of 100


class LinearState(flax.struct.PyTreeNode):
  step: jax.Array
  params: dict  # kernel [C, classes], bias [classes]
  opt_state: optax.OptState


def learning_rate(lr, total_steps):
  return optax.piecewise_constant_schedule(lr, {int(m * total_steps): 0.1 for m in MILESTONES})


def optimizer(lr, total_steps):
  return state_lib.sgd(learning_rate(lr, total_steps), MOMENTUM, WEIGHT_DECAY)


def init_state(num_features, num_classes, tx, seed=0):
  """MoCo's main_lincls init: weights N(0, 0.01), bias 0."""
  params = {
    'kernel': 0.01 * jax.random.normal(jax.random.key(seed), (num_features, num_classes)),
    'bias': jnp.zeros((num_classes,)),
  }
  return LinearState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def make_train_step(mesh, backbone, tx, statistics='imagenet'):
  """jit'd step, data-parallel: the batch sharded over the mesh, everything else replicated."""

  def train_step(state, variables, images, labels):
    features = jax.lax.stop_gradient(backbone.apply(variables, normalize(images, statistics), train=False))

    def loss_fn(params):
      logits = features @ params['kernel'] + params['bias']
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
    ), loss

  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
  return jax.jit(
    train_step,
    in_shardings=(replicated, replicated, sharded, sharded),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )


def top1(params, features, labels):
  logits = np.asarray(features) @ np.asarray(params['kernel']) + np.asarray(params['bias'])
  return float(np.mean(np.argmax(logits, axis=1) == labels) * 100)


def linear_classification(
  mesh,
  backbone,
  feature_fn,
  variables,
  train_source,
  val_source,
  image_size,
  directory,
  batch_size,
  eval_batch_size,
  epochs=EPOCHS,
  lr=LR,
  seed=0,
  statistics='imagenet',
):
  """Trains (or resumes) the linear classifier in `directory`; returns top-1 (%) on `val_source` and the settings."""
  steps_per_epoch = max(train_source.num_examples // batch_size, 1)
  total_steps = epochs * steps_per_epoch
  tx = optimizer(lr, total_steps)
  num_classes = max(train_source.num_classes, val_source.num_classes)
  state = init_state(backbone.num_features, num_classes, tx, seed)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  manager = ocp.CheckpointManager(
    os.path.abspath(directory), options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True), item_names=('state',)
  )
  if manager.latest_step() is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))[
      'state'
    ]
    logging.info('linear classification: resumed at step %d of %d', int(state.step), total_steps)
  step_fn = make_train_step(mesh, backbone, tx, statistics)
  start = int(state.step)
  data = pipeline.classification_dataset(
    train_source, image_size, batch_size, seed, start, jax.process_index(), jax.process_count()
  ).as_numpy_iterator()
  try:
    with tqdm(
      total=total_steps, initial=start, unit='step', desc='linear classification', disable=jax.process_index() != 0
    ) as bar:
      for step in range(start, total_steps):
        batch = monitor.shard_batch(mesh, next(data))
        state, loss = step_fn(state, variables, batch['image'], batch['label'])
        bar.update(1)
        if (step + 1) % steps_per_epoch == 0 or step + 1 == total_steps:
          manager.save(step + 1, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
          bar.set_postfix(epoch=(step + 1) // steps_per_epoch, loss=f'{float(loss):.3f}')
  finally:
    manager.wait_until_finished()  # a save in flight completes even when training stops with an error
    manager.close()
  val_ds = pipeline.eval_dataset(val_source, image_size, eval_batch_size, jax.process_index(), jax.process_count())
  features, labels = monitor.extract_features(
    feature_fn, variables, val_ds, mesh, description=f'features of {val_source.name}'
  )
  params = jax.device_get(state.params)
  return {
    'top1': top1(params, features, labels),
    'epochs': epochs,
    'lr': lr,
    'batch_size': batch_size,
    'steps': total_steps,
    'num_val': len(labels),
  }
