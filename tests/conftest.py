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

import importlib.util  # noqa: E402

import pytest  # noqa: E402

# torchvision before TensorFlow: with torchvision 0.29.1 (CUDA build) and TensorFlow 2.21, importing torchvision
# after TensorFlow segfaults while loading triton, so the test order must not decide which comes first. Only the
# tests that compare with PyTorch need it (they skip without it; requirements-test.txt installs it).
if importlib.util.find_spec('torchvision') is not None:
  import torchvision  # noqa: F401


def pytest_configure(config):
  config.addinivalue_line('markers', 'heavy(seconds): a test that runs for about this long on 2 CPU cores')
  config.addinivalue_line('markers', 'fast_compile: XLA compiles with most optimisations off (see fast_compile)')


@pytest.fixture(autouse=True)
def fast_compile(request):
  """For tests marked fast_compile: most of XLA's optimisations off while they compile. They build many small
  programs and run each a few times, so compiling is most of their time, and what they check is the computation,
  which the unoptimised program computes to float rounding (every test passes either way). Long runs and the
  benchmarks' comparisons with PyTorch keep the optimised programs users get."""
  if request.node.get_closest_marker('fast_compile') is None:
    yield
    return
  import jax

  before = jax.config.read('jax_disable_most_optimizations')  # JAX_DISABLE_MOST_OPTIMIZATIONS=1 stays on after
  jax.config.update('jax_disable_most_optimizations', True)
  try:
    yield
  finally:
    jax.config.update('jax_disable_most_optimizations', before)


def _seconds(item):
  marker = item.get_closest_marker('heavy')
  return marker.args[0] if marker else 0


def pytest_collection_modifyitems(session, config, items):
  """Heavy tests first, in two balanced runs of equal length: pytest-xdist's worksteal scheduler hands the first half
  of the collection to one worker and the second half to the other, and steals from the ends of the queues, so each
  worker starts with its share of the long tests and the short ones even out the finish. Collected in file order,
  the heavy tests (multi-process runs, the notebook) came last and often ran alone on one worker at the end."""
  heavy = sorted((i for i in items if _seconds(i)), key=_seconds, reverse=True)
  light = [i for i in items if not _seconds(i)]
  halves, load = ([], []), [0, 0]
  for item in heavy:  # longest first, each to the half with less work so far
    lighter = load.index(min(load))
    halves[lighter].append(item)
    load[lighter] += _seconds(item)
  first_light = max(len(items) // 2 - len(halves[0]), 0)
  items[:] = halves[0] + light[:first_light] + halves[1] + light[first_light:]


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


@pytest.fixture(scope='session')
def lone_run(tmp_path_factory, worker_id):
  """The work directory of a command-line run of tests.test_train.SIX_SAVED_STEPS that nothing disturbed, the
  reference of the tests that stop such a run and rerun it. Made once a session: under pytest-xdist the first worker
  that needs it runs it in the folder the workers share, and a worker needing it meanwhile waits for it."""
  import filelock

  from tests.test_train import SIX_SAVED_STEPS
  from tests.test_train import run_cli

  base = tmp_path_factory.getbasetemp()
  shared = base if worker_id == 'master' else base.parent  # each worker's folder is in the session's
  workdir, done = shared / 'lone_run', shared / 'lone_run.done'
  with filelock.FileLock(shared / 'lone_run.lock'):
    if not done.exists():
      shutil.rmtree(workdir, ignore_errors=True)  # a failed attempt's checkpoints
      result = run_cli(workdir, SIX_SAVED_STEPS)
      assert result.returncode == 0, result.stderr[-4000:]
      done.touch()
  return str(workdir)
