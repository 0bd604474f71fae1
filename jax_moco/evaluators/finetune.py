"""Fine-tuning a dense model end to end from a checkpoint's backbone, the training and scoring that the `segmentation`
and `depth` protocols share (Van Gansbeke et al. 2021, "Revisiting Contrastive Methods for Unsupervised Learning of
Visual Representations", appendix A.3 and A.5, and the authors' evaluation/segmentation code).

The model: the run's backbone with its last stage dilated (output stride 16 with the ImageNet stem), its variables
the checkpoint's, and a fresh head (jax_moco.models.dense_heads), every layer trained. The recipe (RECIPES, one row a
dataset kind) gives the head, epochs, batch, optimiser, schedule and crop; the protocol's options override each.

Training: data-parallel over every device and process (jax.shard_map over the mesh's 'data' axis). Each example is
loaded by its dataset's reader and augmented on the host (finetune_data.TrainData with
input_pipeline.dense_transforms: scale in [0.5, 2], flip, crop padded with the ignore label), its random choices
drawn from (seed, epoch, index) and the epoch's order from (seed, epoch), so a resumed run sees the batches of an
uninterrupted one. The loss is the mean over the global batch's valid pixels (what the authors' single-GPU VOC runs
compute), so the device count does not change a step.
BN: statistics over the global batch by default, as the authors' runs had them (`sync_bn`), or per device; see
docs/evaluation.md, "segmentation".
Checkpointed every epoch and resumed (training_loop). `runs` fine-tunings with seeds seed, seed + 1, ..., each in
its own directory run_<i>, and the result is their mean, spread and each one's figures.

Evaluation: whole test images at their own size, batched over the devices (finetune_data.eval_batches: padded with
the ignore label, the split's tail blank); the task's sums (a confusion matrix, depth error sums) accumulate over the
split (dense_metrics.add_sums).
"""

import dataclasses
import os
from typing import Any
from typing import Callable

import flax
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
from tqdm import tqdm

from jax_moco import evaluators
from jax_moco import schedules
from jax_moco import sharding
from jax_moco import state as state_lib
from jax_moco.evaluators import dense_metrics
from jax_moco.evaluators import finetune_data
from jax_moco.evaluators import training_loop
from jax_moco.models import dense_heads
from jax_moco.normalization import normalize

MOMENTUM = 0.9  # SGD's, the VOC recipe's
POLY_POWER = 0.9  # the authors' adjust_learning_rate


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How one dataset kind is fine-tuned (Van Gansbeke et al. 2021, appendix A.3; the authors' configs)."""

  head: str  # 'fcn' (the authors' FCN) or 'deeplabv3' (Vandenhende et al.'s DeepLab-v3 head)
  dilation: int  # of the FCN head's 3x3 convolutions
  epochs: int
  batch_size: int
  optimizer: str  # 'sgd' (momentum 0.9) or 'adam'; weight decay coupled (an L2 term in the gradient) as PyTorch's
  lr: float
  schedule: str  # 'step' (x0.1 after each of `milestones`) or 'poly'
  milestones: tuple
  weight_decay: float
  crop_size: int


RECIPES = {
  # The authors' configs/pascal_voc.yml: 45 epochs, batch 16, SGD lr 0.003 momentum 0.9, x0.1 after epochs 30 and 40,
  # wd 1e-4; the FCN head at dilation 6 (their utils/common_config.py); crops of 513 (A.3).
  'voc': Recipe('fcn', 6, 45, 16, 'sgd', 0.003, 'step', (30, 40), 1e-4, 513),
  # The authors' configs/cityscapes.yml: 150 epochs, Adam lr 1e-4 poly, wd 1e-4; batch 8 a GPU on 2 GPUs; dilation 1;
  # crops of 768.
  'cityscapes': Recipe('fcn', 1, 150, 16, 'adam', 1e-4, 'poly', (), 1e-4, 768),
  # A.3 and Vandenhende et al.'s configs/nyud/resnet50/{semseg,depth}.yml: 100 epochs, batch 8, Adam 1e-4 poly, wd
  # 1e-4, DeepLab-v3 head; crops of 512 (A.3).
  'nyud': Recipe('deeplabv3', 1, 100, 8, 'adam', 1e-4, 'poly', (), 1e-4, 512),
}


@dataclasses.dataclass(frozen=True)
class DenseTask:
  """What differs between segmentation and depth. `loss(outputs, targets) -> (sum, count)` over one device's valid
  pixels; `sums(outputs, targets)` the evaluation's accumulable sums (a pytree of arrays) of one device's batch;
  `scores(sums)` the result's figures; `figure` the key the runs are summarised by."""

  name: str
  num_outputs: int
  loss: Callable
  sums: Callable
  scores: Callable
  figure: str


class FinetuneState(flax.struct.PyTreeNode):
  step: Any
  params: Any
  batch_stats: Any
  opt_state: Any


def learning_rate(recipe: Recipe, steps_per_epoch: int):
  """The recipe's schedule, set once an epoch as the authors' adjust_learning_rate: 'step' multiplies by 0.1 for
  each milestone m < e (epoch e from 0: after epoch 30 means from the 32nd epoch on, their `epoch > m`), 'poly'
  is lr (1 - e / E) ** 0.9."""
  if recipe.schedule == 'step':
    return schedules.step_decay(recipe.lr, steps_per_epoch, [m + 1 for m in recipe.milestones], 0.1)
  if recipe.schedule == 'poly':
    return schedules.poly(recipe.lr, steps_per_epoch, recipe.epochs, POLY_POWER)
  raise ValueError(f'schedule={recipe.schedule!r}: use step or poly')


def optimizer(recipe: Recipe, steps_per_epoch: int) -> optax.GradientTransformation:
  """torch.optim.SGD / Adam with `weight_decay` on every parameter, added to the gradient (coupled L2) as PyTorch's
  weight_decay argument does; Adam's betas (0.9, 0.999) and eps 1e-8 are both libraries' defaults."""
  lr = learning_rate(recipe, steps_per_epoch)
  if recipe.optimizer == 'sgd':
    return state_lib.sgd(lr, MOMENTUM, recipe.weight_decay)
  if recipe.optimizer == 'adam':
    return optax.chain(optax.add_decayed_weights(recipe.weight_decay), optax.adam(lr))
  raise ValueError(f'optimizer={recipe.optimizer!r}: use sgd or adam')


def make_train_step(mesh, model, tx, task: DenseTask, statistics, seed):
  """jit(shard_map(step)): the state replicated, images and targets split over 'data'. The loss is the mean over
  the global batch's valid pixels: each device's sum over the global count, gradients summed over the devices. BN
  running statistics are averaged over the devices (equal already when the model's BN is synchronised). Dropout
  (the DeepLab-v3 head's) draws from (seed, step, device)."""

  def per_device(state, images, targets):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), state.step), jax.lax.axis_index(sharding.AXIS))

    def objective(params):
      variables = {'params': params, 'batch_stats': state.batch_stats}
      outputs, updated = model.apply(
        variables, normalize(images, statistics), train=True, rngs={'dropout': key}, mutable=['batch_stats']
      )
      total, count = task.loss(outputs, targets)
      return total / jnp.maximum(jax.lax.psum(count, sharding.AXIS), 1), updated['batch_stats']

    (loss, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(jax.lax.psum(grads, sharding.AXIS), state.opt_state, state.params)
    return state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=jax.lax.pmean(batch_stats, sharding.AXIS),
      opt_state=opt_state,
    ), jax.lax.psum(loss, sharding.AXIS)

  # check_vma=False, as jax_moco/step.py: replicated outputs built from psum / pmean results.
  mapped = jax.shard_map(
    per_device, mesh=mesh, in_specs=(P(), P(sharding.AXIS), P(sharding.AXIS)), out_specs=(P(), P()), check_vma=False
  )
  return jax.jit(mapped, donate_argnums=0)


def make_eval_step(mesh, model, task: DenseTask, statistics):
  """jit(shard_map): the task's sums over a global batch (BN in inference mode), summed over the devices."""

  def per_device(variables, images, targets):
    outputs = model.apply(variables, normalize(images, statistics), train=False)
    return jax.tree.map(lambda x: jax.lax.psum(x, sharding.AXIS), task.sums(outputs, targets))

  mapped = jax.shard_map(
    per_device, mesh=mesh, in_specs=(P(), P(sharding.AXIS), P(sharding.AXIS)), out_specs=P(), check_vma=False
  )
  return jax.jit(mapped)


def score(eval_step, variables, mesh, task: DenseTask, dataset, num_examples, batch_size, fill):
  """The task's scores on the first `num_examples` of `dataset`, from sums accumulated on the host in 64 bits."""
  total = None
  batches = finetune_data.eval_batches(dataset, num_examples, batch_size, fill)
  for images, targets in tqdm(
    batches, total=-(-num_examples // batch_size), desc='evaluation', disable=jax.process_index() != 0
  ):
    total = dense_metrics.add_sums(total, eval_step(variables, *sharding.shard_batch(mesh, (images, targets))))
  return task.scores(total)


def val_spec(train):
  """The val split of the folder `train` was read from (its name is KIND:PATH:SPLIT): the default test set."""
  return f'{train.name.rpartition(":")[0]}:val'


def recipe_for(kind, options) -> Recipe:
  """RECIPES[kind] with the options (epochs, batch_size, lr, weight_decay, crop_size) that are not None."""
  fields = ('epochs', 'batch_size', 'lr', 'weight_decay', 'crop_size')
  return dataclasses.replace(
    RECIPES[kind], **{f: getattr(options, f) for f in fields if getattr(options, f) is not None}
  )


def recipe_fields(recipe: Recipe) -> dict:
  """The recipe as its result's fields (JSON: milestones a list)."""
  return {**dataclasses.asdict(recipe), 'milestones': list(recipe.milestones)}


def capped(dataset, cap):
  """How many of `dataset`'s examples a protocol reads: all, or the first `cap` (--max_examples)."""
  return min(dataset.num_examples, cap or dataset.num_examples)


def finetune_once(t, dense: DenseTask, recipe: Recipe, sync_bn, seed, directory, backbone_variables, description):
  """One fine-tuning (or its resumption from `directory`) of t.train's first t.max_train examples and its scores on
  t.test's first t.max_test."""
  mesh, statistics = t.features.mesh, t.features.statistics
  if recipe.batch_size % mesh.size:
    raise ValueError(f'batch_size={recipe.batch_size} is not a multiple of the {mesh.size} devices')
  fill = finetune_data.image_fill(statistics)
  data = finetune_data.TrainData(t.train, capped(t.train, t.max_train), recipe.crop_size, recipe.batch_size, seed, fill)
  if not data.steps_per_epoch:
    raise ValueError(
      f'{t.train.name}: {data.num_examples} training examples, fewer than batch_size={recipe.batch_size}'
    )
  backbone = state_lib.create_encoder(t.config).backbone
  model = dense_heads.create_dense_model(backbone, recipe.head, dense.num_outputs, recipe.dilation, sync_bn)
  variables = dense_heads.init_variables(model, seed, backbone_variables)
  tx = optimizer(recipe, data.steps_per_epoch)
  state = FinetuneState(np.zeros((), np.int32), variables['params'], variables['batch_stats'], None)
  state = state.replace(opt_state=tx.init(state.params))
  # A copy: the step donates its state, and the backbone's arrays serve every run.
  state = jax.device_put(state, sharding.replicated(mesh), may_alias=False)
  train_step = make_train_step(mesh, model, tx, dense, statistics, seed)
  total_steps = recipe.epochs * data.steps_per_epoch
  settings = dict(task=dense.name, train=t.train.name, num_train=data.num_examples, seed=seed, sync_bn=sync_bn)
  state = training_loop.train(
    directory,
    {**settings, **dataclasses.asdict(recipe)},
    state,
    lambda state, batch: train_step(state, *batch),
    lambda start: (sharding.shard_batch(mesh, batch) for batch in data.batches(start, total_steps)),
    data.steps_per_epoch,
    total_steps,
    description,
  )
  eval_step = make_eval_step(mesh, model, dense, statistics)
  trained = {'params': state.params, 'batch_stats': state.batch_stats}
  return score(eval_step, trained, mesh, dense, t.test, capped(t.test, t.max_test), mesh.size, fill)


def mean_of_lists(lists):
  """The element-wise mean of equally long lists of numbers, None where any of them holds None (a class absent)."""
  return [None if None in column else float(np.mean(column)) for column in zip(*lists)]


def summary(per_run, figure):
  """The runs' mean of every number and list of numbers they report, the sample standard deviation of `figure` (0
  for one run) and each run's scores."""
  result = {
    k: float(np.mean([r[k] for r in per_run]))
    if isinstance(v, (int, float))
    else mean_of_lists([r[k] for r in per_run])
    for k, v in per_run[0].items()
  }
  spread = np.std([r[figure] for r in per_run], ddof=1) if len(per_run) > 1 else 0.0
  return {**result, f'{figure}_std': float(spread), 'runs': len(per_run), 'per_run': per_run}


class FinetuneEvaluator:
  """The Evaluator of a fine-tuned protocol (evaluators.__init__): `protocol` names its options, `dense_task(train)`
  gives its DenseTask, `kind(train)` the recipe's key. Options: the recipe's fields (None: the recipe's), `runs`
  and `sync_bn`. Writes under the task's directory, in result_name/run_<i>/."""

  protocol = None
  default_image_size = 0  # common.AS_STORED: whole test images at their own size

  def __init__(self, task, **options):
    o = evaluators.options(self.protocol, **options)
    if task.directory is None:
      raise ValueError(f'{self.protocol} checkpoints its fine-tuning: the task needs a directory')
    if task.features.image_size:
      raise ValueError(
        f'protocol={self.protocol} scores whole test images at their own size: --image_size is not its option '
        '(--crop_size sets the training crops)'
      )
    if o.runs < 1:
      raise ValueError(f'runs={o.runs}: at least one fine-tuning')
    self.task, self.kind = task, self.kind_of(task.train)
    self.recipe, self.runs, self.sync_bn = recipe_for(self.kind, o), o.runs, o.sync_bn
    self.dense = self.dense_task(task.train)

  @classmethod
  def name_for(cls, train) -> str:
    """The name of the result (<name>.json) and of its checkpoints' folder for the training set `train`."""
    return f'{cls.protocol}_{cls.kind_of(train)}'

  @property
  def result_name(self) -> str:
    return self.name_for(self.task.train)

  def run(self, backbone_variables):
    t, name = self.task, self.result_name
    per_run = [
      finetune_once(
        t,
        self.dense,
        self.recipe,
        self.sync_bn,
        t.config.seed + r,
        os.path.join(t.directory, name, f'run_{r}'),
        backbone_variables,
        f'{name} {r + 1}/{self.runs}',
      )
      for r in range(self.runs)
    ]
    yield from summary(per_run, self.dense.figure).items()
    yield from recipe_fields(self.recipe).items()
    yield from dict(sync_bn=self.sync_bn, seed=t.config.seed, devices=t.features.mesh.size).items()
    yield from dict(num_train=capped(t.train, t.max_train), num_test=capped(t.test, t.max_test)).items()

  @staticmethod
  def settings_in_words(result) -> str:
    schedule = f'x0.1 after epochs {result["milestones"]}' if result['schedule'] == 'step' else 'poly'
    return (
      f'{result["head"]} head, {result["epochs"]} epochs, batch {result["batch_size"]}, {result["optimizer"]} lr '
      f'{result["lr"]:g} {schedule}, weight decay {result["weight_decay"]:g}, crops {result["crop_size"]}, '
      f'{"synchronised" if result["sync_bn"] else "per-device"} BN, {result["runs"]} run(s)'
    )
