"""Augmentation on the accelerator (`crops.augment_on_device`): the JAX ops and chain against the TF ones, on real
pixels, from the same parameter records; the pipeline's two modes give the same views. (That the train step trains
the same on either input: tests/test_bench_tools.py, through bench/device_augment.py.)

Tolerance: every op is bit-exact between TF and XLA except hue and blur, where XLA's fused float arithmetic (and
the blur's summation order, a TF convolution against a sum of shifted slices) rounds a few values the other way:
<= 1 level on < 1e-3 of the pixels. Whole chains inherit that bound.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from input_pipeline import host_augment
from input_pipeline import host_image_ops
from input_pipeline import pipeline
from input_pipeline import sources
from input_pipeline import views
from jax_moco import device_augment
from jax_moco import device_image_ops
from tests.helpers import tiny_config


def _affine(coefficients):
  return lambda images, arg: device_image_ops.affine_pil(images, coefficients(images.shape, arg))


ENHANCE = [0.6, 1.0, 1.3, 1.9, 0.2, 1.7]
OPS = [  # name, TF op, JAX op, per-view parameters for a batch of 6
  ('brightness', host_image_ops.adjust_brightness, device_image_ops.adjust_brightness, ENHANCE),
  ('contrast', host_image_ops.adjust_contrast, device_image_ops.adjust_contrast, ENHANCE),
  ('saturation', host_image_ops.adjust_saturation, device_image_ops.adjust_saturation, ENHANCE),
  ('sharpness', host_image_ops.adjust_sharpness, device_image_ops.adjust_sharpness, ENHANCE),
  ('hue', host_image_ops.adjust_hue, device_image_ops.adjust_hue, [-0.1, 0.0, 0.04, 0.5, -0.5, 0.33]),
  ('posterize', host_image_ops.posterize, device_image_ops.posterize, [8, 6, 4, 1, 2, 3]),
  ('solarize', host_image_ops.solarize, device_image_ops.solarize, [0.0, 100.0, 141.7, 255.0, 30.0, 200.0]),
  ('autocontrast', lambda x, _: host_image_ops.autocontrast(x), lambda x, _: device_image_ops.autocontrast(x), ENHANCE),
  ('equalize', lambda x, _: host_image_ops.equalize(x), lambda x, _: device_image_ops.equalize(x), ENHANCE),
  ('invert', lambda x, _: host_image_ops.invert(x), lambda x, _: device_image_ops.invert(x), ENHANCE),
  ('grayscale', lambda x, _: host_image_ops.grayscale(x), lambda x, _: device_image_ops.grayscale(x), ENHANCE),
  ('flip', lambda x, _: host_image_ops.flip_left_right(x), lambda x, _: device_image_ops.flip_left_right(x), ENHANCE),
  ('blur', host_image_ops.gaussian_blur, device_image_ops.gaussian_blur, [0.1, 0.5, 1.2, 2.0, 0.7, 1.9]),
  (
    'shear_x',
    host_image_ops.shear_x,
    _affine(device_image_ops.shear_x_coefficients),
    [-0.3, 0.0, 0.1, 0.2, 1 / 6, -0.1],
  ),
  (
    'shear_y',
    host_image_ops.shear_y,
    _affine(device_image_ops.shear_y_coefficients),
    [-0.3, 0.0, 0.1, 0.2, 1 / 6, -0.1],
  ),
  (
    'translate_x',
    host_image_ops.translate_x,
    _affine(device_image_ops.translate_x_coefficients),
    [-40.5, 0, 3.2, 60, 7, -3],
  ),
  (
    'translate_y',
    host_image_ops.translate_y,
    _affine(device_image_ops.translate_y_coefficients),
    [-40.5, 0, 3.2, 60, 7, -3],
  ),
  (
    'rotate',
    host_image_ops.rotate,
    _affine(device_image_ops.rotate_coefficients),
    [-30.0, 0.0, 9.0, 27.0, 13.3, -23.3],
  ),
]


@pytest.fixture(scope='module')
def photo_crops(china):
  """Six real 64 x 80 crops, one darkened and one with a flat channel (edge cases of the histogram ops)."""
  rng = np.random.default_rng(0)
  crops = np.stack([china[r : r + 64, c : c + 80] for r, c in rng.integers(0, 32, size=(6, 2))])
  crops[1] = crops[1] // 4
  crops[2, :, :, 1] = 77
  return crops


def _assert_close(got, expected, max_fraction):
  diff = np.abs(np.asarray(got).astype(np.int32) - np.asarray(expected).astype(np.int32))
  assert diff.max() <= 1, diff.max()
  assert np.mean(diff.max(-1) > 0) <= max_fraction, np.mean(diff.max(-1) > 0)


@pytest.mark.parametrize('name,tf_op,jax_op,params', OPS, ids=[c[0] for c in OPS])
def test_each_jax_op_computes_the_tf_op(photo_crops, name, tf_op, jax_op, params):
  dtype = tf.int32 if name == 'posterize' else tf.float32
  expected = tf_op(tf.constant(photo_crops), tf.constant(params, dtype)).numpy()
  got = jax.jit(jax_op)(jnp.asarray(photo_crops), jnp.asarray(params, jnp.float32))
  assert got.dtype == jnp.uint8 and got.shape == photo_crops.shape
  if name in ('hue', 'blur'):
    _assert_close(got, expected, max_fraction=1e-3)
  else:
    np.testing.assert_array_equal(np.asarray(got), expected)


def _records(kind, seed, count, size):
  seed = tf.constant([seed, 11], tf.int64)
  if kind == 'aplus':
    return host_augment.aplus_record(host_augment.draw_uniforms(seed, count), size, (0.1, 2.0))
  return host_augment.moco_v2_record(host_augment.draw_uniforms(seed, count), (0.1, 2.0))


@pytest.mark.parametrize('kind', ['moco_v2', 'aplus'])
def test_chains_agree_from_the_same_records(china, kind):
  """Whole chains on 96 real 48 px views (every branch of both chains occurs), TF in tf.data vs JAX under jit."""
  rng = np.random.default_rng(1)
  views_ = np.stack([china[r : r + 48, c : c + 48] for r, c in zip(rng.integers(0, 48, 96), rng.integers(0, 96, 96))])
  record = _records(kind, 3, len(views_), 48)
  host = next(iter(tf.data.Dataset.from_tensors((views_, record)).map(host_augment.apply))).numpy()
  device = jax.jit(device_augment.apply)(jnp.asarray(views_), {k: jnp.asarray(v.numpy()) for k, v in record.items()})
  _assert_close(device, host, max_fraction=1e-3)
  same_views = np.mean([np.array_equal(a, b) for a, b in zip(np.asarray(device), host)])
  assert same_views >= 0.9, same_views
  assert np.mean(host != views_) > 0.5  # the chain really changed the views
  if kind == 'aplus':
    ops_used = set(record['autoaugment_op'].numpy().ravel()) - {host_augment.NO_OP}
    assert len(ops_used) >= 8, ops_used


def test_record_layout_and_branches():
  record = {k: v.numpy() for k, v in _records('aplus', 0, 2000, 32).items()}
  assert set(record) == set(host_augment.PARAM_KEYS)
  autoaugmented = (record['autoaugment_op'] >= 0).any(axis=1)
  # A view of A+ gets AutoAugment or the colour/blur chain, never both.
  assert not np.any(
    autoaugmented & ((record['jitter_op'] >= 0).any(axis=1) | record['grayscale'] | (record['blur_sigma'] > 0))
  )
  jittered = record['jitter_op'][:, 0] >= 0
  assert all(sorted(row) == [0, 1, 2, 3] for row in record['jitter_op'][jittered])  # a permutation each
  assert np.all(record['jitter_op'][~jittered] == host_augment.NO_OP)


@pytest.fixture(scope='module')
def colour_folder(tmp_path_factory, china):
  """A folder source of real colour photographs (crops of the sample image), for hue and saturation to matter."""
  root = tmp_path_factory.mktemp('colour')
  rng = np.random.default_rng(2)
  for i, (r, c) in enumerate(zip(rng.integers(0, 40, 12), rng.integers(0, 80, 12))):
    Image.fromarray(china[r : r + 56, c : c + 64]).save(os.path.join(root, f'{i}.png'))
  return root


def test_pipeline_modes_give_the_same_views(colour_folder):
  source = sources.get_source(f'folder:{colour_folder}')
  spec = views.ViewSpec(large_size=32, small_size=16, num_small=2, min_overlap=0.2, aplus=True)
  on_device = dataclasses.replace(spec, augment_on_device=True)
  host_batches = list(pipeline.train_dataset(source, spec, 8, seed=5).take(3).as_numpy_iterator())
  device_batches = list(pipeline.train_dataset(source, on_device, 8, seed=5).take(3).as_numpy_iterator())
  apply = jax.jit(device_augment.apply_to_batch)
  for host, raw in zip(host_batches, device_batches):
    assert set(raw['augment']) == {'anchor', 'positive', 'small'}
    assert raw['augment']['small']['jitter_op'].shape == (8, 2, 4)
    assert raw['augment']['positive']['flip'].shape == (8,)
    device = apply({k: raw[k] for k in ('anchor', 'positive', 'small', 'augment')})
    assert 'augment' not in device
    for key in ('anchor', 'positive', 'small'):
      assert device[key].shape == host[key].shape
      _assert_close(device[key], host[key], max_fraction=1e-3)
      assert not np.array_equal(raw[key], host[key])  # the device batch really arrived un-augmented


def test_default_config_keeps_augmentation_on_the_host():
  assert not tiny_config().crops.augment_on_device
