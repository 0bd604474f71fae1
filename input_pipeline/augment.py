"""The MoCo-v2 "aug+" chain and the A+ alternative of paper 001 (Sec. 4.2), on batches of uint8 views.

Each image of a batch gets its own random decisions and parameters, drawn with stateless RNG from one seed per
batch (the pipeline derives it from the batch's first example counter), so a given seed gives the same views
whatever tf.data's parallelism, and resuming at a step reproduces its batches.
"""

import tensorflow as tf

from input_pipeline import autoaugment
from input_pipeline import ops

# MoCo-v2: ColorJitter(0.4, 0.4, 0.4, 0.1) p = 0.8, RandomGrayscale p = 0.2, GaussianBlur([0.1, 2.0]) p = 0.5.
JITTER_STRENGTH = (0.4, 0.4, 0.4, 0.1)
P_JITTER, P_GRAYSCALE, P_BLUR, P_FLIP, P_AUTOAUGMENT = 0.8, 0.2, 0.5, 0.5, 0.5
BLUR_SIGMA = (0.1, 2.0)  # in pixels of a 224 px view; views.py scales it to the view size


def _split(seed, n):
  return tf.random.experimental.stateless_split(seed, n)


def _batch_size(images):
  return tf.shape(images)[:1]


def color_jitter(images, seed, applied, strength=JITTER_STRENGTH):
  """torchvision's ColorJitter on the images where `applied`: four factors in a fresh random order per image."""
  b, c, s, h = strength
  seeds = _split(seed, 5)
  shape = _batch_size(images)
  factors = [tf.random.stateless_uniform(shape, seeds[0], 1 - b, 1 + b),
             tf.random.stateless_uniform(shape, seeds[1], 1 - c, 1 + c),
             tf.random.stateless_uniform(shape, seeds[2], 1 - s, 1 + s),
             tf.random.stateless_uniform(shape, seeds[3], -h, h)]
  adjust = [ops.adjust_brightness, ops.adjust_contrast, ops.adjust_saturation, ops.adjust_hue]
  order = tf.argsort(tf.random.stateless_uniform(tf.concat([shape, [4]], 0), seeds[4]), axis=1)
  for position in range(4):
    op = tf.where(applied, order[:, position], -1)
    # Each image's factor for whichever op it applies at this position.
    factor = tf.gather(tf.stack(factors, axis=1), tf.maximum(op, 0), batch_dims=1)
    images = ops.apply_switch(op, adjust, images, factor)
  return images


def moco_v2_decisions(seed, batch_size, blur_sigma=BLUR_SIGMA):
  """Which of jitter, grayscale, blur and flip apply to each image ([B, 4], MoCo-v2's probabilities) and the blur
  sigmas [B]."""
  seeds = _split(seed, 2)
  applied = tf.random.stateless_uniform([batch_size, 4], seeds[0]) < tf.constant([P_JITTER, P_GRAYSCALE, P_BLUR,
                                                                                   P_FLIP])
  sigma = tf.random.stateless_uniform([batch_size], seeds[1], *blur_sigma)
  return applied, sigma


def moco_v2_chain(images, seed, blur_sigma=BLUR_SIGMA):
  """Colour jitter, grayscale, blur and flip, in torchvision's order."""
  seeds = _split(seed, 2)
  applied, sigma = moco_v2_decisions(seeds[0], tf.shape(images)[0], blur_sigma)
  images = color_jitter(images, seeds[1], applied[:, 0])
  images = ops.apply_where(applied[:, 1], ops.grayscale, images)
  images = ops.apply_where(applied[:, 2], ops.gaussian_blur, images, sigma)
  return ops.apply_where(applied[:, 3], ops.flip_left_right, images)


def aplus_uses_autoaugment(seed, batch_size):
  return tf.random.stateless_uniform([batch_size], seed) < P_AUTOAUGMENT


def aplus_chain(images, seed, blur_sigma=BLUR_SIGMA):
  """A+ for positives: each image with p = 0.5 gets flip + AutoAugment(ImageNet) instead of the MoCo-v2 chain."""
  seeds = _split(seed, 4)
  use_autoaugment = aplus_uses_autoaugment(seeds[0], tf.shape(images)[0])
  flip = tf.random.stateless_uniform(_batch_size(images), seeds[1]) < P_FLIP

  def mocov2(selected, unused_flip):
    return moco_v2_chain(selected, seeds[3], blur_sigma)

  def flip_autoaugment(selected, selected_flip):
    return autoaugment.autoaugment(ops.apply_where(selected_flip, ops.flip_left_right, selected), seeds[2])

  # One partition of the batch into its two branches.
  return ops.apply_switch(tf.cast(use_autoaugment, tf.int32), [mocov2, flip_autoaugment], images, flip)
