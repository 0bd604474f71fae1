"""The fraction of training-step time spent waiting for input: the same jitted step fed by the real tf.data pipeline
and by synthetic host batches of the same shapes (both copied to the devices each step, as in training), alternating
rounds; wait = 1 - (synthetic time / real time), target < 5 %.

  python bench/input_wait.py --config=configs/knn.py                 # the demo: embedded data, 32 px
  python bench/input_wait.py --config=configs/knn.py:imagenet --jpegs=512 --config.batch_size=256
      # kNN-MoCo views of 500 px JPEGs (generated in a temporary folder), for the GPU machine;
      # add --config.crops.augment_on_device=True to leave the pixel work to the accelerator

`--jpegs=N` writes N photo JPEGs of 500 x 375 px (bench/make_jpegs.py) and trains on them; `--config.dataset=...`
takes any source.
"""

import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from make_jpegs import make_jpegs  # noqa: E402

from input_pipeline import pipeline  # noqa: E402
from input_pipeline import sources  # noqa: E402
from jax_moco import sharding  # noqa: E402
from jax_moco import state as state_lib  # noqa: E402
from jax_moco import train  # noqa: E402
from jax_moco.sharding import shard_batch  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  config_flags.DEFINE_config_file('config', None, 'Training config (any method and preset).', lock_config=True)
  flags.DEFINE_integer('steps', 50, 'Steps timed per round (keep it well above the few batches tf.data prefetches).')
  flags.DEFINE_integer('rounds', 3, 'Alternating rounds of real and synthetic input.')
  flags.DEFINE_integer('jpegs', 0, "Generate this many 500 px JPEGs and train on them (0: the config's dataset).")


def synthetic_like(batch, seed=0):
  """Random views of the batch's shapes; augmentation records (crops.augment_on_device) are kept as drawn, so the
  step does the same pixel work on either input."""
  rng = np.random.default_rng(seed)
  return {k: v if k == 'augment' else rng.integers(0, 256, v.shape, np.uint8) for k, v in batch.items()}


def run(config, steps=50, rounds=3, log=print):
  """Returns {'real_s', 'synthetic_s' (median seconds per step), 'wait_fraction'} and prints them."""
  mesh = sharding.create_mesh()
  source = sources.get_source(config.dataset, config.data_dir)
  steps_per_epoch = max(source.num_examples // config.batch_size, 1)
  total = (steps + 1) * rounds + 1
  encoder = state_lib.create_encoder(config)
  tx = state_lib.create_optimizer(config, total, steps_per_epoch)
  state = jax.device_put(
    state_lib.create_train_state(config, encoder, tx, jax.random.key(config.seed)), sharding.replicated(mesh)
  )
  train_step = train.make_step(config, mesh, encoder, tx, total, steps_per_epoch)
  real = pipeline.train_dataset(
    source,
    pipeline.view_spec(config.crops),
    config.batch_size,
    config.seed,
    0,
    jax.process_index(),
    jax.process_count(),
  ).as_numpy_iterator()
  first = train.step_inputs(next(real))
  fake = synthetic_like(first)
  holder = {'state': train_step(state, shard_batch(mesh, first))[0]}  # compiles

  def timed_steps(next_batch):
    start = time.perf_counter()
    for _ in range(steps):
      holder['state'], metrics = train_step(holder['state'], shard_batch(mesh, next_batch()))
    jax.block_until_ready(metrics['loss'])
    return (time.perf_counter() - start) / steps

  results = {'real': [], 'synthetic': []}
  for r in range(rounds):
    results['real'].append(timed_steps(lambda: train.step_inputs(next(real))))
    results['synthetic'].append(timed_steps(lambda: fake))
    log(
      f'round {r + 1}: real input {results["real"][-1] * 1e3:.0f} ms/step, synthetic '
      f'{results["synthetic"][-1] * 1e3:.0f} ms/step'
    )
  real_s, synthetic_s = statistics.median(results['real']), statistics.median(results['synthetic'])
  wait = max(0.0, 1.0 - synthetic_s / real_s)
  log(
    f'\n{config.method} on {source.name}: {config.model.arch}, batch {config.batch_size}, {config.crops.large_size} '
    f'px + {config.crops.num_small} x {config.crops.small_size} px, {jax.device_count()} x '
    f'{jax.devices()[0].platform}, median of {rounds} rounds of {steps} steps:\n'
    f'  real input      {real_s * 1e3:8.1f} ms/step ({config.batch_size / real_s:.1f} images/s)\n'
    f'  synthetic input {synthetic_s * 1e3:8.1f} ms/step ({config.batch_size / synthetic_s:.1f} images/s)\n'
    f'  waiting for input: {wait * 100:.1f} % of the step (target < 5 %)'
  )
  return {'real_s': real_s, 'synthetic_s': synthetic_s, 'wait_fraction': wait}


def main(argv):
  del argv
  config = FLAGS.config
  if config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/knn.py')
  with tempfile.TemporaryDirectory() as tmp:
    if FLAGS.jpegs:
      with config.unlocked():
        config.dataset = 'folder:' + make_jpegs(os.path.join(tmp, 'jpegs'), FLAGS.jpegs)
        config.eval_dataset = ''
    run(config, FLAGS.steps, FLAGS.rounds)


if __name__ == '__main__':
  define_flags()
  app.run(main)
