"""BatchNorm over G virtual groups of the local batch ("split BN" of the MoCo CIFAR-10 demo).

Statistics are per group and per device (no cross-device sync: shuffling BN needs exactly that), or with `axis_name`
averaged over that mesh axis (PyTorch's SyncBatchNorm, for finetuning on several devices). Running statistics follow
PyTorch: momentum 0.1, the unbiased batch variance, averaged over the groups. G = 1 is plain per-device BN.
"""

import flax.linen as nn
from jax import lax
import jax.numpy as jnp


class SplitBatchNorm(nn.Module):
  groups: int = 1
  momentum: float = 0.1  # PyTorch convention: weight of the new batch statistic.
  epsilon: float = 1e-5
  zero_init: bool = False  # Zero-init the scale (last BN of a residual branch).
  dtype: jnp.dtype = jnp.float32
  axis_name: str | None = None  # a mesh axis to synchronise the batch statistics over (inside shard_map); None: none

  def _mean(self, x, axes):
    mean = x.mean(axis=axes, keepdims=True)
    return lax.pmean(mean, self.axis_name) if self.axis_name else mean

  @nn.compact
  def __call__(self, x, train: bool):
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.zeros if self.zero_init else nn.initializers.ones, (channels,))
    bias = self.param('bias', nn.initializers.zeros, (channels,))
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (channels,))
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (channels,))
    if train:
      if x.shape[0] % self.groups:
        raise ValueError(f'batch of {x.shape[0]} images on a device cannot be split into bn_groups={self.groups}')
      xg = x.astype(jnp.float32).reshape((self.groups, -1) + x.shape[1:])
      axes = tuple(range(1, xg.ndim - 1))
      mean = self._mean(xg, axes)
      var = self._mean(jnp.square(xg - mean), axes)  # every device holds the same number of images
      normed = ((xg - mean) * (1.0 / jnp.sqrt(var + self.epsilon))).reshape(x.shape)
      if not self.is_initializing():
        count = xg.size // (self.groups * channels) * (lax.axis_size(self.axis_name) if self.axis_name else 1)
        group_mean = mean.reshape(self.groups, channels).mean(0)
        group_var = var.reshape(self.groups, channels).mean(0) * count / max(count - 1, 1)
        ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * group_mean
        ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * group_var
    else:
      normed = (x.astype(jnp.float32) - ra_mean.value) / jnp.sqrt(ra_var.value + self.epsilon)
    return (normed * scale + bias).astype(self.dtype)
