"""The augmentations' pixel work on the accelerator, inside the train step (`config.crops.augment_on_device`).

tf.data decodes, crops and draws every random choice of MoCo-v2's aug+ and A+ (input_pipeline/host_augment.py); the
views arrive as cropped uint8 with a parameter record per view stack in batch['augment'], and `apply_to_batch` applies
the records here with the ops and the order of `input_pipeline.host_augment.apply`, so the views are the same whichever
side does the work. Per-view choices become selections: every op is computed for every view and each view keeps its own
op's result, elementwise passes that XLA fuses, far cheaper on an accelerator than the host's per-view pixel work.
"""

import jax
import jax.numpy as jnp

from input_pipeline import autoaugment_policy as policy  # plain Python tables; no TensorFlow
from jax_moco import device_image_ops

JITTER_OPS = (
  device_image_ops.adjust_brightness,
  device_image_ops.adjust_contrast,
  device_image_ops.adjust_saturation,
  device_image_ops.adjust_hue,
)
_PIXEL_OPS = {
  'Brightness': device_image_ops.adjust_brightness,
  'Color': device_image_ops.adjust_saturation,
  'Contrast': device_image_ops.adjust_contrast,
  'Sharpness': device_image_ops.adjust_sharpness,
  'Posterize': device_image_ops.posterize,
  'Solarize': device_image_ops.solarize,
  'AutoContrast': lambda images, _: device_image_ops.autocontrast(images),
  'Equalize': lambda images, _: device_image_ops.equalize(images),
  'Invert': lambda images, _: device_image_ops.invert(images),
}
_AFFINE_OPS = {
  'ShearX': device_image_ops.shear_x_coefficients,
  'ShearY': device_image_ops.shear_y_coefficients,
  'TranslateX': device_image_ops.translate_x_coefficients,
  'TranslateY': device_image_ops.translate_y_coefficients,
  'Rotate': device_image_ops.rotate_coefficients,
}
assert set(_PIXEL_OPS) | set(_AFFINE_OPS) == set(policy.OP_NAMES)


def _where(selected, new, old):
  return jnp.where(selected.reshape(-1, 1, 1, 1), new, old)


def _autoaugment_slot(images, op, argument):
  """One AutoAugment op per view (-1: none): the pixel ops by selection, the five geometric ops as one affine
  resampling with each view's coefficients (the identity, exact, for the views without one)."""
  out = images
  coefficients = device_image_ops.identity_coefficients(images.shape, argument)
  for index, name in enumerate(policy.OP_NAMES):
    if name in _PIXEL_OPS:
      out = _where(op == index, _PIXEL_OPS[name](images, argument), out)
    else:
      candidate = _AFFINE_OPS[name](images.shape, argument)
      coefficients = [jnp.where(op == index, new, old) for new, old in zip(candidate, coefficients)]
  return device_image_ops.affine_pil(out, coefficients)


def _jitter_position(images, op, factors):
  """One of the four colour-jitter positions: each view applies the op it drew for it (-1: none)."""
  out = images
  for index, adjust in enumerate(JITTER_OPS):
    out = _where(op == index, adjust(images, factors[:, index]), out)
  return out


def apply(images, params, autoaugment=True):
  """Applies a parameter record (input_pipeline.host_augment.PARAM_KEYS, leading axis V) to uint8 views [V, H, W, 3].

  The AutoAugment slots and the jitter positions run as scans: each stage reads its input many times, and XLA
  fusing a chain of such stages recomputes every earlier one inside every later one, many times slower
  (bench/RESULTS.md, "The device side of the move"); a scan's carry is materialised between iterations, and the
  program is compiled once per stage kind.
  autoaugment=False leaves out the AutoAugment slots (for records that have none, e.g. anchors').
  """
  images = _where(params['flip'], device_image_ops.flip_left_right(images), images)
  if autoaugment:
    slots = (params['autoaugment_op'].T, params['autoaugment_arg'].T)
    images, _ = jax.lax.scan(lambda x, slot: (_autoaugment_slot(x, *slot), None), images, slots)
  factors = params['jitter_factor']
  images, _ = jax.lax.scan(lambda x, op: (_jitter_position(x, op, factors), None), images, params['jitter_op'].T)
  images = _where(params['grayscale'], device_image_ops.grayscale(images), images)
  sigma = params['blur_sigma']
  blurred = device_image_ops.gaussian_blur(images, jnp.where(sigma > 0, sigma, 1.0))
  return _where(sigma > 0, blurred, images)


def apply_to_batch(batch):
  """The batch with each view stack augmented by its record in batch['augment'] (and that entry dropped); a batch
  the pipeline already augmented passes unchanged. Anchors always take aug+ (never AutoAugment: Van Gansbeke et al.
  2021, A.1), so their AutoAugment slots are not built."""
  if 'augment' not in batch:
    return batch
  batch = dict(batch)
  for key, record in batch.pop('augment').items():
    images = batch[key]
    views = images.shape[:-3]  # [B] or [B, N]
    flat = images.reshape((-1,) + images.shape[-3:])
    flat_record = {k: v.reshape((flat.shape[0],) + v.shape[len(views) :]) for k, v in record.items()}
    batch[key] = apply(flat, flat_record, autoaugment=key != 'anchor').reshape(images.shape)
  return batch
