"""Each image op against PIL (what torchvision applies to PIL images; the authors' AutoAugment backport, Van Gansbeke
et al. 2021, for shears and Solarize thresholds), on real pixels, eagerly and in tf.data.

Tolerances: exact for integer ops (posterize, solarize, invert, grayscale, equalize), for ImageEnhance blends (PIL
blends in float32 and truncates; with the factor on our 1/4096 grid both sides compute the same exact value), for
translations and for the policy's shears (sampled in PIL's 16.16 fixed point); one grey level for autocontrast (PIL's
float64 line lands one level low on some exact integers, we compute the exact floor); hue two levels on average (PIL
quantises H, S and V to 8 bits before the shift, we rotate hue in float); rotations pixel for pixel except where
float32 cos / sin move a sample point across a pixel boundary (<= 0.1 % of pixels).
"""

import math

import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageFilter
from PIL import ImageOps
import pytest
import tensorflow as tf

from configs import base
from input_pipeline import autoaugment
from input_pipeline import autoaugment_policy as policy
from input_pipeline import host_augment
from input_pipeline import host_image_ops
from input_pipeline import pipeline
from input_pipeline import views
from jax_moco import device_image_ops


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


CASES = [  # name, ours, PIL reference, max abs diff, max mean abs diff, max fraction of differing pixels
  ('grayscale', host_image_ops.grayscale, lambda im: im.convert('L').convert('RGB'), 0, 0, 0),
  ('invert', host_image_ops.invert, ImageOps.invert, 0, 0, 0),
  ('posterize', lambda x: host_image_ops.posterize(x, 5), lambda im: ImageOps.posterize(im, 5), 0, 0, 0),
  ('solarize', lambda x: host_image_ops.solarize(x, 141.7), lambda im: ImageOps.solarize(im, 141.7), 0, 0, 0),
  ('autocontrast', host_image_ops.autocontrast, ImageOps.autocontrast, 0, 0, 0),  # full range: the identity
  (
    'autocontrast_narrow_range',
    lambda x: host_image_ops.autocontrast(x // 4 + 30),
    lambda im: ImageOps.autocontrast(Image.fromarray(np.asarray(im) // 4 + 30)),
    1,
    0.06,
    0.16,
  ),
  ('equalize', host_image_ops.equalize, ImageOps.equalize, 0, 0, 0),
  (
    'translate_x',
    lambda x: host_image_ops.translate_x(x, 30.7),
    lambda im: im.transform(im.size, Image.AFFINE, (1, 0, -30, 0, 1, 0), Image.NEAREST, fillcolor=0),
    0,
    0,
    0,
  ),
  (
    'translate_y',
    lambda x: host_image_ops.translate_y(x, -12.2),
    lambda im: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, 12), Image.NEAREST, fillcolor=0),
    0,
    0,
    0,
  ),
  (
    'rotate',
    lambda x: host_image_ops.rotate(x, 23.3),
    lambda im: im.rotate(23.3, Image.NEAREST, fillcolor=0),
    255,
    0.3,
    1e-3,
  ),
  ('hue', lambda x: host_image_ops.adjust_hue(x, 0.08), lambda im: pil_hue(np.asarray(im), 0.08), 12, 2.0, 1),
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


def _tf_and_jax(tf_op, jax_op, images, params):
  """The TF op (eagerly and in a tf.data map) and the JAX op on a batch with per-image params; the three results."""
  params = np.asarray(params, np.float32)
  eager = tf_op(tf.constant(images), tf.constant(params)).numpy()
  in_data = next(iter(tf.data.Dataset.from_tensors((images, params)).map(tf_op))).numpy()
  return eager, in_data, np.asarray(jax_op(jnp.asarray(images), jnp.asarray(params)))


# Factors on the 1/4096 grid the ops round to, so PIL's float32 factor is the same number: extrapolation below 0
# (clipped), 0, inside (0, 1), 1, and above 1 up to the policy's 1 + 0.9 and 2.
BLEND_FACTORS = [-1000, 0, 1, 410, 2048, 3000, 4095, 4096, 4097, 5325, 7782, 8192]
ENHANCE = [  # name, TF op, JAX op, PIL enhancer
  ('brightness', host_image_ops.adjust_brightness, device_image_ops.adjust_brightness, ImageEnhance.Brightness),
  ('contrast', host_image_ops.adjust_contrast, device_image_ops.adjust_contrast, ImageEnhance.Contrast),
  ('saturation', host_image_ops.adjust_saturation, device_image_ops.adjust_saturation, ImageEnhance.Color),
  ('sharpness', host_image_ops.adjust_sharpness, device_image_ops.adjust_sharpness, ImageEnhance.Sharpness),
]


@pytest.mark.parametrize('name,tf_op,jax_op,enhancer', ENHANCE, ids=[c[0] for c in ENHANCE])
def test_enhance_blends_equal_pil_exactly(china, name, tf_op, jax_op, enhancer):
  """PIL blends in float32 and casts to uint8 (a floor; extrapolations clipped first): equal pixel for pixel."""
  factors = [k / host_image_ops.BLEND_FACTOR_STEPS for k in BLEND_FACTORS]
  expected = np.stack([np.asarray(enhancer(Image.fromarray(china)).enhance(f)) for f in factors])
  for got in _tf_and_jax(tf_op, jax_op, np.stack([china] * len(factors)), factors):
    np.testing.assert_array_equal(got, expected, err_msg=name)


def _backport_shear(name, magnitude, width, height):
  """PIL affine coefficients of the backport's ShearX / ShearY, written out: it shears by the angle
  math.degrees(magnitude) about the centre (w / 2, h / 2), whose inverse map is x_in = x + tan(m) (y - h / 2)
  (ShearX) or y_in = y + tan(m) (x - w / 2) (ShearY)."""
  t = math.tan(math.radians(math.degrees(magnitude)))
  return (1, t, -t * height / 2, 0, 1, 0) if name == 'ShearX' else (1, 0, 0, t, 1, -t * width / 2)


SHEARS = [
  ('ShearX', host_image_ops.shear_x, device_image_ops.shear_x_coefficients),
  ('ShearY', host_image_ops.shear_y, device_image_ops.shear_y_coefficients),
]


@pytest.mark.parametrize('name,tf_op,jax_coefficients', SHEARS, ids=[c[0] for c in SHEARS])
@pytest.mark.parametrize('height,width', [(96, 144), (63, 81)])
def test_shears_equal_pil_with_the_backports_coefficients(china, name, tf_op, jax_coefficients, height, width):
  """Every bin and sign of the policy (torch.linspace(0, 0.3, 10) in float32 in the backport), on even and odd
  sizes, fill 0 and nearest sampling as the backport's AutoAugment(): the TF and JAX ops equal PIL exactly."""
  image = china[:height, :width]
  backport_bins = np.linspace(0.0, 0.3, 10, dtype=np.float32)
  ours, signed = policy.MAGNITUDES[name]
  np.testing.assert_allclose(ours, backport_bins, rtol=1e-6)
  assert signed
  magnitudes = [s * float(m) for m in backport_bins[1:] for s in (1, -1)]
  arguments = [policy.op_argument(name, m, width) for m in magnitudes]
  np.testing.assert_allclose(arguments, np.tan(magnitudes))
  expected = np.stack(
    [
      np.asarray(
        Image.fromarray(image).transform(
          (width, height), Image.AFFINE, _backport_shear(name, m, width, height), Image.NEAREST, fillcolor=0
        )
      )
      for m in magnitudes
    ]
  )

  def jax_op(images, shear):
    return device_image_ops.affine_pil(images, jax_coefficients(images.shape, shear))

  for got in _tf_and_jax(tf_op, jax_op, np.stack([image] * len(magnitudes)), arguments):
    np.testing.assert_array_equal(got, expected, err_msg=name)


def test_solarize_thresholds_are_the_backports(china):
  """The backport's bins, torch.linspace(256, 0, 10) written out: bin 0 inverts nothing, and each bin inverts what
  PIL's ImageOps.solarize inverts with the backport's threshold."""
  backport = np.linspace(256.0, 0.0, 10, dtype=np.float32)
  thresholds, signed = policy.MAGNITUDES['Solarize']
  np.testing.assert_allclose(thresholds, backport, rtol=1e-6)
  assert not signed
  arguments = [policy.op_argument('Solarize', t, 96) for t in thresholds]
  expected = np.stack([np.asarray(ImageOps.solarize(Image.fromarray(china), float(t))) for t in backport])
  np.testing.assert_array_equal(expected[0], china)
  for got in _tf_and_jax(
    host_image_ops.solarize, device_image_ops.solarize, np.stack([china] * len(arguments)), arguments
  ):
    np.testing.assert_array_equal(got, expected)


def test_gaussian_blur_close_to_pil(china):
  """PIL's GaussianBlur approximates the Gaussian with box passes, so agreement is statistical, not exact."""
  for sigma in (0.5, 1.0, 2.0):
    expected = np.asarray(Image.fromarray(china).filter(ImageFilter.GaussianBlur(sigma))).astype(np.float32)
    for got in run_both(lambda x, s=sigma: host_image_ops.gaussian_blur(x, s), china):
      assert np.mean(np.abs(got - expected)) < 1.5, sigma
  np.testing.assert_array_equal(host_image_ops.gaussian_blur(tf.constant(china[None]), 0.1)[0].numpy(), china)


PER_IMAGE_OPS = [  # op, per-image parameters for a batch of 4
  (host_image_ops.adjust_brightness, [0.6, 1.0, 1.3, 1.9]),
  (host_image_ops.adjust_contrast, [0.6, 1.0, 1.3, 1.9]),
  (host_image_ops.adjust_saturation, [0.0, 0.7, 1.0, 1.4]),
  (host_image_ops.adjust_hue, [-0.1, 0.0, 0.04, 0.5]),
  (host_image_ops.adjust_sharpness, [0.1, 1.0, 1.5, 1.9]),
  (host_image_ops.posterize, [8, 6, 4, 1]),
  (host_image_ops.solarize, [0.0, 100.0, 141.7, 255.0]),
  (host_image_ops.shear_x, [-0.3, 0.0, 0.1, 0.2]),
  (host_image_ops.shear_y, [-0.3, 0.0, 0.1, 0.2]),
  (host_image_ops.translate_x, [-40.5, 0.0, 3.2, 60.0]),
  (host_image_ops.translate_y, [-40.5, 0.0, 3.2, 60.0]),
  (host_image_ops.rotate, [-30.0, 0.0, 9.0, 27.0]),
  (host_image_ops.gaussian_blur, [0.1, 0.5, 1.2, 2.0]),
  (lambda x, _: host_image_ops.autocontrast(x), [0, 0, 0, 0]),
  (lambda x, _: host_image_ops.equalize(x), [0, 0, 0, 0]),
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
  out = host_image_ops.apply_where(
    mask, host_image_ops.adjust_brightness, images, tf.constant([0.5, 9.0, 1.5, 9.0, 9.0])
  ).numpy()
  np.testing.assert_array_equal(out[[1, 3, 4]], images.numpy()[[1, 3, 4]])
  np.testing.assert_array_equal(out[0], host_image_ops.adjust_brightness(images[:1], 0.5)[0].numpy())
  np.testing.assert_array_equal(out[2], host_image_ops.adjust_brightness(images[:1], 1.5)[0].numpy())
  nothing = host_image_ops.apply_where(tf.zeros([5], tf.bool), host_image_ops.equalize, images)
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
  np.testing.assert_allclose(policy.MAGNITUDES['Solarize'][0][5], 256 * 4 / 9)
  np.testing.assert_allclose(policy.MAGNITUDES['Rotate'][0][9], 30.0)
  # Op arguments: pixels of a 96 px view for translations, 1 +- magnitude for enhance ops.
  np.testing.assert_allclose(policy.op_argument('TranslateX', -150 / 331, 96), -96 * 150 / 331)
  np.testing.assert_allclose(policy.op_argument('Color', -0.5, 96), 0.5)


def _apply_in_tf_data(batch, draw, seeds=3):
  """A drawn record applied inside a tf.data map for each of `seeds` seeds; the outputs as NumPy."""

  def augmented(i):
    return host_augment.apply(batch, draw(tf.stack([i, tf.constant(7, tf.int64)]), batch.shape[0]))

  return list(tf.data.Dataset.range(seeds).map(augmented).as_numpy_iterator())


def test_autoaugment_runs_in_tf_data_and_is_deterministic(china):
  batch = tf.constant(np.stack([china[:96, :96]] * 16))

  def autoaugment_only(seed, n):
    uniforms = host_augment.draw_uniforms(seed, n)
    record = host_augment.moco_v2_record(uniforms)
    record = {k: tf.zeros_like(v) for k, v in record.items()}  # nothing but AutoAugment
    record['jitter_op'] = tf.fill([n, 4], host_augment.NO_OP)
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
    lambda seed, n: host_augment.moco_v2_record(host_augment.draw_uniforms(seed, n)),
    lambda seed, n: host_augment.aplus_record(host_augment.draw_uniforms(seed, n), 96),
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
  record = {k: v.numpy() for k, v in host_augment.moco_v2_record(host_augment.draw_uniforms(seed, n)).items()}
  jitter, gray, blur = record['jitter_op'][:, 0] >= 0, record['grayscale'], record['blur_sigma'] > 0
  for name, applied, p in (
    ('jitter', jitter, host_augment.P_JITTER),
    ('grayscale', gray, host_augment.P_GRAYSCALE),
    ('blur', blur, host_augment.P_BLUR),
    ('flip', record['flip'], host_augment.P_FLIP),
  ):
    assert _binomial_ok(applied.sum(), n, p), (name, applied.mean())
  sigmas = record['blur_sigma'][blur]
  assert sigmas.min() >= 0.1 and sigmas.max() <= 2.0
  # The decisions of different ops are independent: jitter and grayscale co-occur at the product rate.
  assert _binomial_ok((jitter & gray).sum(), n, host_augment.P_JITTER * host_augment.P_GRAYSCALE)
  # A+: half the views take the aug+ chain (so 0.5 x 0.8 are jittered), the other half AutoAugment, whose
  # sub-policies apply at least one op with torchvision's probabilities.
  aplus = {k: v.numpy() for k, v in host_augment.aplus_record(host_augment.draw_uniforms(seed, n), 32).items()}
  assert _binomial_ok(
    (aplus['jitter_op'][:, 0] >= 0).sum(), n, (1 - host_augment.P_AUTOAUGMENT) * host_augment.P_JITTER
  )
  p_any_op = np.mean([1 - (1 - a[1]) * (1 - b[1]) for a, b in policy.IMAGENET_POLICY])
  assert _binomial_ok((aplus['autoaugment_op'] >= 0).any(axis=1).sum(), n, host_augment.P_AUTOAUGMENT * p_any_op)
  assert _binomial_ok(aplus['flip'].sum(), n, host_augment.P_FLIP)


def _numpy(record):
  return {k: v.numpy() for k, v in record.items()}


def test_aplus_probability_picks_table_7s_variant():
  """Van Gansbeke et al. 2021, Table 7: the positives' chain is AutoAugment with p = crops.aplus_probability, else
  aug+; 1 is AutoAugment alone, 0 aug+, and 0.5 (A+) is the record it always was."""
  uniforms = host_augment.draw_uniforms(tf.constant([5, 6], tf.int64), 500)
  aug_plus = _numpy(host_augment.moco_v2_record(uniforms))
  mix = _numpy(host_augment.aplus_record(uniforms, 32))
  explicit = _numpy(host_augment.aplus_record(uniforms, 32, autoaugment_probability=0.5))
  assert all(np.array_equal(mix[k], v) for k, v in explicit.items())
  alone = _numpy(host_augment.aplus_record(uniforms, 32, autoaugment_probability=1.0))
  assert (alone['jitter_op'] == host_augment.NO_OP).all() and not alone['grayscale'].any()
  assert (alone['blur_sigma'] == 0).all() and (alone['autoaugment_op'] >= 0).any(axis=1).mean() > 0.5
  chose = (mix['autoaugment_op'] >= 0).any(axis=1)  # the mix's AutoAugment views are AutoAugment alone's
  assert np.array_equal(mix['autoaugment_op'][chose], alone['autoaugment_op'][chose])
  none = _numpy(host_augment.aplus_record(uniforms, 32, autoaugment_probability=0.0))
  assert all(np.array_equal(none[k], v) for k, v in aug_plus.items())


def test_aplus_probability_reaches_the_positives_from_the_config():
  config = base.get_config()
  config.crops.aplus, config.crops.aplus_probability, config.crops.num_small = True, 1.0, 2
  spec = pipeline.view_spec(config.crops)
  uniforms = {
    'anchor': host_augment.draw_uniforms(tf.constant([1, 2], tf.int64), 64),
    'positive': host_augment.draw_uniforms(tf.constant([3, 4], tf.int64), 64),
    'small': tf.reshape(host_augment.draw_uniforms(tf.constant([5, 6], tf.int64), 128), [64, 2, -1]),
  }
  records = {key: _numpy(record) for key, record in views.augmentation_records(uniforms, spec).items()}
  assert (records['anchor']['autoaugment_op'] == host_augment.NO_OP).all()  # the anchor keeps aug+
  for key in ('positive', 'small'):
    assert (records[key]['jitter_op'] == host_augment.NO_OP).all() and not records[key]['grayscale'].any()
