"""The kNN monitor of training: the `knn` evaluator on the online encoder's backbone features (knn.feature =
'backbone') or normalised projections ('head', as the MoCo CIFAR-10 Colab monitors), with the config's bank
(knn_bank_dataset, default the training set, un-augmented) and queries (eval_dataset, resolved by
config_checks.resolved), and nothing cached."""

import dataclasses
import logging

from input_pipeline import sources
from jax_moco import config_checks
from jax_moco import state as state_lib
from jax_moco import xla_cpu
from jax_moco.evaluators import common
from jax_moco.evaluators import features
from jax_moco.evaluators import knn


def bank_field(config) -> str:
  """The field that names the monitor's bank."""
  return 'knn_bank_dataset' if config.knn_bank_dataset else 'dataset'


def datasets(config, training_source=None):
  """(bank, queries) of the monitor of `config` (its eval_dataset resolved), the bank being `training_source` when
  it is the training set. Refused, naming the fields, when the queries cannot be scored against the bank: labels
  on one side only, other class names, or another number of classes."""
  field = bank_field(config)
  if field == 'dataset' and training_source is not None:
    bank = training_source
  else:
    bank = sources.get_source(config[field], config.data_dir)
  queries = sources.get_source(config.eval_dataset, config.data_dir, default_split='test')
  why = sources.label_mismatch(bank, queries)
  if why:
    raise config_checks.ConfigError(
      f'{field} and eval_dataset: the kNN monitor cannot score these queries against this bank: {why}.\n'
      f'  {_labels(field, config[field], bank)}\n  {_labels("eval_dataset", config.eval_dataset, queries)}\n'
      "Set --config.eval_dataset to a labelled split of the bank's classes (folder:VAL with the same class "
      'sub-folders), or --config.eval_dataset= (empty) to train without the monitor; --config.knn_bank_dataset names '
      'a labelled bank other than the training set.'
    )
  return bank, queries


def _labels(field, spec, source):
  """'field=spec: its labels', with the source's own name where it says more than the spec."""
  name = f' ({source.name})' if source.name != spec else ''
  return f'{field}={spec}{name}: {sources.describe_labels(source)}'


class KnnMonitor:
  def __init__(self, config, mesh, encoder, bank, test):
    """The monitor of the encoder `encoder` on `mesh`, scoring the queries `test` against `bank` (see datasets)."""
    if config.knn.feature == 'head':
      module, select = encoder, lambda out: out[1]
      self.variables = lambda params, batch_stats: {'params': params, 'batch_stats': batch_stats}
    else:
      module, select, self.variables = encoder.backbone, None, state_lib.backbone_variables
    size, batch, statistics = config.crops.large_size, config.knn.batch_size, config.model.normalization
    extractor = features.Features(
      mesh,
      module,
      statistics,
      size,
      batch,
      select=select,
      compiler_options=xla_cpu.compiler_options(config.cpu_ynnpack_convolutions),
    )
    caps = dict(max_train=config.knn.max_bank_examples or None, max_test=config.knn.max_query_examples or None)
    task = common.Task(config, extractor, bank, test, **caps)
    self.knn = knn.Evaluator(task)
    self.knn_raw_pixels = knn.Evaluator(
      dataclasses.replace(task, features=features.RawPixels(mesh, statistics, size, batch))
    )
    logging.info(
      'kNN monitor: bank %s (%d), queries %s (%d)', bank.name, bank.num_examples, test.name, test.num_examples
    )

  def run(self, params, batch_stats):
    """{'top1', 'top5'} (%) of the encoder with these parameters and BN statistics."""
    return knn.metrics(self.knn.run(self.variables(params, batch_stats)))

  def run_raw_pixels(self):
    """The same classifier on raw (normalised) pixels: the floor a learned representation must beat."""
    return knn.metrics(self.knn_raw_pixels.run(None))
