"""What moving the augmentations' pixel work onto the accelerator costs there and saves on the host
(`crops.augment_on_device`), in one run on the same device:

  - the train step fed augmented views against the same step fed crops + parameter records (it then augments them
    itself): the augmentation's share of the step;
  - the augmentation alone, jitted on the device (`jax_moco.device_augment.apply_to_batch`), against the same records
    applied by the TF ops that tf.data runs (`input_pipeline.host_augment.apply`, in a tf.function on the host's cores).

  python bench/device_augment.py                 # CPU demo scale: ResNet-18, CIFAR stem, 32 px + 2 x 16 px, A+
  python bench/device_augment.py --arch=resnet50 --stem=imagenet --large=160 --small=96 --num_small=4 --batch=256 \\
      --queue=65536 --dtype=bfloat16             # the GPU setting of bench/step.py

Records are drawn by the pipeline's own code from random crops (A+ on positives and small crops, aug+ on anchors).
"""

import os
import statistics
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import step as step_bench  # noqa: E402

from input_pipeline import pipeline  # noqa: E402
from input_pipeline import views  # noqa: E402
from jax_moco import device_augment  # noqa: E402

FLAGS = flags.FLAGS


def records_for(config, seed=0):
  """(synthetic crops of `config`, their records drawn per example as the pipeline draws them)."""
  crops = step_bench.synthetic_batch(config, seed)
  spec = pipeline.view_spec(config.crops)
  draws = tf.data.Dataset.range(config.batch_size).map(
    lambda i: views.draw_augmentation(
      tf.random.experimental.stateless_fold_in(tf.constant([seed, 2], tf.int64), i), spec
    )
  )
  uniforms = next(iter(draws.batch(config.batch_size)))
  return crops, jax.tree.map(lambda t: t.numpy(), views.augmentation_records(uniforms, spec))


def run(config, steps=5, rounds=3, log=print):
  """Returns median seconds {'step', 'step_augmenting', 'device_augment', 'host_augment'} and the first step's loss
  from the same state under both inputs ('first_losses': like for like, they must agree), and prints a summary."""
  crops, records = records_for(config)
  host_apply = tf.function(views.augment_batch)
  augmented = {k: v.numpy() for k, v in host_apply({**crops, 'augment': records}).items()}
  fn, state, _ = step_bench.jax_step(config)
  device = jax.devices()[0]
  plain = step_bench.on_mesh(augmented)
  with_records = step_bench.on_mesh({**crops, 'augment': records})
  device_apply = jax.jit(device_augment.apply_to_batch)
  # The augmentation alone runs outside the step's shard_map, on arrays without a mesh axis in their type.
  device_records = jax.device_put({**crops, 'augment': records}, device)
  # One step from the same state on each input (also compiling both): the two ways must train the same.
  first_losses = [float(fn(jax.tree.map(jnp.copy, state), batch)[1]['loss']) for batch in (plain, with_records)]
  holder = {'state': state}

  def step_on(batch):
    def run_one():
      holder['state'], metrics = fn(holder['state'], batch)
      jax.block_until_ready(metrics['loss'])

    return run_one

  runners = {
    'step': step_on(plain),
    'step_augmenting': step_on(with_records),
    'device_augment': lambda: jax.block_until_ready(device_apply(device_records)),
    'host_augment': lambda: host_apply({**crops, 'augment': records}),
  }
  runners['device_augment']()  # compiles
  results = {name: [] for name in runners}
  for r in range(rounds):
    for name, run_one in runners.items():
      results[name].append(step_bench.median_step_seconds(run_one, steps))
    log(f'round {r + 1}: ' + ', '.join(f'{k} {v[-1] * 1e3:.1f} ms' for k, v in results.items()))
  medians = {k: statistics.median(v) for k, v in results.items()}
  _log_summary(config, medians, first_losses, device.platform, rounds, log)
  return {**medians, 'first_losses': first_losses}


def _log_summary(config, medians, first_losses, platform, rounds, log):
  views_per_batch = config.batch_size * (2 + config.crops.num_small)
  share = 1.0 - medians['step'] / medians['step_augmenting']
  log(
    f'\n{config.model.arch}, batch {config.batch_size}, {config.crops.large_size} px + {config.crops.num_small} x '
    f'{config.crops.small_size} px ({views_per_batch} views), A+ = {config.crops.aplus}, {config.model.dtype}, '
    f'{platform}, median of {rounds} rounds:'
  )
  log(
    f'  first-step loss from the same state: {first_losses[0]:.6f} (views from tf.data), {first_losses[1]:.6f} '
    f'(step augmenting them)'
  )
  log(f'  train step, views augmented by tf.data   {medians["step"] * 1e3:9.1f} ms')
  log(
    f'  train step augmenting its views itself   {medians["step_augmenting"] * 1e3:9.1f} ms  '
    f'(augmentation {share * 100:.1f} % of the step)'
  )
  for name, label in (
    ('device_augment', f'augmentation alone, XLA on {platform}'),
    ('host_augment', 'augmentation alone, TF ops on the host'),
  ):
    log(f'  {label:40s} {medians[name] * 1e3:9.1f} ms  ({config.batch_size / medians[name]:.0f} images/s)')


def main(argv):
  del argv
  config = step_bench.bench_config(
    FLAGS.arch, FLAGS.stem, FLAGS.batch, FLAGS.large, FLAGS.small, FLAGS.num_small, FLAGS.queue, FLAGS.dtype
  )
  run(config, FLAGS.steps, FLAGS.rounds)


if __name__ == '__main__':
  step_bench.define_flags()
  app.run(main)
