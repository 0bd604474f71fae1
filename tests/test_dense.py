"""Dense features: shapes, output strides and channels of each network (resnet.DENSE_OUTPUTS) of ResNet-18 and ResNet-50
(tiny widths) and both stems at sizes that are not multiples of the stride; unit norm per location; the dilated
networks against the strided ones on the same weights (every s-th location of a dilated map is exactly the map with
the strides); the stride-8 networks against transcriptions of the references' PyTorch code (MaskContrast's
ResnetDilated, Jabri et al.'s ResNet.modify) on torchvision's blocks; batches over 8 devices padded with masked
examples against one image at a time."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_moco import evaluators
from jax_moco import sharding
from jax_moco import torch_layout
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


def unpooled(module, variables, x):
  """The module's maps before normalisation."""
  return module.apply(variables, normalize(jnp.asarray(x)), train=False)


# Each output's stride with the ImageNet stem and the stage whose channels it gives (base 4 at width 1/16).
STRIDES = {'stride32': 32, 'stride16_dilated': 16, 'stride8_dilated': 8, 'stride8_no_stage4': 8}


@pytest.mark.parametrize(
  'arch, stem, channels',
  [('resnet18', 'imagenet', (32, 16)), ('resnet50', 'imagenet', (128, 64)), ('resnet18', 'cifar', (32, 16))],
)
def test_shapes_strides_and_channels_of_every_output(arch, stem, channels):
  backbone, variables = backbone_and_variables(arch, stem)
  mesh = sharding.create_mesh()
  for output, stride in STRIDES.items():
    dense = DenseFeatures(mesh, backbone, output)
    stride //= 4 if stem == 'cifar' else 1  # no x4 in the CIFAR stem
    maps = jax.eval_shape(functools.partial(dense.module.apply, train=False), variables, jnp.zeros((2, 70, 50, 3)))
    assert dense.stride == stride
    assert maps.shape == (2, -(-70 // stride), -(-50 // stride), channels[output == 'stride8_no_stage4'])
    assert dense.output_size(70, 50) == maps.shape[1:3] and dense.module.num_features == maps.shape[3]
  with pytest.raises(ValueError, match=r"dense_output='stride4': choose one of stride32, stride16_dilated, "):
    DenseFeatures(mesh, backbone, 'stride4')
  with pytest.raises(ValueError, match='dropped ones last'):
    backbone.clone(stage_strides=('strided', 'dropped', 'strided')).stage_modes()
  # The flag's help names every output.
  assert all(output in evaluators.dense_output(None).help for output in STRIDES)


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_dilated_maps_equal_the_strided_ones_at_every_s_th_location_and_plain_pools_to_the_backbone(arch):
  backbone, variables = backbone_and_variables(arch)
  mesh = sharding.create_mesh()
  x = images(2, 70, 50, seed=1)
  maps = {output: DenseFeatures(mesh, backbone, output)(variables, x) for output in STRIDES}
  plain, stride16, stride8 = maps['stride32'], maps['stride16_dilated'], maps['stride8_dilated']
  assert (plain.shape[1:3], stride16.shape[1:3], stride8.shape[1:3]) == ((3, 2), (5, 4), (9, 7))
  for features in maps.values():
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, rtol=1e-5)
  # Stride 1 then dilation 2 computes the stride-2 network's outputs and the locations between them: dilating stage 4
  # keeps every second location of the plain map, dilating stage 3 too every second of that and every fourth of plain.
  np.testing.assert_allclose(stride16[:, ::2, ::2], plain, atol=2e-5)
  np.testing.assert_allclose(stride8[:, ::2, ::2], stride16, atol=2e-5)
  np.testing.assert_allclose(stride8[:, ::4, ::4], plain, atol=2e-5)
  for dense in (stride16, stride8):
    assert np.abs(dense[:, 1::2] - dense[:, :-1:2]).max() > 0.01  # the new locations are new features
  # Without dilation and before normalisation, the map's mean is the backbone's pooled feature.
  maps_before_norm = unpooled(backbone.clone(pool=False), variables, x)
  pooled = backbone.apply(variables, normalize(jnp.asarray(x)), train=False)
  np.testing.assert_allclose(maps_before_norm.mean(axis=(1, 2)), pooled, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(l2_normalize(maps_before_norm), plain, atol=1e-5)
  # A config's dilate_last runs the stride16_dilated network, bit for bit.
  np.testing.assert_array_equal(
    unpooled(backbone.clone(dilate_last=True, pool=False), variables, x),
    unpooled(DenseFeatures(mesh, backbone, 'stride16_dilated').module, variables, x),
  )


def mask_contrast_nostride_dilate(m, dilate):
  """MaskContrast's ResnetDilated._nostride_dilate (segmentation/models/resnet_dilated.py), transcribed."""
  if m.__class__.__name__.find('Conv') != -1:
    if m.stride == (2, 2):
      m.stride = (1, 1)
      if m.kernel_size == (3, 3):
        m.dilation = (dilate // 2, dilate // 2)
        m.padding = (dilate // 2, dilate // 2)
    elif m.kernel_size == (3, 3):
      m.dilation = (dilate, dilate)
      m.padding = (dilate, dilate)


def jabri_modify(model, remove_layers=('layer4',)):
  """Jabri et al.'s ResNet.modify (videowalk's code/resnet.py) with their test's --remove-layers default: every conv
  of stages 3 and 4 at stride 1, the removed stages skipped."""
  import torch

  for layer in ('layer3', 'layer4'):
    for m in getattr(model, layer).modules():
      if isinstance(m, torch.nn.Conv2d):
        m.stride = tuple(1 for _ in m.stride)
  for layer in remove_layers:
    setattr(model, layer, torch.nn.Identity())


def torchvision_resnet(arch, variables, base=4):
  """torchvision's ResNet built by its own _make_layer at our tiny width, holding `variables`, without its head."""
  import torch
  import torchvision

  stage_sizes, _ = resnet.ARCHS[arch]
  block = torchvision.models.resnet.BasicBlock if arch == 'resnet18' else torchvision.models.resnet.Bottleneck
  model = torchvision.models.resnet.ResNet(block, [1, 1, 1, 1])
  model.conv1, model.bn1 = torch.nn.Conv2d(3, base, 7, 2, 3, bias=False), torch.nn.BatchNorm2d(base)
  model.inplanes, model.avgpool, model.fc = base, torch.nn.Identity(), torch.nn.Identity()
  for stage, blocks in enumerate(stage_sizes):
    layer = model._make_layer(block, base * 2**stage, blocks, stride=1 if stage == 0 else 2)
    setattr(model, f'layer{stage + 1}', layer)
  state = torch_layout.to_state_dict(torch_layout.merge(variables['params'], variables['batch_stats']))
  model.load_state_dict({name: torch.from_numpy(value) for name, value in state.items()}, strict=True)
  return model.eval()


def torch_maps(model, x):
  """The maps [n, h, w, C] of a torchvision ResNet before its pooling, L2-normalised."""
  import torch

  t = torch.from_numpy(np.asarray(normalize(jnp.asarray(x))).transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    t = model.maxpool(model.relu(model.bn1(model.conv1(t))))
    t = model.layer4(model.layer3(model.layer2(model.layer1(t))))
  return np.asarray(l2_normalize(jnp.asarray(t.numpy().transpose(0, 2, 3, 1))))


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_the_stride_8_networks_compute_what_the_references_pytorch_code_computes(arch):
  pytest.importorskip('torchvision')  # PyTorch is imported only by the tests that compare with it
  backbone, variables = backbone_and_variables(arch, seed=2)
  mesh = sharding.create_mesh()
  x = images(2, 70, 50, seed=3)
  # MaskContrast's ResnetDilated: at dilate_scale=8 (its default) stage 3 at dilate 2 and stage 4 at 4; at 16 stage 4.
  for output, dilates in (('stride8_dilated', {'layer3': 2, 'layer4': 4}), ('stride16_dilated', {'layer4': 2})):
    model = torchvision_resnet(arch, variables)
    for layer, dilate in dilates.items():
      getattr(model, layer).apply(functools.partial(mask_contrast_nostride_dilate, dilate=dilate))
    np.testing.assert_allclose(DenseFeatures(mesh, backbone, output)(variables, x), torch_maps(model, x), atol=2e-5)
  model = torchvision_resnet(arch, variables)
  jabri_modify(model)
  ours = DenseFeatures(mesh, backbone, 'stride8_no_stage4')(variables, x)
  assert ours.shape == (2, 9, 7, 16 * resnet.ARCHS[arch][1].expansion)  # stage 3's channels
  np.testing.assert_allclose(ours, torch_maps(model, x), atol=2e-5)


def test_masked_padding_over_devices_equals_one_image_at_a_time():
  backbone, variables = backbone_and_variables('resnet18')
  x = images(11, 48, 40, seed=2)  # 8 devices: one whole batch of 8, then 3 images and 5 masked
  dense = DenseFeatures(sharding.create_mesh(), backbone, 'stride16_dilated')
  features = dense(variables, x)
  assert features.shape[0] == 11
  assert [len(b) for b in dense.batches(variables, x)] == [8, 3]
  # Another batch size is another program: the convolutions block the batch differently and add their float32 terms
  # in another order (seen: 1.9e-7 on these unit-norm features on a Zen 3; a Zen 5 agreed to 1e-7 relative), so the
  # bound is float32 rounding through the network, as for one image at a time.
  close = dict(rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
    DenseFeatures(sharding.create_mesh(), backbone, 'stride16_dilated', batch_size=16)(variables, x), features, **close
  )
  for i in (0, 7, 8, 10):
    alone = dense.module.apply(variables, normalize(jnp.asarray(x[i : i + 1])), train=False)
    np.testing.assert_allclose(features[i], np.asarray(l2_normalize(alone))[0], **close)
  with pytest.raises(ValueError, match='batch_size=12 is not a multiple of 8 devices'):
    DenseFeatures(sharding.create_mesh(), backbone, 'stride16_dilated', batch_size=12)
