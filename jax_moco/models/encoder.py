"""The MoCo encoder f = h(g(x)): ResNet backbone g and projection head h, either MoCo-v2's MLP (hidden-ReLU-out, no
BN) or one linear layer (MoCo v1 and the MoCo CIFAR-10 Colab: ResNet-18's `fc`, 512 -> 128).

Returns both the pooled backbone feature (the NN loss mines neighbours on it) and the L2-normalised projection.
Head layers are named after the official MoCo checkpoints: fc_0 / fc_2 for the MLP's `fc.0` / `fc.2`, fc for `fc`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_moco.models.resnet import ResNet
from jax_moco.normalization import l2_normalize

# PyTorch nn.Linear's default weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_linear_bias_init(fan_in):
  bound = 1.0 / fan_in**0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


HEADS = ('mlp', 'linear')


class Encoder(nn.Module):
  backbone: ResNet
  projection_dim: int = 128
  hidden_dim: int = 0  # 0: the backbone's feature width, as MoCo-v2 (2048-2048-128 for ResNet-50).
  head: str = 'mlp'  # or 'linear'

  def _dense(self, width, fan_in, name):
    return nn.Dense(
      width,
      kernel_init=torch_linear_kernel_init,
      bias_init=torch_linear_bias_init(fan_in),
      dtype=self.backbone.dtype,
      name=name,
    )

  @nn.compact
  def __call__(self, images, train: bool):
    features = self.backbone(images, train)
    width = features.shape[-1]
    if self.head == 'linear':
      z = self._dense(self.projection_dim, width, 'fc')(features)
    else:
      hidden = self.hidden_dim or self.backbone.num_features
      z = self._dense(self.projection_dim, hidden, 'fc_2')(nn.relu(self._dense(hidden, width, 'fc_0')(features)))
    return features, l2_normalize(z.astype(jnp.float32))
