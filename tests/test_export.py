"""PyTorch interoperability against real torchvision: the exported models compute what ours compute, the MoCo layout
is the official builder's key for key, detectron2 names follow MoCo's conversion rules, and round trips are exact."""

import functools
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_moco import checkpointing
from jax_moco import export
from jax_moco import import_torch
from jax_moco import state as state_lib
from jax_moco import torch_layout
from tests.helpers import copy_of_saved
from tests.helpers import run_quietly
from tests.helpers import save_checkpoint
from tests.helpers import tiny_config

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

SIZE = 32


def run_config(arch, stem='imagenet'):
  return tiny_config(**{'model.arch': arch, 'model.width': 1.0, 'model.stem': stem, 'crops.large_size': SIZE})


def perturbed_state(config, seed=0):
  """A train state whose every parameter, BN statistic and queue differs from its initialisation."""
  encoder = state_lib.create_encoder(config)
  state = state_lib.initial_state(config, seed)
  rng = np.random.default_rng(seed)

  def noisy(tree, kind):
    def leaf(path, x):
      name = path[-1].key
      if kind == 'stats':
        return jnp.asarray(
          rng.uniform(0.5, 2.0, x.shape) if name == 'var' else rng.normal(0, 0.2, x.shape), jnp.float32
        )
      return x + jnp.asarray(rng.normal(0, 0.1 if name == 'scale' else 0.01, x.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, tree)

  return encoder, state.replace(
    params=noisy(state.params, 'params'),
    batch_stats=noisy(state.batch_stats, 'stats'),
    ema_params=noisy(state.ema_params, 'params'),
    ema_batch_stats=noisy(state.ema_batch_stats, 'stats'),
    queue_ptr=jnp.asarray(64, jnp.int32),
    step=jnp.asarray(7, jnp.int32),
  )


def save_run(directory, config, state):
  save_checkpoint(directory, config, state, int(state.step))


@functools.cache
def perturbed_run_state(arch, stem):
  config = run_config(arch, stem)
  return (config, *perturbed_state(config))


def perturbed_run(workdir, arch, stem='imagenet'):
  """run_config(arch, stem), its encoder and perturbed_state, saved in `workdir`: made once a process, then copied."""
  config, encoder, state = perturbed_run_state(arch, stem)
  copy_of_saved(('export', arch, stem), functools.partial(save_run, config=config, state=state), workdir)
  return config, encoder, state


def images(n=4):
  return np.random.default_rng(1).normal(size=(n, SIZE, SIZE, 3)).astype(np.float32)


def flax_outputs(encoder, params, stats, x):
  variables = {'params': params, 'batch_stats': stats}
  features, z = encoder.apply(variables, jnp.asarray(x), train=False)
  return np.asarray(features), np.asarray(z)


def torch_resnet(arch, stem, num_classes=1000):
  model = torchvision.models.__dict__[arch](num_classes=num_classes)
  if stem == 'cifar':  # the MoCo CIFAR-10 demo's stem
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
  return model


def official_moco(arch, dim, queue_size, with_backbone_queue):
  """The module MoCo's builder creates (and kNN-MoCo's, with its backbone queue), as DDP names it."""
  module = torch.nn.Module()
  for name in ('encoder_q', 'encoder_k'):
    encoder = torchvision.models.__dict__[arch](num_classes=dim)
    dim_mlp = encoder.fc.weight.shape[1]
    encoder.fc = torch.nn.Sequential(torch.nn.Linear(dim_mlp, dim_mlp), torch.nn.ReLU(), encoder.fc)
    module.add_module(name, encoder)
  module.register_buffer('queue', torch.randn(dim, queue_size))
  module.register_buffer('queue_ptr', torch.zeros(1, dtype=torch.long))
  if with_backbone_queue:
    module.register_buffer('queue_backbone', torch.randn(dim_mlp, queue_size))
  return module


def to_nchw(x):
  return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


@pytest.mark.heavy(20)  # seconds on 2 cores, for the order of tests/conftest.py
@pytest.mark.parametrize('arch,stem', [('resnet18', 'cifar'), ('resnet50', 'imagenet')])
def test_torchvision_export_computes_the_same_features(tmp_path, arch, stem):
  _, encoder, state = perturbed_run(tmp_path, arch, stem)
  for which, params, stats in (
    ('online', state.params, state.batch_stats),
    ('momentum', state.ema_params, state.ema_batch_stats),
  ):
    out = tmp_path / f'{which}.pth'
    summary = export.export(str(tmp_path), 'torchvision', str(out), encoder=which)
    assert f'the {which} encoder' in summary and 'step 7' in summary
    model = torch_resnet(arch, stem)
    model.fc = torch.nn.Identity()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    with torch.no_grad():
      got = model.eval()(to_nchw(images())).numpy()
    expected, _ = flax_outputs(encoder, params, stats, images())
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= 1e-5 * max(scale, 1.0), (which, np.abs(got - expected).max(), scale)
  # The plain model (with its classifier) loads it with strict=False, missing exactly the classifier.
  missing = torch_resnet(arch, stem).load_state_dict(torch.load(out, weights_only=True), strict=False)
  assert set(missing.missing_keys) == {'fc.weight', 'fc.bias'} and not missing.unexpected_keys


@pytest.mark.fast_compile
@pytest.mark.heavy(25)  # seconds on 2 cores, for the order of tests/conftest.py
def test_moco_layout_is_the_official_builders_and_main_lincls_loads_it(tmp_path):
  config, encoder, state = perturbed_run(tmp_path, 'resnet50')
  out = tmp_path / 'moco.pth.tar'
  export.export(str(tmp_path), 'moco', str(out))
  checkpoint = torch.load(out, weights_only=True)
  assert checkpoint['arch'] == 'resnet50' and 'epoch' in checkpoint
  official = official_moco('resnet50', config.model.projection_dim, config.moco.queue_size, True)
  expected = {'module.' + k: tuple(v.shape) for k, v in official.state_dict().items()}
  assert {k: tuple(v.shape) for k, v in checkpoint['state_dict'].items()} == expected
  official.load_state_dict({k.removeprefix('module.'): v for k, v in checkpoint['state_dict'].items()}, strict=True)
  np.testing.assert_array_equal(official.queue.numpy().T, np.asarray(state.queue_h))
  np.testing.assert_array_equal(official.queue_backbone.numpy().T, np.asarray(state.queue_g))
  assert int(official.queue_ptr[0]) == 64
  # Head outputs: the online encoder as encoder_q, the momentum encoder as encoder_k.
  for name, params, stats in (
    ('encoder_q', state.params, state.batch_stats),
    ('encoder_k', state.ema_params, state.ema_batch_stats),
  ):
    with torch.no_grad():
      z = torch.nn.functional.normalize(getattr(official, name).eval()(to_nchw(images())), dim=1).numpy()
    np.testing.assert_allclose(z, flax_outputs(encoder, params, stats, images())[1], atol=1e-5)
  # MoCo's main_lincls.py: encoder_q without fc into a fresh resnet50, strict=False, only fc missing.
  prefix = 'module.encoder_q.'
  backbone = {
    k[len(prefix) :]: v
    for k, v in checkpoint['state_dict'].items()
    if k.startswith(prefix) and not k.startswith(prefix + 'fc')
  }
  msg = torchvision.models.resnet50().load_state_dict(backbone, strict=False)
  assert set(msg.missing_keys) == {'fc.weight', 'fc.bias'}


def test_detectron2_names_follow_mocos_conversion(tmp_path):
  _, _, state = perturbed_run(tmp_path, 'resnet18')
  export.export(str(tmp_path), 'detectron2', str(tmp_path / 'd2.pkl'))
  with open(tmp_path / 'd2.pkl', 'rb') as f:
    payload = pickle.load(f)
  assert payload['matching_heuristics'] is True
  model = payload['model']
  torchvision_arrays = export.torchvision_state_dict(state)
  pairs = {
    'stem.conv1.weight': 'conv1.weight',
    'stem.conv1.norm.running_var': 'bn1.running_var',
    'res2.0.conv2.norm.weight': 'layer1.0.bn2.weight',
    'res3.0.shortcut.weight': 'layer2.0.downsample.0.weight',
    'res5.1.conv1.weight': 'layer4.1.conv1.weight',
    'res4.0.shortcut.norm.bias': 'layer3.0.downsample.1.bias',
  }
  for d2_name, tv_name in pairs.items():
    np.testing.assert_array_equal(model[d2_name], torchvision_arrays[tv_name])
  assert not any('layer' in k or 'bn' in k or 'downsample' in k or 'num_batches' in k for k in model)


@pytest.mark.heavy(20)  # seconds on 2 cores, for the order of tests/conftest.py
def test_round_trip_torch_jax_torch_is_exact_through_the_command_lines(tmp_path):
  """`python -m jax_moco.import_torch`, then `python -m jax_moco.export`, as a user runs them: a torchvision
  ResNet-18 comes back tensor for tensor, and neither command prints other libraries' chatter."""
  torch.manual_seed(0)
  model = torchvision.models.resnet18()
  for module in model.modules():  # non-trivial BN statistics
    if isinstance(module, torch.nn.BatchNorm2d):
      module.running_mean.normal_(0, 0.3)
      module.running_var.uniform_(0.5, 2.0)
  source = {k: v for k, v in model.state_dict().items()}
  torch.save(source, tmp_path / 'tv.pth')
  model_config = ['--config.model.arch=resnet18', '--config.model.width=1.0', '--config.model.stem=imagenet']
  for command in (
    ['jax_moco.import_torch', f'--checkpoint={tmp_path / "tv.pth"}', '--config=configs/mocov2.py', *model_config],
    ['jax_moco.export', '--format=torchvision', f'--output={tmp_path / "back.pth"}'],
  ):
    run_quietly(['-m', *command, f'--workdir={tmp_path / "run"}'])
  back = torch.load(tmp_path / 'back.pth', weights_only=True)
  assert set(back) == set(source) - {'fc.weight', 'fc.bias'}
  for name, value in back.items():
    if not name.endswith('num_batches_tracked'):
      assert torch.equal(value, source[name]), name


def test_round_trip_jax_torch_jax_is_exact(tmp_path):
  config, _, state = perturbed_run(tmp_path / 'a', 'resnet18')
  export.export(str(tmp_path / 'a'), 'moco', str(tmp_path / 'moco.pth.tar'))
  import_torch.import_checkpoint(str(tmp_path / 'moco.pth.tar'), str(tmp_path / 'b'), config)
  _, restored, _ = checkpointing.load_run(str(tmp_path / 'b'))
  for field in ('params', 'batch_stats', 'ema_params', 'ema_batch_stats', 'queue_h', 'queue_g', 'queue_ptr'):
    jax.tree.map(np.testing.assert_array_equal, getattr(restored, field), getattr(state, field))


def test_clear_errors(tmp_path):
  with pytest.raises(checkpointing.NotARunError, match='no checkpoints'):
    export.export(str(tmp_path), 'torchvision', str(tmp_path / 'x.pth'))
  config = tiny_config()  # resnet10 at width 0.125
  _, state = perturbed_state(config)
  save_run(tmp_path / 'tiny' / 'checkpoints', config, state)
  with pytest.raises(ValueError, match="model.arch='resnet10'"):
    export.export(str(tmp_path / 'tiny'), 'torchvision', str(tmp_path / 'x.pth'))
  cifar, _, _ = perturbed_run(tmp_path / 'cifar', 'resnet18', 'cifar')
  with pytest.raises(ValueError, match='detectron2 expects the ImageNet stem'):
    export.export(str(tmp_path / 'cifar'), 'detectron2', str(tmp_path / 'x.pkl'))
  torch.save(torchvision.models.resnet34().state_dict(), tmp_path / 'r34.pth')
  with pytest.raises(ValueError, match='layer1.2|layer2.0.conv1.weight|model.arch'):
    import_torch.import_checkpoint(str(tmp_path / 'r34.pth'), str(tmp_path / 'r34'), run_config('resnet50'))
  with pytest.raises(ValueError, match='step=3'):
    export.export(str(tmp_path / 'cifar'), 'torchvision', str(tmp_path / 'x.pth'), step=3)
  with pytest.raises(IsADirectoryError, match=f'--output={tmp_path} is a directory'):
    export.export(str(tmp_path / 'cifar'), 'torchvision', str(tmp_path))
  (tmp_path / 'not_a_checkpoint.pth').write_text('text')
  with pytest.raises(ValueError, match='not_a_checkpoint.pth is not a PyTorch checkpoint'):
    import_torch.import_checkpoint(str(tmp_path / 'not_a_checkpoint.pth'), str(tmp_path / 'c'), cifar)


def test_layout_names_come_from_the_tree():
  assert torch_layout.torch_name(('layer4_2', 'downsample_1', 'var')) == 'layer4.2.downsample.1.running_var'
  assert torch_layout.torch_name(('fc_0', 'kernel')) == 'fc.0.weight'
  kernel = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
  assert torch_layout.to_torch_layout(kernel).shape == (5, 4, 2, 3)
  np.testing.assert_array_equal(torch_layout.from_torch_layout(torch_layout.to_torch_layout(kernel)), kernel)
