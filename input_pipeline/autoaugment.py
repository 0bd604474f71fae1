"""AutoAugment with the ImageNet policy exactly as torchvision defines it (its 25 sub-policies and magnitudes).

big_vision's `policy_v0` is a different list; this is torchvision's `AutoAugmentPolicy.IMAGENET`, which A+
(paper 001, Sec. 4.2) uses. Magnitude bins: 10, as torchvision.
"""

import tensorflow as tf

from input_pipeline import ops

# (op, probability, magnitude bin or None), two per sub-policy: torchvision's AutoAugmentPolicy.IMAGENET.
IMAGENET_POLICY = (
    (('Posterize', 0.4, 8), ('Rotate', 0.6, 9)),
    (('Solarize', 0.6, 5), ('AutoContrast', 0.6, None)),
    (('Equalize', 0.8, None), ('Equalize', 0.6, None)),
    (('Posterize', 0.6, 7), ('Posterize', 0.6, 6)),
    (('Equalize', 0.4, None), ('Solarize', 0.2, 4)),
    (('Equalize', 0.4, None), ('Rotate', 0.8, 8)),
    (('Solarize', 0.6, 3), ('Equalize', 0.6, None)),
    (('Posterize', 0.8, 5), ('Equalize', 1.0, None)),
    (('Rotate', 0.2, 3), ('Solarize', 0.6, 8)),
    (('Equalize', 0.6, None), ('Posterize', 0.4, 6)),
    (('Rotate', 0.8, 8), ('Color', 0.4, 0)),
    (('Rotate', 0.4, 9), ('Equalize', 0.6, None)),
    (('Equalize', 0.0, None), ('Equalize', 0.8, None)),
    (('Invert', 0.6, None), ('Equalize', 1.0, None)),
    (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
    (('Rotate', 0.8, 8), ('Color', 1.0, 2)),
    (('Color', 0.8, 8), ('Solarize', 0.8, 7)),
    (('Sharpness', 0.4, 7), ('Invert', 0.6, None)),
    (('ShearX', 0.6, 5), ('Equalize', 1.0, None)),
    (('Color', 0.4, 0), ('Equalize', 0.6, None)),
    (('Equalize', 0.4, None), ('Solarize', 0.2, 4)),
    (('Solarize', 0.6, 5), ('AutoContrast', 0.6, None)),
    (('Invert', 0.6, None), ('Equalize', 1.0, None)),
    (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
    (('Equalize', 0.8, None), ('Equalize', 0.6, None)),
)

NUM_BINS = 10


def _linspace(start, stop):
  return [start + (stop - start) * i / (NUM_BINS - 1) for i in range(NUM_BINS)]


# op name -> (magnitudes per bin, signed, apply(images, magnitude [B])). Translate magnitudes are fractions
# of the image side (torchvision: 150 / 331 * side). Enhance ops use 1 + magnitude as their factor.
OPS = {
    'ShearX': (_linspace(0.0, 0.3), True, lambda im, m: ops.shear_x(im, m)),
    'ShearY': (_linspace(0.0, 0.3), True, lambda im, m: ops.shear_y(im, m)),
    'TranslateX': (_linspace(0.0, 150.0 / 331.0), True,
                   lambda im, m: ops.translate_x(im, m * tf.cast(tf.shape(im)[2], tf.float32))),
    'TranslateY': (_linspace(0.0, 150.0 / 331.0), True,
                   lambda im, m: ops.translate_y(im, m * tf.cast(tf.shape(im)[1], tf.float32))),
    'Rotate': (_linspace(0.0, 30.0), True, lambda im, m: ops.rotate(im, m)),
    'Brightness': (_linspace(0.0, 0.9), True, lambda im, m: ops.adjust_brightness(im, 1.0 + m)),
    'Color': (_linspace(0.0, 0.9), True, lambda im, m: ops.adjust_saturation(im, 1.0 + m)),
    'Contrast': (_linspace(0.0, 0.9), True, lambda im, m: ops.adjust_contrast(im, 1.0 + m)),
    'Sharpness': (_linspace(0.0, 0.9), True, lambda im, m: ops.adjust_sharpness(im, 1.0 + m)),
    'Posterize': ([8 - round(i / ((NUM_BINS - 1) / 4)) for i in range(NUM_BINS)], False,
                  lambda im, m: ops.posterize(im, tf.cast(m, tf.int32))),
    'Solarize': (_linspace(255.0, 0.0), False, lambda im, m: ops.solarize(im, m)),
    'AutoContrast': ([0.0] * NUM_BINS, False, lambda im, m: ops.autocontrast(im)),
    'Equalize': ([0.0] * NUM_BINS, False, lambda im, m: ops.equalize(im)),
    'Invert': ([0.0] * NUM_BINS, False, lambda im, m: ops.invert(im)),
}
OP_NAMES = tuple(OPS)


def apply_op(images, name, magnitude):
  """Applies one named op to a batch with a per-image (already signed) magnitude [B]."""
  return OPS[name][2](images, tf.cast(magnitude, tf.float32))


def _policy_tables():
  """Policy as tensors: op index [25, 2], probability [25, 2], magnitude [25, 2], signed [25, 2]."""
  op_ids, probs, mags, signed = [], [], [], []
  for sub_policy in IMAGENET_POLICY:
    for name, prob, bin_ in sub_policy:
      magnitudes, is_signed, _ = OPS[name]
      op_ids.append(OP_NAMES.index(name))
      probs.append(prob)
      mags.append(float(magnitudes[bin_]) if bin_ is not None else 0.0)
      signed.append(is_signed)
  shape = [len(IMAGENET_POLICY), 2]
  return (tf.reshape(tf.constant(op_ids, tf.int32), shape), tf.reshape(tf.constant(probs), shape),
          tf.reshape(tf.constant(mags), shape), tf.reshape(tf.constant(signed), shape))


def autoaugment(images, seed):
  """torchvision's AutoAugment(IMAGENET) forward on each image of a batch: one random sub-policy per image; each of
  its two ops applied with its probability (rand <= p, as torchvision) and a random sign for signed ops."""
  op_ids, probs, mags, signed = _policy_tables()
  batch = tf.shape(images)[0]
  seeds = tf.random.experimental.stateless_split(seed, 3)
  index = tf.random.stateless_uniform([batch], seeds[0], 0, len(IMAGENET_POLICY), dtype=tf.int32)
  draws = tf.random.stateless_uniform([batch, 2], seeds[1])
  negative = tf.random.stateless_uniform([batch, 2], seeds[2], 0, 2, dtype=tf.int32) == 0
  for slot in range(2):
    magnitude = tf.gather(mags[:, slot], index)
    magnitude = tf.where(tf.gather(signed[:, slot], index) & negative[:, slot], -magnitude, magnitude)
    applied = draws[:, slot] <= tf.gather(probs[:, slot], index)
    op = tf.where(applied, tf.gather(op_ids[:, slot], index), -1)
    images = ops.apply_switch(op, [lambda im, m, name=name: apply_op(im, name, m) for name in OP_NAMES], images,
                              magnitude)
  return images
