"""What every protocol is given (`Task`), how the classification protocols open their datasets
(`labelled_datasets`), and the checks they share on them.

An Evaluator class says how its data is opened and at what size, so the CLI needs no per-protocol code:
`Evaluator.open_datasets(config, dataset, test_dataset) -> (train, test)` (the --dataset / --test_dataset strings,
None when not given) and `Evaluator.default_image_size` (None: the run's crops.large_size;
AS_STORED: the images at their own size)."""

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
    return max(self.train.num_classes, self.test.num_classes)


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
  training set) and its eval_dataset; both must be labelled."""
  train = labelled(dataset or config.knn_bank_dataset or config.dataset, config.data_dir, 'train')
  test = labelled(test_dataset or config.eval_dataset or 'embedded:test', config.data_dir, 'test')
  return train, test


def require_single_label(task, protocol):
  if task.train.multi_label or task.test.multi_label:
    raise ValueError(
      f'protocol={protocol} needs single-label data; {task.train.name} / {task.test.name} are multi-label: use '
      '--protocol=linear_probe (mAP)'
    )
