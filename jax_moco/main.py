"""Command line: `python -m jax_moco.main --config=configs/knn.py [--workdir=DIR] [--config.FIELD=VALUE ...]`."""

import datetime
import logging as std_logging
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file, optionally with a preset: configs/knn.py:coco.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, logs and results; running again resumes. '
                    'Default: a fresh folder under ./runs/.')
flags.mark_flags_as_required(['config'])


def _quiet_orbax(record):
  """Orbax logs every file it writes at INFO; keep its warnings, drop the chatter."""
  return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_quiet_orbax)
  # TensorFlow only feeds data: hide accelerators from it so JAX has them all.
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  import jax

  from jax_moco import train

  workdir = FLAGS.workdir or os.path.join(
      'runs', f'{FLAGS.config.method}-{datetime.datetime.now().strftime("%Y%m%d-%H%M%S")}')
  logging.info('JAX process %d/%d, local devices %s', jax.process_index(), jax.process_count(), jax.local_devices())
  print(f'workdir: {os.path.abspath(workdir)}', flush=True)
  train.train_and_evaluate(FLAGS.config, workdir)


if __name__ == '__main__':
  app.run(main)
