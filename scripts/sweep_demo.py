"""Sweeps the demo's scale and recipe: each variant of `configs/knn.py` (the full method) trains for the same number
of steps in its own work directory, and one table gives kNN top-1 before and after, raw pixels and the time.

  python scripts/sweep_demo.py --out=runs/sweep --steps=300 [--variants=default,px28,...]

Resumable: a variant whose work directory already holds a summary.json is read, not rerun. The table (Markdown) is
printed and written to OUT/table.md.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string('out', 'runs/sweep', 'One work directory per variant under here.')
flags.DEFINE_integer('steps', 300, 'Training steps of every variant.')
flags.DEFINE_list('variants', [], 'Variants to run (default: all).')

# Dotted config overrides of configs/knn.py's demo, one entry per variant.
VARIANTS = {
  'default': {},
  'px28': {'crops.large_size': 28, 'crops.small_size': 14},
  'lr0.12_warmup': {'optim.base_lr': 0.12, 'optim.warmup_epochs': 0.5},
  'tau0.2': {'moco.temperature': 0.2},
  'queue1024': {'moco.queue_size': 1024},
  'm0.95': {'moco.momentum': 0.95},
  'batch64': {'batch_size': 64, 'bn_groups': 2},
  'px28_m0.95_q1024': {
    'crops.large_size': 28,
    'crops.small_size': 14,
    'moco.momentum': 0.95,
    'moco.queue_size': 1024,
  },
}


def variant_config(overrides, steps):
  from configs import knn
  from configs import presets

  config = presets.override(knn.get_config(), overrides)
  config.num_train_steps = config.checkpoint_every_steps = steps
  return config


def run_variant(name, overrides, steps, out):
  from jax_moco import train

  workdir = os.path.join(out, name)
  summary_path = os.path.join(workdir, 'summary.json')
  if not os.path.exists(summary_path):
    started = time.time()
    train.train_and_evaluate(variant_config(overrides, steps), workdir)
    with open(os.path.join(workdir, 'wall_seconds.txt'), 'w') as f:
      f.write(f'{time.time() - started:.0f}\n')
  summary = json.load(open(summary_path))
  wall = open(os.path.join(workdir, 'wall_seconds.txt')).read().strip()
  return summary, wall


def table(rows):
  lines = [
    '| variant | overrides | kNN raw pixels | random init | trained | gain | train s | wall s |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
  ]
  for name, overrides, summary, wall in rows:
    raw, before, after = (summary[k]['top1'] for k in ('knn_raw_pixels', 'knn_before', 'knn_after'))
    shown = ', '.join(f'{k}={v}' for k, v in overrides.items()) or '-'
    lines.append(
      f'| {name} | {shown} | {raw:.2f} | {before:.2f} | {after:.2f} | {after - before:+.2f} | '
      f'{summary["train_seconds"]:.0f} | {wall} |'
    )
  return '\n'.join(lines)


def main(argv):
  del argv
  names = FLAGS.variants or list(VARIANTS)
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    raise app.UsageError(f'unknown variants {unknown}; choose from {list(VARIANTS)}')
  rows = []
  for name in names:
    summary, wall = run_variant(name, VARIANTS[name], FLAGS.steps, FLAGS.out)
    rows.append((name, VARIANTS[name], summary, wall))
    print(table(rows), flush=True)
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, 'table.md'), 'w') as f:
    f.write(table(rows) + '\n')


if __name__ == '__main__':
  app.run(main)
