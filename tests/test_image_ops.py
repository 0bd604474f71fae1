"""Each image op against PIL (what torchvision applies to PIL images), on real pixels, eagerly and in tf.data.

Tolerances: exact for integer ops (posterize, solarize, invert, grayscale, autocontrast, equalize); one grey level
for ImageEnhance blends (PIL computes the blend in fixed point, we in float32 and round); hue two levels on average
(PIL quantises H, S and V to 8 bits before the shift, we rotate hue in float); geometric ops match pixel for pixel
except where a sample point sits within float error of a pixel boundary (<= 1 % of pixels).
"""

import numpy as np
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageFilter
from PIL import ImageOps
import pytest
import tensorflow as tf

from input_pipeline import augment
from input_pipeline import autoaugment
from input_pipeline import ops


def run_both(fn, image):
  """The op eagerly and inside a tf.data map; both results."""
  eager = fn(tf.constant(image)).numpy()
  in_data = next(iter(tf.data.Dataset.from_tensors(image).map(fn))).numpy()
  return eager, in_data


def pil_hue(image, delta):
  """torchvision's adjust_hue on PIL images: shift H of PIL's 8-bit HSV with uint8 wrap-around."""
  h, s, v = Image.fromarray(image).convert('HSV').split()
  shifted = (np.asarray(h, np.int32) + int(delta * 255)) % 256
  return np.asarray(Image.merge('HSV', (Image.fromarray(shifted.astype(np.uint8), 'L'), s, v)).convert('RGB'))


SHEAR = autoaugment.OPS['ShearX'][0][5]

CASES = [  # name, ours, PIL reference, max abs diff, max mean abs diff, max fraction of differing pixels
    ('grayscale', ops.grayscale, lambda im: im.convert('L').convert('RGB'), 0, 0, 0),
    ('brightness', lambda x: ops.adjust_brightness(x, 1.3), lambda im: ImageEnhance.Brightness(im).enhance(1.3),
     1, 0.5, 1),
    ('contrast', lambda x: ops.adjust_contrast(x, 0.6), lambda im: ImageEnhance.Contrast(im).enhance(0.6), 1, 0.5, 1),
    ('saturation', lambda x: ops.adjust_saturation(x, 1.4), lambda im: ImageEnhance.Color(im).enhance(1.4),
     1, 0.5, 1),
    ('sharpness', lambda x: ops.adjust_sharpness(x, 1.8), lambda im: ImageEnhance.Sharpness(im).enhance(1.8),
     1, 0.5, 1),
    ('invert', ops.invert, ImageOps.invert, 0, 0, 0),
    ('posterize', lambda x: ops.posterize(x, 5), lambda im: ImageOps.posterize(im, 5), 0, 0, 0),
    ('solarize', lambda x: ops.solarize(x, 141.7), lambda im: ImageOps.solarize(im, 141.7), 0, 0, 0),
    ('autocontrast', ops.autocontrast, ImageOps.autocontrast, 0, 0, 0),
    ('equalize', ops.equalize, ImageOps.equalize, 0, 0, 0),
    # Shear by the policy's magnitude (bin 5 of 0..0.3); a round value such as 0.2 puts whole rows on exact
    # ties between two pixels, where float32 (TF) and float64 (PIL) may pick different neighbours.
    ('shear_x', lambda x: ops.shear_x(x, -SHEAR), lambda im: im.transform(
        im.size, Image.AFFINE, (1, -SHEAR, 0, 0, 1, 0), Image.NEAREST, fillcolor=0), 255, 3, 0.01),
    ('shear_y', lambda x: ops.shear_y(x, SHEAR), lambda im: im.transform(
        im.size, Image.AFFINE, (1, 0, 0, SHEAR, 1, 0), Image.NEAREST, fillcolor=0), 255, 3, 0.01),
    ('translate_x', lambda x: ops.translate_x(x, 30.7), lambda im: im.transform(
        im.size, Image.AFFINE, (1, 0, -30, 0, 1, 0), Image.NEAREST, fillcolor=0), 0, 0, 0),
    ('translate_y', lambda x: ops.translate_y(x, -12.2), lambda im: im.transform(
        im.size, Image.AFFINE, (1, 0, 0, 0, 1, 12), Image.NEAREST, fillcolor=0), 0, 0, 0),
    ('rotate', lambda x: ops.rotate(x, 23.3), lambda im: im.rotate(23.3, Image.NEAREST, fillcolor=0), 255, 3, 0.01),
    ('hue', lambda x: ops.adjust_hue(x, 0.08), lambda im: pil_hue(np.asarray(im), 0.08), 12, 2.0, 1),
]


@pytest.mark.parametrize('name,ours,reference,max_abs,max_mean,max_fraction', CASES, ids=[c[0] for c in CASES])
def test_op_matches_pil(china, name, ours, reference, max_abs, max_mean, max_fraction):
  expected = np.asarray(reference(Image.fromarray(china))).astype(np.int32)
  for got in run_both(ours, china):
    assert got.dtype == np.uint8 and got.shape == china.shape
    diff = np.abs(got.astype(np.int32) - expected)
    assert diff.max() <= max_abs, (name, diff.max())
    assert diff.mean() <= max_mean, (name, diff.mean())
    assert np.mean(diff.max(-1) > 0) <= max_fraction, (name, np.mean(diff.max(-1) > 0))


def test_gaussian_blur_close_to_pil(china):
  """PIL's GaussianBlur approximates the Gaussian with box passes, so agreement is statistical, not exact."""
  for sigma in (0.5, 1.0, 2.0):
    expected = np.asarray(Image.fromarray(china).filter(ImageFilter.GaussianBlur(sigma))).astype(np.float32)
    for got in run_both(lambda x, s=sigma: ops.gaussian_blur(x, s), china):
      assert np.mean(np.abs(got - expected)) < 1.5, sigma
  np.testing.assert_array_equal(ops.gaussian_blur(tf.constant(china), 0.1).numpy(), china)


def test_all_autoaugment_ops_are_covered():
  assert set(autoaugment.OP_NAMES) == {'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate', 'Brightness',
                                       'Color', 'Contrast', 'Sharpness', 'Posterize', 'Solarize', 'AutoContrast',
                                       'Equalize', 'Invert'}
  assert len(autoaugment.IMAGENET_POLICY) == 25
  # torchvision's magnitude bins.
  assert autoaugment.OPS['Posterize'][0] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
  np.testing.assert_allclose(autoaugment.OPS['Solarize'][0][5], 255 * 4 / 9)
  np.testing.assert_allclose(autoaugment.OPS['Rotate'][0][9], 30.0)


def test_autoaugment_runs_in_tf_data_and_is_deterministic(china):
  ds = tf.data.Dataset.range(16).map(
      lambda i: autoaugment.autoaugment(tf.constant(china), tf.stack([i, tf.constant(7, tf.int64)])))
  first, second = list(ds.as_numpy_iterator()), list(ds.as_numpy_iterator())
  assert all(np.array_equal(a, b) for a, b in zip(first, second))
  assert sum(not np.array_equal(a, china) for a in first) >= 8  # most sub-policies change the image


@pytest.mark.parametrize('image_fn', [augment.moco_v2_chain, augment.aplus_chain])
def test_chains_keep_shape_and_dtype(china, image_fn):
  out = image_fn(tf.constant(china), tf.constant([1, 2], tf.int64)).numpy()
  assert out.shape == china.shape and out.dtype == np.uint8


def _binomial_ok(successes, n, p):
  """Within 4.5 standard deviations (a fixed seed, so this is deterministic, but must also be plausible)."""
  return abs(successes - n * p) <= 4.5 * np.sqrt(n * p * (1 - p))


def test_application_probabilities():
  n = 4000
  seeds = tf.stack([tf.range(n, dtype=tf.int64), tf.fill([n], tf.constant(3, tf.int64))], axis=1)
  applied = tf.map_fn(lambda s: augment.moco_v2_decisions(s)[0], seeds, fn_output_signature=tf.bool).numpy()
  for column, p in enumerate((augment.P_JITTER, augment.P_GRAYSCALE, augment.P_BLUR, augment.P_FLIP)):
    assert _binomial_ok(applied[:, column].sum(), n, p), (column, applied[:, column].mean())
  sigmas = tf.map_fn(lambda s: augment.moco_v2_decisions(s)[1], seeds, fn_output_signature=tf.float32).numpy()
  assert sigmas.min() >= 0.1 and sigmas.max() <= 2.0
  aa = tf.map_fn(augment.aplus_uses_autoaugment, seeds, fn_output_signature=tf.bool).numpy()
  assert _binomial_ok(aa.sum(), n, augment.P_AUTOAUGMENT)
