"""The paper's scene studies in miniature (Van Gansbeke et al. 2021) on a set of colour scenes that
`python -m input_pipeline.scenes --out=DIR` wrote, each row trained at one equal budget with every seed in its own
work directory, then scored by every protocol below; the random-init network is the baseline row. `--study`:
- methods (Tables 4 and 9): MoCo-v2, + constrained multi-crop, + A+, + the NN loss (scripts/ablation.py's rows and
  configs), pretrained on the scene-centric training images;
- centric (Sec. 3.1): MoCo-v2 pretrained on the object-centric training images against the scene-centric ones (the
  generator writes both kinds with the same count and class balance).
`--cam` adds Fig. S2 in miniature: the CAMs of the MoCo-v2 and the multi-crop row (methods) on the same first
--cam_images object-centric test images (a class after another), side by side in OUT/cam_seedS.png.

  python scripts/scene_study.py --data=DIR --out=runs/scene_methods [--study=methods|centric] [--steps=N]
      [--seeds=0,1] [--rows=mocov2,knn] [--override=FIELD=VALUE ...] [--protocols=knn,voc07_svm] [--max_examples=N]
      [--cam]

Pretraining reads a kind's training images only, unlabelled to the method: voc07:DIR/<kind>/VOC2007:trainval (the
train split's list; folder:DIR/scene/VOC2007/JPEGImages would also read the test images lying beside them). The kNN
monitor's bank and queries are the object-centric folders, DIR/object/train and DIR/object/test.

The scene scale (every row; --override changes any of it): the views at the set's side (crops.large_size; the small
crops half of it), and the queue at most half the training images (a multiple of the batch): a queue of an epoch
or more (the demo's 1024 keys are one of 1000 images) mostly holds a key of the query's own image among its
negatives.

Each protocol at the small images' size (the defaults are for 224-512 px photographs):
- VOC07 SVM mAP (scene-centric trainval -> test): the authors resize the shorter side to 256 and cut the central
  224 (7/8); here the images keep their side and the central 7/8 of it is cut, the same geometry with no resampling;
- kNN and linear probe top-1 (object-centric train folder -> test folder): the whole image at the set's side, as
  the network saw its large crops (the CAMs likewise);
- segment retrieval mIoU (scene-centric masks, train -> val): 512 px is about VOC's own size, so here the set's;
- label propagation J&F (the videos' val split): frames at their own size, as DAVIS's 480p (the protocol's
  default); its radius stays 12 feature cells;
- fine-tuned segmentation mIoU (scene-centric masks), where jax_moco.evaluators has the `segmentation` protocol:
  crops of the set's side (the recipe's 513 px is VOC's), SEGMENTATION_EPOCHS epochs, one fine-tuning.

Resumable (scripts/runs.py): a finished run is read, not rerun, a half-done one resumes from its checkpoint, and
each evaluation is cached in its run's work directory. The table (Markdown) is printed and written to
OUT/table.md after every row.
"""

import json
import os
import statistics
import sys

from absl import app
from absl import flags
from PIL import Image
from PIL import ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jax_moco import console  # noqa: E402
from jax_moco import evaluators  # noqa: E402
from scripts import ablation  # noqa: E402
from scripts import runs  # noqa: E402

STUDIES = ('methods', 'centric')
# What input_pipeline.scenes writes, as the study reads it.
SET_LAYOUT = (
  'settings.json',
  'scene/VOC2007/ImageSets/Main',
  'scene/VOC2007/ImageSets/Segmentation',
  'scene/VOC2007/JPEGImages',
  'scene/VOC2007/SegmentationClass',
  'object/VOC2007/ImageSets/Main',
  'object/train',
  'object/test',
  'video/JPEGImages/480p',
  'video/Annotations/480p',
  'video/ImageSets/2017',
)
VOC07_CROP = 224 / 256  # the VOC07 SVMs' centre crop of the resized image (voc07_svm.RESIZE_RATIO's inverse)
SEGMENTATION_EPOCHS = 10
CAM_ROWS = ('mocov2', 'multicrop')  # Fig. S2: two crops against multi-crop


def check_scene_set(data):
  """The set's settings.json (its settings, classes); refused, naming every missing path, when `data` is not a
  folder input_pipeline.scenes wrote."""
  missing = [p for p in SET_LAYOUT if not os.path.exists(os.path.join(data, p))]
  if missing:
    raise ValueError(
      f'--data={data} is not a set written by `python -m input_pipeline.scenes --out=DIR`: it lacks '
      + ', '.join(missing)
    )
  with open(os.path.join(data, 'settings.json')) as f:
    return json.load(f)


def pretraining_set(data, kind):
  """The training split of the scene- or object-centric images (`kind`), never their test images."""
  return f'voc07:{data}/{kind}/VOC2007:trainval'


def study_rows(study, data):
  """{row: (label, configs/<method>.py, dotted overrides, pretraining kind)} of `study` on the set `data`."""
  if study == 'methods':
    rows = {name: (*row, 'scene') for name, row in ablation.STUDIES['methods'].items()}
  elif study == 'centric':
    rows = {
      'object': ('object-centric (one object, large and central)', 'mocov2', {}, 'object'),
      'scene': ('scene-centric (1-4 objects, anywhere)', 'mocov2', {}, 'scene'),
    }
  else:
    raise ValueError(f'--study={study}: choose one of {", ".join(STUDIES)}')
  return {
    name: (label, method, {**o, 'dataset': pretraining_set(data, kind)}, kind)
    for name, (label, method, o, kind) in rows.items()
  }


def scale_overrides(data, settings, batch):
  """Every row's settings for the set (module docstring): views at its side, the queue within half an epoch."""
  size = settings['settings']['size']
  half_epoch = settings['settings']['train_images'] // 2
  return {
    'crops.large_size': size,
    'crops.small_size': size // 2,
    'moco.queue_size': max(batch, half_epoch // batch * batch),
    'knn_bank_dataset': f'folder:{data}/object/train',
    'eval_dataset': f'folder:{data}/object/test',
  }


def row_config(rows, name, seed, scale, steps=None, overrides=None):
  """The config of row `name` of `rows` trained with `seed`: its method's demo, the scene scale, the row's and then
  the common overrides."""
  _, method, row_overrides, _ = rows[name]
  return runs.config(method, {**scale, **row_overrides, **(overrides or {}), 'seed': seed}, steps)


def protocols(data, size, names=None):
  """[(column, protocol, score key, evaluate's keywords)] of every protocol (or those `names`, refused where
  unknown), each at the set's size (module docstring)."""
  objects = dict(dataset=f'folder:{data}/object/train', test_dataset=f'folder:{data}/object/test', image_size=size)
  scene_masks = f'voc:{data}/scene/VOC2007'
  table = [
    (
      'VOC07 SVM mAP',
      'voc07_svm',
      'map',
      dict(dataset=f'voc07:{data}/scene/VOC2007', image_size=round(size * VOC07_CROP)),
    ),
    ('kNN top-1', 'knn', 'top1', objects),
    ('linear probe top-1', 'linear_probe', 'top1', objects),
    ('segment retrieval mIoU', 'segment_retrieval', 'miou', dict(dataset=scene_masks, image_size=size)),
    ('label propagation J&F', 'label_propagation', 'jf_mean', dict(dataset=f'davis:{data}/video')),
  ]
  if 'segmentation' in evaluators.PROTOCOLS:  # the fine-tuned protocol, where this checkout has it
    table.append(
      ('fine-tuned segmentation mIoU', 'segmentation', 'miou', dict(dataset=scene_masks, **segmentation_options(size)))
    )
  unknown = sorted(set(names or ()) - {protocol for _, protocol, _, _ in table})
  if unknown:
    raise ValueError(f'--protocols: {", ".join(unknown)} not among {", ".join(p for _, p, _, _ in table)}')
  return [request for request in table if not names or request[1] in names]


def segmentation_options(size):
  """Small settings for the fine-tuned segmentation, those of them the protocol takes (evaluators.OPTIONS)."""
  wanted = dict(crop_size=size, epochs=SEGMENTATION_EPOCHS, runs=1)
  taken = {option.name for option in evaluators.OPTIONS['segmentation']}
  return {name: value for name, value in wanted.items() if name in taken}


# What each protocol measures, for the note under the table.
MEASURES = {
  'voc07_svm': "a linear SVM per class (the authors' recipe) on the scene-centric trainval images, mAP on test",
  'knn': 'weighted kNN of the object-centric test images against the train images',
  'linear_probe': 'logistic regression on the object-centric train images (L2 chosen on 20 % of them), top-1 on test',
  'segment_retrieval': 'K-means regions of the scene-centric images, each val region labelled by its nearest train '
  'region, mIoU',
  'label_propagation': "each val video's first instance masks propagated through its frames, J&F mean",
  'segmentation': 'the backbone fine-tuned with a segmentation head on the scene-centric train masks, mIoU on val',
}


def run_study(
  data, out, study, names=None, seeds=(0, 1), steps=None, overrides=None, max_examples=None, protocol_names=None
):
  """Trains and scores every row of `study` (or those `names`) with every seed in OUT/<row>_seed<seed>, by every
  protocol (or those `protocol_names`); shows the table after each row and returns it."""
  settings = check_scene_set(data)
  rows = study_rows(study, data)
  scale = scale_overrides(data, settings, batch_size(overrides))
  requests = protocols(data, settings['settings']['size'], protocol_names)
  return runs.train_and_score(
    out,
    names or list(rows),
    seeds,
    lambda name, seed: row_config(rows, name, seed, scale, steps, overrides),
    lambda workdir, config, random_init=False: evaluations(workdir, requests, max_examples, random_init),
    lambda done, random_init: table(rows, done, seeds, random_init, requests),
  )


def batch_size(overrides):
  """The rows' global batch: the overrides', else the demo's."""
  return (overrides or {}).get('batch_size') or runs.config('mocov2', {}).batch_size


def evaluations(workdir, requests, max_examples, random_init=False):
  """{column: result} of the run in `workdir` (or of its network at initialisation), each cached there."""
  return {
    column: runs.cached_evaluation(workdir, protocol, max_examples, random_init, **keywords)
    for column, protocol, _, keywords in requests
  }


def score(result, key):
  if key not in result:
    raise KeyError(f'{result["protocol"]} gave no {key!r} (its result has {", ".join(result)})')
  return result[key]


def table(rows, done, seeds, random_init, requests):
  """The random-init baseline, then one row per trained row of `done` ({row: [run, ...]}), a column per protocol."""
  columns = [(column, key) for column, _, key, _ in requests]
  header = ['pretraining', 'config', 'images', *(f'{column} %' for column, _ in columns), 'steps', 'batch', 'train s']

  def cells(results):  # a column's cell: the mean over the seeds' results, each seed's in brackets
    return [runs.mean_cell([score(r[column], key) for r in results]) for column, key in columns]

  body = [['random init', '-', '-', *cells(random_init), 0, '-', '-']]
  for name, row in done.items():
    label, method, row_overrides, kind = rows[name]
    shown = f'configs/{method}.py' + ''.join(f' {k}={v}' for k, v in row_overrides.items() if k != 'dataset')
    seconds = statistics.mean(run['summary']['train_seconds'] for run in row)
    results = [run['scores'] for run in row]
    body.append(
      [label, shown, f'{kind}-centric', *cells(results), row[0]['summary']['steps'], row[0]['batch'], f'{seconds:.0f}']
    )
  which = f'Mean over seeds {", ".join(map(str, seeds))} (each seed in brackets)' if seeds[1:] else f'Seed {seeds[0]}'
  notes = [f'{which}; the pretraining images are the train split of the set; each column by jax_moco.evaluate:']
  for column, protocol, _, _ in requests:
    result = next(iter(done.values()))[0]['scores'][column]
    size = f'{result["image_size"]} px' if result['image_size'] else 'at their own size'
    tested = f'{result["num_videos"]} videos' if 'num_videos' in result else f'{result["num_test"]} test images'
    notes.append(f'- {column}: --protocol={protocol}, {MEASURES[protocol]} ({size}, {tested}).')
  return runs.markdown_table(header, body) + '\n\n' + '\n'.join(notes)


def cam_pictures(out, seeds, data, max_examples, cam_images):
  """Per seed, OUT/cam_seed<seed>.png: the CAM pictures of the CAM_ROWS' runs on the same object-centric test
  images, side by side; returns their paths."""
  # The object-centric images in the VOC07 lists' order, where image i shows class i mod 7 (the folders' order
  # would show the first class only); the probe's classifier is then fitted on their labels, one class an image.
  objects = dict(dataset=f'voc07:{data}/object/VOC2007', test_dataset=f'voc07:{data}/object/VOC2007:test')
  labels = [ablation.STUDIES['methods'][name][0] for name in CAM_ROWS]
  written = []
  for seed in seeds:
    pictures = [
      runs.cached_evaluation(
        os.path.join(out, f'{name}_seed{seed}'), 'cam', max_examples, cam_images=cam_images, **objects
      )['picture']
      for name in CAM_ROWS
    ]
    written.append(side_by_side(pictures, labels, os.path.join(out, f'cam_seed{seed}.png')))
  return written


def side_by_side(paths, titles, path, band=24):
  """The pictures at `paths` in one PNG at `path`, left to right, each under its title."""
  images = [Image.open(p).convert('RGB') for p in paths]
  canvas = Image.new('RGB', (sum(i.width for i in images), band + max(i.height for i in images)), 'white')
  draw, left = ImageDraw.Draw(canvas), 0
  for image, title in zip(images, titles):
    draw.text((left + 8, band // 4), title, fill='black')
    canvas.paste(image, (left, band))  # over any of the title that reaches below the band
    left += image.width
  canvas.save(path)
  return path


def define_flags():
  """Command-line flags, defined only when run as a program (so the module imports cleanly anywhere)."""
  flags.DEFINE_string('data', None, 'A set written by `python -m input_pipeline.scenes --out=DIR`.')
  flags.DEFINE_string('out', 'runs/scene_study', 'One work directory per row and seed under here.')
  flags.DEFINE_enum('study', 'methods', list(STUDIES), 'Which study: its rows (see the module docstring).')
  flags.DEFINE_integer(
    'steps', None, "Training steps of every run (default: the demo's num_train_steps).", lower_bound=1
  )
  flags.DEFINE_list('seeds', ['0', '1'], 'Seeds; every row trains once with each.')
  flags.DEFINE_list('rows', [], 'Rows of the study to run, in order (default: all).')
  flags.DEFINE_multi_string(
    'override', [], 'FIELD=VALUE, a dotted config override applied to every row (repeat the flag for several).'
  )
  flags.DEFINE_list(
    'protocols', [], 'Protocols scoring every row, a column each (default: all those of the module docstring).'
  )
  flags.DEFINE_integer(
    'max_examples', None, 'Every protocol: at most this many examples of each set (a quick look).', lower_bound=1
  )
  flags.DEFINE_bool('cam', False, 'Also the CAM pictures of the MoCo-v2 and multi-crop rows (--study=methods).')
  flags.DEFINE_integer('cam_images', 8, 'Object-centric test images in each CAM picture.', lower_bound=1)
  flags.mark_flags_as_required(['data'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  with console.bad_input(ValueError, KeyError, AttributeError, TypeError):
    settings = check_scene_set(f.data)
    rows = study_rows(f.study, f.data)
    names = f.rows or list(rows)
    unknown = [r for r in names if r not in rows]
    if unknown:
      raise ValueError(f'unknown rows {unknown} of --study={f.study}; choose from {list(rows)}')
    if f.cam and (f.study != 'methods' or not set(CAM_ROWS) <= set(names)):
      raise ValueError(f'--cam compares the rows {" and ".join(CAM_ROWS)} of --study=methods: run both')
    overrides = dict(ablation.parse_override(o) for o in f.override)
    seeds = ablation.parse_seeds(f.seeds)
    # A misspelt field or a value of the wrong type, before anything trains.
    row_config(rows, names[0], seeds[0], scale_overrides(f.data, settings, batch_size(overrides)), f.steps, overrides)
    protocols(f.data, settings['settings']['size'], f.protocols)
  console.import_tensorflow(f.verbosity)  # the parameter tables and Orbax's lines only with -v 1
  run_study(f.data, f.out, f.study, names, seeds, f.steps, overrides, f.max_examples, f.protocols)
  if f.cam:
    for path in cam_pictures(f.out, seeds, f.data, f.max_examples, f.cam_images):
      print(f'CAM pictures ({" | ".join(ablation.STUDIES["methods"][n][0] for n in CAM_ROWS)}): {path}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
