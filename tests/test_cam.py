"""Class activation maps (Van Gansbeke et al. 2021, "Revisiting Contrastive Methods for Unsupervised Learning of
Visual Representations", Fig. S2): the CAM of a known linear map on a known feature map against the NumPy formula,
the probe's classifier as one linear map whose CAMs average to scikit-learn's decision values (two classes and a
class missing from training included), bilinear upsampling, the grid's layout, and the protocol end to end on a
tiny run's checkpoint, reading the classifier the linear probe saved."""

import functools
import json

import numpy as np
from PIL import Image
import pytest
from sklearn.linear_model import LogisticRegression

from input_pipeline import sources
from jax_moco import evaluate
from jax_moco.evaluators import cam
from jax_moco.evaluators import linear_probe
from tests import helpers


def test_cam_is_the_class_weighted_sum_of_the_feature_maps():
  rng = np.random.default_rng(0)
  maps, weight = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(6, 5))
  expected = np.zeros((2, 3, 4, 6))
  for n, y, x, c in np.ndindex(expected.shape):
    expected[n, y, x, c] = sum(weight[c, k] * maps[n, y, x, k] for k in range(5))
  np.testing.assert_allclose(cam.class_activation_maps(maps, weight), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('classes', [(0, 1, 2), (0, 2), (0, 1, 3)])  # multinomial, two classes, class 2 missing
def test_the_probe_as_a_linear_map_averages_its_cams_to_the_decision_values(classes):
  rng = np.random.default_rng(1)
  maps = rng.normal(size=(30, 2, 3, 4))
  labels = np.array(classes)[np.arange(30) % len(classes)]
  pooled = maps.mean(axis=(1, 2))
  model = LogisticRegression(C=10.0).fit(pooled, labels)
  weight, bias = linear_probe.weights(model, 4)
  logits = np.asarray(cam.class_activation_maps(maps, weight)).mean(axis=(1, 2)) + bias
  np.testing.assert_array_equal(logits.argmax(axis=1), model.predict(pooled))
  missing = sorted(set(range(4)) - set(classes))
  assert np.isneginf(bias[missing]).all() and not weight[missing].any()
  known = np.array(classes)
  if len(classes) == 2:  # scikit-learn's one logit difference, as two opposite halves
    np.testing.assert_allclose(logits[:, 2] - logits[:, 0], model.decision_function(pooled), rtol=1e-5, atol=1e-5)
  else:
    np.testing.assert_allclose(logits[:, known], model.decision_function(pooled), rtol=1e-5, atol=1e-5)
  # Multi-label: one binary classifier per class; the true class is the present one scored highest.
  assert cam.true_classes(np.array([[1, 0, 1], [0, -1, 0]]), np.array([[0.0, 5.0, 2.0], [1, 2, 3]])).tolist() == [2, -1]


def picture_shape(path):
  """(height / width) of a PNG that opens as a whole picture."""
  with Image.open(path) as picture:
    picture.load()
    width, height = picture.size
  return height / width


def test_bilinear_upsampling_and_the_grid_layout(tmp_path):
  ramp = np.array([[0.0, 1.0, 2.0, 3.0]] * 2)
  up = cam.upsample_bilinear(ramp, 4, 8)  # bilinear keeps a linear ramp linear between the outer pixel centres
  np.testing.assert_allclose(np.diff(up[0, 1:-1]), 0.5, atol=1e-6)
  np.testing.assert_allclose(up[:, 0], 0.0)
  np.testing.assert_allclose(up[:, -1], 3.0)
  assert cam.unit_range(up).min() == 0.0 and cam.unit_range(up).max() == 1.0
  images = np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3), np.uint8)
  heat = np.random.default_rng(3).random((5, 32, 32))
  titles = [[f'row {r} image {i}' for i in range(5)] for r in range(3)]
  # Four images in four columns are one group of three rows (image, top class CAM, true class CAM) of square
  # pictures; a fifth wraps into a second group below.
  one_group = cam.draw_grid(str(tmp_path / 'four.png'), images[:4], heat, heat, titles, columns=4)
  two_groups = cam.draw_grid(str(tmp_path / 'five.png'), images, heat, heat, titles, columns=4)
  assert picture_shape(one_group) == pytest.approx(len(cam.ROWS) / 4, rel=0.01)
  assert picture_shape(two_groups) == pytest.approx(2 * len(cam.ROWS) / 4, rel=0.01)


@pytest.mark.heavy(15)  # seconds on 2 cores, for the order of tests/conftest.py
def test_the_protocol_end_to_end_reads_the_probes_classifier(tmp_path, monkeypatch):
  workdir = helpers.save_tiny_run(tmp_path)
  # A few strong constants of the grid (the weak ones take L-BFGS long to fit): this test is about what CAM reads.
  monkeypatch.setattr(linear_probe, 'select_and_fit', functools.partial(linear_probe.select_and_fit, grid=[10, 100]))
  probe = evaluate.evaluate(workdir, 'linear_probe', max_examples=200, n_jobs=1)

  def no_fit(*args, **kwargs):
    raise AssertionError('the classifier should be the one linear_probe saved')

  monkeypatch.setattr(linear_probe, 'select_and_fit', no_fit)
  result = evaluate.evaluate(workdir, 'cam', max_examples=200, cam_images=5)
  directory = tmp_path / 'eval' / 'step_3_online'
  assert json.load(open(directory / 'cam.json')) == result
  assert result['picture'] == str(directory / 'cam.png')
  assert picture_shape(result['picture']) == pytest.approx(len(cam.ROWS) / 5, rel=0.01)  # a column an image
  assert result['l2'] == probe['l2'] and result['num_train'] == probe['num_train'] == 200
  assert result['map_size'] == [4, 4] and result['num_test'] == 5  # 32 px, CIFAR stem: output stride 8
  test = sources.get_source('embedded_subset:test')
  assert result['true'] == [int(test.load(i)['label']) for i in range(5)]
  # The maps' means are the probe's logits on the pooled features: the top classes are the probe's predictions.
  with np.load(directory / 'features_fashion_mnist_embedded_subset_test_32px_max200.npz') as cached:
    features = cached['features'][:5]
  (saved,) = directory.glob('linear_probe_classifier_*.npz')
  with np.load(saved) as classifier:
    assert result['predicted'] == (features @ classifier['weight'].T + classifier['bias']).argmax(axis=1).tolist()
  assert 'class activation maps' in evaluate.format_table(result)
