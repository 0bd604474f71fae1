"""The `linear_classification` protocol of He et al. 2020, Sec. 4.1 (MoCo's ImageNet protocol): a linear layer on the
frozen backbone's pooled features, BN frozen (inference mode), SGD with momentum 0.9, lr 30, weight decay 0, 100 epochs,
lr / 10 at 60 % and 80 % of training, RandomResizedCrop + flip; top-1 on the test set. Van Gansbeke et al. 2021
(appendix A.2) train their ImageNet and Places classifiers the same way with weight decay 1e-4: the `weight_decay`
option. Checkpointed every epoch (jax_moco.checkpointing) under the task's directory and resumed from there."""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from input_pipeline import pipeline
from jax_moco import evaluators
from jax_moco import sharding
from jax_moco import state as state_lib
from jax_moco.evaluators import common
from jax_moco.evaluators import training_loop
from jax_moco.normalization import normalize

MOMENTUM = 0.9  # the epochs, batch size, lr and weight decay are the protocol's options (evaluators.OPTIONS)
MILESTONES = (0.6, 0.8)  # epochs 60 and 80 of 100


class LinearState(flax.struct.PyTreeNode):
  step: jax.Array
  params: dict  # kernel [C, classes], bias [classes]
  opt_state: optax.OptState


def learning_rate(lr, total_steps):
  return optax.piecewise_constant_schedule(lr, {int(m * total_steps): 0.1 for m in MILESTONES})


def optimizer(lr, total_steps, weight_decay=0.0):
  return state_lib.sgd(learning_rate(lr, total_steps), MOMENTUM, weight_decay)


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

  replicated, batch = sharding.REPLICATED, sharding.BATCH
  return sharding.data_parallel_jit(
    train_step, mesh, (replicated, replicated, batch, batch), (replicated, replicated), donate_argnums=0
  )


def top1(params, features, labels):
  logits = np.asarray(features) @ np.asarray(params['kernel']) + np.asarray(params['bias'])
  return float(np.mean(np.argmax(logits, axis=1) == labels) * 100)


class Evaluator:
  """Options (evaluators.OPTIONS): `epochs`, `batch_size` (global), `lr` and `weight_decay`, by default MoCo's; a
  rerun with other values refuses the directory's checkpoint, naming them."""

  open_datasets = staticmethod(common.labelled_datasets)
  default_image_size = None  # the run's crops.large_size

  def __init__(self, task: common.Task, **options):
    o = evaluators.options('linear_classification', **options)
    common.require_single_label(task, 'linear_classification')
    if task.directory is None:
      raise ValueError('linear_classification checkpoints its classifier: the task needs a directory')
    self.task, self.epochs, self.batch_size, self.lr = task, o.epochs, o.batch_size, o.lr
    self.weight_decay = o.weight_decay
    self.steps_per_epoch = max(task.train.num_examples // o.batch_size, 1)
    self.total_steps = o.epochs * self.steps_per_epoch

  def run(self, variables):
    params = self.train(variables)
    test_x, test_y = self.task.features(variables, self.task.test, self.task.max_test)
    yield 'top1', top1(params, test_x, test_y)
    yield from dict(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay, batch_size=self.batch_size).items()
    yield 'steps', self.total_steps
    yield from dict(num_train=self.task.train.num_examples, num_test=len(test_y)).items()

  def train(self, variables):
    """Trains (or resumes) the classifier on the frozen backbone; returns its parameters on the host."""
    t, f = self.task, self.task.features
    seed = t.config.seed
    tx = optimizer(self.lr, self.total_steps, self.weight_decay)
    state = jax.device_put(init_state(f.module.num_features, t.num_classes, tx, seed), sharding.replicated(f.mesh))
    settings = dict(
      epochs=self.epochs,
      lr=self.lr,
      weight_decay=self.weight_decay,
      batch_size=self.batch_size,
      seed=seed,
      image_size=f.image_size,
      train=t.train.name,
    )
    step_fn = make_train_step(f.mesh, f.module, tx, f.statistics)

    def batches(start):
      data = pipeline.classification_dataset(
        t.train, f.image_size, self.batch_size, seed, start, jax.process_index(), jax.process_count()
      ).as_numpy_iterator()
      for batch in data:
        yield sharding.shard_batch(f.mesh, batch)

    state = training_loop.train(
      os.path.join(t.directory, 'linear_classification'),
      settings,
      state,
      lambda state, batch: step_fn(state, variables, batch['image'], batch['label']),
      batches,
      self.steps_per_epoch,
      self.total_steps,
      'linear classification',
    )
    return jax.device_get(state.params)

  @staticmethod
  def describe(result):
    return (
      f'linear classification ({result["epochs"]} epochs, lr {result["lr"]}, weight decay '
      f'{result.get("weight_decay", 0.0):g}, batch {result["batch_size"]})',
      f'top-1 {result["top1"]:.2f} %',
    )
