"""The `segmentation` protocol: a dense model fine-tuned end to end for semantic segmentation (Van Gansbeke et al.
2021, "Revisiting Contrastive Methods for Unsupervised Learning of Visual Representations", appendix A.3), on PASCAL
VOC 2012 (`voc:PATH`, 21 classes; by default its trainaug list where the folder has one, else train), Cityscapes
(`cityscapes:PATH`, the 19 training classes) or NYUD-v2 (`nyud:PATH`, 40 classes); the test split defaults to the
same folder's val. Trained and scored by `finetune` with the dataset's recipe (finetune.RECIPES); the loss is
PyTorch's CrossEntropyLoss(ignore_index=255): the mean over the batch's labelled pixels. The score is the mIoU of one
confusion matrix over the test split (255 left out), and the IoU of each class."""

import os

import jax.numpy as jnp
import optax

from input_pipeline import dense_transforms
from input_pipeline import split_lists
from jax_moco.evaluators import dense_metrics
from jax_moco.evaluators import finetune
from jax_moco.readers import cityscapes
from jax_moco.readers import nyud
from jax_moco.readers import voc_segmentation

READERS = {'voc': voc_segmentation.get, 'cityscapes': cityscapes.get, 'nyud': nyud.get}


def voc_train_spec(spec):
  """`spec` with the split A.3 trains on, train_aug (ImageSets/Segmentation/trainaug.txt), when it names none and
  the folder has that list; else `spec` as given (the reader's default: train)."""
  root, split = split_lists.parse(spec, 'voc', None, 'the PASCAL VOC 2012 folder layout')
  if split is None and os.path.exists(os.path.join(root, 'ImageSets', 'Segmentation', 'trainaug.txt')):
    return f'{spec}:trainaug'
  return spec


def kind_of(spec):
  """The dataset kind of a `KIND:PATH[:SPLIT]` string, refused unless it is one the protocol reads."""
  kind = spec.partition(':')[0]
  if kind not in READERS:
    raise ValueError(f'dataset {spec!r}: the segmentation protocol reads {", ".join(f"{k}:PATH" for k in READERS)}')
  return kind


def open_datasets(config, dataset=None, test_dataset=None):
  """(train, test) sets of one kind: `dataset` (required) and `test_dataset`, by default the same folder's val."""
  del config
  if not dataset:
    raise ValueError('protocol=segmentation needs --dataset=voc:PATH, cityscapes:PATH or nyud:PATH')
  kind = kind_of(dataset)
  train = READERS[kind](voc_train_spec(dataset) if kind == 'voc' else dataset, 'train')
  test_spec = test_dataset or finetune.val_spec(train)
  if kind_of(test_spec) != kind:
    raise ValueError(f'--test_dataset={test_spec!r} is not a {kind} set like --dataset={dataset!r}')
  return train, READERS[kind](test_spec, 'val')


def cross_entropy(logits, labels):
  """(sum, count) of the cross-entropy over the pixels not labelled 255."""
  valid = labels != dense_transforms.IGNORE
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(valid, labels, 0))
  return jnp.sum(jnp.where(valid, losses, 0.0)), jnp.sum(valid)


def dense_task(train):
  classes = train.num_classes
  return finetune.DenseTask(
    'segmentation',
    classes,
    cross_entropy,
    lambda logits, labels: {'confusion': dense_metrics.confusion(jnp.argmax(logits, axis=-1), labels, classes)},
    lambda sums: dense_metrics.segmentation_metrics(sums['confusion']),
    'miou',
  )


class Evaluator(finetune.FinetuneEvaluator):
  """Options (evaluators.OPTIONS): the recipe's epochs, batch_size, lr, weight_decay and crop_size (each by default
  the dataset's, finetune.RECIPES), `runs` fine-tunings, `sync_bn`."""

  protocol = 'segmentation'
  open_datasets = staticmethod(open_datasets)

  @staticmethod
  def kind_of(train):
    return kind_of(train.name)

  dense_task = staticmethod(dense_task)

  @staticmethod
  def describe(result):
    spread = f' +- {result["miou_std"]:.2f} over {result["runs"]} runs' if result['runs'] > 1 else ''
    return (
      f'fine-tuned segmentation ({finetune.FinetuneEvaluator.settings_in_words(result)})',
      f'mIoU {result["miou"]:.2f} %{spread}',
    )
