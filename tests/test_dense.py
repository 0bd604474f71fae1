"""Dense features: shapes and output strides of ResNet-18 and ResNet-50 (tiny widths) for sizes that are not
multiples of the stride, unit norm per location, the dilated network against the plain one on the same weights
(every second location of the dilated map is exactly the plain map), and batches over 8 devices padded with masked
examples against one image at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_moco import sharding
from jax_moco.evaluators.dense import DenseFeatures
from jax_moco.models import resnet
from jax_moco.normalization import l2_normalize
from jax_moco.normalization import normalize

# Compile-bound: many small programs, each run a few times (tests/conftest.py's fast_compile).
pytestmark = pytest.mark.fast_compile


def backbone_and_variables(arch, stem='imagenet', seed=0):
  """A tiny backbone with random weights and BN statistics moved away from their initialisation."""
  backbone = resnet.create_resnet(arch, width=1 / 16, stem=stem)
  variables = backbone.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)), train=False)
  leaves, tree = jax.tree.flatten(variables['batch_stats'])
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  moved = [leaf + 0.1 * jnp.abs(jax.random.normal(k, leaf.shape)) for leaf, k in zip(leaves, keys)]
  return backbone, {**variables, 'batch_stats': jax.tree.unflatten(tree, moved)}


def images(n, height, width, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), np.uint8)


@pytest.mark.parametrize(
  'arch, stem, channels, strides',
  [('resnet18', 'imagenet', 32, (32, 16)), ('resnet50', 'imagenet', 128, (32, 16)), ('resnet18', 'cifar', 32, (8, 4))],
)
def test_shapes_strides_and_unit_norm(arch, stem, channels, strides):
  backbone, variables = backbone_and_variables(arch, stem)
  mesh = sharding.create_mesh()
  x = images(2, 70, 50)
  for dilate, stride in zip((False, True), strides):
    dense = DenseFeatures(mesh, backbone, dilate=dilate)
    features = dense(variables, x)
    assert dense.stride == stride
    assert features.shape == (2, -(-70 // stride), -(-50 // stride), channels)
    assert dense.output_size(70, 50) == features.shape[1:3]
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_dilated_equals_plain_at_every_second_location_and_plain_pools_to_the_backbone(arch):
  backbone, variables = backbone_and_variables(arch)
  mesh = sharding.create_mesh()
  x = images(2, 70, 50, seed=1)
  dilated = DenseFeatures(mesh, backbone)(variables, x)
  plain = DenseFeatures(mesh, backbone, dilate=False)(variables, x)
  assert dilated.shape[1:3] == (5, 4) and plain.shape[1:3] == (3, 2)
  # Stride 1 then dilation 2 computes the stride-2 network's outputs and the locations between them.
  np.testing.assert_allclose(dilated[:, ::2, ::2], plain, atol=2e-5)
  assert np.abs(dilated[:, 1::2] - dilated[:, :-1:2]).max() > 0.01  # the new locations are new features
  # Without dilation and before normalisation, the map's mean is the backbone's pooled feature.
  maps = backbone.clone(pool=False).apply(variables, normalize(jnp.asarray(x)), train=False)
  pooled = backbone.apply(variables, normalize(jnp.asarray(x)), train=False)
  np.testing.assert_allclose(maps.mean(axis=(1, 2)), pooled, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(l2_normalize(maps), plain, atol=1e-5)


def test_masked_padding_over_devices_equals_one_image_at_a_time():
  backbone, variables = backbone_and_variables('resnet18')
  x = images(11, 48, 40, seed=2)  # 8 devices: one whole batch of 8, then 3 images and 5 masked
  dense = DenseFeatures(sharding.create_mesh(), backbone)
  features = dense(variables, x)
  assert features.shape[0] == 11
  assert [len(b) for b in dense.batches(variables, x)] == [8, 3]
  # Another batch size is another program: the convolutions block the batch differently and add their float32 terms
  # in another order (seen: 1.9e-7 on these unit-norm features on a Zen 3; a Zen 5 agreed to 1e-7 relative), so the
  # bound is float32 rounding through the network, as for one image at a time.
  close = dict(rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
    DenseFeatures(sharding.create_mesh(), backbone, batch_size=16)(variables, x), features, **close
  )
  for i in (0, 7, 8, 10):
    alone = dense.module.apply(variables, normalize(jnp.asarray(x[i : i + 1])), train=False)
    np.testing.assert_allclose(features[i], np.asarray(l2_normalize(alone))[0], **close)
  with pytest.raises(ValueError, match='batch_size=12 is not a multiple of 8 devices'):
    DenseFeatures(sharding.create_mesh(), backbone, batch_size=12)
