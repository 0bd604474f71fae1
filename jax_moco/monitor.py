"""Frozen-feature kNN monitor used during training (and by evaluation): extracts features (the backbone's, or the
head's normalised projection as the MoCo CIFAR-10 Colab monitors) data-parallel over the mesh, with masked padding
so every example counts exactly once."""

import logging

import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
from tqdm import tqdm

from jax_moco import knn
from jax_moco import xla_cpu
from jax_moco.step import AXIS
from jax_moco.step import normalize


def shard_batch(mesh, batch):
  """Host-local NumPy arrays (a nested dict) -> global arrays sharded over 'data' on the leading axis."""
  sharding = NamedSharding(mesh, P(AXIS))
  return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, v), batch)


def make_feature_fn(mesh, module, statistics='imagenet', select=None, compiler_options=None):
  """jit'd (variables, uint8 images sharded over the mesh) -> module's eval-mode output (or `select` of it)."""

  def features(variables, images):
    out = module.apply(variables, normalize(images, statistics), train=False)
    return select(out) if select else out

  return jax.jit(
    features,
    in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))),
    out_shardings=NamedSharding(mesh, P(AXIS)),
    compiler_options=compiler_options,
  )


def backbone_variables(params, batch_stats):
  return {'params': params['backbone'], 'batch_stats': batch_stats['backbone']}


def all_processes(x):
  """The global value on every process: a sharded array's every row, or host-local arrays of all processes
  concatenated in process order (the order their rows take in a global batch)."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _unmasked(batches, features_fn, description=None, total=None):
  """(features, labels) of the unmasked examples of all processes' eval batches, features_fn(batch) giving each
  batch's global features."""
  features, labels = [], []
  for batch in tqdm(
    batches,
    total=total,
    desc=description,
    unit='batch',
    leave=False,
    disable=description is None or jax.process_index() != 0,
  ):
    mask = all_processes(batch['mask'])
    features.append(features_fn(batch)[mask])
    labels.append(all_processes(batch['label'])[mask])
  return np.concatenate(features), np.concatenate(labels)


def extract_features(feature_fn, variables, dataset, mesh, description=None):
  """(features [n, C], labels [n]) for every unmasked example of an eval dataset (its shards on all processes),
  on every process; a progress bar when described."""
  cardinality = int(dataset.cardinality())
  return _unmasked(
    dataset.as_numpy_iterator(),
    lambda b: all_processes(feature_fn(variables, shard_batch(mesh, {'image': b['image']})['image'])),
    description,
    cardinality if cardinality > 0 else None,
  )


class KnnMonitor:
  """Weighted kNN accuracy of the online encoder's backbone features (knn.feature = 'backbone') or normalised
  projections ('head'): bank = training images (un-augmented), queries = eval set."""

  def __init__(self, config, mesh, encoder):
    # TensorFlow only here, not at import: bench/scaling.py takes shard_batch on GPU machines without it.
    from input_pipeline import sources

    self.config, self.mesh = config, mesh
    self.bank = sources.get_source(config.knn_bank_dataset or config.dataset, config.data_dir)
    self.test = sources.get_source(config.eval_dataset, config.data_dir, default_split='test')
    if self.bank.num_classes is None or self.bank.multi_label:
      raise ValueError(
        f'knn monitor: the bank {self.bank.name} has no single labels; set knn_bank_dataset or eval_dataset=""'
      )
    statistics, options = config.model.normalization, xla_cpu.compiler_options(config.cpu_ynnpack_convolutions)
    if config.knn.feature == 'head':
      self.feature_fn = make_feature_fn(mesh, encoder, statistics, lambda out: out[1], options)
      self.variables = lambda params, batch_stats: {'params': params, 'batch_stats': batch_stats}
    else:
      self.feature_fn = make_feature_fn(mesh, encoder.backbone, statistics, compiler_options=options)
      self.variables = backbone_variables
    logging.info(
      'kNN monitor: bank %s (%d), queries %s (%d)',
      self.bank.name,
      self.bank.num_examples,
      self.test.name,
      self.test.num_examples,
    )

  def _dataset(self, source, max_examples=None):
    from input_pipeline import pipeline

    return pipeline.eval_dataset(
      source,
      self.config.crops.large_size,
      self.config.knn.batch_size,
      jax.process_index(),
      jax.process_count(),
      max_examples=max_examples,
    )

  def _classify(self, extract):
    bank_x, bank_y = extract(self._dataset(self.bank, self.config.knn.max_bank_examples or None))
    test_x, test_y = extract(self._dataset(self.test, self.config.knn.max_query_examples or None))
    return knn.knn_classify(
      bank_x, bank_y, test_x, test_y, self.config.knn.k, self.config.knn.temperature, self.bank.num_classes
    )

  def run(self, params, batch_stats):
    variables = self.variables(params, batch_stats)
    return self._classify(lambda ds: extract_features(self.feature_fn, variables, ds, self.mesh))

  def run_raw_pixels(self):
    """The same classifier on raw (normalised) pixels: the floor a learned representation must beat."""

    def extract(ds):
      return _unmasked(
        ds.as_numpy_iterator(),
        lambda b: all_processes(
          np.asarray(normalize(b['image'], self.config.model.normalization)).reshape(len(b['image']), -1)
        ),
      )

    return self._classify(extract)
