"""How much the views overlap, as Fig. 1 of Van Gansbeke et al. 2021 ("Revisiting Contrastive Methods for
Unsupervised Learning of Visual Representations") measures it:
`python -m input_pipeline.crop_stats --config=configs/mocov2.py --out=iou.png`.

Draws the crop boxes of the config's first training examples exactly as the pipeline does (views.draw_boxes, with
the pipeline's crop seed of each counter, on the image that counter selects) and plots the histogram of the
anchor-positive IoU and, with small crops, of each small crop's IoU with the anchor, with summary numbers: the
mean, the median and the share of pairs below 0.1, 0.3 and 0.5 (and above crops.max_iou when a cap is set).
"""

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

import input_pipeline
from jax_moco import console
from jax_moco import files

# The modules that read and crop the data import TensorFlow: sample_boxes, overlaps and report import them when
# called, so the command line quiets TensorFlow's import first (main).

FLAGS = flags.FLAGS
THRESHOLDS = (0.1, 0.3, 0.5)


def sample_boxes(config, num_samples: int, source=None) -> np.ndarray:
  """int32 [num_samples, 2 + N, 4]: the boxes (anchor, positive, small crops) of training examples 0, 1, ... of
  `config` (counters whose image does not decode are left out)."""
  import tensorflow as tf

  from input_pipeline import pipeline
  from input_pipeline import sources
  from input_pipeline import views

  source = source or sources.get_source(config.dataset, config.data_dir)
  spec = pipeline.view_spec(config.crops)

  def boxes_of(counter):
    image = source.load(pipeline.example_index(counter, source.num_examples, config.seed))['image']
    return views.draw_boxes(pipeline.crop_seed(config.seed, counter), tf.shape(image)[0], tf.shape(image)[1], spec)

  ds = tf.data.Dataset.range(num_samples).map(pipeline.graph_code(boxes_of), num_parallel_calls=tf.data.AUTOTUNE)
  if source.may_fail:
    ds = ds.ignore_errors()
  return np.concatenate(list(ds.batch(1024).as_numpy_iterator()))


def overlaps(boxes: np.ndarray) -> dict:
  """{'anchor-positive': IoU [S]} and, with small crops, {'small-anchor': IoU [S * N]} of sample_boxes' boxes."""
  from input_pipeline import crops

  anchor = boxes[:, 0]
  result = {'anchor-positive': crops.iou(boxes[:, 1], anchor).numpy()}
  if boxes.shape[1] > 2:
    result['small-anchor'] = crops.iou(boxes[:, 2:], anchor[:, None]).numpy().ravel()
  return result


def summary(iou: np.ndarray, max_iou: float = 1.0) -> dict:
  """Mean, median, the shares below THRESHOLDS and, with a cap, the share above it."""
  numbers = {'mean': float(np.mean(iou)), 'median': float(np.median(iou))}
  numbers.update({f'below {t:g}': float(np.mean(iou < t)) for t in THRESHOLDS})
  if max_iou < 1:
    numbers[f'above {max_iou:g}'] = float(np.mean(iou > max_iou))
  return numbers


def describe(numbers: dict) -> str:
  return ', '.join(f'{k} {v:.3f}' if k in ('mean', 'median') else f'{k} {100 * v:.1f} %' for k, v in numbers.items())


def plot(config, iou: dict, out_path: str, title: str) -> str:
  """A histogram of each IoU set over [0, 1], its summary in the legend; returns out_path."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  bins = np.linspace(0, 1, 41)
  for name, values in iou.items():
    weights = np.full(len(values), 100 / len(values))
    label = f'{name} ({len(values)}): {describe(_summary_of(name, values, config))}'
    ax.hist(values, bins=bins, weights=weights, alpha=0.6, label='\n'.join(_wrap(label)))
  if config.crops.max_iou < 1:
    ax.axvline(config.crops.max_iou, color='black', lw=1, ls='--', label=f'crops.max_iou = {config.crops.max_iou:g}')
  ax.set_xlabel('IoU with the anchor')
  ax.set_ylabel('% of pairs')
  ax.set_xlim(0, 1)
  ax.legend(fontsize=6.5, loc='upper center', bbox_to_anchor=(0.5, -0.14))
  ax.set_title('\n'.join(_wrap(title, 90)), fontsize=8)
  fig.savefig(out_path, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return out_path


def _summary_of(name, values, config):
  """summary() of one IoU set; the share above the cap only for the pairs it applies to."""
  return summary(values, config.crops.max_iou if name == 'anchor-positive' else 1.0)


def _wrap(text, width=70):
  """The legend's label in lines at commas."""
  lines = ['']
  for part in text.split(', '):
    if lines[-1] and len(lines[-1]) + len(part) > width:
      lines.append('')
    lines[-1] += (', ' if lines[-1] else '') + part
  return lines


def report(config, source, out_path: str, num_samples: int) -> str:
  """Samples `source` (config.dataset's), plots and prints the summary numbers; returns out_path."""
  iou = overlaps(sample_boxes(config, num_samples, source))
  for name, values in iou.items():
    print(f'{name}: {describe(_summary_of(name, values, config))}')
  c = config.crops
  title = (
    f'{config.method} on {source.name}: large scale {tuple(c.large_scale)}, small {c.num_small} x '
    f'{tuple(c.small_scale)}, min_overlap {c.min_overlap:g}, max_iou {c.max_iou:g}'
  )
  return plot(config, iou, out_path, title)


def define_flags():
  """Command-line flags, defined only when run as a program (so the module imports cleanly anywhere)."""
  config_flags.DEFINE_config_file('config', None, 'Config file (as for training).', lock_config=True)
  flags.DEFINE_string('out', 'iou.png', 'Output PNG.')
  flags.DEFINE_integer('num_samples', 10000, 'How many training examples to draw boxes for.', lower_bound=1)
  flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  input_pipeline.import_tensorflow(FLAGS.verbosity)
  from input_pipeline import sources

  with console.bad_input(ValueError, *console.PATH_ERRORS):
    files.prepare_output(FLAGS.out, 'out')
    source = sources.get_source(FLAGS.config.dataset, FLAGS.config.data_dir)
  print(report(FLAGS.config, source, FLAGS.out, FLAGS.num_samples))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=console.parse_config_flags)
