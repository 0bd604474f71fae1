"""Shuffling BN (MoCo, Sec. 3.3) generalised to G = devices x split-BN groups.

The global batch of anchors is seen as G BN groups of b images (group g = images [g b, (g + 1) b), device-major).
The permutation sends every anchor to a *different* group than the one its positive is normalised in, while each
group receives anchors from many groups: shifting slot j of every group by its own random offset s_j in [1, G - 1]
is a bijection, and a random order within each group first decides which images share a shift.
"""

import jax
import jax.numpy as jnp


def cross_group_permutation(key, num_groups, group_size):
  """perm [G b] with shuffled[t] = x[perm[t]] and group(perm[t]) != group(t) whenever G > 1."""
  order_key, shift_key = jax.random.split(key)
  within = jax.vmap(lambda k: jax.random.permutation(k, group_size))(jax.random.split(order_key, num_groups))
  if num_groups > 1:
    shifts = jax.random.randint(shift_key, (group_size,), 1, num_groups)
  else:
    shifts = jnp.zeros((group_size,), jnp.int32)
  source_group = (jnp.arange(num_groups)[:, None] - shifts[None, :]) % num_groups
  source_slot = within[source_group, jnp.arange(group_size)[None, :]]
  return (source_group * group_size + source_slot).reshape(-1)


def inverse_permutation(perm):
  return jnp.argsort(perm)
