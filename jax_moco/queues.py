"""FIFO queues of anchor embeddings with one write pointer (MoCo's dictionary)."""

import jax
import jax.numpy as jnp

from jax_moco.normalization import l2_normalize


def init_queue(key, size, dim):
  """K random unit vectors, as MoCo initialises its queue."""
  return l2_normalize(jax.random.normal(key, (size, dim), jnp.float32))


def enqueue(queue, keys, pointer):
  """Writes `keys` [B, C] at rows [pointer, pointer + B), the oldest entries; K is a multiple of B, so a batch
  never straddles the end. Returns the new queue."""
  return jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (pointer, 0))


def advance(pointer, batch, size):
  return (pointer + batch) % size
