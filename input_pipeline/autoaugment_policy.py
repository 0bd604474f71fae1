"""AutoAugment's ImageNet policy (torchvision's 25 sub-policies and magnitude bins) as the authors' backport of
torchvision's AutoAugment (Van Gansbeke et al. 2021) applies it, as plain Python tables: the TF side
(`autoaugment.py`) draws and applies it, the JAX side (`jax_moco/device_augment.py`) applies it on the accelerator
from the same op indices.

big_vision's `policy_v0` is a different list; this is torchvision's `AutoAugmentPolicy.IMAGENET`, which A+
(Van Gansbeke et al. 2021, Sec. 4.2) uses. Magnitude bins: 10, as torchvision. Where the backport departs from
torchvision 0.29, we follow the backport: Solarize thresholds run from 256 (nothing inverted at bin 0) down to 0, and
a shear's magnitude is an angle in radians, applied about the image centre (`op_argument`, ops.shear_x).
"""

import math

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


# op name -> (magnitude per bin, signed). Translate magnitudes are fractions of the image side (torchvision:
# 150 / 331 * side); enhance ops use 1 + magnitude as their factor.
MAGNITUDES = {
  'ShearX': (_linspace(0.0, 0.3), True),
  'ShearY': (_linspace(0.0, 0.3), True),
  'TranslateX': (_linspace(0.0, 150.0 / 331.0), True),
  'TranslateY': (_linspace(0.0, 150.0 / 331.0), True),
  'Rotate': (_linspace(0.0, 30.0), True),
  'Brightness': (_linspace(0.0, 0.9), True),
  'Color': (_linspace(0.0, 0.9), True),
  'Contrast': (_linspace(0.0, 0.9), True),
  'Sharpness': (_linspace(0.0, 0.9), True),
  'Posterize': ([8 - round(i / ((NUM_BINS - 1) / 4)) for i in range(NUM_BINS)], False),
  'Solarize': (_linspace(256.0, 0.0), False),
  'AutoContrast': ([0.0] * NUM_BINS, False),
  'Equalize': ([0.0] * NUM_BINS, False),
  'Invert': ([0.0] * NUM_BINS, False),
}
# An op's index in this tuple is how a view's parameters name it on both sides.
OP_NAMES = tuple(MAGNITUDES)
ENHANCE_OPS = ('Brightness', 'Color', 'Contrast', 'Sharpness')


def op_argument(name, magnitude, image_size):
  """What an op takes for a signed policy magnitude: pixels for translations (of a square view of image_size),
  a blend factor 1 + magnitude for enhance ops, the shear coefficient tan(magnitude) for shears (the backport passes
  the magnitude to the affine transform as an angle, math.degrees(magnitude)), the magnitude itself (degrees, bits,
  threshold) otherwise."""
  if name in ('TranslateX', 'TranslateY'):
    return magnitude * image_size
  if name in ('ShearX', 'ShearY'):
    return math.tan(magnitude)
  if name in ENHANCE_OPS:
    return 1.0 + magnitude
  return float(magnitude)


def argument_tables(image_size):
  """[25][2] op indices, probabilities, and op arguments for a positive and for a negative sign."""
  op_ids, probs, positive, negative = [], [], [], []
  for sub_policy in IMAGENET_POLICY:
    for table in (op_ids, probs, positive, negative):
      table.append([])
    for name, prob, bin_ in sub_policy:
      magnitudes, signed = MAGNITUDES[name]
      magnitude = float(magnitudes[bin_]) if bin_ is not None else 0.0
      op_ids[-1].append(OP_NAMES.index(name))
      probs[-1].append(prob)
      positive[-1].append(op_argument(name, magnitude, image_size))
      negative[-1].append(op_argument(name, -magnitude if signed else magnitude, image_size))
  return op_ids, probs, positive, negative
