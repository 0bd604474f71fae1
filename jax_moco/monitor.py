"""The kNN monitor of training: the `knn` evaluator on the online encoder's backbone features (knn.feature =
'backbone') or normalised projections ('head', as the MoCo CIFAR-10 Colab monitors), with the config's bank
(knn_bank_dataset, default the training set, un-augmented) and queries (eval_dataset), and nothing cached."""

import dataclasses
import logging

from input_pipeline import sources
from jax_moco import state as state_lib
from jax_moco import xla_cpu
from jax_moco.evaluators import common
from jax_moco.evaluators import features
from jax_moco.evaluators import knn


class KnnMonitor:
  def __init__(self, config, mesh, encoder):
    bank = sources.get_source(config.knn_bank_dataset or config.dataset, config.data_dir)
    test = sources.get_source(config.eval_dataset, config.data_dir, default_split='test')
    if bank.num_classes is None or bank.multi_label:
      raise ValueError(
        f'knn monitor: the bank {bank.name} has no single labels; set knn_bank_dataset or eval_dataset=""'
      )
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
