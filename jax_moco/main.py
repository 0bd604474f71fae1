"""Command line: `python -m jax_moco.main --config=configs/knn.py [--workdir=DIR] [--config.FIELD=VALUE ...]`.

`--verbosity=1` (absl's flag) brings back what the console leaves out by default (see jax_moco/console.py).

Your own images: `--config.dataset=folder:PATH`. The kNN monitor then scores PATH's labelled held-out split when
there is one (eval_dataset='auto', see configs/base.py), is off (said once) when there is none, and a bank and
queries that cannot be compared are refused before training.

Several hosts (JAX's multi-controller runtime: one process per host, all running the same command):
`--distributed` lets `jax.distributed.initialize()` find the cluster itself (TPU pods, SLURM, Open MPI, or the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables); `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` say it explicitly (e.g. two processes on one machine).
"""

import datetime
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jax_moco import console

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Config file, optionally with a preset: configs/knn.py:coco.', lock_config=True
)
flags.DEFINE_string(
  'workdir', None, 'Checkpoints, logs and results; running again resumes. Default: a fresh folder under ./runs/.'
)
flags.DEFINE_bool('distributed', False, "Initialise JAX's distributed runtime from the cluster environment.")
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 (implies --distributed).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (with --coordinator_address).')
flags.DEFINE_integer('process_id', None, "This process's index (with --coordinator_address).")
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  console.import_tensorflow(FLAGS.verbosity)
  import jax

  if FLAGS.distributed or FLAGS.coordinator_address:  # before anything starts the XLA backend
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)

  from jax_moco import checkpointing
  from jax_moco import train

  if jax.process_count() > 1 and not FLAGS.workdir:
    raise app.UsageError('--workdir is required with several processes (all of them must write to the same one)')
  workdir = FLAGS.workdir or os.path.join(
    'runs', f'{FLAGS.config.method}-{datetime.datetime.now().strftime("%Y%m%d-%H%M%S")}'
  )
  logging.info(
    'JAX process %d/%d: %d local devices %s, %d in all',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.local_devices(),
    jax.device_count(),
  )
  if jax.process_index() == 0:
    print(f'workdir: {os.path.abspath(workdir)}', flush=True)
  refused = (checkpointing.ConfigMismatchError, checkpointing.UnreadableCheckpointsError)
  with console.one_line_errors(FLAGS.verbosity, *train.USER_ERRORS, *refused):
    train.train_and_evaluate(FLAGS.config, workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=console.parse_config_flags)
