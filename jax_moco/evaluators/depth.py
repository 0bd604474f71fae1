"""The `depth` protocol: a dense model with one output channel fine-tuned end to end for depth on NYUD-v2
(`nyud:PATH`, its depth maps in metres; Van Gansbeke et al. 2021, "Revisiting Contrastive Methods for Unsupervised
Learning of Visual Representations", appendix A.5: the NYUD segmentation setup with a mean squared error objective).
The loss is the mean squared error over the batch's valid pixels (depth > 0); the scores over the test split's valid
pixels (the val list, NYUD-v2's 654 test images, unless --test_dataset), pooled over the split (dense_metrics): rmse
(m) and log rmse as Vandenhende et al.'s eval_depth, the mean absolute relative error and the share of pixels within
1.25 (delta1). Trained and scored by `finetune` with the NYUD recipe (finetune.RECIPES['nyud'])."""

import jax.numpy as jnp

from jax_moco.evaluators import dense_metrics
from jax_moco.evaluators import finetune
from jax_moco.readers import nyud


def open_datasets(config, dataset=None, test_dataset=None):
  """(train, test) NYUD depth sets: `dataset` (nyud:PATH[:SPLIT], required) and `test_dataset`, by default the same
  folder's val."""
  del config
  if not dataset or not dataset.startswith('nyud:'):
    raise ValueError(f'protocol=depth needs --dataset=nyud:PATH (NYUD-v2 in {nyud.LAYOUT}), got {dataset!r}')
  train = nyud.get(dataset, 'train', target='depth')
  return train, nyud.get(test_dataset or finetune.val_spec(train), 'val', target='depth')


def squared_error(outputs, depth):
  """(sum, count) of the squared error over the pixels with a depth (> 0)."""
  valid = depth > 0
  return jnp.sum(jnp.where(valid, jnp.square(outputs[..., 0] - depth), 0.0)), jnp.sum(valid)


def prediction_sums(outputs, depth):
  return dense_metrics.depth_sums(outputs[..., 0], depth)


DENSE_TASK = finetune.DenseTask('depth', 1, squared_error, prediction_sums, dense_metrics.depth_metrics, 'rmse')


class Evaluator(finetune.FinetuneEvaluator):
  """Options (evaluators.OPTIONS): the NYUD recipe's epochs, batch_size, lr, weight_decay and crop_size, `runs`
  fine-tunings, `sync_bn`."""

  protocol = 'depth'
  open_datasets = staticmethod(open_datasets)

  @staticmethod
  def kind_of(train):
    return 'nyud'

  @staticmethod
  def dense_task(train):
    return DENSE_TASK

  @classmethod
  def name_for(cls, train) -> str:
    return 'depth'  # one kind

  @staticmethod
  def describe(result):
    spread = f' +- {result["rmse_std"]:.3f} over {result["runs"]} runs' if result['runs'] > 1 else ''
    return (
      f'fine-tuned depth ({finetune.FinetuneEvaluator.settings_in_words(result)})',
      f'rmse {result["rmse"]:.3f} m{spread}, abs rel {result["abs_rel"]:.3f}, '
      f'delta<1.25 {100 * result["delta1"]:.1f} %',
    )
