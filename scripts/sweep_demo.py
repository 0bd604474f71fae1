"""Sweeps the demo's scale and recipe: each variant of `configs/knn.py` (the full method) trains for the same number
of steps in its own work directory, and one table gives kNN top-1 before and after, raw pixels and the time.

  python scripts/sweep_demo.py --out=runs/sweep --steps=1000 [--variants=default,resnet18,...]

Resumable (scripts/runs.py): a finished variant is read, not rerun, and a half-done one resumes from its checkpoint.
The table (Markdown) is printed and written to OUT/table.md.
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jax_moco import console  # noqa: E402
from scripts import runs  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags, defined only when run as a program (so the module imports cleanly anywhere)."""
  flags.DEFINE_string('out', 'runs/sweep', 'One work directory per variant under here.')
  flags.DEFINE_integer('steps', 1000, 'Training steps of every variant.', lower_bound=1)
  flags.DEFINE_list('variants', [], 'Variants to run (default: all).')


# Dotted config overrides of configs/knn.py's demo, one entry per variant. The demo is ResNet-10 x 0.25, batch 64,
# K = 1024, base lr 0.12; the `before` variants are the demo before this sweep (ResNet-18 x 0.25, batch 128, K = 4096,
# base lr 0.06) and what was tried on top of it.
BEFORE = {'model.arch': 'resnet18', 'batch_size': 128, 'moco.queue_size': 4096, 'optim.base_lr': 0.06}
VARIANTS = {
  'default': {},
  'resnet18': {'model.arch': 'resnet18'},
  'resnet18_lr0.06': {'model.arch': 'resnet18', 'optim.base_lr': 0.06},
  'before': BEFORE,
  'before_px28': {**BEFORE, 'crops.large_size': 28, 'crops.small_size': 14},
  'before_queue1024': {**BEFORE, 'moco.queue_size': 1024},
  'before_batch64': {**BEFORE, 'batch_size': 64},
  'before_lr0.24_warmup': {**BEFORE, 'optim.base_lr': 0.24, 'optim.warmup_epochs': 0.5},
  'before_q1024_m0.95_lr0.24': {
    **BEFORE,
    'moco.queue_size': 1024,
    'moco.momentum': 0.95,
    'optim.base_lr': 0.24,
    'optim.warmup_epochs': 0.5,
  },
}


def variant_config(overrides, steps):
  config = runs.config('knn', overrides, steps)
  config.checkpoint_every_steps = steps
  return config


def run_variant(name, overrides, steps, out):
  return runs.train_once(variant_config(overrides, steps), os.path.join(out, name))


HEADER = ['variant', 'overrides', 'kNN raw pixels', 'random init', 'trained', 'gain', 'train s', 'wall s']


def table(rows):
  body = []
  for name, overrides, summary, wall in rows:
    raw, before, after = (summary[k]['top1'] for k in ('knn_raw_pixels', 'knn_before', 'knn_after'))
    shown = ', '.join(f'{k}={v}' for k, v in overrides.items()) or '-'
    gain = f'{after - before:+.2f}'
    body.append(
      [name, shown, f'{raw:.2f}', f'{before:.2f}', f'{after:.2f}', gain, f'{summary["train_seconds"]:.0f}', wall]
    )
  return runs.markdown_table(HEADER, body)


def main(argv):
  del argv
  names = FLAGS.variants or list(VARIANTS)
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    raise app.UsageError(f'unknown variants {unknown}; choose from {list(VARIANTS)}')
  console.import_tensorflow(FLAGS.verbosity)  # the parameter tables and Orbax's lines only with -v 1
  rows = []
  for name in names:
    summary, wall = run_variant(name, VARIANTS[name], FLAGS.steps, FLAGS.out)
    rows.append((name, VARIANTS[name], summary, wall))
    runs.show_table(FLAGS.out, table(rows))


if __name__ == '__main__':
  define_flags()
  app.run(main)
