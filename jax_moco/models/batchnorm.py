"""BatchNorm over G virtual groups of the local batch ("split BN" of the MoCo CIFAR-10 demo).

Statistics are per group and per device (no cross-device sync: shuffling BN needs exactly that), or with `axis_name`
averaged over that mesh axis (PyTorch's SyncBatchNorm, for finetuning on several devices). Running statistics follow
PyTorch: momentum 0.1, the unbiased batch variance, averaged over the groups. G = 1 is plain per-device BN.

On CPU, with per-device statistics, the training-mode normalisation has its gradient in closed form (`_normalise`):
autodiff's backward of the same expression makes XLA:CPU write several full-size intermediates per layer, the closed
form reads the input and the incoming gradient twice and writes one (Ioffe and Szegedy 2015, "Batch Normalization",
section 3). GPU and TPU keep autodiff's, unmeasured against it.
"""

import functools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp


class SplitBatchNorm(nn.Module):
  groups: int = 1
  momentum: float = 0.1  # PyTorch convention: weight of the new batch statistic.
  epsilon: float = 1e-5
  zero_init: bool = False  # Zero-init the scale (last BN of a residual branch).
  dtype: jnp.dtype = jnp.float32
  axis_name: str | None = None  # a mesh axis to synchronise the batch statistics over (inside shard_map); None: none

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
      mean, var = _moments(xg, axes, self.axis_name)
      if not self.is_initializing():
        count = xg.size // (self.groups * channels) * (lax.axis_size(self.axis_name) if self.axis_name else 1)
        group_mean = mean.reshape(self.groups, channels).mean(0)
        group_var = var.reshape(self.groups, channels).mean(0) * count / max(count - 1, 1)
        ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * group_mean
        ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * group_var
      if self.axis_name or jax.default_backend() != 'cpu':  # autodiff's backward (through the pmean, if any)
        y = (xg - mean) * _inverse_std(var, self.epsilon) * scale + bias
      else:
        y = _normalise(xg, scale, bias, self.epsilon)
      y = y.reshape(x.shape)
    else:
      y = (x.astype(jnp.float32) - ra_mean.value) / jnp.sqrt(ra_var.value + self.epsilon) * scale + bias
    return y.astype(self.dtype)


def _moments(xg, axes, axis_name=None):
  """Mean and biased variance of xg over `axes`, averaged over the mesh axis `axis_name` when given (every device
  holds the same number of images)."""
  mean = xg.mean(axis=axes, keepdims=True)
  mean = lax.pmean(mean, axis_name) if axis_name else mean
  var = jnp.square(xg - mean).mean(axis=axes, keepdims=True)
  return mean, lax.pmean(var, axis_name) if axis_name else var


def _inverse_std(var, epsilon):
  return 1.0 / jnp.sqrt(var + epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _normalise(xg, scale, bias, epsilon):
  """xg [G, ..., C] standardised with the statistics of each group and channel (over the axes between), then scaled
  and shifted per channel."""
  return _normalise_forward(xg, scale, bias, epsilon)[0]


def _normalise_forward(xg, scale, bias, epsilon):
  mean, var = _moments(xg, tuple(range(1, xg.ndim - 1)))
  inverse_std = _inverse_std(var, epsilon)
  return (xg - mean) * inverse_std * scale + bias, (xg, mean, inverse_std, scale)


def _normalise_backward(epsilon, residuals, grad):
  """dx = scale * inverse_std * (g - mean(g) - xhat * mean(g * xhat)) per group and channel; d scale = sum(g * xhat),
  d bias = sum(g)."""
  del epsilon
  xg, mean, inverse_std, scale = residuals
  axes = tuple(range(1, xg.ndim - 1))
  xhat = (xg - mean) * inverse_std
  grad_sum = grad.sum(axis=axes, keepdims=True)
  grad_xhat_sum = (grad * xhat).sum(axis=axes, keepdims=True)
  n = xhat.size // (xhat.shape[0] * xhat.shape[-1])
  dx = (inverse_std * scale) * (grad - grad_sum / n - xhat * (grad_xhat_sum / n))
  return dx, grad_xhat_sum.reshape(-1, scale.size).sum(0), grad_sum.reshape(-1, scale.size).sum(0)


_normalise.defvjp(_normalise_forward, _normalise_backward)
