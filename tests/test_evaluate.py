"""Evaluation: kNN against scikit-learn, the linear probe's protocol (grid, split, refit) against direct scikit-learn
fits, features with masked padding against one-image-at-a-time, and the CLI path on a saved run."""

import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.neighbors import KNeighborsClassifier

from input_pipeline import pipeline
from input_pipeline import sources
from jax_moco import checkpointing
from jax_moco import evaluate
from jax_moco import evaluators
from jax_moco import files
from jax_moco import monitor
from jax_moco import normalization
from jax_moco import sharding
from jax_moco import state as state_lib
from jax_moco.evaluators import features as features_lib
from jax_moco.evaluators import knn
from jax_moco.evaluators import label_propagation
from jax_moco.evaluators import linear_classification
from jax_moco.evaluators import linear_probe
from jax_moco.evaluators import segment_retrieval


def clusters(n, num_classes=5, dim=16, spread=0.1, seed=0):
  """Gaussian clusters around fixed random centres (the same for every seed: seeds draw samples)."""
  centres = np.random.default_rng(100).normal(size=(num_classes, dim))
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, n)
  return (centres[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32), labels


def test_knn_matches_scikit_learn_weighted_cosine_neighbours():
  bank_x, bank_y = clusters(600, spread=1.5)
  test_x, test_y = clusters(300, spread=1.5, seed=1)
  k, temperature = 20, 0.1
  reference = KNeighborsClassifier(
    k, metric='cosine', algorithm='brute', weights=lambda d: np.exp((1.0 - d) / temperature)
  ).fit(bank_x, bank_y)
  expected = np.mean(reference.predict(test_x) == test_y) * 100
  got = knn.knn_classify(bank_x, bank_y, test_x, test_y, k, temperature)
  assert 30 < expected < 100 and got['top1'] == pytest.approx(expected)
  # Chunking the queries and the bank (with a ragged last chunk) changes nothing.
  assert knn.knn_classify(bank_x, bank_y, test_x, test_y, k, temperature, query_chunk=70, bank_chunk=97) == got


def test_knn_separable_is_perfect_and_shuffled_is_chance():
  bank_x, bank_y = clusters(500)
  test_x, test_y = clusters(200, seed=1)
  assert knn.knn_classify(bank_x, bank_y, test_x, test_y)['top1'] == 100.0
  shuffled = np.random.default_rng(2).permutation(bank_y)
  assert abs(knn.knn_classify(bank_x, shuffled, test_x, test_y, k=50)['top1'] - 20.0) < 12.0


def probe_test_score(train_x, train_y, test_x, test_y, grid, metric='top1'):
  """The probe's test score (%) after choosing the constant on 20 % of train: the protocol's two steps."""
  model, _ = linear_probe.select_and_fit(train_x, train_y, grid=grid, n_jobs=1)
  return linear_probe.test_scores(model, test_x, test_y)[metric]


def test_linear_probe_follows_the_protocol():
  grid = linear_probe.L2_GRID
  assert len(grid) == 45 and grid[0] == pytest.approx(1e-5) and grid[-1] == pytest.approx(1e5)
  np.testing.assert_allclose(np.diff(np.log10(grid)), 10 / 44)
  train_x, train_y = clusters(300, spread=2.5)
  val_x, val_y = clusters(100, spread=2.5, seed=1)
  test_x, test_y = clusters(200, spread=2.5, seed=2)
  short_grid = grid[::11]
  model, selection = linear_probe.select_and_fit(train_x, train_y, (val_x, val_y), short_grid, n_jobs=1)
  # Selection: the constant with the best validation accuracy (the first among ties), from direct fits.
  val_scores = [
    np.mean(LogisticRegression(C=1 / l2, max_iter=1000).fit(train_x, train_y).predict(val_x) == val_y)
    for l2 in short_grid
  ]
  assert selection['l2'] == pytest.approx(short_grid[int(np.argmax(val_scores))])
  np.testing.assert_allclose([s for _, s in selection['validation_curve']], np.array(val_scores) * 100)
  # Refit on train + validation with that constant, scored on test.
  refit = LogisticRegression(C=1 / selection['l2'], max_iter=1000).fit(
    np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y])
  )
  scores = linear_probe.test_scores(model, test_x, test_y)
  assert scores == {'metric': 'top1', 'top1': pytest.approx(np.mean(refit.predict(test_x) == test_y) * 100)}


def test_linear_probe_reports_the_fits_that_stop_at_max_iter_instead_of_a_warning_each(monkeypatch):
  train_x, train_y = clusters(300, spread=2.5)
  fit = linear_probe.fit
  monkeypatch.setattr(linear_probe, 'fit', lambda x, y, l2: fit(x, y, l2, max_iter=2 if l2 < 1 else 1000))
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # a ConvergenceWarning that escaped would fail the test here
    _, selection = linear_probe.select_and_fit(train_x, train_y, grid=[1e-3, 1e-1, 10.0], n_jobs=1)
  assert selection['unconverged_l2'] == [1e-3, 1e-1]
  assert selection['converged'] == (selection['l2'] == 10.0)


def test_linear_probe_separable_is_perfect_shuffled_is_chance_and_split_is_stratified():
  train_x, train_y = clusters(400)
  test_x, test_y = clusters(200, seed=1)
  grid = linear_probe.L2_GRID[::8]
  assert probe_test_score(train_x, train_y, test_x, test_y, grid) == 100.0
  shuffled = np.random.default_rng(3).permutation(train_y)
  assert abs(probe_test_score(train_x, shuffled, test_x, test_y, grid) - 20) < 12
  train_idx, val_idx = linear_probe.split_train_validation(train_y)
  assert len(val_idx) == 80 and not set(train_idx) & set(val_idx)
  np.testing.assert_allclose(np.bincount(train_y[val_idx]) / 80, np.bincount(train_y) / 400, atol=0.02)


def multi_label_targets(features, seed, difficult=0.05):
  """Class c is present where feature c is high (a linear rule); a few entries are marked difficult (-1)."""
  targets = (features[:, :4] > 0.3).astype(np.int32)
  targets[np.random.default_rng(seed).random(targets.shape) < difficult] = -1
  return targets


def test_linear_probe_multi_label_is_per_class_binary_with_map():
  rng = np.random.default_rng(0)
  train_x, val_x, test_x = (rng.normal(size=(n, 8)).astype(np.float32) for n in (300, 100, 200))
  noisy = lambda x, seed: x + np.random.default_rng(seed).normal(scale=0.7, size=x.shape)  # noqa: E731
  train_y, val_y, test_y = (multi_label_targets(noisy(x, s), s) for s, x in enumerate((train_x, val_x, test_x)))
  grid = linear_probe.L2_GRID[::11]
  model, selection = linear_probe.select_and_fit(train_x, train_y, (val_x, val_y), grid, n_jobs=1)
  scores = linear_probe.test_scores(model, test_x, test_y)
  assert scores['metric'] == 'map' and len(scores['ap_per_class']) == 4

  def direct_map(fit_x, fit_y, l2, eval_x, eval_y):
    """One scikit-learn binary classifier per class on its known examples; AP on the known test examples."""
    aps = []
    for c in range(fit_y.shape[1]):
      fit_known, eval_known = fit_y[:, c] != -1, eval_y[:, c] != -1
      model = LogisticRegression(C=1 / l2, max_iter=1000).fit(fit_x[fit_known], fit_y[fit_known, c])
      aps.append(average_precision_score(eval_y[eval_known, c], model.decision_function(eval_x[eval_known])))
    return np.mean(aps) * 100

  val_maps = [direct_map(train_x, train_y, l2, val_x, val_y) for l2 in grid]
  assert selection['l2'] == pytest.approx(grid[int(np.argmax(val_maps))])
  np.testing.assert_allclose([s for _, s in selection['validation_curve']], val_maps)
  expected = direct_map(
    np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]), selection['l2'], test_x, test_y
  )
  assert 60 < scores['map'] < 100 and scores['map'] == pytest.approx(expected)
  # Separable targets give 100 %, shuffled ones about the classes' frequencies.
  clean = probe_test_score(
    train_x, multi_label_targets(train_x, 0, 0), test_x, multi_label_targets(test_x, 1, 0), grid, 'map'
  )
  assert clean > 99
  shuffled = probe_test_score(train_x, rng.permutation(train_y), test_x, test_y, grid, 'map')
  prevalence = np.mean([np.mean(test_y[test_y[:, c] != -1, c]) for c in range(4)]) * 100
  assert abs(shuffled - prevalence) < 15


def test_padded_extraction_equals_one_image_at_a_time(make_config):
  config = make_config()
  encoder = state_lib.create_encoder(config)
  state = state_lib.initial_state(config, 0)
  variables = state_lib.backbone_variables(state.params, state.batch_stats)
  source = sources.get_source('embedded_subset:test')
  extract = features_lib.Features(sharding.create_mesh(), encoder.backbone, 'imagenet', 32, 16)
  features, labels = extract(variables, source, max_examples=37)  # 37 = 2 whole batches + 5, padded with masks
  assert features.shape[0] == 37
  for i in (0, 17, 36):
    image = pipeline.resize_for_eval(source.load(i)['image'], 32).numpy()[None]
    alone = encoder.backbone.apply(variables, normalization.normalize(jnp.asarray(image)), train=False)
    np.testing.assert_allclose(features[i], np.asarray(alone)[0], rtol=1e-4, atol=1e-5)
    assert labels[i] == int(source.load(i)['label'])


def test_a_set_smaller_than_one_batch_is_padded_to_the_devices_not_to_the_batch(make_config):
  config = make_config()
  state = state_lib.initial_state(config, 0)
  variables = state_lib.backbone_variables(state.params, state.batch_stats)
  mesh = sharding.create_mesh()
  extract = features_lib.Features(mesh, state_lib.create_encoder(config).backbone, 'imagenet', 32, 500)
  network, batches = extract.feature_fn, []
  extract.feature_fn = lambda v, images: batches.append(images.shape[0]) or network(v, images)
  features, _ = extract(variables, sources.get_source('embedded_subset:test'), max_examples=37)
  assert features.shape[0] == 37 and batches == [40] and mesh.size == 8  # 37 rounded up to 8 devices, not 500


def test_a_cache_file_is_written_whole_or_not_at_all(tmp_path):
  path = str(tmp_path / 'features.npz')
  with files.atomic_write(path, 'wb') as f:
    np.savez(f, features=np.ones(3))
  with pytest.raises(KeyboardInterrupt):
    with files.atomic_write(path, 'wb') as f:
      f.write(b'half a file')
      raise KeyboardInterrupt
  with np.load(path) as kept:
    np.testing.assert_array_equal(kept['features'], np.ones(3))
  assert os.listdir(tmp_path) == ['features.npz']  # no temporary file left behind


def test_an_output_path_that_cannot_be_a_file_is_refused_naming_the_flag(tmp_path):
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(IsADirectoryError, match=f'^--out={tmp_path} is a directory'):
    files.prepare_output(str(tmp_path), 'out')
  with pytest.raises(NotADirectoryError, match=f'^--out={tmp_path}/a_file/b/t.md: {tmp_path}/a_file is a file'):
    files.prepare_output(str(tmp_path / 'a_file' / 'b' / 't.md'), 'out')
  files.prepare_output(str(tmp_path / 'new' / 'folders' / 't.md'), 'out')
  assert os.path.isdir(tmp_path / 'new' / 'folders')


def test_normalization_statistics_and_the_head_feature_monitor(make_config):
  images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), np.uint8)
  for name, (mean, std) in normalization.NORMALIZATION.items():
    expected = (images / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(normalization.normalize(jnp.asarray(images), name), expected, rtol=1e-5, atol=1e-5)
  # knn.feature='head' scores the normalised 128-d projection (the MoCo CIFAR-10 Colab's monitor).
  config = make_config(**{'knn.feature': 'head', 'model.head': 'linear', 'model.normalization': 'cifar10'})
  encoder = state_lib.create_encoder(config)
  state = state_lib.initial_state(config, 0)
  task = monitor.KnnMonitor(config, sharding.create_mesh(), encoder, *monitor.datasets(config)).knn.task
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  features, _ = task.features(variables, task.test, 16)
  assert features.shape == (16, 128)
  np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
  image = pipeline.resize_for_eval(task.test.load(3)['image'], 32).numpy()[None]
  _, alone = encoder.apply(variables, normalization.normalize(jnp.asarray(image), 'cifar10'), train=False)
  np.testing.assert_allclose(features[3], np.asarray(alone)[0], rtol=1e-4, atol=1e-5)


def test_one_table_of_the_protocols_options_gives_the_flags_and_the_evaluators_options():
  flags = evaluate.option_flags()
  assert set(flags) == {option.name for options in evaluators.OPTIONS.values() for option in options}
  # An option two protocols take is one flag whose help says how each reads it.
  assert flags['batch_size'] == (
    int,
    'linear_classification: global batch (default 256); segment_retrieval: images a global batch (default: 16, '
    "rounded up to a multiple of the device count); segmentation, depth: global batch (default: the dataset's recipe, "
    'finetune.RECIPES)',
  )
  assert flags['n_jobs'][1].startswith('linear_probe, cam: ')
  # What is not given takes its default; an option of another protocol is refused, naming it.
  assert vars(evaluators.options('segment_retrieval', kmeans_k=4)) == dict(
    kmeans_k=4, kmeans_seed=0, batch_size=None, dense_output='stride8_dilated'
  )
  refusal = r'^epochs: not an option of protocol=knn \(its options: knn_k, knn_temperature\)'
  with pytest.raises(ValueError, match=refusal):
    evaluators.options('knn', epochs=3)
  with pytest.raises(ValueError, match='^knn_k=0: must be positive'):  # not the run's k instead
    evaluators.options('knn', knn_k=0)
  with pytest.raises(ValueError, match='^epochs=-1, lr=0.0: must be positive'):
    evaluators.options('linear_classification', epochs=-1, lr=0.0, weight_decay=0.0)
  # The protocols' library functions default to the same settings.
  assert evaluators.options('segment_retrieval').kmeans_k == segment_retrieval.K
  propagation = evaluators.options('label_propagation')
  assert label_propagation.Propagation() == label_propagation.Propagation(
    propagation.propagation_context,
    propagation.propagation_topk,
    propagation.propagation_temperature,
    propagation.propagation_radius,
  )


def test_evaluate_a_saved_run_writes_results_and_reuses_features(make_config, tmp_path, monkeypatch):
  config = make_config()
  state = state_lib.initial_state(config, 1)
  checkpointer = checkpointing.Checkpointer(str(tmp_path / 'checkpoints'), config.to_dict(), 100, 3)
  checkpointer.save(3, state.replace(step=jnp.asarray(3, jnp.int32)), force=True)
  checkpointer.close()
  result = evaluate.evaluate(str(tmp_path), 'knn', max_examples=400)
  assert result['step'] == 3 and result['num_train'] == 400 and 10 <= result['top1'] <= 100
  assert json.load(open(tmp_path / 'eval' / 'step_3_online' / 'knn.json'))['top1'] == result['top1']
  assert 'kNN (k=200, T=0.1)' in evaluate.format_table(result)

  def no_network(*args, **kwargs):
    raise AssertionError('features should come from the cache')

  monkeypatch.setattr(features_lib.Features, 'extract', no_network)
  probe = evaluate.evaluate(str(tmp_path), 'linear_probe', max_examples=400, n_jobs=1)
  assert 10 <= probe['top1'] <= 100 and len(probe['validation_curve']) == 45
  # A rerun with other options replaces knn.json; the log keeps every result, in order, with its options.
  rerun = evaluate.evaluate(str(tmp_path), 'knn', max_examples=400, knn_k=5)
  directory = tmp_path / 'eval' / 'step_3_online'
  assert json.load(open(directory / 'knn.json')) == json.loads(json.dumps(rerun))
  logged = [json.loads(line) for line in open(directory / evaluate.RESULTS_LOG)]
  assert [(r['protocol'], r['options'], r['top1']) for r in logged] == [
    ('knn', {}, result['top1']),
    ('linear_probe', {'n_jobs': 1}, probe['top1']),
    ('knn', {'knn_k': 5}, rerun['top1']),
  ]
  assert 'linear probe' in evaluate.format_table(probe)
  (tmp_path / 'unlabelled').mkdir()
  Image.new('RGB', (8, 8)).save(tmp_path / 'unlabelled' / 'a.png')
  with pytest.raises(ValueError, match='has no labels'):
    evaluate.evaluate(str(tmp_path), 'knn', dataset='folder:' + str(tmp_path / 'unlabelled'))
  # One table of protocols, and each protocol's options only.
  assert evaluators.PROTOCOLS == (
    'knn',
    'linear_probe',
    'linear_classification',
    'segment_retrieval',
    'cam',
    'voc07_svm',
    'label_propagation',
    'segmentation',
    'depth',
  )
  with pytest.raises(ValueError, match="protocol='linear': choose one of knn, linear_probe, linear_classification, "):
    evaluate.evaluate(str(tmp_path), 'linear')
  with pytest.raises(ValueError, match='epochs: not an option of protocol=knn'):
    evaluate.evaluate(str(tmp_path), 'knn', epochs=3)
  with pytest.raises(ValueError, match='^max_examples=0: must be positive'):  # not all of them instead
    evaluate.evaluate(str(tmp_path), 'knn', max_examples=0)


@pytest.mark.fast_compile
@pytest.mark.heavy(45)  # seconds on 2 cores, for the order of tests/conftest.py
def test_linear_classification_learns_and_resumes_exactly(make_config, tmp_path, monkeypatch):
  config = make_config()
  state = state_lib.initial_state(config, 1)
  for run in ('straight', 'resumed'):
    checkpointer = checkpointing.Checkpointer(str(tmp_path / run / 'checkpoints'), config.to_dict(), 100, 3)
    checkpointer.save(0, state, force=True)
    checkpointer.close()
  settings = dict(dataset='embedded_subset:test', epochs=10, batch_size=400, lr=10.0)  # 2000 images: 5 steps an epoch
  straight = evaluate.evaluate(str(tmp_path / 'straight'), 'linear_classification', **settings)
  assert straight['steps'] == 50 and straight['top1'] > 20  # ten classes (chance 10 %): it learns

  make = linear_classification.pipeline.classification_dataset

  class Preempted(Exception):
    pass

  def stops_after_epoch_one(*args, **kwargs):
    def batches():
      for i, batch in enumerate(make(*args, **kwargs).as_numpy_iterator()):
        if i == 7:
          raise Preempted
        yield batch

    return type('Stream', (), {'as_numpy_iterator': lambda self: batches()})()

  with monkeypatch.context() as patch:
    patch.setattr(linear_classification.pipeline, 'classification_dataset', stops_after_epoch_one)
    with pytest.raises(Preempted):
      evaluate.evaluate(str(tmp_path / 'resumed'), 'linear_classification', **settings)
  # Continues from the epoch-1 save; other settings are refused rather than resumed.
  resumed = evaluate.evaluate(str(tmp_path / 'resumed'), 'linear_classification', **settings)
  assert resumed['top1'] == straight['top1']
  assert 'linear classification (10 epochs' in evaluate.format_table(resumed)
  with pytest.raises(checkpointing.ConfigMismatchError, match=r'lr: checkpoint 10\.0 vs now 5\.0'):
    evaluate.evaluate(str(tmp_path / 'resumed'), 'linear_classification', **{**settings, 'lr': 5.0})
  with pytest.raises(checkpointing.ConfigMismatchError, match=r'weight_decay: checkpoint 0\.0 vs now 0\.0001'):
    evaluate.evaluate(str(tmp_path / 'resumed'), 'linear_classification', **{**settings, 'weight_decay': 1e-4})


def test_linear_classification_weight_decay_is_coupled_as_in_pytorch():
  # With a zero gradient, PyTorch's SGD (coupled decay, momentum buffer starting at the first gradient) moves a
  # weight by -lr * weight_decay * w in its first step.
  tx = linear_classification.optimizer(30.0, 100, weight_decay=1e-4)
  w = {'kernel': jnp.full((2, 3), 2.0)}
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, w), tx.init(w), w)
  np.testing.assert_allclose(updates['kernel'], -30.0 * 1e-4 * 2.0, rtol=1e-6)
  none, _ = linear_classification.optimizer(30.0, 100).update(jax.tree.map(jnp.zeros_like, w), tx.init(w), w)
  np.testing.assert_array_equal(none['kernel'], 0.0)
