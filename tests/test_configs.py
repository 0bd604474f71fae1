"""Every config and preset builds and validates; bad fields are refused, by the CLI too, with the field named."""

import os
import subprocess
import sys

import pytest

from configs import knn
from configs import mocov2
from configs import multicrop
from configs import presets
from jax_moco import config_checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('module', [mocov2, multicrop, knn])
@pytest.mark.parametrize('preset', presets.PRESETS)
def test_every_config_and_preset_is_valid(module, preset):
  config = module.get_config(preset)
  for devices in (8, 1):
    config_checks.validate(config, num_devices=devices)
    groups = config_checks.bn_groups_for(config, devices)
    assert devices * groups >= 2 and config.batch_size % (devices * groups) == 0
  if preset in ('coco', 'imagenet'):  # the authors' BN batch: 128 images a group on one device and on two
    assert config.batch_size // config_checks.bn_groups_for(config, 1) == 128
    assert config.batch_size // (2 * config_checks.bn_groups_for(config, 2)) == 128


def test_variants_differ_where_the_paper_says():
  m, mc, k = mocov2.get_config(), multicrop.get_config('coco'), knn.get_config()
  assert (m.crops.num_small, m.moco.nn_weight, m.crops.aplus) == (0, 0.0, False)
  assert (mc.crops.num_small, mc.crops.min_overlap, mc.moco.nn_weight) == (4, 0.2, 0.0)
  assert tuple(mc.crops.small_scale) == (0.05, 0.14)
  assert (k.crops.aplus, k.moco.nn_weight, k.moco.nn_topk) == (True, 0.4, 20)
  coco = knn.get_config('coco')
  assert (
    coco.model.arch,
    coco.batch_size,
    coco.moco.queue_size,
    coco.crops.large_size,
    coco.crops.small_size,
    coco.moco.momentum,
    coco.optim.base_lr,
    coco.num_epochs,
  ) == ('resnet50', 256, 65536, 160, 96, 0.995, 0.3, 200)
  cifar = knn.get_config('cifar10')
  assert (cifar.model.arch, cifar.model.stem, cifar.moco.queue_size) == ('resnet18', 'cifar', 4096)


def test_unknown_preset_is_refused():
  with pytest.raises(ValueError, match='unknown preset'):
    knn.get_config('imagenet22k')


def test_cli_refuses_an_invalid_field_before_compiling(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'jax_moco.main',
      '--config=configs/knn.py',
      f'--workdir={tmp_path}',
      '--config.moco.queue_size=1000',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, XLA_FLAGS=''),
  )
  assert result.returncode != 0
  assert 'moco.queue_size: K=1000 must be a positive multiple of the global batch_size=64' in result.stderr
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_cifar10_preset_is_the_moco_colabs_run():
  """facebookresearch/moco's CIFAR-10 Colab: ResNet-18 (3x3 stem, no max-pool), fc 512 -> 128 as the head, K = 4096,
  m = 0.99, T = 0.1, 8 BN splits, batch 512, lr 0.06 cosine per epoch, wd 5e-4, 200 epochs, RandomResizedCrop(32) at
  scale (0.08, 1), no blur, CIFAR-10 mean/std, kNN monitor (k = 200, T = 0.1) on the normalised head output."""
  c = mocov2.get_config('cifar10')
  assert (c.model.arch, c.model.stem, c.model.width, c.model.head, c.model.projection_dim) == (
    'resnet18',
    'cifar',
    1.0,
    'linear',
    128,
  )
  assert (c.moco.queue_size, c.moco.momentum, c.moco.temperature, c.bn_groups) == (4096, 0.99, 0.1, 8)
  assert c.batch_size == 512 and c.optim.base_lr * c.batch_size / 256 == pytest.approx(0.06)
  assert (c.optim.lr_decay_every, c.optim.weight_decay, c.optim.momentum, c.num_epochs) == ('epoch', 5e-4, 0.9, 200)
  assert (c.crops.large_size, tuple(c.crops.large_scale), c.crops.blur_probability) == (32, (0.08, 1.0), 0.0)
  assert c.crops.num_small == 0 and not c.crops.aplus and c.moco.nn_weight == 0 and not c.moco.symmetric
  assert (c.model.normalization, c.knn.feature, c.knn.k, c.knn.temperature) == ('cifar10', 'head', 200, 0.1)
  c.moco.symmetric = True  # its --symmetric
  config_checks.validate(c, num_devices=1)


def test_coco800_warms_the_nn_loss_up_for_20_epochs():
  assert knn.get_config('coco').moco.nn_warmup_epochs == 5.0
  long = knn.get_config('coco800')
  assert (long.num_epochs, long.moco.nn_warmup_epochs) == (800, 20.0)


@pytest.mark.parametrize(
  'field,value',
  [
    ('optim.base_lr', -1.0),
    ('optim.momentum', 1.0),
    ('optim.weight_decay', -1e-4),
    ('crops.blur_probability', 1.5),
    ('model.head', 'transformer'),
    ('model.normalization', 'mnist'),
    ('knn.feature', 'logits'),
    ('knn.max_query_examples', -1),
    ('optim.lr_decay_every', 'week'),
  ],
)
def test_out_of_range_fields_are_refused(field, value):
  config = knn.get_config()
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(config_checks.ConfigError, match=field.replace('.', r'\.')):
    config_checks.validate(config, num_devices=1)
