"""The MoCo-v2 "aug+" chain and the A+ alternative of Van Gansbeke et al. 2021 (Sec. 4.2), split into two halves:

- `moco_v2_record` / `aplus_record` turn a batch of views' uniforms (`draw_uniforms`) into every random choice,
  returned as a *parameter record*: a dict of small per-view tensors (`PARAM_KEYS`) that says exactly what happens
  to each view;
- `apply` applies a record to uint8 views [B, H, W, 3] with TF ops (in tf.data). `jax_moco.device_augment.apply` applies
  the same record with JAX ops on the accelerator, inside the train step, so the views are the same whichever side runs
  the pixel work (tests/test_device_augment.py).

Order of application: flip, the two AutoAugment slots, the four colour-jitter positions, grayscale, blur. torchvision's
MoCo-v2 chain flips last; the colour ops and the (symmetric) blur commute with a flip, so flipping first gives the
same views and lets one order serve both branches of A+ (whose flip comes before AutoAugment).

Each view gets its own decisions, from uniforms the pipeline draws with stateless RNG seeded by its example's counter,
so a given seed gives the same views whatever tf.data's parallelism, batch size or process count, and resuming at a
step reproduces its batches.
"""

import tensorflow as tf

from input_pipeline import autoaugment
from input_pipeline import host_image_ops

# MoCo-v2: ColorJitter(0.4, 0.4, 0.4, 0.1) p = 0.8, RandomGrayscale p = 0.2, GaussianBlur([0.1, 2.0]) p = 0.5.
JITTER_STRENGTH = (0.4, 0.4, 0.4, 0.1)
P_JITTER, P_GRAYSCALE, P_BLUR, P_FLIP, P_AUTOAUGMENT = 0.8, 0.2, 0.5, 0.5, 0.5
BLUR_SIGMA = (0.1, 2.0)  # in pixels of a 224 px view; views.py scales it to the view size
NO_OP = autoaugment.NO_OP
JITTER_OPS = (
  host_image_ops.adjust_brightness,
  host_image_ops.adjust_contrast,
  host_image_ops.adjust_saturation,
  host_image_ops.adjust_hue,
)

# The parameter record of a batch of V views:
#   flip [V] bool; autoaugment_op [V, 2] int32 (policy op index or NO_OP) with autoaugment_arg [V, 2] float32;
#   jitter_op [V, 4] int32: the JITTER_OPS index applied at each of the four positions (NO_OP: none), with
#   jitter_factor [V, 4] float32 (brightness, contrast, saturation factors and the hue shift, by op index);
#   grayscale [V] bool; blur_sigma [V] float32 (0: no blur).
RECORD_SPEC = {
  'flip': tf.TensorSpec([None], tf.bool),
  'autoaugment_op': tf.TensorSpec([None, 2], tf.int32),
  'autoaugment_arg': tf.TensorSpec([None, 2], tf.float32),
  'jitter_op': tf.TensorSpec([None, 4], tf.int32),
  'jitter_factor': tf.TensorSpec([None, 4], tf.float32),
  'grayscale': tf.TensorSpec([None], tf.bool),
  'blur_sigma': tf.TensorSpec([None], tf.float32),
}
PARAM_KEYS = tuple(RECORD_SPEC)


# Every random choice of a view is a function of UNIFORMS_PER_VIEW uniforms in [0, 1): the pipeline draws them per
# example (one small op) and turns a whole batch of them into records at once (vectorised).
UNIFORMS_PER_VIEW = 20


def draw_uniforms(seed, count):
  """[count, UNIFORMS_PER_VIEW] uniforms for `count` views."""
  return tf.random.stateless_uniform([count, UNIFORMS_PER_VIEW], seed)


def moco_v2_record(uniforms, blur_sigma=BLUR_SIGMA, blur_probability=P_BLUR):
  """MoCo-v2's aug+ for views [V] from their uniforms [V, UNIFORMS_PER_VIEW] (columns 0-12): jitter (factors in a
  fresh random order per view, as torchvision's ColorJitter) p = 0.8, grayscale p = 0.2, blur p = 0.5 (or
  blur_probability; the MoCo CIFAR-10 Colab has none) with sigma uniform in blur_sigma, flip p = 0.5."""
  count = tf.shape(uniforms)[0]
  applied = uniforms[:, 0:4] < tf.constant([P_JITTER, P_GRAYSCALE, blur_probability, P_FLIP])
  sigma = blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * uniforms[:, 4]
  b, c, s, h = JITTER_STRENGTH
  low, high = tf.constant([1 - b, 1 - c, 1 - s, -h]), tf.constant([1 + b, 1 + c, 1 + s, h])
  factor = low + (high - low) * uniforms[:, 5:9]
  order = tf.argsort(uniforms[:, 9:13], axis=1, stable=True)
  return {
    'flip': applied[:, 3],
    'autoaugment_op': tf.fill([count, 2], NO_OP),
    'autoaugment_arg': tf.zeros([count, 2]),
    'jitter_op': tf.where(applied[:, :1], order, NO_OP),
    'jitter_factor': factor,
    'grayscale': applied[:, 1],
    'blur_sigma': tf.where(applied[:, 2], sigma, 0.0),
  }


def aplus_record(
  uniforms, image_size, blur_sigma=BLUR_SIGMA, blur_probability=P_BLUR, autoaugment_probability=P_AUTOAUGMENT
):
  """A+ for positives: each view with p = autoaugment_probability (A+'s 0.5) gets flip (p = 0.5) +
  AutoAugment(ImageNet) instead of aug+ (columns 13-19 of the uniforms decide); 1 is AutoAugment alone, Table 7 of
  Van Gansbeke et al. 2021."""
  params = moco_v2_record(uniforms, blur_sigma, blur_probability)
  use_autoaugment = uniforms[:, 13] < autoaugment_probability
  flip = uniforms[:, 14] < P_FLIP
  op, argument = autoaugment.choose(uniforms[:, 15:20], image_size)
  column = use_autoaugment[:, None]
  return {
    'flip': tf.where(use_autoaugment, flip, params['flip']),
    'autoaugment_op': tf.where(column, op, NO_OP),
    'autoaugment_arg': tf.where(column, argument, 0.0),
    'jitter_op': tf.where(column, NO_OP, params['jitter_op']),
    'jitter_factor': params['jitter_factor'],
    'grayscale': params['grayscale'] & ~use_autoaugment,
    'blur_sigma': tf.where(use_autoaugment, 0.0, params['blur_sigma']),
  }


# The chain is ~4k graph ops. Traced as functions (once per process, for every view kind, size and pipeline) and kept
# out of line (the two AutoAugment slots and the four jitter positions share one body each), building and starting a
# pipeline takes a fraction of the time it took with the chain traced and inlined per view kind and slot.
_VIEWS = tf.TensorSpec([None, None, None, 3], tf.uint8)
_OUT_OF_LINE = {'_noinline': True}


@tf.function(
  input_signature=[_VIEWS, tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.float32)],
  autograph=False,
  experimental_attributes=_OUT_OF_LINE,
)
def _autoaugment_slot(images, op, argument):
  return host_image_ops.apply_switch(op, autoaugment.APPLY, images, argument)


@tf.function(
  input_signature=[_VIEWS, tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 4], tf.float32)],
  autograph=False,
  experimental_attributes=_OUT_OF_LINE,
)
def _jitter_position(images, op, factors):
  factor = tf.gather(factors, tf.maximum(op, 0), batch_dims=1)
  return host_image_ops.apply_switch(op, JITTER_OPS, images, factor)


@tf.function(input_signature=[_VIEWS, RECORD_SPEC], autograph=False, experimental_attributes=_OUT_OF_LINE)
def apply(images, params):
  """Applies a parameter record to uint8 views [V, H, W, 3]; each op runs only on the views it changes."""
  images = host_image_ops.apply_where(params['flip'], host_image_ops.flip_left_right, images)
  for slot in range(2):
    images = _autoaugment_slot(images, params['autoaugment_op'][:, slot], params['autoaugment_arg'][:, slot])
  for position in range(4):
    images = _jitter_position(images, params['jitter_op'][:, position], params['jitter_factor'])
  images = host_image_ops.apply_where(params['grayscale'], host_image_ops.grayscale, images)
  blur = params['blur_sigma'] > 0
  return host_image_ops.apply_where(blur, host_image_ops.gaussian_blur, images, params['blur_sigma'])
