"""bench/gpu.sh, the one call that measures bench/RESULTS.md's GPU settings, runs its stages at toy sizes on CPU (so it
cannot rot between the rare sessions lent a GPU; input_wait_device, input_wait with one more flag, is left out): each
stage's file holds its table. The benchmarks themselves are tested in test_bench_step.py and test_bench_tools.py;
this checks the script's plumbing."""

import os
import subprocess
import sys

import pytest

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
  'input_wait': ['waiting for input'],  # input_wait_device, the same command with one more flag, is not run here
}


@pytest.mark.heavy(130)  # seconds on 2 cores, for the order of tests/conftest.py
def test_gpu_script_runs_every_stage_at_a_tiny_size(tmp_path):
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
