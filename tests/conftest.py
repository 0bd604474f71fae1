"""Test setup: 8 emulated CPU devices (set before JAX is imported) so the cross-device paths really run."""

import atexit
import os
import shutil
import sys
import tempfile

os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One persistent XLA compilation cache per test session (inherited by the multi-host workers and the notebook's
# kernel): many tests build the same tiny step, and a program compiled once is read back instead of recompiled.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='jax_moco_tests_xla_cache-')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
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

  return __import__('numpy').asarray(Image.fromarray(load_sample_image('china.jpg')).resize((144, 96), Image.BILINEAR))


@pytest.fixture
def make_config():
  from tests.helpers import tiny_config

  return tiny_config
