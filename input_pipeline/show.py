"""Visual check of the views: `python -m input_pipeline.show --config=configs/knn.py --out=views.png`.

One row per image: the original with the crop boxes drawn on it (anchor red, positive green, small crops blue),
then the anchor, the positive and the small crops as the model receives them (uint8, before normalisation).
"""

import dataclasses

from absl import app
from absl import flags
from ml_collections import config_flags

import input_pipeline
from jax_moco import console
from jax_moco import files

FLAGS = flags.FLAGS

BOX_COLOURS = ('red', 'lime') + ('deepskyblue',) * 64


def draw_views(config, out_path, num_images, source=None):
  """The picture of `num_images` of config.dataset's examples (from `source` where the caller has opened it) as the
  module docstring says."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.patches as patches
  import matplotlib.pyplot as plt

  # Imported here, as TensorFlow with it: the command line quiets TensorFlow's import first (main).
  from input_pipeline import pipeline
  from input_pipeline import sources

  if source is None:
    source = sources.get_source(config.dataset, config.data_dir)

  # Augmented here whatever crops.augment_on_device says: the same views the step would make.
  spec = dataclasses.replace(pipeline.view_spec(config.crops), augment_on_device=False)
  ds = pipeline.train_dataset(source, spec, num_images, config.seed, keep_boxes=True)
  batch = next(ds.as_numpy_iterator())
  # The original images, in the order the pipeline drew them (same counters, no augmentation).
  originals = [
    source.load(pipeline.example_index(c, source.num_examples, config.seed))['image'].numpy() for c in range(num_images)
  ]
  num_small = config.crops.num_small
  cols = 3 + num_small
  fig, axes = plt.subplots(num_images, cols, figsize=(1.8 * cols, 1.8 * num_images), squeeze=False)
  for row in range(num_images):
    ax = axes[row, 0]
    ax.imshow(originals[row])
    for k, (top, left, h, w) in enumerate(batch['boxes'][row]):
      ax.add_patch(patches.Rectangle((left - 0.5, top - 0.5), w, h, fill=False, lw=1.2, edgecolor=BOX_COLOURS[k]))
    views = [batch['anchor'][row], batch['positive'][row]] + [batch['small'][row, i] for i in range(num_small)]
    titles = ['anchor', 'positive'] + [f'small {i}' for i in range(num_small)]
    for col, (view, title) in enumerate(zip(views, titles), start=1):
      axes[row, col].imshow(view)
      if row == 0:
        axes[row, col].set_title(title, fontsize=8)
  axes[0, 0].set_title('boxes', fontsize=8)
  for ax in axes.flat:
    ax.axis('off')
  fig.suptitle(
    f'{config.method}: {source.name} (min_overlap={config.crops.min_overlap}, A+={config.crops.aplus})', fontsize=9
  )
  fig.tight_layout()
  fig.savefig(out_path, dpi=120)
  return out_path


def define_flags():
  """Command-line flags, defined only when run as a program (so the module imports cleanly anywhere)."""
  config_flags.DEFINE_config_file('config', None, 'Config file (as for training).', lock_config=True)
  flags.DEFINE_string('out', 'views.png', 'Output PNG.')
  flags.DEFINE_integer('num_images', 6, 'How many images (rows).', lower_bound=1)
  flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  input_pipeline.import_tensorflow(FLAGS.verbosity)
  from input_pipeline import sources

  with console.bad_input(ValueError, *console.PATH_ERRORS):
    files.prepare_output(FLAGS.out, 'out')
    source = sources.get_source(FLAGS.config.dataset, FLAGS.config.data_dir)
  print(draw_views(FLAGS.config, FLAGS.out, FLAGS.num_images, source))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=console.parse_config_flags)
