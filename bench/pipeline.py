"""Images/s of the kNN-MoCo input pipeline (2 x 160 + 6 x 96 px views from 500 px JPEGs, constrained crops, A+),
ours (tf.data) next to a torchvision + DataLoader reference with the same views, on the same cores, in one run.
A third row times ours with `augment_on_device`: tf.data decodes, crops and draws every random choice and leaves the
pixel work to the accelerator (bench/device_augment.py times that side).

  python bench/pipeline.py --cores=2 --reference_python=/path/to/venv-with-torchvision/bin/python

The reference runs in its own interpreter (an environment with torch and torchvision); both are limited to the same
number of cores with taskset and alternate over --rounds; medians are printed with their ratio.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_integer('cores', 2, 'CPU cores for each pipeline (taskset) and its worker count.')
flags.DEFINE_integer('batches', 20, 'Batches of 64 timed per round.')
flags.DEFINE_integer('rounds', 3, 'Alternating rounds of ours and the reference.')
flags.DEFINE_string('reference_python', '', 'Python with torch + torchvision for the reference ("" skips it).')
flags.DEFINE_string('images', '', 'Folder of JPEGs; default: 256 generated 500 px photos in a temp dir.')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ours(images, batches, cores, augment_on_device=False):
  """Runs in a child process limited to `cores` cores; returns images/s."""
  code = f"""
import json, time, sys
sys.path.insert(0, {ROOT!r})
import tensorflow as tf
from input_pipeline import pipeline, sources, views
spec = views.ViewSpec(large_size=160, small_size=96, num_small=6, min_overlap=0.2, aplus=True, blur_reference_size=0,
                      augment_on_device={augment_on_device})
ds = pipeline.train_dataset(sources.get_source('folder:{images}'), spec, 64, seed=0)
options = tf.data.Options()
options.threading.private_threadpool_size = {cores}
it = ds.with_options(options).as_numpy_iterator()
for _ in range(3): next(it)
start = time.perf_counter()
for _ in range({batches}): next(it)
print(json.dumps({{"images_per_s": 64 * {batches} / (time.perf_counter() - start)}}))
"""
  return _run([sys.executable, '-c', code], cores)


def reference(python, images, batches, cores):
  script = os.path.join(ROOT, 'bench', 'torch_reference_pipeline.py')
  return _run([python, script, f'--images={images}', f'--workers={cores}', f'--batches={batches}'], cores)


def _run(command, cores):
  cpus = ','.join(str(c) for c in range(cores))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  out = subprocess.run(['taskset', '-c', cpus] + command, capture_output=True, text=True, env=env, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])['images_per_s']


def main(argv):
  del argv
  images = FLAGS.images
  if not images:
    sys.path.insert(0, os.path.join(ROOT, 'bench'))
    from make_jpegs import make_jpegs

    images = make_jpegs(tempfile.mkdtemp(prefix='jpegs-'))
  results = {'ours (tf.data)': [], 'torchvision DataLoader': [], 'ours, pixels on device': []}
  for r in range(FLAGS.rounds):
    results['ours (tf.data)'].append(ours(images, FLAGS.batches, FLAGS.cores))
    results['ours, pixels on device'].append(ours(images, FLAGS.batches, FLAGS.cores, augment_on_device=True))
    if FLAGS.reference_python:
      results['torchvision DataLoader'].append(reference(FLAGS.reference_python, images, FLAGS.batches, FLAGS.cores))
    print(f'round {r + 1}: ' + ', '.join(f'{k} {v[-1]:.1f} img/s' for k, v in results.items() if v), flush=True)
  print(
    f'\n{time.strftime("%Y-%m-%d")}, {FLAGS.cores} cores, kNN-MoCo views (2 x 160 + 6 x 96, A+, constrained), '
    f'batch 64, median of {FLAGS.rounds}:'
  )
  medians = {k: statistics.median(v) for k, v in results.items() if v}
  for name, value in medians.items():
    print(f'  {name:24s} {value:8.1f} images/s  ({value / FLAGS.cores:.1f} per core)')
  if 'torchvision DataLoader' in medians:
    for name in ('ours (tf.data)', 'ours, pixels on device'):
      print(f'  ratio {name} / reference: {medians[name] / medians["torchvision DataLoader"]:.2f}x')


if __name__ == '__main__':
  app.run(main)
