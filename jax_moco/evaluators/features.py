"""Frozen features of a labelled dataset, shared by every protocol: each example exactly once, un-augmented (shorter
side resized, centre crop), extracted data-parallel over the mesh with the eval batches' masked padding, gathered on
every process, and cached as .npz so a second protocol does not run the network again."""

import os
import re

import jax
import numpy as np
from tqdm import tqdm

from input_pipeline import pipeline
from jax_moco import files
from jax_moco import sharding
from jax_moco.normalization import normalize


def make_feature_fn(mesh, module, statistics='imagenet', select=None, compiler_options=None):
  """jit'd (variables, uint8 images sharded over the mesh) -> module's eval-mode output (or `select` of it)."""

  def features(variables, images):
    out = module.apply(variables, normalize(images, statistics), train=False)
    return select(out) if select else out

  return sharding.data_parallel_jit(
    features, mesh, (sharding.REPLICATED, sharding.BATCH), sharding.BATCH, compiler_options=compiler_options
  )


def unmasked(batches, batch_features, description=None, total=None):
  """(features, labels) of the unmasked examples of all processes' eval batches; batch_features(images) gives a
  host-local batch's global features (an array, or a tuple of arrays whose leading axis is the batch's)."""
  features, labels = [], []
  for batch in tqdm(
    batches,
    total=total,
    desc=description,
    unit='batch',
    leave=False,
    disable=description is None or jax.process_index() != 0,
  ):
    mask = sharding.all_processes(batch['mask'])
    features.append(jax.tree.map(lambda x: x[mask], batch_features(batch['image'])))
    labels.append(sharding.all_processes(batch['label'])[mask])
  return jax.tree.map(lambda *parts: np.concatenate(parts), *features), np.concatenate(labels)


def slug(name):
  """A file-name-safe form of a dataset name."""
  return re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')


class Features:
  """features(variables, source, max_examples) -> (features [n, C], labels) of a labelled source at `image_size`
  (each image's shorter side resized to `resize`, default `image_size`, then centre-cropped), on every process. With
  a `cache_dir` (which must belong to one network: a run's step and encoder) the result is read back from there when
  this source was already seen at this size."""

  def __init__(
    self,
    mesh,
    module,
    statistics,
    image_size,
    batch_size,
    cache_dir=None,
    select=None,
    compiler_options=None,
    resize=None,
  ):
    self.mesh, self.module, self.statistics = mesh, module, statistics
    self.image_size, self.batch_size, self.cache_dir = image_size, batch_size, cache_dir
    self.resize = resize if resize != image_size else None  # the shorter side before the centre crop
    self.compiler_options = compiler_options
    self.feature_fn = module and make_feature_fn(mesh, module, statistics, select, compiler_options)

  def of_batch(self, variables, images):
    """Global features of one host-local batch of uint8 images."""
    return sharding.all_processes(self.feature_fn(variables, sharding.shard_batch(self.mesh, images)))

  def extract(self, variables, source, max_examples=None, description=None):
    # A set smaller than one batch (the monitor's few hundred images) is not padded up to a whole batch of 500.
    n = min(source.num_examples, max_examples or source.num_examples)
    batch = min(self.batch_size, sharding.multiple_of_devices(n, self.mesh))
    ds = pipeline.eval_dataset(
      source,
      self.image_size,
      batch,
      jax.process_index(),
      jax.process_count(),
      max_examples=max_examples,
      resize=self.resize,
    )
    cardinality = int(ds.cardinality())
    return unmasked(
      ds.as_numpy_iterator(),
      lambda images: self.of_batch(variables, images),
      description,
      cardinality if cardinality > 0 else None,
    )

  def __call__(self, variables, source, max_examples=None):
    if self.cache_dir is None:
      return self.extract(variables, source, max_examples)
    size = f'{self.image_size}px' + (f'_from{self.resize}' if self.resize else '')
    suffix = f'_max{max_examples}' if max_examples else ''
    path = os.path.join(self.cache_dir, f'features_{slug(source.name)}_{size}{suffix}.npz')
    if os.path.exists(path):
      with np.load(path) as cached:
        return cached['features'], cached['labels']
    features, labels = self.extract(variables, source, max_examples, description=f'features of {source.name}')
    if jax.process_index() == 0:
      os.makedirs(self.cache_dir, exist_ok=True)
      with files.atomic_write(path, 'wb') as f:
        np.savez(f, features=features, labels=labels)
    return features, labels


class RawPixels(Features):
  """The normalised pixels themselves, flattened (no network; `variables` are ignored): the floor a learned
  representation must beat."""

  def __init__(self, mesh, statistics, image_size, batch_size):
    super().__init__(mesh, None, statistics, image_size, batch_size)

  def of_batch(self, variables, images):
    del variables
    return sharding.all_processes(np.asarray(normalize(images, self.statistics)).reshape(len(images), -1))
