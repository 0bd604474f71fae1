"""Test setup: 8 emulated CPU devices (set before JAX is imported) so the cross-device paths really run."""

import os
import sys

os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def china():
  """A real photograph (scikit-learn ships it), downscaled for speed: uint8 [96, 144, 3]."""
  from PIL import Image
  from sklearn.datasets import load_sample_image
  return __import__('numpy').asarray(Image.fromarray(load_sample_image('china.jpg')).resize((144, 96),
                                                                                          Image.BILINEAR))


def tiny_config(**overrides):
  """The full kNN-MoCo config at test scale: a tiny ResNet, 32 px, small queues. Overrides: dotted names."""
  from configs import knn
  c = knn.get_config()
  c.dataset, c.eval_dataset = 'embedded_subset', 'embedded_subset:test'
  c.model.arch, c.model.width = 'resnet_tiny', 0.125
  c.batch_size, c.bn_groups, c.moco.queue_size = 32, 1, 256
  c.crops.num_small, c.crops.small_size = 2, 16
  c.moco.nn_warmup_epochs = 0.0
  c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps = 4, 2, 2
  c.knn.batch_size, c.knn.max_bank_examples = 400, 2000
  for name, value in overrides.items():
    target = c
    *parents, leaf = name.split('.')
    for p in parents:
      target = target[p]
    target[leaf] = value
  return c


@pytest.fixture
def make_config():
  return tiny_config
