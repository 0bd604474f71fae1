"""FIFO queues of anchor embeddings with one write pointer (MoCo's dictionary), and the labels of the images in them
(for the NN-precision diagnostic only)."""

import jax
import jax.numpy as jnp

from jax_moco.normalization import l2_normalize

UNKNOWN_LABEL = -1  # the label of a row no image was written to yet (the initial random vectors)


def init_queue(key, size, dim):
  """K random unit vectors, as MoCo initialises its queue."""
  return l2_normalize(jax.random.normal(key, (size, dim), jnp.float32))


def init_labels(size):
  """The labels of a fresh queue's K rows: all unknown."""
  return jnp.full((size,), UNKNOWN_LABEL, jnp.int32)


def enqueue(queue, keys, pointer):
  """Writes `keys` [B, ...] (embeddings [B, C], or labels [B]) at rows [pointer, pointer + B), the oldest entries; K
  is a multiple of B, so a batch never straddles the end. Returns the new queue."""
  start = (pointer,) + (0,) * (queue.ndim - 1)
  return jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), start)


def advance(pointer, batch, size):
  return (pointer + batch) % size


def label_precision(indices, queue_labels, labels):
  """The share of the rows `indices` [P, k] picked in a queue whose rows hold images of `queue_labels` [K] that hold
  an image of their query's label (`labels` [P]). A row of unknown label (UNKNOWN_LABEL) never does."""
  picked = queue_labels[indices]
  return jnp.mean((picked == labels[:, None]) & (picked != UNKNOWN_LABEL))
