"""The voc07_svm protocol's parts against the authors' code: the AP against a transcription of their (PCL's)
get_precision_recall / calculate_ap, the SVM's settings against theirs, the per-class SVMs on features whose classes
a linear model can or cannot see, and the whole protocol on a generated folder in VOC 2007's layout (voc07:PATH)."""

import itertools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
from sklearn.svm import LinearSVC

from input_pipeline import sources
from input_pipeline import voc07
from jax_moco import normalization
from jax_moco import sharding
from jax_moco.evaluators import common
from jax_moco.evaluators import features as features_lib
from jax_moco.evaluators import voc07_svm


def authors_average_precision(targets, preds):
  """Van Gansbeke et al.'s evaluation/voc_svm/metrics.py (PCL's), transcribed loop for loop."""
  targets = np.array(targets > 0, dtype=np.float32)
  tog = np.hstack((targets[:, np.newaxis].astype(np.float64), preds[:, np.newaxis].astype(np.float64)))
  ind = np.argsort(preds)[::-1]
  sortcounts = np.array([tog[i, 0] for i in ind])
  tp, fp = sortcounts, sortcounts.copy()
  for i in range(sortcounts.shape[0]):
    fp[i] = 0.0 if sortcounts[i] >= 1 else 1.0
  precision = np.cumsum(tp) / (np.cumsum(tp) + np.cumsum(fp))
  recall = np.cumsum(tp) / np.sum(targets)
  rec, prec = recall.reshape(recall.size, 1), precision.reshape(precision.size, 1)
  z, o = np.zeros((1, 1)), np.ones((1, 1))
  mrec, mpre = np.vstack((z, rec, o)), np.vstack((z, prec, z))
  for i in range(len(mpre) - 2, -1, -1):
    mpre[i] = max(mpre[i], mpre[i + 1])
  indices = np.where(mrec[1:] != mrec[0:-1])[0] + 1
  ap = 0
  for i in indices:
    ap = ap + (mrec[i] - mrec[i - 1]) * mpre[i]
  return float(ap[0])


@pytest.mark.parametrize('seed', range(8))
def test_average_precision_is_the_authors_with_ties(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 300))
  targets = rng.choice([1, 0, -1], size=n, p=[0.3, 0.6, 0.1])
  targets[0] = 1
  # Few distinct values: many ties, which both break in NumPy's argsort order.
  scores = np.round(rng.normal(size=n) + targets, 1 if seed % 2 else 0)
  expected = authors_average_precision(targets, scores) * 100
  assert voc07_svm.average_precision(targets, scores) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_average_precision_of_perfect_and_reversed_rankings():
  targets = np.array([1, 1, 0, 0, 0, -1])
  scores = np.array([6.0, 5, 4, 3, 2, 1])
  assert voc07_svm.average_precision(targets, scores) == pytest.approx(100)
  # Positives last of six: precision 1/5 and 2/6 at the two recall steps.
  assert voc07_svm.average_precision(targets, -scores) == pytest.approx((0.5 * 2 / 6 + 0.5 * 2 / 6) * 100)
  assert np.isnan(voc07_svm.average_precision(np.zeros(4), np.arange(4.0)))


def test_the_svm_is_the_authors():
  # Their main.py's constructor, transcribed.
  theirs = LinearSVC(C=0.5, class_weight={1: 2, -1: 1}, intercept_scaling=1.0, penalty='l2', loss='squared_hinge',
                     tol=1e-4, dual=True, max_iter=2000, random_state=None)  # fmt: skip
  assert voc07_svm.svm(voc07_svm.COST).get_params() == theirs.get_params()
  features = np.array([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_allclose(voc07_svm.normalize_features(features), [[3 / 5.00001, 4 / 5.00001], [0, 0]])


def separable(n=240, classes=4, seed=0, dim=16):
  """Multi-label targets (1 / 0 / -1) and features whose first `classes` dimensions say which classes are present."""
  rng = np.random.default_rng(seed)
  present = rng.random((n, classes)) < 0.35
  features = np.concatenate([present * 2.0, np.zeros((n, dim - classes))], axis=1) + rng.normal(0, 0.3, (n, dim))
  targets = present.astype(np.int32)
  targets[rng.random((n, classes)) < 0.05] = -1  # difficult-only
  return voc07_svm.normalize_features(features), targets


def test_svms_see_what_the_features_show_and_not_shuffled_labels():
  shape = dict(n=300, classes=8, dim=64)
  features, targets = separable(**shape)
  test_features, test_targets = separable(**shape, seed=1)
  models, selections = zip(*voc07_svm.fit(features, targets, n_jobs=1))
  assert [s['cost'] for s in selections] == [0.5] * 8 and all(s['converged'] for s in selections)
  _, result = voc07_svm.scores(models, test_features, test_targets)
  assert result['map'] > 90 and len(result['ap_per_class']) == 8
  # Chance: the mAP of random rankings (about 37 here, above the 33 % of positives: the envelope only raises it).
  rng = np.random.default_rng(3)
  chance = np.mean([voc07_svm.average_precision(t, rng.normal(size=len(t))) for t in test_targets.T for _ in range(4)])
  shuffled = targets[rng.permutation(len(targets))]
  models, _ = zip(*voc07_svm.fit(features, shuffled, n_jobs=1))
  _, result = voc07_svm.scores(models, test_features, test_targets)
  assert result['map'] < chance + 10


def test_difficult_examples_are_negatives_or_left_out():
  features, targets = separable(n=120, classes=2)
  models, _ = zip(*voc07_svm.fit(features, targets, n_jobs=1))
  # Difficult-only test examples scored as sure positives: negatives hurt the AP, left out they change nothing.
  test_targets = targets.copy()
  test_targets[:10, 0] = -1
  decisions = np.stack([m.decision_function(features) for m in models], axis=1)
  decisions[:10, 0] = 100.0
  as_negative = voc07_svm.average_precision(test_targets[:, 0], decisions[:, 0])
  kept = test_targets[:, 0] != -1
  ignored = voc07_svm.average_precision(test_targets[kept, 0], decisions[kept, 0])
  assert as_negative < ignored
  _, result = voc07_svm.scores(models, features, test_targets, difficult='ignore')
  assert result['ap_per_class'][0] == pytest.approx(
    voc07_svm.average_precision(test_targets[kept, 0], models[0].decision_function(features)[kept])
  )


def test_cross_validation_picks_a_cost_per_class():
  features, targets = separable(n=150, classes=2)
  fitted = voc07_svm.fit(features, targets, costs=(1e-6, 0.5), n_jobs=1)
  for model, selection in fitted:
    assert len(selection['validation_ap']) == 2
    assert selection['cost'] == (1e-6, 0.5)[int(np.argmax(selection['validation_ap']))]
    assert model.C == selection['cost']


def test_single_labels_are_one_vs_rest_and_bad_options_are_named():
  np.testing.assert_array_equal(voc07_svm.class_targets(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
  assert voc07_svm.parse_costs('0.01, 0.1,1') == (0.01, 0.1, 1.0)
  with pytest.raises(ValueError, match='svm_costs'):
    voc07_svm.parse_costs('0,1')
  with pytest.raises(ValueError, match="^svm_costs='abc': give one positive cost"):
    voc07_svm.parse_costs('abc')
  # A class without a positive training example (a small subset) is not scored, nor counted in the mean.
  targets = np.array([[1, 0], [0, 0], [1, 0], [0, 1]])
  models, _ = zip(*voc07_svm.fit(np.eye(4)[:3], targets[:3], n_jobs=1))
  assert models[1] is None
  decisions, result = voc07_svm.scores(models, np.eye(4), targets)
  assert result['ap_per_class'][1] is None and result['map'] == result['ap_per_class'][0]
  assert np.all(decisions[:, 1] == -np.inf)


# The 20 classes' colours: the corners and edge midpoints of the RGB cube's {0, 128, 255} grid, not its grey centre.
COLOURS = [c for c in itertools.product((0, 128, 255), repeat=3) if c != (128, 128, 128)][:20]


def voc07_folder(root, splits=(('trainval', 60), ('test', 40))):
  """A VOC2007 folder whose image i shows classes i % 20 and (7i + 3) % 20 as blocks of their colours on grey, the
  second one marked difficult in every fifth image; returns root."""
  main = root / 'VOCdevkit' / 'VOC2007' / 'ImageSets' / 'Main'
  main.mkdir(parents=True)
  (root / 'VOCdevkit' / 'VOC2007' / 'JPEGImages').mkdir()
  start = 0
  for split, count in splits:
    ids = [f'{start + i:06d}' for i in range(count)]
    flags = np.full((count, 20), -1)
    for i, image_id in enumerate(ids):
      image = np.full((64, 64, 3), 128, np.uint8)
      for k, c in enumerate(sorted({(start + i) % 20, (7 * (start + i) + 3) % 20})):
        image[8 + 24 * k : 32 + 24 * k, 8:56] = COLOURS[c]
        flags[i, c] = 0 if k == 1 and i % 5 == 0 else 1
      Image.fromarray(image).save(root / 'VOCdevkit' / 'VOC2007' / 'JPEGImages' / f'{image_id}.jpg', quality=95)
    (main / f'{split}.txt').write_text(''.join(f'{i}\n' for i in ids))
    for c, name in enumerate(voc07.CLASSES):
      (main / f'{name}_{split}.txt').write_text(''.join(f'{i} {flags[n, c]:2d}\n' for n, i in enumerate(ids)))
    start += count
  return root


class ColourPresence(nn.Module):
  """An "encoder" that reads colour: per class colour, the share of pixels near it (the input is normalised)."""

  @nn.compact
  def __call__(self, images, train=False):
    colours = normalization.normalize(jnp.asarray(COLOURS, jnp.uint8))
    distance = jnp.abs(images[:, :, :, None, :] - colours).max(axis=-1)
    return (distance < 0.5).mean(axis=(1, 2))


def colour_task(config, train, test):
  extract = features_lib.Features(sharding.create_mesh(), ColourPresence(), 'imagenet', 48, 16, resize=56)
  return common.Task(config, extract, train, test)


def test_the_protocol_on_a_voc07_folder_sees_colour_and_not_shuffled_labels(tmp_path, make_config):
  root = voc07_folder(tmp_path)
  config = make_config()
  train, test = voc07_svm.Evaluator.open_datasets(config, f'voc07:{root}')
  assert train.name == f'voc07:{root}/VOCdevkit/VOC2007:trainval' and test.name.endswith('VOC2007:test')
  assert train.multi_label and train.num_classes == 20 and train.class_names == voc07.CLASSES
  np.testing.assert_array_equal(test.load(0)['label'].numpy()[[0, 3, 10]], [1, -1, 0])  # image 60: 0, 3 difficult
  result = dict(voc07_svm.Evaluator(colour_task(config, train, test), n_jobs=1).run({}))
  assert result['map'] > 95 and len(result['ap_per_class']) == 20 and result['costs'] == [0.5] * 20
  method, scores = voc07_svm.Evaluator.describe(result)
  assert method.startswith('linear SVM per class (C = 0.5') and 'AP per class (%): aeroplane 100.0, bicycle' in scores
  # The same images with every class list shuffled across them: about chance.
  shuffled = voc07_folder(tmp_path / 'shuffled')
  rng = np.random.default_rng(0)
  for listing in (shuffled / 'VOCdevkit' / 'VOC2007' / 'ImageSets' / 'Main').glob('*_trainval.txt'):
    lines = listing.read_text().splitlines()
    flags = rng.permutation([line.split()[1] for line in lines])
    listing.write_text(''.join(f'{line.split()[0]} {f}\n' for line, f in zip(lines, flags)))
  train, _ = voc07_svm.Evaluator.open_datasets(config, f'voc07:{shuffled}')
  chance = dict(voc07_svm.Evaluator(colour_task(config, train, test), n_jobs=1).run({}))
  assert chance['map'] < 50


def test_a_voc07_folder_with_a_damaged_list_is_refused_naming_the_file(tmp_path):
  root = voc07_folder(tmp_path, splits=(('test', 4),))
  listing = root / 'VOCdevkit' / 'VOC2007' / 'ImageSets' / 'Main' / 'dog_test.txt'
  listing.write_text('000000  1\n000001 2\n')
  with pytest.raises(ValueError, match=r'dog_test\.txt, line 2: expected'):
    sources.get_source(f'voc07:{root}:test')
  listing.write_text('000000  1\n')
  with pytest.raises(ValueError, match=r'dog_test\.txt lacks 3 images of test\.txt'):
    sources.get_source(f'voc07:{root}:test')
  with pytest.raises(FileNotFoundError, match=r'trainval\.txt is missing'):
    sources.get_source(f'voc07:{root}')
