"""AutoAugment (torchvision's ImageNet policy, `autoaugment_policy`) in TF: `draw` makes every random choice for a
batch of views, `APPLY` holds the TF op of each policy op (in `OP_NAMES` order) for `augment.apply`."""

import tensorflow as tf

from input_pipeline import autoaugment_policy as policy
from input_pipeline import ops

NO_OP = -1

# TF op per policy op, in policy.OP_NAMES order; each takes (images, argument [B]) (see policy.op_argument).
_BY_NAME = {
    'ShearX': ops.shear_x, 'ShearY': ops.shear_y, 'TranslateX': ops.translate_x, 'TranslateY': ops.translate_y,
    'Rotate': ops.rotate, 'Brightness': ops.adjust_brightness, 'Color': ops.adjust_saturation,
    'Contrast': ops.adjust_contrast, 'Sharpness': ops.adjust_sharpness,
    'Posterize': lambda im, bits: ops.posterize(im, tf.cast(bits, tf.int32)), 'Solarize': ops.solarize,
    'AutoContrast': lambda im, _: ops.autocontrast(im), 'Equalize': lambda im, _: ops.equalize(im),
    'Invert': lambda im, _: ops.invert(im),
}
APPLY = tuple(_BY_NAME[name] for name in policy.OP_NAMES)


def draw(seed, batch_size, image_size):
  """torchvision's AutoAugment(IMAGENET) choices for each of batch_size square views: one random sub-policy per
  view; each of its two ops applied with its probability (rand <= p, as torchvision) with a random sign for signed
  ops. Returns op indices [B, 2] (NO_OP where an op is not applied) and op arguments [B, 2]."""
  op_ids, probs, positive, negative = (tf.constant(t) for t in policy.argument_tables(image_size))
  seeds = tf.random.experimental.stateless_split(seed, 3)
  index = tf.random.stateless_uniform([batch_size], seeds[0], 0, len(policy.IMAGENET_POLICY), dtype=tf.int32)
  draws = tf.random.stateless_uniform([batch_size, 2], seeds[1])
  is_negative = tf.random.stateless_uniform([batch_size, 2], seeds[2], 0, 2, dtype=tf.int32) == 0
  applied = draws <= tf.gather(probs, index)
  op = tf.where(applied, tf.gather(op_ids, index), NO_OP)
  argument = tf.where(is_negative, tf.gather(negative, index), tf.gather(positive, index))
  return op, tf.cast(argument, tf.float32)
