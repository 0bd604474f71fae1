"""Each image op against PIL (what torchvision applies to PIL images), on real pixels, eagerly and in tf.data.

Tolerances: exact for integer ops (posterize, solarize, invert, grayscale, equalize); one grey level for autocontrast
(PIL's float64 line lands one level low on some exact integers, we compute the exact floor) and for ImageEnhance
blends (PIL computes the blend in fixed point, we in float32 with the factor on a 1/4096 grid); hue two levels on
average (PIL quantises H, S and V to 8 bits before the shift, we rotate hue in float); geometric ops match pixel for
pixel except where a sample point sits within float error of a pixel boundary (<= 1 % of pixels).
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
from input_pipeline import autoaugment_policy as policy
from input_pipeline import ops


def run_both(fn, image):
  """The op on a batch of one image, eagerly and inside a tf.data map; both results."""
  eager = fn(tf.constant(image[None]))[0].numpy()
  in_data = next(iter(tf.data.Dataset.from_tensors(image[None]).map(fn)))[0].numpy()
  return eager, in_data


def pil_hue(image, delta):
  """torchvision's adjust_hue on PIL images: shift H of PIL's 8-bit HSV with uint8 wrap-around."""
  h, s, v = Image.fromarray(image).convert('HSV').split()
  shifted = (np.asarray(h, np.int32) + int(delta * 255)) % 256
  return np.asarray(Image.merge('HSV', (Image.fromarray(shifted.astype(np.uint8), 'L'), s, v)).convert('RGB'))


SHEAR = policy.MAGNITUDES['ShearX'][0][5]

CASES = [  # name, ours, PIL reference, max abs diff, max mean abs diff, max fraction of differing pixels
  ('grayscale', ops.grayscale, lambda im: im.convert('L').convert('RGB'), 0, 0, 0),
  (
    'brightness',
    lambda x: ops.adjust_brightness(x, 1.3),
    lambda im: ImageEnhance.Brightness(im).enhance(1.3),
    1,
    0.5,
    1,
  ),
  ('contrast', lambda x: ops.adjust_contrast(x, 0.6), lambda im: ImageEnhance.Contrast(im).enhance(0.6), 1, 0.5, 1),
  ('saturation', lambda x: ops.adjust_saturation(x, 1.4), lambda im: ImageEnhance.Color(im).enhance(1.4), 1, 0.5, 1),
  ('sharpness', lambda x: ops.adjust_sharpness(x, 1.8), lambda im: ImageEnhance.Sharpness(im).enhance(1.8), 1, 0.5, 1),
  ('invert', ops.invert, ImageOps.invert, 0, 0, 0),
  ('posterize', lambda x: ops.posterize(x, 5), lambda im: ImageOps.posterize(im, 5), 0, 0, 0),
  ('solarize', lambda x: ops.solarize(x, 141.7), lambda im: ImageOps.solarize(im, 141.7), 0, 0, 0),
  ('autocontrast', ops.autocontrast, ImageOps.autocontrast, 0, 0, 0),  # full range: the identity
  (
    'autocontrast_narrow_range',
    lambda x: ops.autocontrast(x // 4 + 30),
    lambda im: ImageOps.autocontrast(Image.fromarray(np.asarray(im) // 4 + 30)),
    1,
    0.06,
    0.16,
  ),
  ('equalize', ops.equalize, ImageOps.equalize, 0, 0, 0),
  # Shear by the policy's magnitude (bin 5 of 0..0.3); a round value such as 0.2 puts whole rows on exact
  # ties between two pixels, where float32 (TF) and float64 (PIL) may pick different neighbours.
  (
    'shear_x',
    lambda x: ops.shear_x(x, -SHEAR),
    lambda im: im.transform(im.size, Image.AFFINE, (1, -SHEAR, 0, 0, 1, 0), Image.NEAREST, fillcolor=0),
    255,
    3,
    0.01,
  ),
  (
    'shear_y',
    lambda x: ops.shear_y(x, SHEAR),
    lambda im: im.transform(im.size, Image.AFFINE, (1, 0, 0, SHEAR, 1, 0), Image.NEAREST, fillcolor=0),
    255,
    3,
    0.01,
  ),
  (
    'translate_x',
    lambda x: ops.translate_x(x, 30.7),
    lambda im: im.transform(im.size, Image.AFFINE, (1, 0, -30, 0, 1, 0), Image.NEAREST, fillcolor=0),
    0,
    0,
    0,
  ),
  (
    'translate_y',
    lambda x: ops.translate_y(x, -12.2),
    lambda im: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, 12), Image.NEAREST, fillcolor=0),
    0,
    0,
    0,
  ),
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
  np.testing.assert_array_equal(ops.gaussian_blur(tf.constant(china[None]), 0.1)[0].numpy(), china)


PER_IMAGE_OPS = [  # op, per-image parameters for a batch of 4
  (ops.adjust_brightness, [0.6, 1.0, 1.3, 1.9]),
  (ops.adjust_contrast, [0.6, 1.0, 1.3, 1.9]),
  (ops.adjust_saturation, [0.0, 0.7, 1.0, 1.4]),
  (ops.adjust_hue, [-0.1, 0.0, 0.04, 0.5]),
  (ops.adjust_sharpness, [0.1, 1.0, 1.5, 1.9]),
  (ops.posterize, [8, 6, 4, 1]),
  (ops.solarize, [0.0, 100.0, 141.7, 255.0]),
  (ops.shear_x, [-0.3, 0.0, 0.1, 0.2]),
  (ops.shear_y, [-0.3, 0.0, 0.1, 0.2]),
  (ops.translate_x, [-40.5, 0.0, 3.2, 60.0]),
  (ops.translate_y, [-40.5, 0.0, 3.2, 60.0]),
  (ops.rotate, [-30.0, 0.0, 9.0, 27.0]),
  (ops.gaussian_blur, [0.1, 0.5, 1.2, 2.0]),
  (lambda x, _: ops.autocontrast(x), [0, 0, 0, 0]),
  (lambda x, _: ops.equalize(x), [0, 0, 0, 0]),
]


@pytest.mark.parametrize('op,params', PER_IMAGE_OPS, ids=lambda v: getattr(v, '__name__', None))
def test_batched_op_equals_the_op_image_by_image(china, op, params):
  """Vectorisation: each image of a batch gets its own parameter, exactly as if processed alone."""
  rng = np.random.default_rng(0)
  crops = np.stack([china[r : r + 64, c : c + 80] for r, c in rng.integers(0, 32, size=(4, 2))])
  crops[1] = crops[1] // 4  # a dark image, and a flat one, for the histogram ops
  crops[2, :, :, 1] = 77
  batched = op(tf.constant(crops), tf.constant(params)).numpy()
  for i, param in enumerate(params):
    alone = op(tf.constant(crops[i : i + 1]), tf.constant([param]))[0].numpy()
    np.testing.assert_array_equal(batched[i], alone)


def test_apply_where_changes_only_the_selected_images(china):
  images = tf.constant(np.stack([china[:64, :64]] * 5))
  mask = tf.constant([True, False, True, False, False])
  out = ops.apply_where(mask, ops.adjust_brightness, images, tf.constant([0.5, 9.0, 1.5, 9.0, 9.0])).numpy()
  np.testing.assert_array_equal(out[[1, 3, 4]], images.numpy()[[1, 3, 4]])
  np.testing.assert_array_equal(out[0], ops.adjust_brightness(images[:1], 0.5)[0].numpy())
  np.testing.assert_array_equal(out[2], ops.adjust_brightness(images[:1], 1.5)[0].numpy())
  nothing = ops.apply_where(tf.zeros([5], tf.bool), ops.equalize, images)
  np.testing.assert_array_equal(nothing.numpy(), images.numpy())


def test_all_autoaugment_ops_are_covered():
  assert set(policy.OP_NAMES) == {
    'ShearX',
    'ShearY',
    'TranslateX',
    'TranslateY',
    'Rotate',
    'Brightness',
    'Color',
    'Contrast',
    'Sharpness',
    'Posterize',
    'Solarize',
    'AutoContrast',
    'Equalize',
    'Invert',
  }
  assert len(autoaugment.APPLY) == len(policy.OP_NAMES)
  assert len(policy.IMAGENET_POLICY) == 25
  # torchvision's magnitude bins.
  assert policy.MAGNITUDES['Posterize'][0] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
  np.testing.assert_allclose(policy.MAGNITUDES['Solarize'][0][5], 255 * 4 / 9)
  np.testing.assert_allclose(policy.MAGNITUDES['Rotate'][0][9], 30.0)
  # Op arguments: pixels of a 96 px view for translations, 1 +- magnitude for enhance ops.
  np.testing.assert_allclose(policy.op_argument('TranslateX', -150 / 331, 96), -96 * 150 / 331)
  np.testing.assert_allclose(policy.op_argument('Color', -0.5, 96), 0.5)


def _apply_in_tf_data(batch, draw, seeds=3):
  """A drawn record applied inside a tf.data map for each of `seeds` seeds; the outputs as NumPy."""

  def augmented(i):
    return augment.apply(batch, draw(tf.stack([i, tf.constant(7, tf.int64)]), batch.shape[0]))

  return list(tf.data.Dataset.range(seeds).map(augmented).as_numpy_iterator())


def test_autoaugment_runs_in_tf_data_and_is_deterministic(china):
  batch = tf.constant(np.stack([china[:96, :96]] * 16))

  def autoaugment_only(seed, n):
    uniforms = augment.draw_uniforms(seed, n)
    record = augment.moco_v2_record(uniforms)
    record = {k: tf.zeros_like(v) for k, v in record.items()}  # nothing but AutoAugment
    record['jitter_op'] = tf.fill([n, 4], augment.NO_OP)
    record['autoaugment_op'], record['autoaugment_arg'] = autoaugment.choose(uniforms[:, 15:], 96)
    return record

  first, second = _apply_in_tf_data(batch, autoaugment_only), _apply_in_tf_data(batch, autoaugment_only)
  assert all(np.array_equal(a, b) for a, b in zip(first, second))
  changed = [not np.array_equal(view, china[:96, :96]) for out in first for view in out]
  assert sum(changed) >= 24  # most sub-policies change the image
  assert len({out.tobytes() for out in first[0]}) >= 8  # each image of a batch draws its own sub-policy


@pytest.mark.parametrize(
  'draw',
  [
    lambda seed, n: augment.moco_v2_record(augment.draw_uniforms(seed, n)),
    lambda seed, n: augment.aplus_record(augment.draw_uniforms(seed, n), 96),
  ],
  ids=['moco_v2', 'aplus'],
)
def test_chains_keep_shape_and_dtype_and_vary_per_image(china, draw):
  batch = tf.constant(np.stack([china[:96, :96]] * 8))
  out = _apply_in_tf_data(batch, draw, seeds=1)[0]
  assert out.shape == batch.shape and out.dtype == np.uint8
  assert len({view.tobytes() for view in out}) >= 6


def _binomial_ok(successes, n, p):
  """Within 4.5 standard deviations (a fixed seed, so this is deterministic, but must also be plausible)."""
  return abs(successes - n * p) <= 4.5 * np.sqrt(n * p * (1 - p))


def test_application_probabilities():
  n = 4000
  seed = tf.constant([3, 4], tf.int64)
  record = {k: v.numpy() for k, v in augment.moco_v2_record(augment.draw_uniforms(seed, n)).items()}
  jitter, gray, blur = record['jitter_op'][:, 0] >= 0, record['grayscale'], record['blur_sigma'] > 0
  for name, applied, p in (
    ('jitter', jitter, augment.P_JITTER),
    ('grayscale', gray, augment.P_GRAYSCALE),
    ('blur', blur, augment.P_BLUR),
    ('flip', record['flip'], augment.P_FLIP),
  ):
    assert _binomial_ok(applied.sum(), n, p), (name, applied.mean())
  sigmas = record['blur_sigma'][blur]
  assert sigmas.min() >= 0.1 and sigmas.max() <= 2.0
  # The decisions of different ops are independent: jitter and grayscale co-occur at the product rate.
  assert _binomial_ok((jitter & gray).sum(), n, augment.P_JITTER * augment.P_GRAYSCALE)
  # A+: half the views take the aug+ chain (so 0.5 x 0.8 are jittered), the other half AutoAugment, whose
  # sub-policies apply at least one op with torchvision's probabilities.
  aplus = {k: v.numpy() for k, v in augment.aplus_record(augment.draw_uniforms(seed, n), 32).items()}
  assert _binomial_ok((aplus['jitter_op'][:, 0] >= 0).sum(), n, (1 - augment.P_AUTOAUGMENT) * augment.P_JITTER)
  p_any_op = np.mean([1 - (1 - a[1]) * (1 - b[1]) for a, b in policy.IMAGENET_POLICY])
  assert _binomial_ok((aplus['autoaugment_op'] >= 0).any(axis=1).sum(), n, augment.P_AUTOAUGMENT * p_any_op)
  assert _binomial_ok(aplus['flip'].sum(), n, augment.P_FLIP)
