"""AutoAugment (torchvision's ImageNet policy, `autoaugment_policy`) in TF: `choose` makes every random choice for a
batch of views, `APPLY` holds the TF op of each policy op (in `OP_NAMES` order) for `augment.apply`."""

import tensorflow as tf

from input_pipeline import autoaugment_policy as policy
from input_pipeline import host_image_ops

NO_OP = -1

# TF op per policy op, in policy.OP_NAMES order; each takes (images, argument [B]) (see policy.op_argument).
_BY_NAME = {
  'ShearX': host_image_ops.shear_x,
  'ShearY': host_image_ops.shear_y,
  'TranslateX': host_image_ops.translate_x,
  'TranslateY': host_image_ops.translate_y,
  'Rotate': host_image_ops.rotate,
  'Brightness': host_image_ops.adjust_brightness,
  'Color': host_image_ops.adjust_saturation,
  'Contrast': host_image_ops.adjust_contrast,
  'Sharpness': host_image_ops.adjust_sharpness,
  'Posterize': lambda im, bits: host_image_ops.posterize(im, tf.cast(bits, tf.int32)),
  'Solarize': host_image_ops.solarize,
  'AutoContrast': lambda im, _: host_image_ops.autocontrast(im),
  'Equalize': lambda im, _: host_image_ops.equalize(im),
  'Invert': lambda im, _: host_image_ops.invert(im),
}
APPLY = tuple(_BY_NAME[name] for name in policy.OP_NAMES)


def choose(uniforms, image_size):
  """torchvision's AutoAugment(IMAGENET) choices for square views of image_size from uniforms [B, 5]: one random
  sub-policy per view; each of its two ops applied with its probability (rand <= p, as torchvision) with a random
  sign for signed ops. Returns op indices [B, 2] (NO_OP where an op is not applied) and op arguments [B, 2]."""
  op_ids, probs, positive, negative = (tf.constant(t) for t in policy.argument_tables(image_size))
  count = len(policy.IMAGENET_POLICY)
  index = tf.minimum(tf.cast(uniforms[:, 0] * count, tf.int32), count - 1)
  applied = uniforms[:, 1:3] <= tf.gather(probs, index)
  is_negative = uniforms[:, 3:5] < 0.5
  op = tf.where(applied, tf.gather(op_ids, index), NO_OP)
  argument = tf.where(is_negative, tf.gather(negative, index), tf.gather(positive, index))
  return op, tf.cast(argument, tf.float32)
