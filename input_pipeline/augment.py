"""The MoCo-v2 "aug+" chain and the A+ alternative of paper 001 (Sec. 4.2), on uint8 crops.

Random decisions use stateless RNG from a per-example seed, so a given seed and example give the same views
whatever tf.data's parallelism.
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


def _uniform(seed, low=0.0, high=1.0):
  return tf.random.stateless_uniform([], seed, low, high)


def color_jitter(image, seed, strength=JITTER_STRENGTH):
  """torchvision's ColorJitter: four factors, applied in a random order (a fresh permutation per call)."""
  b, c, s, h = strength
  seeds = _split(seed, 5)
  factors = [_uniform(seeds[0], 1 - b, 1 + b), _uniform(seeds[1], 1 - c, 1 + c),
             _uniform(seeds[2], 1 - s, 1 + s), _uniform(seeds[3], -h, h)]
  adjust = [ops.adjust_brightness, ops.adjust_contrast, ops.adjust_saturation, ops.adjust_hue]
  order = tf.argsort(tf.random.stateless_uniform([4], seeds[4]))
  for position in range(4):
    image = tf.switch_case(order[position],
                           [lambda im=image, f=f, fn=fn: fn(im, f) for f, fn in zip(factors, adjust)])
  return image


def _maybe(apply, fn, image):
  return tf.cond(apply, lambda: fn(image), lambda: image)


def moco_v2_decisions(seed, blur_sigma=BLUR_SIGMA):
  """Which of jitter, grayscale, blur and flip apply (each with its MoCo-v2 probability), and the blur sigma."""
  draws = tf.random.stateless_uniform([4], seed)
  applied = draws < tf.constant([P_JITTER, P_GRAYSCALE, P_BLUR, P_FLIP])
  sigma = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, 1), *blur_sigma)
  return applied, sigma


def moco_v2_chain(image, seed, blur_sigma=BLUR_SIGMA):
  """Colour jitter, grayscale, blur and flip, in torchvision's order."""
  seeds = _split(seed, 2)
  applied, sigma = moco_v2_decisions(seeds[0], blur_sigma)
  image = _maybe(applied[0], lambda im: color_jitter(im, seeds[1]), image)
  image = _maybe(applied[1], ops.grayscale, image)
  image = _maybe(applied[2], lambda im: ops.gaussian_blur(im, sigma), image)
  return _maybe(applied[3], ops.flip_left_right, image)


def aplus_uses_autoaugment(seed):
  return _uniform(seed) < P_AUTOAUGMENT


def aplus_chain(image, seed, blur_sigma=BLUR_SIGMA):
  """A+ for positives: with p = 0.5 flip + AutoAugment(ImageNet) instead of the MoCo-v2 chain."""
  seeds = _split(seed, 4)

  def flip_autoaugment(im):
    im = _maybe(_uniform(seeds[1]) < P_FLIP, ops.flip_left_right, im)
    return autoaugment.autoaugment(im, seeds[2])

  return tf.cond(aplus_uses_autoaugment(seeds[0]), lambda: flip_autoaugment(image),
                 lambda: moco_v2_chain(image, seeds[3], blur_sigma))
