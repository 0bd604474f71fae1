"""Weighted kNN classifier on frozen, L2-normalised features (InstDisc; the MoCo CIFAR-10 demo's monitor).

Each test feature votes with its k most similar bank features, weighted exp(sim / T). Computed in chunks of test
queries on the accelerator, so memory is bounded by chunk x bank size, not the test set.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jax_moco.models.encoder import l2_normalize


@functools.partial(jax.jit, static_argnames=('k', 'num_classes'))
def _class_scores(queries, bank, bank_labels, k, temperature, num_classes):
  similarity = queries @ bank.T
  top_sim, top_idx = jax.lax.top_k(similarity, k)
  weights = jnp.exp(top_sim / temperature)
  votes = jax.nn.one_hot(bank_labels[top_idx], num_classes) * weights[..., None]
  return votes.sum(axis=1)


def knn_classify(bank_features, bank_labels, test_features, test_labels, k=200, temperature=0.1,
                 num_classes=None, chunk=1024):
  """Top-1 and top-5 accuracy (%) of weighted kNN. Features are L2-normalised here."""
  num_classes = num_classes or int(max(bank_labels.max(), test_labels.max())) + 1
  k = min(k, len(bank_features))
  bank = l2_normalize(jnp.asarray(bank_features, jnp.float32))
  labels = jnp.asarray(bank_labels, jnp.int32)
  test = l2_normalize(jnp.asarray(test_features, jnp.float32))
  ranked = []
  for start in range(0, len(test), chunk):
    scores = _class_scores(test[start:start + chunk], bank, labels, k, temperature, num_classes)
    ranked.append(np.asarray(jnp.argsort(-scores, axis=1)[:, :5]))
  ranked = np.concatenate(ranked)
  test_labels = np.asarray(test_labels)
  top1 = float(np.mean(ranked[:, 0] == test_labels) * 100)
  top5 = float(np.mean((ranked == test_labels[:, None]).any(axis=1)) * 100)
  return {'top1': top1, 'top5': top5}
