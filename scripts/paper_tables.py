"""Van Gansbeke et al. 2021's Table 4 or Table 9 ("Revisiting Contrastive Methods for Unsupervised Learning of Visual
Representations") with the paper's own rows beside a row for each of your checkpoints:

  python scripts/paper_tables.py --workdir=runs/A [--workdir=runs/B ...] [--table=9|4]
      [--voc07=PATH|tfds:voc/2007] [--imagenet=TRAIN,VAL] [--places=TRAIN,VAL] [--davis=PATH]
      [--voc=PATH] [--cityscapes=PATH] [--nyud=PATH] [--runs=N]
      [--random_init] [--noown_data] [--image_size=N] [--max_examples=N] [--linear_epochs=N] [--out=FILE.md]

A work directory is a training run's or one `jax_moco.import_torch` wrote (the authors' released checkpoints).
Each column is measured by the `jax_moco.evaluate` protocol the paper's figure comes from, on the data the flags
give: VOC07 mAP by `voc07_svm` (the authors' linear SVMs), ImageNet and Places top-1 by `linear_classification`
with the paper's weight decay 1e-4 (appendix A.2), DAVIS J&F by `label_propagation`, the fine-tuned columns by
`segmentation` (VOC, Cityscapes and NYUD mIoU) and `depth` (NYUD rmse) with the paper's recipes (appendix A.3, A.5),
the mean and sample standard deviation of --runs fine-tunings each. A column whose data is not given shows '-' and
the notes name the flag that adds it. Two columns are not the paper's: kNN top-1 and the SVMs' mAP (one-vs-rest) on
each run's own sets (its kNN bank and eval_dataset), so a run on the embedded data has figures too.

Every result is cached under the run's DIR/eval/step_N_online/paper_tables/<column>.json (beside jax_moco.evaluate's
own results and feature caches) with the request that made it, so a rerun with the same flags runs nothing; a
fine-tuned column also reads jax_moco.evaluate's own result (segmentation_KIND.json, depth.json there) when that was
made with the settings the table asks for. The table (Markdown) is printed and, with --out, written to a file.
"""

import dataclasses
import json
import os
import shutil
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jax_moco import console  # noqa: E402
from jax_moco import evaluate  # noqa: E402
from jax_moco import evaluators  # noqa: E402
from jax_moco import files  # noqa: E402
from jax_moco.evaluators import finetune  # noqa: E402
from scripts import runs  # noqa: E402

# Van Gansbeke et al. 2021, appendix A.2: the ImageNet and Places linear classifiers, 100 epochs at weight decay 1e-4
# (lr 30 and batch 256 are linear_classification's defaults), on 224 px images as the VOC07 SVMs.
LINEAR_EPOCHS, LINEAR_WEIGHT_DECAY, PAPER_IMAGE_SIZE = 100, 1e-4, 224
FINE_TUNED = ('segmentation', 'depth')  # the protocols that fine-tune the backbone, --runs times
NYUD_FLAG = '--nyud=PATH (NYUD-v2 in the NYUD_MT layout of Vandenhende et al.)'


@dataclasses.dataclass(frozen=True)
class Column:
  header: str
  protocol: str
  metric: str = ''  # the key of the protocol's result shown
  flag: str = ''  # the flag giving its data; '' for the runs' own data
  digits: int = 1


COLUMNS = {
  'voc_seg': Column('VOC seg. mIoU', 'segmentation', 'miou', '--voc=PATH (a VOC 2012 folder, trainaug list)'),
  'cityscapes_seg': Column('Cityscapes seg. mIoU', 'segmentation', 'miou', '--cityscapes=PATH (leftImg8bit/, gtFine/)'),
  'nyud_seg': Column('NYUD seg. mIoU', 'segmentation', 'miou', NYUD_FLAG),
  'voc07': Column('VOC07 SVM mAP', 'voc07_svm', 'map', '--voc07=PATH (a VOCdevkit/VOC2007 folder) or tfds:voc/2007'),
  'imagenet': Column('ImageNet linear top-1', 'linear_classification', 'top1', '--imagenet=TRAIN,VAL'),
  'places': Column('Places linear top-1', 'linear_classification', 'top1', '--places=TRAIN,VAL'),
  'davis': Column('DAVIS J&F', 'label_propagation', 'jf_mean', '--davis=PATH (a DAVIS-2017 folder)'),
  'nyud_depth': Column('NYUD depth rmse', 'depth', 'rmse', NYUD_FLAG, digits=3),
  'own_knn': Column('own data: kNN top-1', 'knn', 'top1'),
  'own_svm': Column('own data: SVM mAP (one-vs-rest)', 'voc07_svm', 'map'),
}
OWN_DATA = ('own_knn', 'own_svm')

# The paper's figures as printed, in the order of each table's columns; '' where the paper reports none.
PAPER = {
  '4': (
    'Van Gansbeke et al. 2021, Table 4: ResNet-50 pretrained for 200 epochs on COCO; + MC: multi-crop, + CC: '
    'constrained multi-crop and momentum 0.995 (Sec. 4.1)',
    ('voc_seg', 'cityscapes_seg', 'nyud_seg', 'voc07', 'imagenet', 'places'),
    (
      ('Rand. init.', ('39.2', '65.0', '24.4', '', '', '')),
      ('MoCo', ('66.2', '70.3', '38.2', '76.1', '49.3', '45.1')),
      ('+ MC', ('69.9', '70.9', '39.4', '81.3', '53.4', '47.7')),
      ('+ CC', ('70.9', '71.3', '39.9', '82.8', '54.8', '48.1')),
      ('+ CC + A+', ('71.4', '72.0', '40.0', '83.7', '55.5', '48.2')),
      ('+ CC + A+ + kNN', ('71.9', '72.2', '40.9', '85.1', '55.9', '48.5')),
    ),
  ),
  '9': (
    'Van Gansbeke et al. 2021, Table 9: ResNet-50 pretrained for 800 epochs on COCO (its DenseCL and VirTex rows left '
    'out)',
    ('voc_seg', 'cityscapes_seg', 'nyud_seg', 'voc07', 'imagenet', 'places', 'davis', 'nyud_depth'),
    (
      ('Rand. init.', ('39.2', '65.0', '24.4', '', '', '', '40.8', '0.867')),
      ('MoCo', ('71.1', '71.3', '40.0', '81.0', '49.8', '44.7', '63.3', '0.606')),
      ('+ CC', ('72.2', '71.6', '40.4', '84.0', '54.6', '46.1', '65.5', '0.595')),
      ('+ CC + A+', ('72.7', '71.8', '40.7', '85.0', '56.0', '47.0', '65.7', '0.590')),
      ('+ CC + A+ + kNN', ('73.5', '72.3', '41.3', '85.9', '56.1', '48.6', '66.2', '0.580')),
    ),
  ),
}
TABLES = tuple(PAPER)


def columns(table):
  """The columns of `table`: the paper's, then the runs' own data."""
  return PAPER[table][1] + OWN_DATA


def _spec(given, kinds, default_kind):
  """A dataset string: `given` as it is when it names one of `kinds`, else a path read as default_kind:PATH."""
  return given if given.split(':', 1)[0] in kinds else f'{default_kind}:{given}'


def request(protocol, dataset=None, test_dataset=None, image_size=None, max_examples=None, options=None):
  """jax_moco.evaluate's arguments for one cell, every key present (a cached result is reused when they are equal)."""
  return dict(
    protocol=protocol,
    dataset=dataset,
    test_dataset=test_dataset,
    image_size=image_size,
    max_examples=max_examples,
    options=options or {},
  )


def requests(voc07=None, imagenet=(), places=(), davis=None, image_size=None, max_examples=None, linear_epochs=None):
  """{column: request} for the paper's columns whose data is given: the flags of the same names (module docstring);
  `image_size` (default 224, the paper's) is the classification columns'."""
  size, made = image_size or PAPER_IMAGE_SIZE, {}
  if voc07:
    if voc07.startswith('tfds:'):  # TFDS names VOC 2007's splits; a voc07: folder's test split is the default
      train, test = f'{voc07}:trainval', f'{voc07}:test'
    else:
      train, test = _spec(voc07, ('voc07',), 'voc07'), None
    made['voc07'] = request('voc07_svm', train, test, size, max_examples)
  options = dict(epochs=linear_epochs or LINEAR_EPOCHS, weight_decay=LINEAR_WEIGHT_DECAY)
  for column, given in (('imagenet', imagenet), ('places', places)):
    if given:
      if len(given) != 2:
        raise ValueError(f'--{column}={",".join(given)}: give the training and the validation set, TRAIN,VAL')
      train, test = (_spec(g, ('folder', 'tfds'), 'folder') for g in given)
      made[column] = request('linear_classification', train, test, size, max_examples, options)
  if davis:  # frames at their own size, as the paper's appendix A.6 runs them
    made['davis'] = request('label_propagation', _spec(davis, ('davis',), 'davis'), max_examples=max_examples)
  return made


def fine_tuned_requests(voc=None, cityscapes=None, nyud=None, runs=1, max_examples=None):
  """{column: request} of the fine-tuned columns whose folder is given (each at its dataset's recipe, whole test
  images at their own size); NYUD's folder gives its segmentation and its depth."""
  if runs < 1:
    raise ValueError(f'--runs={runs}: at least one fine-tuning')
  wanted = (
    ('voc_seg', 'voc', voc),
    ('cityscapes_seg', 'cityscapes', cityscapes),
    ('nyud_seg', 'nyud', nyud),
    ('nyud_depth', 'nyud', nyud),
  )
  made = {}
  for column, kind, given in wanted:
    if given:
      dataset = _spec(given, (kind,), kind)
      made[column] = request(COLUMNS[column].protocol, dataset, max_examples=max_examples, options={'runs': runs})
  return made


def latest_step(workdir):
  """The newest checkpoint's step, read from the folder names (nothing is restored)."""
  directory = os.path.join(workdir, 'checkpoints')
  steps = [int(name) for name in os.listdir(directory) if name.isdigit()] if os.path.isdir(directory) else []
  if not steps:
    raise FileNotFoundError(f'{workdir} is not a jax_moco work directory with a checkpoint (checkpoints/STEP/)')
  return max(steps)


def eval_directory(workdir, random_init, step):
  """Where jax_moco.evaluate writes the results and caches of one checkpoint (or of the random network)."""
  tag = 'random_init_online' if random_init else f'step_{step}_online'
  return os.path.join(os.path.abspath(workdir), 'eval', tag)


def _keep_classifier(directory, column):
  """linear_classification checkpoints its classifier in one folder a checkpoint (DIR/eval/<tag>/
  linear_classification/), which refuses another training set: a column's finished classifier moves under
  paper_tables/, so the next column (ImageNet, then Places) trains its own."""
  trained = os.path.join(directory, 'linear_classification')
  if os.path.isdir(trained):
    kept = os.path.join(directory, 'paper_tables', f'{column}_linear_classification')
    shutil.rmtree(kept, ignore_errors=True)  # the same column's classifier of another request, superseded
    os.makedirs(os.path.dirname(kept), exist_ok=True)
    os.rename(trained, kept)


def fine_tuned_result(directory, wanted, random_init):
  """jax_moco.evaluate's own result of the fine-tuned request `wanted` in `directory` (segmentation_KIND.json,
  depth.json) when it holds the settings the request makes: the same sets and sizes, the dataset's recipe, the
  default BN and as many runs; else None."""
  evaluator = evaluators.get(wanted['protocol'])
  train, test = evaluator.open_datasets(None, wanted['dataset'], wanted['test_dataset'])
  options = evaluators.options(wanted['protocol'], **wanted['options'])
  made = dict(
    protocol=wanted['protocol'],
    encoder='online',
    random_init=random_init,
    train_dataset=train.name,
    test_dataset=test.name,
    num_train=finetune.capped(train, wanted['max_examples']),
    num_test=finetune.capped(test, wanted['max_examples']),
    runs=options.runs,
    sync_bn=options.sync_bn,
    **finetune.recipe_fields(finetune.recipe_for(evaluator.kind_of(train), options)),
  )
  path = os.path.join(directory, f'{evaluator.name_for(train)}.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    result = json.load(f)
  return result if all(result.get(k) == v for k, v in made.items()) else None


def cached_evaluate(workdir, column, wanted, random_init=False):
  """The result of `wanted` (a request) on the run's latest checkpoint: read back when an earlier call made it (or,
  for a fine-tuned column, jax_moco.evaluate's own result of the same settings), else computed by jax_moco.evaluate
  and saved with the request as DIR/eval/<tag>/paper_tables/<column>.json."""
  directory = eval_directory(workdir, random_init, latest_step(workdir))
  path = os.path.join(directory, 'paper_tables', f'{column}.json')
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    if cached['request'] == wanted:
      return cached['result']
  if wanted['protocol'] in FINE_TUNED:
    done = fine_tuned_result(directory, wanted, random_init)
    if done is not None:
      return done
  arguments = {k: v for k, v in wanted.items() if k not in ('protocol', 'options')}
  result = evaluate.evaluate(workdir, wanted['protocol'], random_init=random_init, **arguments, **wanted['options'])
  if wanted['protocol'] == 'linear_classification':
    _keep_classifier(eval_directory(workdir, random_init, result['step']), column)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with files.atomic_write(path) as f:
    json.dump(dict(request=wanted, result=result), f, indent=2)
  return result


@dataclasses.dataclass
class Row:
  """One checkpoint's (or its random network's) results {column: result} and why a column has none."""

  workdir: str
  random_init: bool
  step: int
  results: dict
  missing: dict  # {column: why}

  def source(self):
    arch = next((r['arch'] for r in self.results.values()), None)
    which = 'random init' if self.random_init else f'step {self.step}'
    return f'{which} ({arch})' if arch else which

  def cell(self, column):
    """The figure, with ' ± ' and its sample standard deviation over the runs of a fine-tuned column's several runs."""
    if column not in self.results:
      return '-'
    result, metric, digits = self.results[column], COLUMNS[column].metric, COLUMNS[column].digits
    spread = f' ± {result[f"{metric}_std"]:.{digits}f}' if result.get('runs', 1) > 1 else ''
    return f'{result[metric]:.{digits}f}{spread}'


def own_data(workdir, random_init, image_size=None, max_examples=None):
  """(results, missing) of the own-data columns: kNN top-1 and the SVMs' mAP on the run's kNN bank -> eval_dataset,
  at the run's crops.large_size unless `image_size`. A run whose sets cannot be read here (none held out, another
  machine's paths) gets '-' and the reason instead of stopping the table."""
  results = {}
  try:
    knn = cached_evaluate(workdir, 'own_knn', request('knn', None, None, image_size, max_examples), random_init)
    results['own_knn'] = knn
    svm = request('voc07_svm', None, None, image_size or knn['image_size'], max_examples)
    results['own_svm'] = cached_evaluate(workdir, 'own_svm', svm, random_init)
  except (ValueError, FileNotFoundError) as e:
    return results, {c: str(e) for c in OWN_DATA if c not in results}
  return results, {}


def measure(workdir, table, wanted, random_init=False, with_own_data=True, image_size=None, max_examples=None):
  """One Row: every column of `table` that `wanted` ({column: request}) or the run's own data can fill."""
  results = {column: cached_evaluate(workdir, column, wanted[column], random_init) for column in wanted}
  missing = {}
  for column in PAPER[table][1]:
    if column not in wanted:
      missing[column] = f'give {COLUMNS[column].flag}'
  if with_own_data:
    own, why = own_data(workdir, random_init, image_size, max_examples)
    results.update(own)
    missing.update(why)
  else:
    missing.update({c: 'not asked for (--noown_data)' for c in OWN_DATA})
  # The step evaluated: the latest, or an older one where evaluate found the latest unreadable.
  step = next((r['step'] for r in results.values() if r['step'] is not None), latest_step(workdir))
  return Row(workdir, random_init, step, results, missing)


def _measured(result):
  """How a cell was measured: the protocol in words, its sets, their sizes."""
  method, _ = evaluators.get(result['protocol']).describe(result)
  sets = ' -> '.join(s for s in (result['train_dataset'], result['test_dataset']) if s)
  size = f'{result["image_size"]} px' if result['image_size'] else 'at their own size'
  if result['train_dataset']:  # a classification protocol; label propagation's method says what it read
    size = f'{result["num_train"]} / {result["num_test"]} images, {size}'
  return f'`{result["protocol"]}`, {method}, on {sets} ({size})'


def notes(table, rows, max_examples=None):
  """The lines under the table: where the paper's rows come from, how each column was measured or why it is '-'."""
  lines = [
    f'Paper rows: {PAPER[table][0]}; blank: the paper reports none. The other rows: each work directory at its latest '
    'checkpoint (from: its step and architecture) or at initialisation.'
  ]
  unfilled = {}  # {why: [headers]}
  for column in PAPER[table][1]:
    measured = [row.results[column] for row in rows if column in row.results]
    if measured:
      lines.append(f'- {COLUMNS[column].header}: {_measured(measured[0])}.')
    for why in dict.fromkeys(row.missing[column] for row in rows if column in row.missing):
      unfilled.setdefault(why, []).append(COLUMNS[column].header)
  lines += [f'- {", ".join(headers)}: -: {why}.' for why, headers in unfilled.items()]
  if any(' ± ' in row.cell(column) for row in rows for column in PAPER[table][1]):
    lines.append('- a ± s: the mean and sample standard deviation of --runs fine-tunings (the paper: VOC, five).')
  lines.append("- own data (not the paper's columns): each run's kNN bank -> eval_dataset; the SVMs one-vs-rest:")
  for row in rows:
    if 'own_svm' in row.results:
      knn, svm = row.results['own_knn'], row.results['own_svm']
      done = f'{_measured(knn)}; `voc07_svm`, {evaluators.get("voc07_svm").describe(svm)[0]}'
    else:
      done = '-: ' + '; '.join(dict.fromkeys(row.missing[c] for c in OWN_DATA))
    lines.append(f'  - {row.workdir}, {row.source()}: {done}')
  if max_examples:
    lines.append(f'At most {max_examples} examples of each set (--max_examples): a quick look, not the protocol.')
  return lines


def markdown(table, rows, max_examples=None):
  """The paper's rows, then `rows`, then the notes."""
  header = ['method', 'from'] + [COLUMNS[c].header for c in columns(table)]
  body = [[name, f'Table {table}', *figures, *[''] * len(OWN_DATA)] for name, figures in PAPER[table][2]]
  body += [[row.workdir, row.source(), *(row.cell(c) for c in columns(table))] for row in rows]
  return runs.markdown_table(header, body) + '\n\n' + '\n'.join(notes(table, rows, max_examples))


def paper_table(
  workdirs, table='9', wanted=None, random_init=False, with_own_data=True, image_size=None, max_examples=None
):
  """The Markdown table of `table` ('4' or '9') with a row for each work directory (and its random network with
  `random_init`), measuring what `wanted` (requests()) and the runs' own data allow, cached results read back."""
  wanted, flags_used = wanted or {}, {COLUMNS[c].flag for c in PAPER[table][1]}
  # A column of Table 9 alone is refused, unless its flag fills another (--nyud: NYUD segmentation in Table 4 too).
  extra = [COLUMNS[c].header for c in wanted if c not in PAPER[table][1] and COLUMNS[c].flag not in flags_used]
  if extra:
    raise ValueError(f'Table {table} has no {", ".join(extra)} column (Table 9 has)')
  wanted = {c: r for c, r in wanted.items() if c in PAPER[table][1]}
  rows = [
    measure(workdir, table, wanted, init, with_own_data, image_size, max_examples)
    for workdir in workdirs
    for init in ((False, True) if random_init else (False,))
  ]
  return markdown(table, rows, max_examples)


def define_flags():
  """Command-line flags, defined only when run as a program (so the module imports cleanly anywhere)."""
  flags.DEFINE_multi_string(
    'workdir', [], 'A work directory (a training run, or one jax_moco.import_torch wrote); repeat for several rows.'
  )
  flags.DEFINE_enum('table', '9', TABLES, 'Van Gansbeke et al. 2021, Table 4 (200 epochs) or Table 9 (800 epochs).')
  flags.DEFINE_string('voc07', None, 'VOC07 SVM mAP: a VOCdevkit/VOC2007 folder (trainval -> test) or tfds:voc/2007.')
  flags.DEFINE_list('imagenet', [], 'ImageNet linear top-1: TRAIN,VAL, folders of class sub-folders (or datasets).')
  flags.DEFINE_list('places', [], 'Places linear top-1: TRAIN,VAL, as --imagenet.')
  flags.DEFINE_string('davis', None, 'DAVIS J&F (Table 9): a DAVIS-2017 folder, scored on its val split.')
  flags.DEFINE_string('voc', None, 'VOC seg. mIoU: a PASCAL VOC 2012 folder (trainaug -> val, A.3).')
  flags.DEFINE_string('cityscapes', None, 'Cityscapes seg. mIoU: a folder of leftImg8bit/ and gtFine/ (train -> val).')
  flags.DEFINE_string('nyud', None, 'NYUD seg. mIoU and depth rmse: NYUD-v2 in the NYUD_MT layout (train -> val).')
  flags.DEFINE_integer(
    'runs', 1, 'Fine-tunings of each fine-tuned column, their mean and spread (the paper: VOC 5).', lower_bound=1
  )
  flags.DEFINE_bool('own_data', True, "Score each run's own sets (its kNN bank -> eval_dataset): kNN, SVMs.")
  flags.DEFINE_bool('random_init', False, "Add a row for each run's network at initialisation (the baseline).")
  flags.DEFINE_integer(
    'image_size',
    None,
    "Classification columns' image size (default: the paper's 224; own data: the run's).",
    lower_bound=1,
  )
  flags.DEFINE_integer('max_examples', None, 'At most this many examples of each set (a quick look).', lower_bound=1)
  flags.DEFINE_integer(
    'linear_epochs', LINEAR_EPOCHS, 'Epochs of the ImageNet and Places linear classifiers.', lower_bound=1
  )
  flags.DEFINE_string('out', None, 'Also write the table to this Markdown file.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if not f.workdir:
    raise app.UsageError('--workdir is required (repeat it for several runs)')
  with console.bad_input(ValueError, *console.PATH_ERRORS):
    if f.out:  # before the measurements, which its table holds
      files.prepare_output(f.out, 'out')
    wanted = requests(f.voc07, f.imagenet, f.places, f.davis, f.image_size, f.max_examples, f.linear_epochs)
    wanted.update(fine_tuned_requests(f.voc, f.cityscapes, f.nyud, f.runs, f.max_examples))
    console.import_tensorflow(f.verbosity)  # TensorFlow's C++ notices and Orbax's lines only with -v 1
    text = paper_table(f.workdir, f.table, wanted, f.random_init, f.own_data, f.image_size, f.max_examples)
  print(text)
  if f.out:
    with files.atomic_write(f.out) as out:
      out.write(text + '\n')


if __name__ == '__main__':
  define_flags()
  app.run(main)
