"""Evaluate a checkpoint's frozen backbone:

  python -m jax_moco.evaluate --workdir=DIR
      --protocol=knn|linear_probe|voc07_svm|linear_classification|segment_retrieval|cam|label_propagation|
                 segmentation|depth
      [--step=N] [--encoder=online|momentum] [--dataset=...] [--test_dataset=...] [--image_size=...]
      [--max_examples=N] [--random_init] [protocol options]

The protocols are jax_moco.evaluators' (each module says what it measures, which datasets it reads and at what
size). Each protocol's options (jax_moco.evaluators.OPTIONS, listed by --help) are flags here, refused for a
protocol that does not take them. What a protocol reads and writes besides its result:
- voc07_svm: --dataset=voc07:PATH scores PATH's test split unless --test_dataset; 256 px resized, 224 px cropped.
- segment_retrieval: --dataset=voc:PATH (required; --test_dataset defaults to its val split); 512 px unless
  --image_size.
- label_propagation: --dataset=davis:PATH[:SPLIT] (DAVIS-2017 val by default), frames at their own size unless
  --image_size; --propagation_save_masks writes PNGs under DIR/eval/<step>_<encoder>/label_propagation/.
- linear_classification: checkpointed and resumed under DIR/eval/<step>_<encoder>/linear_classification/.
- cam: writes DIR/eval/<step>_<encoder>/cam.png.
- segmentation (--dataset=voc:PATH | cityscapes:PATH | nyud:PATH) and depth (--dataset=nyud:PATH) fine-tune the
  backbone end to end (not frozen) with a dense head, checkpointed and resumed under
  DIR/eval/<step>_<encoder>/<segmentation_KIND|depth>/run_<i>/; their results are segmentation_KIND.json and
  depth.json.

Features are extracted data-parallel over all devices without augmentation, every example exactly once, and cached
under DIR/eval/<step>_<encoder>/, so a second protocol or a rerun does not run the network again. The result is
written there as <protocol>.json (the latest; every result also goes to results.jsonl there, one line each, so a
rerun with other options loses nothing) and printed as a table. `--random_init` scores the same architecture at its
initialisation, the baseline a trained encoder must beat.
"""

import json
import os

from absl import app
from absl import flags
import jax

from jax_moco import checkpointing
from jax_moco import evaluators
from jax_moco import files
from jax_moco import sharding
from jax_moco import state as state_lib
from jax_moco import workdir_lock
from jax_moco import xla_cpu

RESULTS_LOG = 'results.jsonl'


def _backbone_variables(config, state, encoder, random_init):
  if random_init:
    state = state_lib.initial_state(config, config.seed)
  return state_lib.backbone_variables(*state_lib.encoder_variables(state, encoder))


def _feature_extractor(config, image_size, directory, resize=None):
  """The frozen backbone's Features over all devices, cached under `directory`."""
  from jax_moco.evaluators import features  # reads data through TensorFlow (see evaluate)

  return features.Features(
    sharding.create_mesh(),
    state_lib.create_encoder(config).backbone,
    config.model.normalization,
    image_size,
    config.knn.batch_size,
    cache_dir=directory,
    compiler_options=xla_cpu.compiler_options(config.cpu_ynnpack_convolutions),
    resize=resize,
  )


def _write(result, directory, name):
  """`result` as DIR/<name>.json (the latest, replaced whole), and appended to DIR/results.jsonl, the log of every
  result written there: a rerun with other options replaces <name>.json but loses nothing."""
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    with files.atomic_write(os.path.join(directory, f'{name}.json')) as f:
      json.dump(result, f, indent=2)
    with open(os.path.join(directory, RESULTS_LOG), 'a') as f:
      f.write(json.dumps(result) + '\n')


def evaluate(
  workdir,
  protocol,
  step=None,
  encoder='online',
  dataset=None,
  test_dataset=None,
  image_size=None,
  max_examples=None,
  random_init=False,
  **options,
):
  """Runs one protocol on a checkpoint with the protocol's `options`; returns (and writes) its result dict."""
  # Imported here: it reads data through TensorFlow, whose import the command line quiets first (main).
  from jax_moco.evaluators import common

  evaluator = evaluators.get(protocol)
  evaluators.options(protocol, **options)  # an option of another protocol is refused before the run is read
  for name, value in (('max_examples', max_examples), ('image_size', image_size)):
    if value is not None and value <= 0:
      raise ValueError(f'{name}={value}: must be positive (leave it out for the default)')
  config, state, step = checkpointing.load_run(workdir, step)
  with workdir_lock.held(workdir):  # the run's directory: no training or other evaluation writes beside this one
    train, test = evaluator.open_datasets(config, dataset, test_dataset)
    image_size = image_size or evaluator.default_image_size
    if image_size is None:
      image_size = config.crops.large_size
    tag = f'random_init_{encoder}' if random_init else f'step_{step}_{encoder}'
    directory = os.path.join(os.path.abspath(workdir), 'eval', tag)
    extractor = _feature_extractor(config, image_size, directory, common.resize_before_crop(evaluator, image_size))
    task = common.Task(config, extractor, train, test, directory, max_examples, max_examples)
    instance = evaluator(task, **options)
    scores = instance.run(_backbone_variables(config, state, encoder, random_init))
    result = dict(
      protocol=protocol,
      workdir=os.path.abspath(workdir),
      step=None if random_init else step,
      encoder=encoder,
      random_init=random_init,
      arch=config.model.arch,
      image_size=image_size,
      train_dataset=None if train is None else train.name,
      test_dataset=test.name,
    )
    result.update(scores, options={k: v for k, v in options.items() if v is not None})
    # <protocol>.json, or the protocol's own name for results that differ by dataset (segmentation_voc.json)
    _write(result, directory, getattr(instance, 'result_name', protocol))
    return result


def format_table(result) -> str:
  """A short readable table of one result."""
  which = 'random init' if result['random_init'] else f'step {result["step"]}'
  method, scores = evaluators.get(result['protocol']).describe(result)
  rows = [('protocol', method), ('encoder', f'{result["encoder"]} {result["arch"]}, {which}')]
  if result['train_dataset']:  # not every protocol has a training set
    size = f'{result["image_size"]} px' if result['image_size'] else 'at their own size'  # 0: common.AS_STORED
    rows.append(('train', f'{result["train_dataset"]} ({result["num_train"]} images, {size})'))
  rows += [('test', f'{result["test_dataset"]} ({result["num_test"]} images)'), ('result', scores)]
  return '\n'.join(f'{name:9s} {value}' for name, value in rows)


def define_flags():
  """Command-line flags, defined only when run as a program (so the module imports cleanly anywhere)."""
  flags.DEFINE_string('workdir', None, 'Work directory of a training run (or of jax_moco.import_torch).')
  flags.DEFINE_enum('protocol', 'knn', evaluators.PROTOCOLS, 'Evaluation protocol (a module of jax_moco.evaluators).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).', lower_bound=0)
  flags.DEFINE_enum('encoder', 'online', state_lib.ENCODERS, "Whose backbone: f (online, as the papers) or f'.")
  flags.DEFINE_string(
    'dataset',
    None,
    "Training set: labelled (default: the config's kNN bank / training set); segment_retrieval: voc:PATH[:SPLIT]; "
    'segmentation: voc:, cityscapes: or nyud:PATH[:SPLIT]; depth: nyud:PATH[:SPLIT].',
  )
  flags.DEFINE_string(
    'test_dataset',
    None,
    "Test set (default: the config's eval_dataset; segment_retrieval, segmentation, depth: the folder's val).",
  )
  flags.DEFINE_integer(
    'image_size',
    None,
    "Eval image size (default: the config's crops.large_size; segment_retrieval: 512).",
    lower_bound=1,
  )
  flags.DEFINE_integer(
    'max_examples', None, 'Use at most this many examples of each set (a quick look).', lower_bound=1
  )
  flags.DEFINE_bool('random_init', False, 'Score the architecture at initialisation instead (the baseline).')
  define_option_flags()


_DEFINE = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string, bool: flags.DEFINE_bool}


def option_flags():
  """{name: (type, help)}: one flag for each option of the protocols (evaluators.OPTIONS); the help of an option
  several protocols take says how each reads it."""
  kinds, described = {}, {}  # described: name -> {description: [protocols]}
  for protocol, options in evaluators.OPTIONS.items():
    for option in options:
      kinds.setdefault(option.name, option.type)
      described.setdefault(option.name, {}).setdefault(option.description(), []).append(protocol)
  return {
    name: (kinds[name], '; '.join(f'{", ".join(protocols)}: {text}' for text, protocols in texts.items()))
    for name, texts in described.items()
  }


def define_option_flags():
  """The protocols' options as flags, unset by default: the protocol's own default applies."""
  for name, (kind, text) in option_flags().items():
    _DEFINE[kind](name, None, text + '.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if not f.workdir:
    raise app.UsageError('--workdir is required')
  from jax_moco import console

  console.import_tensorflow(f.verbosity)
  options = {name: f[name].value for name in option_flags() if f[name].value is not None}
  with console.bad_input(
    ValueError, FileNotFoundError, workdir_lock.WorkdirBusyError, workdir_lock.WorkdirUnwritableError
  ):
    result = evaluate(
      f.workdir,
      f.protocol,
      f.step,
      f.encoder,
      f.dataset,
      f.test_dataset,
      f.image_size,
      f.max_examples,
      f.random_init,
      **options,
    )
  print(format_table(result))


if __name__ == '__main__':
  define_flags()
  app.run(main)
