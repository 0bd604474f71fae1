"""The finetuned dense models (jax_moco.models.dense_heads) against PyTorch on the same weights: the FCN head against
a transcription of the authors' FCN decoder, the DeepLab-v3 head against torchvision's DeepLabHead (eval mode, and
train mode with its BN statistics), parameter counts and names, the upsampling against F.interpolate, whole models
against the authors' FCN and Vandenhende et al.'s dilated ResNet + DeepLabHead on torchvision's ResNet-50 blocks;
synchronised BN over 8 devices against BN over the global batch; the variables of a checkpoint's backbone."""

import functools

import flax
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from jax_moco import sharding
from jax_moco import state as state_lib
from jax_moco import torch_layout
from jax_moco.models import dense_heads
from jax_moco.models import resnet
from tests import helpers
from tests import test_dense

torch = pytest.importorskip('torch')  # PyTorch is imported only by the tests that compare with it
torchvision = pytest.importorskip('torchvision')
DeepLabHead = torchvision.models.segmentation.deeplabv3.DeepLabHead

pytestmark = pytest.mark.fast_compile


def authors_fcn_decoder(in_channels, num_classes, dilation, channels=256):
  """FCN.decoder of the authors' evaluation/segmentation/models/model.py, transcribed with the width a parameter."""
  nn = torch.nn
  conv = functools.partial(nn.Conv2d, kernel_size=3, dilation=dilation, stride=1, padding=dilation, bias=False)
  return nn.Sequential(
    conv(in_channels, channels),
    nn.BatchNorm2d(channels),
    nn.ReLU(),
    conv(channels, channels),
    nn.BatchNorm2d(channels),
    nn.ReLU(),
    nn.Conv2d(channels, num_classes, kernel_size=1, stride=1, padding=0, bias=False),
  )


def authors_dilation_2_stride_1(m):
  """FCN._apply_dilation_2_stride_1 of the authors' model.py, transcribed: every 3x3 conv of layer4 at dilation 2."""
  if m.__class__.__name__.find('Conv') != -1:
    if m.kernel_size == (3, 3):
      m.dilation, m.padding, m.stride = (2, 2), (2, 2), (1, 1)
    if m.stride == (2, 2):
      m.stride = (1, 1)


def perturbed(variables, seed):
  """BN scales, biases and statistics moved away from their initialisation, so that each of them matters."""
  rng = np.random.default_rng(seed)

  def move(path, leaf):
    name = path[-1].key
    if name not in ('scale', 'bias', 'mean', 'var') or leaf.ndim != 1:
      return leaf
    noise = 0.2 * rng.standard_normal(leaf.shape).astype(np.float32)
    return np.asarray(leaf) + (np.abs(noise) if name == 'var' else noise)

  return jax.tree_util.tree_map_with_path(move, variables)


def load(module, variables):
  """`module` (PyTorch) holding our variables, loaded strictly: every name and shape must match."""
  tree = torch_layout.merge(variables['params'], variables.get('batch_stats'))
  state = torch_layout.to_state_dict(tree)
  module.load_state_dict({name: torch.from_numpy(value) for name, value in state.items()}, strict=True)
  return module


def to_torch(x):
  return torch.from_numpy(np.asarray(x, np.float32).transpose(0, 3, 1, 2).copy())


def from_torch(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def count(params):
  return sum(leaf.size for leaf in jax.tree.leaves(params))


def assert_train_mode_matches(ours, variables, theirs, x, rngs=None):
  """One train-mode step of both: the outputs and the updated running statistics."""
  out, updated = ours.apply(variables, x, train=True, mutable=['batch_stats'], rngs=rngs)
  theirs.train()
  np.testing.assert_allclose(out, from_torch(theirs(to_torch(x))), atol=2e-5, rtol=1e-4)
  stats = torch_layout.to_state_dict(updated['batch_stats'])
  for name, value in theirs.state_dict().items():
    if name.endswith(('running_mean', 'running_var')):
      np.testing.assert_allclose(stats[name], value.numpy(), atol=1e-5, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize('dilation', [6, 1])
def test_fcn_head_computes_the_authors_decoder(dilation):
  head = dense_heads.FCNHead(num_outputs=5, dilation=dilation, channels=16)
  x = jax.random.normal(jax.random.key(1), (2, 9, 11, 24))
  variables = perturbed(head.init(jax.random.key(0), x, train=False), seed=2)
  theirs = load(authors_fcn_decoder(24, 5, dilation, channels=16), variables).eval()
  with torch.no_grad():
    np.testing.assert_allclose(
      head.apply(variables, x, train=False), from_torch(theirs(to_torch(x))), atol=2e-5, rtol=1e-4
    )
    assert_train_mode_matches(head, variables, theirs, x)


def test_deeplab_head_computes_torchvisions_deeplabhead():
  head = dense_heads.DeepLabV3Head(num_outputs=5)
  # Wide enough that the rate-12 and rate-24 branches see other locations than the centre one.
  x = jax.random.normal(jax.random.key(1), (2, 30, 27, 16))
  variables = perturbed(head.init(jax.random.key(0), x, train=False), seed=2)
  theirs = load(DeepLabHead(16, 5), variables).eval()
  with torch.no_grad():
    eval_out = head.apply(variables, x, train=False)
    np.testing.assert_allclose(eval_out, from_torch(theirs(to_torch(x))), atol=2e-5, rtol=1e-4)
    # Train mode with the dropout off in both (their dropout draws other masks).
    theirs[0].project[3].p = 0.0
    assert_train_mode_matches(head.clone(dropout=0.0), variables, theirs, x)
  # Train mode drops half the projection's channels at random: it needs a 'dropout' rng, which decides the output.
  with pytest.raises(flax.errors.InvalidRngError):
    head.apply(variables, x, train=True, mutable=['batch_stats'])
  outputs = [
    head.apply(variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(k)})[0]
    for k in (0, 0, 1)
  ]
  np.testing.assert_array_equal(outputs[0], outputs[1])
  assert np.abs(outputs[0] - outputs[2]).max() > 1e-3


def test_parameter_counts_and_names_of_the_heads_at_resnet_50_width():
  features, counts = jax.ShapeDtypeStruct((1, 8, 8, 2048), jnp.float32), []
  for head, theirs in (
    (dense_heads.FCNHead(21, 6), authors_fcn_decoder(2048, 21, 6)),
    (dense_heads.DeepLabV3Head(40), DeepLabHead(2048, 40)),
  ):
    variables = jax.eval_shape(functools.partial(head.init, train=False), jax.random.key(0), features)
    tree = torch_layout.merge(variables['params'], variables['batch_stats'])
    names = {torch_layout.torch_name(path) for path in flax.traverse_util.flatten_dict(tree)}
    assert names == {name for name in theirs.state_dict() if not name.endswith(torch_layout.NUM_BATCHES_TRACKED)}
    counts.append(count(variables['params']))
    assert counts[-1] == sum(p.numel() for p in theirs.parameters())
  # The FCN head: two 3x3 convs 2048 -> 256 -> 256, two BNs, a 1x1 conv to 21 without bias.
  assert counts[0] == 2048 * 9 * 256 + 256 * 9 * 256 + 4 * 256 + 256 * 21


@pytest.mark.parametrize('size', [(33, 47), (80, 112), (5, 7), (6, 20), (3, 4)])
def test_bilinear_resizing_is_pytorchs_interpolation(size):
  x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
  theirs = torch.nn.functional.interpolate(to_torch(x), size=size, mode='bilinear', align_corners=False)
  np.testing.assert_allclose(dense_heads.upsample_bilinear(x, *size), from_torch(theirs), atol=1e-5)


def theirs_dense_model(head, variables, model):
  """Their whole model on our weights: the authors' FCN (its backbone's layer4 by their _apply_dilation_2_stride_1)
  or Vandenhende et al.'s SingleTaskModel (ResnetDilated(dilate_scale=16) and torchvision's DeepLabHead)."""
  backbone_variables = {c: variables[c]['backbone'] for c in variables}
  resnet = test_dense.torchvision_resnet('resnet50', backbone_variables)
  if head == 'fcn':
    resnet.layer4.apply(authors_dilation_2_stride_1)
    decoder = authors_fcn_decoder(resnet.layer4[-1].conv3.out_channels, 5, 6, channels=model.head.channels)
  else:
    resnet.layer4.apply(functools.partial(test_dense.mask_contrast_nostride_dilate, dilate=2))
    decoder = DeepLabHead(resnet.layer4[-1].conv3.out_channels, 5)
  load(decoder, {c: variables[c]['head'] for c in variables}).eval()

  def forward(x):
    t = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
    t = decoder(resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(t)))))
    return torch.nn.functional.interpolate(t, size=x.shape[-2:], mode='bilinear', align_corners=False)

  return forward


def backbone_of(config):
  """The run's backbone as trained, as finetune builds it."""
  return state_lib.create_encoder(config).backbone


@pytest.mark.parametrize('head', ['fcn', 'deeplabv3'])
def test_dense_models_compute_the_references_models(head):
  backbone = resnet.dense_backbone(resnet.create_resnet('resnet50', width=1 / 16), dense_heads.HEADS[head])
  head_module = dense_heads.FCNHead(5, 6, channels=8) if head == 'fcn' else dense_heads.DeepLabV3Head(5)
  model = dense_heads.DenseModel(backbone, head_module)
  variables = perturbed(dense_heads.init_variables(model, 3), 4)
  x = np.random.default_rng(5).normal(size=(2, 70, 50, 3)).astype(np.float32)
  ours = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  assert ours.shape == (2, 70, 50, 5) and model.backbone.output_stride == 16
  with torch.no_grad():
    theirs = theirs_dense_model(head, variables, model)(to_torch(x))
  np.testing.assert_allclose(ours, from_torch(theirs), atol=1e-4, rtol=1e-4)


def test_synchronised_bn_over_8_devices_is_bn_over_the_global_batch():
  config = helpers.tiny_config(**{'model.stem': 'imagenet'})
  mesh = sharding.create_mesh()
  assert mesh.size == 8
  x = np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype(np.float32)

  def train_outputs(sync_bn, per_device):
    model = dense_heads.create_dense_model(backbone_of(config), 'fcn', 3, dilation=1, sync_bn=sync_bn, channels=8)
    variables = dense_heads.init_variables(model, 0)

    def apply(images):
      return model.apply(variables, images, train=True, mutable=['batch_stats'])

    if per_device:
      specs = dict(in_specs=P(sharding.AXIS), out_specs=(P(sharding.AXIS), P()))
      apply = jax.shard_map(apply, mesh=mesh, **specs, check_vma=sync_bn)  # per-device statistics vary
    return jax.jit(apply)(sharding.shard_batch(mesh, x) if per_device else x)

  (global_out, global_stats), (synced_out, synced_stats) = train_outputs(False, False), train_outputs(True, True)
  np.testing.assert_allclose(synced_out, global_out, atol=1e-4, rtol=1e-4)
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-4), synced_stats, global_stats)
  # Per-device statistics (2 images a device) are other statistics.
  local_out, _ = train_outputs(False, True)
  assert np.abs(local_out - global_out).max() > 1e-2


def test_init_variables_take_the_checkpoints_backbone_and_a_seeded_head():
  config = helpers.tiny_config()
  model = dense_heads.create_dense_model(backbone_of(config), 'deeplabv3', 4, channels=8)
  assert (model.backbone.stage_modes(), model.backbone.pool) == (dense_heads.HEADS['deeplabv3'], False)
  fresh = dense_heads.init_variables(model, 1)
  given = jax.tree.map(lambda leaf: leaf + 1.0, {c: fresh[c]['backbone'] for c in fresh})
  variables = dense_heads.init_variables(model, 0, given)
  jax.tree.map(np.testing.assert_array_equal, {c: variables[c]['backbone'] for c in variables}, given)
  again, other = dense_heads.init_variables(model, 0, given), dense_heads.init_variables(model, 1, given)
  jax.tree.map(np.testing.assert_array_equal, again['params']['head'], variables['params']['head'])
  assert not np.array_equal(other['params']['head']['4']['kernel'], variables['params']['head']['4']['kernel'])
  wider = dense_heads.create_dense_model(
    backbone_of(helpers.tiny_config(**{'model.width': 0.25})), 'deeplabv3', 4, channels=8
  )
  with pytest.raises(
    ValueError, match=r'model \(batch_stats/bn1/mean: given float32\[8\], the model needs float32\[16\]\)'
  ):
    dense_heads.init_variables(wider, 0, given)
  with pytest.raises(ValueError, match="dense head 'psp': choose one of fcn, deeplabv3"):
    dense_heads.create_dense_model(backbone_of(config), 'psp', 4)
