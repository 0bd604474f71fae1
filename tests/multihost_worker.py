"""One process of tests/test_multihost.py:
`python tests/multihost_worker.py ADDRESS NUM_PROCESSES PROCESS_ID WORKDIR [FINETUNE]`.

Joins JAX's distributed runtime (4 emulated CPU devices per process), trains tests/helpers.py's multihost_config
(the tiny test config with the kNN monitor on), and saves its own copy of the final parameters, queues and BN
statistics to WORKDIR/process_I.npz. With FINETUNE (a JSON object of jax_moco.evaluate.evaluate's arguments), it
then fine-tunes a segmentation from the run's last checkpoint, every process its share of each global batch, and
writes the result it got to WORKDIR/segmentation_process_I.json.
"""

import json
import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tests.helpers import flat_state  # noqa: E402
from tests.helpers import multihost_config  # noqa: E402


def main(address, num_processes, process_id, workdir, finetune=None):
  import input_pipeline

  input_pipeline.tensorflow_on_cpu_only()
  jax.distributed.initialize(address, int(num_processes), int(process_id))
  from jax_moco import evaluate
  from jax_moco import train

  state = train.train_and_evaluate(multihost_config(), workdir)
  np.savez(os.path.join(workdir, f'process_{jax.process_index()}.npz'), **flat_state(state))
  if finetune:
    result = evaluate.evaluate(workdir, 'segmentation', **json.loads(finetune))
    with open(os.path.join(workdir, f'segmentation_process_{jax.process_index()}.json'), 'w') as f:
      json.dump(result, f)


if __name__ == '__main__':
  main(*sys.argv[1:])
