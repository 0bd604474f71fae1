"""Losses of kNN-MoCo as pure functions of arrays.

Shapes: P positives (B images x (N + 1) views, flattened), C projection width, C_g backbone width, K queue length.
"""

import jax
import jax.numpy as jnp

from jax_moco.normalization import l2_normalize


def contrastive_logits(positives, keys, queue):
  """l_pos [P] = p . a (each positive with its own anchor's key) and l_neg [P, K] = p . Q_h (MoCo Eq. 1)."""
  l_pos = jnp.sum(positives * keys, axis=-1)
  l_neg = positives @ queue.T
  return l_pos, l_neg


def instance_loss(l_pos, l_neg, temperature):
  """Multi-crop InfoNCE: cross-entropy of [l_pos, l_neg] / tau with target 0, mean over positives; and top-1
  accuracy (the positive key ranked first among K + 1)."""
  logits = jnp.concatenate([l_pos[:, None], l_neg], axis=1) / temperature
  loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])
  accuracy = jnp.mean(l_pos > jnp.max(l_neg, axis=1))
  return loss, accuracy


def nearest_neighbours(features, queue, k):
  """Indices [P, k] of the k rows of a queue of unit vectors (Q_g, or Q_h) most cosine-similar to each (normalised)
  feature. The indices carry no gradient (Van Gansbeke et al. 2021, Algorithm 2)."""
  similarity = jax.lax.stop_gradient(l2_normalize(features)) @ queue.T
  return jax.lax.top_k(similarity, k)[1]


def nn_loss(l_neg, indices, temperature):
  """Multi-label cross-entropy (Van Gansbeke et al. 2021, Eq. 2): minus the mean over the k neighbours of
  log softmax(l_neg / tau) at each neighbour's index, averaged over positives."""
  log_probs = jax.nn.log_softmax(l_neg / temperature, axis=1)
  return -jnp.mean(jnp.take_along_axis(log_probs, indices, axis=1))
