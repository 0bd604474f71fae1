"""Shuffling BN (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning", Sec. 3.3)
over G = devices x split-BN groups.

The global batch of anchors is permuted uniformly at random before the momentum encoder sees it, with one
permutation that every device draws from the same key (MoCo's `_batch_shuffle_ddp` draws `randperm` on rank 0 and
broadcasts it). A key's BN batch is then a random sample of the whole batch: about 1/G of its BN mates have their
positive in the key's own positive's group, as in MoCo, instead of all of them without the shuffle.
"""

import jax
import jax.numpy as jnp


def batch_permutation(key, batch_size):
  """perm [B], a uniformly random permutation: shuffled[t] = x[perm[t]]. The same key gives the same perm."""
  return jax.random.permutation(key, batch_size)


def inverse_permutation(perm):
  return jnp.argsort(perm)
