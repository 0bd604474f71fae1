"""The MoCo encoder f = h(g(x)): ResNet backbone g and projection MLP h (hidden-ReLU-out, no BN, as MoCo-v2).

Returns both the pooled backbone feature (the NN loss mines neighbours on it) and the L2-normalised projection.
Head layers are named fc_0 / fc_2 after the official MoCo checkpoint's `fc.0` / `fc.2`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_moco.models.resnet import ResNet

# PyTorch nn.Linear's default weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_linear_bias_init(fan_in):
  bound = 1.0 / fan_in**0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def l2_normalize(x, axis=-1, eps=1e-12):
  return x * (1.0 / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps))


class Encoder(nn.Module):
  backbone: ResNet
  projection_dim: int = 128
  hidden_dim: int = 0  # 0: the backbone's feature width, as MoCo-v2 (2048-2048-128 for ResNet-50).

  @nn.compact
  def __call__(self, images, train: bool):
    features = self.backbone(images, train)
    hidden = self.hidden_dim or self.backbone.num_features
    h = nn.Dense(
      hidden,
      kernel_init=torch_linear_kernel_init,
      bias_init=torch_linear_bias_init(features.shape[-1]),
      dtype=self.backbone.dtype,
      name='fc_0',
    )(features)
    z = nn.Dense(
      self.projection_dim,
      kernel_init=torch_linear_kernel_init,
      bias_init=torch_linear_bias_init(hidden),
      dtype=self.backbone.dtype,
      name='fc_2',
    )(nn.relu(h))
    return features, l2_normalize(z.astype(jnp.float32))
