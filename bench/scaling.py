"""How the kNN-MoCo step time grows with the queue size K, the number of small crops, the NN loss's top-k and the
device count, each varied alone from one base setting; a table (stdout, Markdown), a JSON and a PNG plot.

  python bench/scaling.py --out=bench/scaling   # CPU: ResNet-18 at width 0.25, CIFAR stem, 32 + 16 px, batch 64

The base point (K = 4096, 2 small crops, top-20, 1 device) is what the other sweeps hold fixed; `--base_queue`,
`--base_num_small` and `--base_topk` move it (e.g. to a run's own setting, so the K and top-k sweeps pass through it).

On CPU the device sweep uses 8 emulated devices (set here when XLA_FLAGS does not say otherwise) with the global
batch fixed, so it shows the overhead of the collectives (shuffle gathers, gradient and BN pmeans), not a speed-up.
`--topks` value 0 means the NN loss off (plain multi-crop MoCo): the difference to the others is the NN mining.
"""

import json
import os
import statistics
import sys
import time

if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import step as bench_step  # noqa: E402

from jax_moco import sharding  # noqa: E402
from jax_moco.sharding import shard_batch  # noqa: E402

FLAGS = flags.FLAGS
SWEEPS = ('queue', 'num_small', 'topk', 'devices')
BASE = dict(queue=4096, num_small=2, topk=20, devices=1)


def define_flags():
  flags.DEFINE_string('arch', 'resnet18', 'torchvision architecture.')
  flags.DEFINE_float('width', 0.25, "Channel width multiplier (1.0 = torchvision's).")
  flags.DEFINE_enum('stem', 'cifar', ('cifar', 'imagenet'), 'Stem.')
  flags.DEFINE_integer('batch', 64, 'Global images per step.')
  flags.DEFINE_integer('large', 32, 'Anchor / positive size.')
  flags.DEFINE_integer('small', 16, 'Small-crop size.')
  flags.DEFINE_enum('dtype', 'float32', ('float32', 'bfloat16'), 'Compute dtype.')
  flags.DEFINE_integer('steps', 5, 'Timed steps per point (median).')
  flags.DEFINE_list('queues', ['4096', '16384', '65536', '262144'], 'Queue sizes K.')
  flags.DEFINE_list('num_smalls', ['0', '2', '4', '6', '8'], 'Small crops per image.')
  flags.DEFINE_list('topks', ['0', '1', '5', '20', '50'], 'NN top-k (0: NN loss off).')
  flags.DEFINE_list('devices', ['1', '2', '4', '8'], 'Device counts (the global batch stays the same).')
  flags.DEFINE_string('out', '', 'Write OUT.json and OUT.png (default: print only).')
  flags.DEFINE_integer('base_queue', BASE['queue'], 'Queue size K of the base point.')
  flags.DEFINE_integer('base_num_small', BASE['num_small'], 'Small crops of the base point.')
  flags.DEFINE_integer('base_topk', BASE['topk'], 'NN top-k of the base point (0: NN loss off).')


def point_config(base_kwargs, queue, num_small, topk):
  config = bench_step.bench_config(**base_kwargs, num_small=num_small, queue=queue)
  config.moco.nn_topk = max(topk, 1)
  config.moco.nn_weight = config.moco.nn_weight if topk else 0.0
  return config


def time_point(config, num_devices, steps):
  """(median seconds per step, compile seconds) of the step on the first `num_devices` devices."""
  fn, state, _ = bench_step.jax_step(config, num_devices=num_devices)
  mesh = sharding.create_mesh(jax.devices()[:num_devices])
  batch = shard_batch(mesh, bench_step.synthetic_batch(config))
  start = time.perf_counter()
  compiled = fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  holder = {'state': state}

  def one_step():
    holder['state'], metrics = compiled(holder['state'], batch)
    jax.block_until_ready(metrics['loss'])

  one_step()  # warm-up
  return bench_step.median_step_seconds(one_step, steps), compile_s


def run(base_kwargs, sweeps, steps=5, log=print, base=BASE):
  """Times every point of every sweep given (a subset of SWEEPS), each varied alone from `base`; returns rows
  {sweep, value, step_s, images_per_s, relative, compile_s}."""
  rows = []
  for sweep in SWEEPS:
    for value in sweeps.get(sweep, ()):
      point = {**base, sweep: value}
      if point['devices'] > jax.device_count():
        log(f'skipping devices={point["devices"]}: only {jax.device_count()} devices')
        continue
      config = point_config(base_kwargs, point['queue'], point['num_small'], point['topk'])
      step_s, compile_s = time_point(config, point['devices'], steps)
      rows.append(
        dict(
          sweep=sweep,
          value=value,
          is_base=point == base,
          step_s=step_s,
          images_per_s=config.batch_size / step_s,
          compile_s=compile_s,
        )
      )
      log(f'{sweep}={value}: {step_s * 1e3:.0f} ms/step')
  base_times = [r['step_s'] for r in rows if r['is_base']]  # the base point recurs in every sweep
  base_time = statistics.median(base_times) if base_times else float('nan')
  for row in rows:
    row['relative'] = row['step_s'] / base_time
  return rows


def table(rows, base_kwargs, base=BASE) -> str:
  lines = [
    f'{base_kwargs["arch"]} (width {base_kwargs["width"]}, {base_kwargs["stem"]} stem), global batch '
    f'{base_kwargs["batch"]}, {base_kwargs["large"]} px + small crops of {base_kwargs["small"]} px, '
    f'{base_kwargs["dtype"]}, {jax.devices()[0].platform}; base point {base}; one parameter varied at a time',
    '',
    '| varied | value | ms / step | images / s | vs base | compile s |',
    '| --- | --- | --- | --- | --- | --- |',
  ]
  for r in rows:
    lines.append(
      f'| {r["sweep"]} | {r["value"]} | {r["step_s"] * 1e3:.0f} | {r["images_per_s"]:.1f} | '
      f'{r["relative"]:.2f}x | {r["compile_s"]:.1f} |'
    )
  return '\n'.join(lines)


def plot(rows, path):
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(SWEEPS), figsize=(4 * len(SWEEPS), 3.2))
  for ax, sweep in zip(axes, SWEEPS):
    points = [r for r in rows if r['sweep'] == sweep]
    ax.plot([r['value'] for r in points], [r['step_s'] * 1e3 for r in points], 'o-')
    ax.set_xlabel(
      {
        'queue': 'queue size K',
        'num_small': 'small crops',
        'topk': 'NN top-k (0 = off)',
        'devices': 'devices (same global batch)',
      }[sweep]
    )
    if sweep in ('queue', 'devices'):
      ax.set_xscale('log', base=2)
    ax.set_ylim(0, 1.1 * max([r['step_s'] * 1e3 for r in points], default=1))
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('ms per step')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  base_kwargs = dict(
    arch=FLAGS.arch,
    width=FLAGS.width,
    stem=FLAGS.stem,
    batch=FLAGS.batch,
    large=FLAGS.large,
    small=FLAGS.small,
    dtype=FLAGS.dtype,
  )
  base = dict(BASE, queue=FLAGS.base_queue, num_small=FLAGS.base_num_small, topk=FLAGS.base_topk)
  sweeps = {'queue': FLAGS.queues, 'num_small': FLAGS.num_smalls, 'topk': FLAGS.topks, 'devices': FLAGS.devices}
  rows = run(base_kwargs, {k: [int(v) for v in values] for k, values in sweeps.items()}, FLAGS.steps, base=base)
  print(table(rows, base_kwargs, base))
  if FLAGS.out:
    with open(FLAGS.out + '.json', 'w') as f:
      json.dump(
        {'base': base, 'setting': base_kwargs, 'platform': jax.devices()[0].platform, 'rows': rows}, f, indent=2
      )
    plot(rows, FLAGS.out + '.png')
    print(f'wrote {FLAGS.out}.json and {FLAGS.out}.png')


if __name__ == '__main__':
  define_flags()
  app.run(main)
