"""Evaluate a checkpoint's frozen backbone on a labelled dataset:

  python -m jax_moco.evaluate --workdir=DIR --protocol=knn|linear_probe [--step=N] [--encoder=online|momentum]
      [--dataset=...] [--test_dataset=...] [--image_size=...] [--max_examples=N] [--random_init]

- knn: weighted kNN on L2-normalised features (k = 200, T = 0.1 from the config; --knn_k / --knn_temperature),
  top-1 and top-5, the training-time monitor's classifier.
- linear_probe: paper 001's appendix A.2 protocol (`jax_moco.linear_probe`): top-1, or mAP for multi-label data
  such as tfds:voc/2007 (one binary classifier per class); --validation_dataset selects the constant on a dataset's
  own validation split instead of 20 % of train.
- linear: paper 002's linear classification (`jax_moco.linear_eval`: SGD, lr 30, 100 epochs, RandomResizedCrop +
  flip, frozen BN), checkpointed and resumed under DIR/eval/<step>_<encoder>/linear/ (--epochs, --batch_size, --lr).

Features are extracted data-parallel over all devices without augmentation (shorter side resized to the eval size,
centre crop), every example exactly once, and cached under DIR/eval/<step>_<encoder>/, so a second protocol or a
rerun does not run the network again. The result is written there as <protocol>.json and printed as a table.
`--random_init` scores the same architecture at its initialisation, the baseline a trained encoder must beat.
"""

import json
import os
import re

from absl import app
from absl import flags
import jax
import numpy as np

from input_pipeline import pipeline
from input_pipeline import sources
from jax_moco import checkpointing
from jax_moco import knn
from jax_moco import linear_eval
from jax_moco import linear_probe
from jax_moco import monitor
from jax_moco import state as state_lib
from jax_moco import step as step_lib
from jax_moco import xla_cpu

PROTOCOLS = ('knn', 'linear_probe', 'linear')


def _slug(name):
  return re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')


def _labelled(spec, data_dir, default_split):
  source = sources.get_source(spec, data_dir, default_split=default_split)
  if source.num_classes is None:
    raise ValueError(
      f'dataset {spec!r} has no labels; evaluation needs a labelled dataset (--dataset / --test_dataset)'
    )
  return source


def _backbone(config, state, encoder, random_init):
  if random_init:
    state = state_lib.initial_state(config, config.seed)
  if encoder == 'online':
    return monitor.backbone_variables(state.params, state.batch_stats)
  return monitor.backbone_variables(state.ema_params, state.ema_batch_stats)


def cached_features(cache_dir, source, extract, image_size, max_examples):
  """(features, labels) of `source`, from the cache when this encoder already saw it at this size."""
  suffix = f'_max{max_examples}' if max_examples else ''
  path = os.path.join(cache_dir, f'features_{_slug(source.name)}_{image_size}px{suffix}.npz')
  if os.path.exists(path):
    with np.load(path) as cached:
      return cached['features'], cached['labels']
  features, labels = extract(source)
  if jax.process_index() == 0:
    os.makedirs(cache_dir, exist_ok=True)
    np.savez(path + '.tmp.npz', features=features, labels=labels)
    os.replace(path + '.tmp.npz', path)  # never a half-written cache
  return features, labels


def evaluate(
  workdir,
  protocol,
  step=None,
  encoder='online',
  dataset=None,
  test_dataset=None,
  image_size=None,
  max_examples=None,
  knn_k=None,
  knn_temperature=None,
  random_init=False,
  n_jobs=-1,
  epochs=linear_eval.EPOCHS,
  batch_size=linear_eval.BATCH_SIZE,
  lr=linear_eval.LR,
  validation_dataset=None,
):
  """Runs one protocol on a checkpoint; returns (and writes) its result dict."""
  if protocol not in PROTOCOLS:
    raise ValueError(f'protocol={protocol!r}: choose one of {", ".join(PROTOCOLS)}')
  config, state, step = checkpointing.load_run(workdir, step)
  train_source = _labelled(dataset or config.knn_bank_dataset or config.dataset, config.data_dir, 'train')
  test_source = _labelled(test_dataset or config.eval_dataset or 'embedded:test', config.data_dir, 'test')
  val_source = validation_dataset and _labelled(validation_dataset, config.data_dir, 'validation')
  if protocol != 'linear_probe' and (train_source.multi_label or test_source.multi_label):
    raise ValueError(
      f'protocol={protocol} needs single-label data; {train_source.name} / {test_source.name} are '
      'multi-label: use --protocol=linear_probe (mAP)'
    )
  image_size = image_size or config.crops.large_size
  mesh = step_lib.create_mesh()
  backbone = state_lib.create_encoder(config).backbone
  feature_fn = monitor.make_feature_fn(
    mesh,
    backbone,
    config.model.normalization,
    compiler_options=xla_cpu.compiler_options(config.cpu_ynnpack_convolutions),
  )
  variables = _backbone(config, state, encoder, random_init)
  tag = f'random_init_{encoder}' if random_init else f'step_{step}_{encoder}'
  cache_dir = os.path.join(os.path.abspath(workdir), 'eval', tag)
  meta = dict(
    protocol=protocol,
    workdir=os.path.abspath(workdir),
    step=None if random_init else step,
    encoder=encoder,
    random_init=random_init,
    arch=config.model.arch,
    image_size=image_size,
    train_dataset=train_source.name,
    test_dataset=test_source.name,
  )
  if protocol == 'linear':
    result = linear_eval.linear_classification(
      mesh,
      backbone,
      feature_fn,
      variables,
      train_source,
      test_source,
      image_size,
      os.path.join(cache_dir, 'linear'),
      batch_size,
      config.knn.batch_size,
      epochs,
      lr,
      config.seed,
      config.model.normalization,
    )
    return _write(cache_dir, {**result, **meta, 'num_train': train_source.num_examples, 'num_test': result['num_val']})

  def extract(source):
    ds = pipeline.eval_dataset(
      source, image_size, config.knn.batch_size, jax.process_index(), jax.process_count(), max_examples=max_examples
    )
    return monitor.extract_features(feature_fn, variables, ds, mesh, description=f'features of {source.name}')

  train_x, train_y = cached_features(cache_dir, train_source, extract, image_size, max_examples)
  test_x, test_y = cached_features(cache_dir, test_source, extract, image_size, max_examples)
  num_classes = max(train_source.num_classes, test_source.num_classes)
  if protocol == 'knn':
    k, temperature = knn_k or config.knn.k, knn_temperature or config.knn.temperature
    result = knn.knn_classify(train_x, train_y, test_x, test_y, k, temperature, num_classes)
    result.update(k=k, temperature=temperature)
  else:
    validation = val_source and cached_features(cache_dir, val_source, extract, image_size, max_examples)
    result = linear_probe.linear_probe(train_x, train_y, test_x, test_y, validation=validation, n_jobs=n_jobs)
    if val_source:
      meta['validation_dataset'] = val_source.name
  return _write(cache_dir, {**result, **meta, 'num_train': len(train_y), 'num_test': len(test_y)})


def _write(cache_dir, result):
  """Writes a protocol's result (named by its protocol) as JSON next to its features; returns it."""
  if jax.process_index() == 0:
    os.makedirs(cache_dir, exist_ok=True)
    with open(os.path.join(cache_dir, f'{result["protocol"]}.json'), 'w') as f:
      json.dump(result, f, indent=2)
  return result


def format_table(result) -> str:
  """A short readable table of one result."""
  which = 'random init' if result['random_init'] else f'step {result["step"]}'
  if result['protocol'] == 'knn':
    method = f'kNN (k={result["k"]}, T={result["temperature"]})'
    scores = f'top-1 {result["top1"]:.2f} %, top-5 {result["top5"]:.2f} %'
  elif result['protocol'] == 'linear':
    method = f'linear classification ({result["epochs"]} epochs, lr {result["lr"]}, batch {result["batch_size"]})'
    scores = f'top-1 {result["top1"]:.2f} %'
  else:
    metric = result['metric']
    method = 'linear probe (logistic regression, L-BFGS' + (
      ', one binary classifier per class)' if metric == 'map' else ')'
    )
    name = 'mAP' if metric == 'map' else 'top-1'
    scores = (
      f'{name} {result[metric]:.2f} % (L2 = {result["l2"]:.3g}, chosen on validation at '
      f'{result["validation_" + metric]:.2f} %)'
    )
  rows = [
    ('protocol', method),
    ('encoder', f'{result["encoder"]} {result["arch"]}, {which}'),
    ('train', f'{result["train_dataset"]} ({result["num_train"]} images, {result["image_size"]} px)'),
    ('test', f'{result["test_dataset"]} ({result["num_test"]} images)'),
    ('result', scores),
  ]
  return '\n'.join(f'{name:9s} {value}' for name, value in rows)


def define_flags():
  """Command-line flags, defined only when run as a program (so the module imports cleanly anywhere)."""
  flags.DEFINE_string('workdir', None, 'Work directory of a training run (or of jax_moco.import_torch).')
  flags.DEFINE_enum('protocol', 'knn', PROTOCOLS, 'Evaluation protocol.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_enum('encoder', 'online', ('online', 'momentum'), "Whose backbone: f (online, as the papers) or f'.")
  flags.DEFINE_string('dataset', None, "Labelled training set (default: the config's kNN bank / training set).")
  flags.DEFINE_string('test_dataset', None, "Labelled test set (default: the config's eval_dataset).")
  flags.DEFINE_string('validation_dataset', None, 'linear_probe: choose L2 on this set (default: 20 % of train).')
  flags.DEFINE_integer('image_size', None, "Eval image size (default: the config's crops.large_size).")
  flags.DEFINE_integer('max_examples', None, 'Use at most this many examples of each set (a quick look).')
  flags.DEFINE_integer('knn_k', None, "k of the kNN classifier (default: the config's, 200).")
  flags.DEFINE_float('knn_temperature', None, "T of the kNN classifier (default: the config's, 0.1).")
  flags.DEFINE_bool('random_init', False, 'Score the architecture at initialisation instead (the baseline).')
  flags.DEFINE_integer('epochs', linear_eval.EPOCHS, 'Epochs of linear classification.')
  flags.DEFINE_integer('batch_size', linear_eval.BATCH_SIZE, 'Global batch of linear classification.')
  flags.DEFINE_float('lr', linear_eval.LR, 'Learning rate of linear classification.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS.workdir:
    raise app.UsageError('--workdir is required')
  import input_pipeline

  input_pipeline.tensorflow_on_cpu_only()
  f = flags.FLAGS
  try:
    result = evaluate(
      f.workdir,
      f.protocol,
      f.step,
      f.encoder,
      f.dataset,
      f.test_dataset,
      f.image_size,
      f.max_examples,
      f.knn_k,
      f.knn_temperature,
      f.random_init,
      epochs=f.epochs,
      batch_size=f.batch_size,
      lr=f.lr,
      validation_dataset=f.validation_dataset,
    )
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from e
  print(format_table(result))


if __name__ == '__main__':
  define_flags()
  app.run(main)
