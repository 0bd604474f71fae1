"""Every config and preset builds and validates; bad fields are refused, by the CLI too, with the field named."""

import os
import subprocess
import sys

import pytest

from configs import base
from configs import knn
from configs import mocov2
from configs import multicrop
from jax_moco import validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('module', [mocov2, multicrop, knn])
@pytest.mark.parametrize('preset', base.PRESETS)
def test_every_config_and_preset_is_valid(module, preset):
  config = module.get_config(preset)
  for devices in (8, 1):
    validation.validate(config, num_devices=devices)
    groups = validation.bn_groups_for(config, devices)
    assert devices * groups >= 2 and config.batch_size % (devices * groups) == 0
  if preset in ('coco', 'imagenet'):  # the authors' BN batch: 128 images a group on one device and on two
    assert config.batch_size // validation.bn_groups_for(config, 1) == 128
    assert config.batch_size // (2 * validation.bn_groups_for(config, 2)) == 128


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
  assert 'moco.queue_size: K=1000 must be a positive multiple of the global batch_size=128' in result.stderr
  assert not os.path.exists(tmp_path / 'checkpoints')
