"""What every protocol is given (`Task`), how the classification protocols open their datasets
(`labelled_datasets`), and the checks they share on them.

An Evaluator class says how its data is opened and at what size, so the CLI needs no per-protocol code:
`Evaluator.open_datasets(config, dataset, test_dataset) -> (train, test)` (the --dataset / --test_dataset strings,
None when not given) and `Evaluator.default_image_size` (None: the run's crops.large_size;
AS_STORED: the images at their own size); optionally `Evaluator.resize_ratio`, the shorter side before the centre
crop as a multiple of the image size (`resize_before_crop`; 256 / 224 for torchvision's Resize(256) +
CenterCrop(224), by default 1: the crop is the whole shorter side)."""

import dataclasses
from typing import Any
from typing import Optional

from input_pipeline import sources
from jax_moco.evaluators.features import Features

# `default_image_size` of a protocol that reads images at their own size (video frames) unless --image_size is given.
AS_STORED = 0


@dataclasses.dataclass(frozen=True)
class Task:
  """One protocol's inputs: the run's config, the frozen network's feature extractor (which also holds the mesh,
  the module and the eval size), the train and test sets its Evaluator opened (labelled sources for the
  classification protocols) with their caps, and the directory the protocol may write its state to (None: nothing
  is written, as in the training monitor)."""

  config: Any
  features: Features
  train: Any  # input_pipeline.sources.Source
  test: Any
  directory: Optional[str] = None
  max_train: Optional[int] = None
  max_test: Optional[int] = None

  @property
  def num_classes(self) -> int:
    return self.train.num_classes  # the test set's too: labelled_datasets refuses another


def resize_before_crop(evaluator, image_size):
  """The shorter side `evaluator`'s images are resized to before their centre image_size crop (module docstring)."""
  return round(image_size * getattr(evaluator, 'resize_ratio', 1.0))


def labelled(spec, data_dir, default_split):
  """The source named by `spec`, refused when it has no labels."""
  source = sources.get_source(spec, data_dir, default_split=default_split)
  if source.num_classes is None:
    raise ValueError(
      f'dataset {spec!r} has no labels; evaluation needs a labelled dataset (--dataset / --test_dataset)'
    )
  return source


def labelled_datasets(config, dataset=None, test_dataset=None):
  """The classification protocols' (train, test): `dataset` and `test_dataset`, by default the run's kNN bank (or
  training set) and its eval_dataset. Both must be labelled with the same classes; a run without an eval_dataset
  (its kNN monitor off) needs --test_dataset."""
  train = labelled(dataset or config.knn_bank_dataset or config.dataset, config.data_dir, 'train')
  test_spec = test_dataset or config.eval_dataset
  if not test_spec:
    raise ValueError(
      f'the run of {train.name} has no eval_dataset (its kNN monitor was off): name a labelled test set of the same '
      'classes with --test_dataset'
    )
  test = labelled(test_spec, config.data_dir, 'test')
  why = sources.label_mismatch(train, test, multi_label=True)
  if why:
    raise ValueError(
      f'--dataset and --test_dataset: the test set cannot be scored by a classifier of the training set: {why}.\n'
      f'  train: {train.name}: {sources.describe_labels(train)}\n  test: {test.name}: {sources.describe_labels(test)}'
    )
  return train, test


def require_single_label(task, protocol):
  if task.train.multi_label or task.test.multi_label:
    raise ValueError(
      f'protocol={protocol} needs single-label data; {task.train.name} / {task.test.name} are multi-label: use '
      '--protocol=linear_probe (mAP)'
    )
