"""The `knn` protocol: weighted kNN classifier on frozen, L2-normalised features (InstDisc; the MoCo CIFAR-10
demo's monitor, and the training monitor's classifier), top-1 and top-5; bank = the train set, queries = the test set.

Each test feature votes with its k most similar bank features, weighted exp(sim / T). Queries and the bank are both
processed in chunks on the accelerator (a running top-k is merged chunk by chunk), so memory is bounded by the chunk
sizes, not by the bank: an ImageNet-sized bank stays on the host.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jax_moco import evaluators
from jax_moco.evaluators import common
from jax_moco.normalization import l2_normalize

METRICS = ('top1', 'top5')


@functools.partial(jax.jit, static_argnames=('k',))
def _merge_top_k(best_sim, best_labels, queries, bank, bank_labels, bank_valid, k):
  """The running top-k (similarities, labels) of `queries` updated with one chunk of the bank."""
  similarity = jnp.where(bank_valid[None, :], queries @ bank.T, -jnp.inf)
  chunk_sim, chunk_idx = jax.lax.top_k(similarity, min(k, bank.shape[0]))
  sim = jnp.concatenate([best_sim, chunk_sim], axis=1)
  labels = jnp.concatenate([best_labels, bank_labels[chunk_idx]], axis=1)
  top_sim, top_idx = jax.lax.top_k(sim, k)
  return top_sim, jnp.take_along_axis(labels, top_idx, axis=1)


@functools.partial(jax.jit, static_argnames=('num_classes',))
def _ranked_classes(top_sim, top_labels, temperature, num_classes):
  weights = jnp.where(jnp.isfinite(top_sim), jnp.exp(top_sim / temperature), 0.0)
  scores = (jax.nn.one_hot(top_labels, num_classes) * weights[..., None]).sum(axis=1)
  return jnp.argsort(-scores, axis=1)[:, :5]


def knn_classify(
  bank_features,
  bank_labels,
  test_features,
  test_labels,
  k=200,
  temperature=0.1,
  num_classes=None,
  query_chunk=1024,
  bank_chunk=65536,
):
  """Top-1 and top-5 accuracy (%) of weighted kNN. Features are L2-normalised here."""
  bank_labels, test_labels = np.asarray(bank_labels, np.int32), np.asarray(test_labels)
  num_classes = num_classes or int(max(bank_labels.max(), test_labels.max())) + 1
  k = min(k, len(bank_features))
  bank, test = (l2_normalize(np.asarray(x, np.float32), xp=np) for x in (bank_features, test_features))
  bank_chunk = min(bank_chunk, len(bank))
  padded = -(-len(bank) // bank_chunk) * bank_chunk  # whole chunks: one compilation
  bank = np.pad(bank, [(0, padded - len(bank)), (0, 0)])
  valid = np.arange(padded) < len(bank_labels)
  labels = np.pad(bank_labels, (0, padded - len(bank_labels)))
  ranked = []
  for q in range(0, len(test), query_chunk):
    queries = jnp.asarray(test[q : q + query_chunk])
    top_sim = jnp.full((len(queries), k), -jnp.inf)
    top_labels = jnp.zeros((len(queries), k), jnp.int32)
    for b in range(0, padded, bank_chunk):
      top_sim, top_labels = _merge_top_k(
        top_sim, top_labels, queries, bank[b : b + bank_chunk], labels[b : b + bank_chunk], valid[b : b + bank_chunk], k
      )
    ranked.append(np.asarray(_ranked_classes(top_sim, top_labels, temperature, num_classes)))
  ranked = np.concatenate(ranked)
  top1 = float(np.mean(ranked[:, 0] == test_labels) * 100)
  top5 = float(np.mean((ranked == test_labels[:, None]).any(axis=1)) * 100)
  return {'top1': top1, 'top5': top5}


class Evaluator:
  """Options (evaluators.OPTIONS): k and T, by default the run's config's (`knn.k`, `knn.temperature`)."""

  open_datasets = staticmethod(common.labelled_datasets)
  default_image_size = None  # the run's crops.large_size

  def __init__(self, task: common.Task, **options):
    o = evaluators.options('knn', **options)
    common.require_single_label(task, 'knn')
    self.task = task
    self.k = o.knn_k or task.config.knn.k
    self.temperature = o.knn_temperature or task.config.knn.temperature

  def run(self, variables):
    t = self.task
    bank_x, bank_y = t.features(variables, t.train, t.max_train)
    test_x, test_y = t.features(variables, t.test, t.max_test)
    yield from knn_classify(bank_x, bank_y, test_x, test_y, self.k, self.temperature, t.num_classes).items()
    yield from dict(k=self.k, temperature=self.temperature, num_train=len(bank_y), num_test=len(test_y)).items()

  @staticmethod
  def describe(result):
    return (
      f'kNN (k={result["k"]}, T={result["temperature"]})',
      f'top-1 {result["top1"]:.2f} %, top-5 {result["top5"]:.2f} %',
    )


def metrics(pairs) -> dict:
  """The accuracies among an Evaluator's (name, value) pairs (the settings and counts left out)."""
  return {name: value for name, value in pairs if name in METRICS}
