"""Test setup: 8 emulated CPU devices (set before JAX is imported) so the cross-device paths really run."""

import os
import sys

os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

# torchvision before TensorFlow: with torchvision 0.29.1 (CUDA build) and TensorFlow 2.21, importing torchvision
# after TensorFlow segfaults while loading triton, so the test order must not decide which comes first.
import torchvision  # noqa: E402, F401


@pytest.fixture(scope='session')
def china():
  """A real photograph (scikit-learn ships it), downscaled for speed: uint8 [96, 144, 3]."""
  from PIL import Image
  from sklearn.datasets import load_sample_image
  return __import__('numpy').asarray(Image.fromarray(load_sample_image('china.jpg')).resize((144, 96),
                                                                                          Image.BILINEAR))


@pytest.fixture
def make_config():
  from tests.helpers import tiny_config
  return tiny_config
