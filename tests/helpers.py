"""Shared test helpers: the tiny config and a saved run of it, building a step on a mesh, real batches from the
pipeline, a folder with bad files, and what a command line must not print."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from configs import knn
from configs import presets
from input_pipeline import pipeline
from input_pipeline import sources
from jax_moco import checkpointing
from jax_moco import sharding
from jax_moco import state as state_lib
from jax_moco import train

# Lines a researcher should not see by default: TensorFlow's C++ log, other libraries' INFO lines (Orbax file by
# file), the parameter table, AutoGraph's complaints.
CHATTER = (
  'absl::InitializeLog',
  'oneDNN',
  'cpu_feature_guard',
  "Unable to initialize backend 'tpu'",
  'AutoGraph',
  'Premature end of JPEG data',
  'fontManager',
  '| Name ',
  'parameter_overview',
  'I0000',
  'E0000',
  'checkpoint_manager.py',
  'event_tracking.py',
  'type_handler_registry.py',  # Orbax warns when a global type handler is overridden
)


def chatter(console):
  """The lines of a command's console output that hold CHATTER."""
  return [line for line in console.splitlines() if any(c in line for c in CHATTER)]


def user_environment():
  """The environment a user runs a command line in: TensorFlow's log level unset (the suite sets it)."""
  return {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}


def run_quietly(args, timeout=300):
  """`python ARGS...` from the repository's root in a user's environment: asserts that it succeeds and prints no
  CHATTER, and returns the finished process."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  argv = [sys.executable, *args]
  result = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=timeout, env=user_environment())
  assert result.returncode == 0, result.stderr[-3000:]
  printed = chatter(result.stdout + result.stderr)
  assert printed == [], f'{" ".join(args[:2])} printed: {printed[:5]}'
  return result


def tiny_config(**overrides):
  """The full kNN-MoCo config at test scale: a tiny ResNet, 32 px, small queues. Overrides: dotted names."""
  c = knn.get_config()
  c.dataset, c.eval_dataset = 'embedded_subset', 'embedded_subset:test'
  c.model.arch, c.model.width = 'resnet10', 0.125
  c.batch_size, c.bn_groups, c.moco.queue_size = 32, 1, 256
  c.crops.num_small, c.crops.small_size = 2, 16
  c.moco.nn_warmup_epochs = 0.0
  c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps = 4, 2, 2
  c.knn.batch_size, c.knn.max_bank_examples = 400, 2000
  return presets.override(c, overrides)


def multihost_config():
  """The run of tests/test_multihost.py, in its worker processes and in the single process it is compared with: the
  tiny config for 4 steps, its kNN monitor on 500 bank and 404 query images (neither a multiple of the monitor's
  batch of 400, so both end on a padded batch)."""
  return tiny_config(num_train_steps=4, **{'knn.max_bank_examples': 500, 'knn.max_query_examples': 404})


_SAVED = {}  # copy_of_saved's keys -> the checkpoints saved for each in this process


def copy_of_saved(key, save, workdir):
  """`workdir` (returned as a string) with a copy of the checkpoints that `save(directory)` wrote, called once a
  process for `key`: each caller's directory its own, the saving (an initialisation, an Orbax save) done once."""
  if key not in _SAVED:
    folder = tempfile.mkdtemp(prefix='jax_moco_tests_run-')
    atexit.register(shutil.rmtree, folder, True)
    save(os.path.join(folder, 'checkpoints'))
    _SAVED[key] = os.path.join(folder, 'checkpoints')
  shutil.copytree(_SAVED[key], os.path.join(workdir, 'checkpoints'))
  return str(workdir)


def save_checkpoint(directory, config, state, step):
  checkpointer = checkpointing.Checkpointer(str(directory), config.to_dict(), 100, 3)
  checkpointer.save(step, state.replace(step=jnp.asarray(step, jnp.int32)), force=True)
  checkpointer.close()


def save_tiny_run(workdir, step=3, seed=1, **overrides):
  """A work directory holding one checkpoint (at `step`) of the tiny config at its initialisation, for the evaluation
  protocols end to end; returns its path as a string."""
  config = tiny_config(**overrides)
  save = lambda directory: save_checkpoint(directory, config, state_lib.initial_state(config, seed), step)  # noqa: E731
  return copy_of_saved(('tiny', step, seed, tuple(sorted(overrides.items()))), save, workdir)


def loss_atol(temperature, dim, terms=1):
  """Absolute tolerance for an InfoNCE-type loss computed in float32 by two implementations. Each logit is a dot
  product of unit vectors over `dim` terms divided by T, whose rounding error grows like sqrt(dim) * eps / T
  (random-walk accumulation of the per-term rounding); a cross-entropy changes by at most twice the largest logit
  change, and a sum of `terms` such losses (the total loss) by the sum of their bounds. A safety factor of 4
  covers the summation orders and the log-sum-exp's own rounding. Relative tolerances fail for small losses."""
  eps = float(np.finfo(np.float32).eps)
  return 4 * terms * 2 * np.sqrt(dim) * eps / temperature


def flat_state(state):
  """Every leaf of a (replicated) train state as a host array keyed by its path."""
  return {
    jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf))
    for path, leaf in jax.tree_util.tree_leaves_with_path(state)
  }


def build(config, devices=None, steps_per_epoch=100, total_steps=100, labelled=False):
  mesh = sharding.create_mesh(devices)
  encoder = state_lib.create_encoder(config)
  tx = state_lib.create_optimizer(config, total_steps, steps_per_epoch)
  state = state_lib.create_train_state(config, encoder, tx, jax.random.key(0), labelled)
  state = jax.device_put(state, sharding.replicated(mesh))
  return mesh, state, train.make_step(config, mesh, encoder, tx, total_steps, steps_per_epoch)


def real_batches(config, n, labels=False):
  source = sources.get_source(config.dataset)
  ds = pipeline.train_dataset(source, pipeline.view_spec(config.crops), config.batch_size, config.seed)
  return [train.step_inputs(b, labels) for b in ds.take(n).as_numpy_iterator()]


def write_folder_with_bad_files(root):
  """40 small images (JPEG, grayscale, RGBA and 16-bit PNG) and three files that are none: a truncated JPEG (which
  passes the scan and fails to decode in the stream), an empty file and a text named .jpg."""
  pixels = np.random.default_rng(0).integers(0, 256, (40, 36, 40, 3), np.uint8)
  modes = [lambda a: a, lambda a: a[..., 0], lambda a: np.dstack([a, a[..., :1]]), lambda a: a[..., 0] * np.uint16(257)]
  for i, image in enumerate(pixels):
    Image.fromarray(modes[i % 4](image)).save(root / f'{i}.{"png" if i % 4 else "jpg"}')
  (root / 'truncated.jpg').write_bytes((root / '0.jpg').read_bytes()[:300])
  (root / 'empty.jpg').write_bytes(b'')
  (root / 'text.jpg').write_text('not an image')
  return root
