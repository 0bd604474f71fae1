"""bench/gpu.sh, the one call that measures bench/RESULTS.md's GPU settings, runs its stages at toy sizes on CPU (so it
cannot rot between the rare runs on a GPU; input_wait runs once, with input_wait_device's flag): each
stage's file holds its table. What bench/step.py and the other benchmarks compute is tested in test_bench_step.py and
test_bench_tools.py; device_augment's and input_wait's tables are checked here, from the runs of this script."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import knn
from tests.helpers import loss_atol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Lines of each stage's table. scaling's one point is its base: K = 16, no small crops, top-4. On CPU step.py times
# both of XLA:CPU's convolution paths. (These CLI runs are the benchmarks' "runs at a tiny size" tests; what each one
# computes is checked in test_bench_step.py and test_bench_tools.py.)
TABLES = {
  'env': ['jax'],
  'step': [
    'jax_moco (XLA, YNNPACK convolutions)',
    'jax_moco (XLA, own convolutions)',
    'PyTorch reference (eager)',
    'model FLOPs per step',
  ],
  'scaling': ['| queue | 16 |', 'wrote'],
  'device_augment': ['augmentation alone, TF ops on the host'],
  'input_wait': ['waiting for input'],  # at toy sizes with input_wait_device's flag, in place of that stage
}


@pytest.mark.heavy(100)  # seconds on 2 cores, for the order of tests/conftest.py
def test_gpu_script_runs_every_stage_at_a_tiny_size(tmp_path):
  pytest.importorskip('torchvision')  # the step stage times the PyTorch reference beside ours
  result = subprocess.run(
    ['bash', os.path.join(ROOT, 'bench', 'gpu.sh'), '--tiny', str(tmp_path)],
    # One device, as on the GPU machine (the suite emulates 8, which input_wait's batch of 2 cannot be split over).
    env={**os.environ, 'PYTHON': sys.executable, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1'},
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
  for name, rows in TABLES.items():
    text = (tmp_path / f'{name}.txt').read_text()
    assert all(row in text for row in rows) and 'skipped' not in text and 'failed' not in text, (name, text)
  assert (tmp_path / 'scaling.png').stat().st_size > 1000 and (tmp_path / 'scaling.json').exists()

  # device_augment: one step from the same state fed tf.data's views or the crops + records the step augments itself
  # (A+, a small crop) trains the same; every part is timed.
  augment = (tmp_path / 'device_augment.txt').read_text()
  host, device = map(float, re.search(r'same state: ([\d.]+) \(views from tf.data\), ([\d.]+)', augment).groups())
  demo = knn.get_config()  # bench/step.py's bench_config keeps its temperature and projection
  atol = loss_atol(demo.moco.temperature, demo.model.projection_dim, terms=2) + 1e-6  # + the 6 printed decimals
  np.testing.assert_allclose(device, host, rtol=1e-5, atol=atol)
  assert all(float(ms) > 0 for ms in re.findall(r'([\d.]+) ms', augment.split('median of')[1]))
  # input_wait, in the mode whose synthetic batches keep the records for the step's own augmentation.
  wait = (tmp_path / 'input_wait.txt').read_text()
  real, synthetic = (
    float(re.search(rf'{kind} input +([\d.]+) ms/step', wait).group(1)) for kind in ('real', 'synthetic')
  )
  assert real > 0 and synthetic > 0 and 0 <= float(re.search(r'waiting for input: ([\d.]+) %', wait).group(1)) < 100
