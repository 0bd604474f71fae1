"""ResNet structure: torchvision's parameter names and shapes, stems, width, dilation, zero-init, split BN."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_moco import torch_layout
from jax_moco.models import convolution
from jax_moco.models import resnet
from jax_moco.models.batchnorm import SplitBatchNorm

# Compile-bound: many small programs, each run a few times (tests/conftest.py's fast_compile).
pytestmark = pytest.mark.fast_compile


def torchvision_keys(arch, **kwargs):
  """Our backbone variables under torchvision's state-dict names, with torchvision's (OIHW) shapes."""
  model = resnet.create_resnet(arch, **kwargs)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 64, 64, 3)), train=True))
  tree = torch_layout.merge(variables['params'], variables['batch_stats'])
  keys = {
    torch_layout.torch_name(path): torch_layout.to_torch_layout(np.zeros(leaf.shape)).shape
    for path, leaf in flax.traverse_util.flatten_dict(tree).items()
  }
  return model, keys


def test_resnet50_names_and_shapes_are_torchvisions():
  model, keys = torchvision_keys('resnet50')
  # torchvision's resnet50 state dict: 53 convolutions and 53 BNs (weight, bias, running mean / var) + fc.
  assert sum(k.endswith('running_mean') for k in keys) == 53 and len(keys) == 53 + 53 * 4
  assert keys['conv1.weight'] == (64, 3, 7, 7)
  assert keys['layer1.0.downsample.0.weight'] == (256, 64, 1, 1)
  assert keys['layer4.2.conv3.weight'] == (2048, 512, 1, 1)
  assert keys['layer3.5.bn2.running_var'] == (256,)
  assert model.num_features == 2048


def test_resnet18_cifar_stem_width_and_dilation():
  _, keys = torchvision_keys('resnet18', stem='cifar', width=0.5)
  assert keys['conv1.weight'] == (32, 3, 3, 3) and keys['layer4.1.conv2.weight'] == (256, 256, 3, 3)
  assert 'layer1.0.downsample.0.weight' not in keys and 'layer2.0.downsample.0.weight' in keys
  model = resnet.create_resnet('resnet18', dilate_last=True)
  x = jnp.zeros((2, 64, 64, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  # With a dilated last stage the final map is 4x4 instead of 2x2 for 64 px: check through the capture of stage 4.
  _, state = model.apply(variables, x, train=False, capture_intermediates=True, mutable=['intermediates'])
  assert state['intermediates']['layer4_1']['__call__'][0].shape == (2, 4, 4, 512)


def test_zero_init_residual_zeroes_the_last_bn_of_each_block():
  model = resnet.create_resnet('resnet10', zero_init_residual=True, width=0.25)
  params = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=True)['params']
  assert np.all(params['layer2_0']['bn2']['scale'] == 0) and np.all(params['layer2_0']['bn1']['scale'] == 1)


@pytest.mark.parametrize('groups', [1, 4])
def test_split_batchnorm_against_numpy(groups):
  x = np.random.default_rng(0).normal(2.0, 3.0, size=(8, 5, 5, 6)).astype(np.float32)
  bn = SplitBatchNorm(groups=groups)
  variables = bn.init(jax.random.key(0), x, train=True)
  y, updates = bn.apply(variables, x, train=True, mutable=['batch_stats'])
  xg = x.reshape(groups, -1, 5, 5, 6)
  mean = xg.mean(axis=(1, 2, 3), keepdims=True)
  var = xg.var(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(y, ((xg - mean) / np.sqrt(var + 1e-5)).reshape(x.shape), rtol=1e-4, atol=1e-4)
  n = xg[0].size // 6
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.1 * mean.reshape(groups, 6).mean(0), rtol=1e-5)
  np.testing.assert_allclose(
    updates['batch_stats']['var'], 0.9 + 0.1 * (var.reshape(groups, 6) * n / (n - 1)).mean(0), rtol=1e-5
  )


@pytest.mark.parametrize('groups', [1, 4])
def test_split_batchnorm_gradient_equals_autodiff_of_the_formula(groups):
  """Training-mode BN's closed-form backward (per-device statistics) against autodiff through the formula: the
  gradients of the input, the scale and the bias, float32 rounding apart."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(2.0, 3.0, size=(8, 5, 5, 6)), jnp.float32)
  upstream = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  params = {'scale': jnp.asarray(rng.normal(size=6), jnp.float32), 'bias': jnp.asarray(rng.normal(size=6), jnp.float32)}
  bn = SplitBatchNorm(groups=groups)
  batch_stats = bn.init(jax.random.key(0), x, train=True)['batch_stats']

  def ours(x, params):
    y, _ = bn.apply({'params': params, 'batch_stats': batch_stats}, x, train=True, mutable=['batch_stats'])
    return jnp.sum(y * upstream)

  def formula(x, params):
    xg = x.reshape(groups, -1, 5, 5, 6)
    mean = xg.mean(axis=(1, 2, 3), keepdims=True)
    standardised = (xg - mean) / jnp.sqrt(xg.var(axis=(1, 2, 3), keepdims=True) + 1e-5)
    return jnp.sum((standardised.reshape(x.shape) * params['scale'] + params['bias']) * upstream)

  got, want = jax.jit(jax.grad(ours, (0, 1)))(x, params), jax.grad(formula, (0, 1))(x, params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
  'size,stride,dilation,channels',
  [(2, 1, 1, 8), (1, 1, 1, 4), (4, 1, 2, 4), (2, 2, 1, 4), (4, 2, 1, 4), (5, 1, 1, 4), (6, 2, 1, 4)],
)
def test_convolution_equals_lax_convolution(size, stride, dilation, channels):
  """The patches @ kernel path where the input or the output map is smaller than the kernel (4 px at stride 2: 2 px
  out), the plain path otherwise (5 px, or 6 px at stride 2: 3 px out), both with the CPU's layout pin: values and
  gradients, jitted as in training."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, size, size, channels)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, channels, 6)), jnp.float32)
  padding = ((dilation, dilation), (dilation, dilation))
  dims = jax.lax.conv_dimension_numbers(x.shape, k.shape, ('NHWC', 'HWIO', 'NHWC'))

  def ours(x, k):
    return convolution.convolution(
      x, k, (stride, stride), padding, rhs_dilation=(dilation, dilation), dimension_numbers=dims
    )

  def reference(x, k):
    return jax.lax.conv_general_dilated(
      x, k, (stride, stride), padding, rhs_dilation=(dilation, dilation), dimension_numbers=dims
    )

  np.testing.assert_allclose(jax.jit(ours)(x, k), reference(x, k), rtol=1e-5, atol=1e-5)
  for a, b in zip(
    jax.jit(jax.grad(lambda *v: jnp.sum(ours(*v) ** 2), (0, 1)))(x, k),
    jax.grad(lambda *v: jnp.sum(reference(*v) ** 2), (0, 1))(x, k),
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_linear_head_is_resnets_fc_and_exports_as_fc():
  from jax_moco import state as state_lib
  from tests.helpers import tiny_config

  config = tiny_config(**{'model.head': 'linear'})
  state = state_lib.initial_state(config, 0)
  params = state.params
  backbone_width = state_lib.create_encoder(config).backbone.num_features
  assert set(params) == {'backbone', 'fc'} and params['fc']['kernel'].shape == (backbone_width, 128)
  names = torch_layout.to_state_dict(torch_layout.encoder_tree(params, state.batch_stats))
  assert names['fc.weight'].shape == (128, backbone_width) and 'fc.0.weight' not in names


def _transposes_that_compute(hlo_text):
  """The fused computations of optimised HLO that hold both a transpose and a maximum."""
  bodies = hlo_text.split('\n}\n')
  return [b.split('\n')[0] for b in bodies if ' transpose(' in b and ' maximum(' in b and 'ENTRY' not in b]


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the layout pin is XLA:CPU-only')
def test_weight_gradient_transposes_the_stored_input_on_cpu():
  """The weight gradient of a convolution whose input is a ReLU: with the input pinned, XLA:CPU transposes the
  stored input (a plain copy) rather than recomputing the ReLU inside the transpose, where its emitter is slow."""
  x = jnp.ones((4, 8, 8, 16))
  k = jnp.ones((3, 3, 16, 16))
  dims = ('NHWC', 'HWIO', 'NHWC')

  def weight_gradient(conv):
    return (
      jax.jit(
        jax.grad(
          lambda k, x: jnp.sum(conv(jnp.maximum(x, 0), k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims) ** 2)
        )
      )
      .lower(k, x)
      .compile()
      .as_text()
    )

  assert _transposes_that_compute(weight_gradient(jax.lax.conv_general_dilated))  # what the pin is for
  assert not _transposes_that_compute(weight_gradient(convolution.convolution))


def test_jitted_outputs_keep_the_default_layout_under_the_pin():
  """A program holding layout constraints may return some outputs in a layout XLA picks while JAX reads them in the
  default one (seen with a pinned value, or its gradient, returned as is). The networks pin only values they compute,
  so their features and the gradients of their parameters and of the images keep the default layout."""
  model = resnet.create_resnet('resnet10', width=0.25, stem='cifar')
  images = jnp.ones((4, 16, 16, 3))
  variables = model.init(jax.random.key(0), images, train=False)

  def loss(params, images):
    features, _ = model.apply({**variables, 'params': params}, images, train=True, mutable=['batch_stats'])
    return jnp.sum(features**2)

  programs = (
    (lambda images: model.apply(variables, images, train=False), (images,)),
    (jax.grad(loss, (0, 1)), (variables['params'], images)),
  )
  for function, args in programs:
    formats = jax.tree.leaves(
      jax.jit(function).lower(*args).compile().output_formats, is_leaf=lambda f: hasattr(f, 'layout')
    )
    assert all(f.layout.major_to_minor == tuple(range(len(f.layout.major_to_minor))) for f in formats)
