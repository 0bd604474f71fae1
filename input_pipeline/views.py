"""Views: anchor and positive (RandomResizedCrop) plus N small crops, optionally constrained to overlap the anchor
(paper 001, Sec. 4.1). Each image is decoded once and cropped many times (`make_crops`, per image); the crops are
then augmented a batch at a time (`augment_batch`), where vectorised ops cost a fraction of per-view ones, or, with
`augment_on_device`, leave with their augmentation parameters for the train step to apply on the accelerator."""

import dataclasses

import tensorflow as tf

from input_pipeline import augment
from input_pipeline import crops


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """What views to make; built from the config's `crops` block by `input_pipeline.pipeline`."""
  large_size: int
  small_size: int
  num_small: int
  large_scale: tuple = (0.2, 1.0)
  small_scale: tuple = (0.05, 0.14)
  min_overlap: float = 0.0  # 0 disables the constraint.
  overlap_tries: int = 10
  aplus: bool = False
  # The blur sigma range is MoCo-v2's [0.1, 2.0] px at 224 px; scaling it with the view size keeps the same
  # relative blur on small images (a 2 px blur wipes out a 32 px image). Set blur_reference_size=0 for fixed px.
  blur_reference_size: int = 224
  # Draw every random choice here but leave the pixel work (colour, blur, AutoAugment) to the train step.
  augment_on_device: bool = False

  def blur_sigma(self, size):
    scale = size / self.blur_reference_size if self.blur_reference_size else 1.0
    return tuple(s * scale for s in augment.BLUR_SIGMA)


def make_crops(image, seed, spec: ViewSpec):
  """The crops of one image, not yet augmented: a dict with uint8 `anchor`, `positive`, `small` ([N, s, s, 3]) and
  int32 `boxes` ([2 + N, 4]: anchor, positive, small crops, in original pixels)."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  seeds = tf.random.experimental.stateless_split(seed, 2)
  large = crops.random_resized_crop_boxes(seeds[0], height, width, 2, spec.large_scale)
  out = {'anchor': crops.crop_and_resize(image, large[0], spec.large_size),
         'positive': crops.crop_and_resize(image, large[1], spec.large_size)}
  boxes = [large]
  if spec.num_small:
    if spec.min_overlap > 0:
      small_boxes = crops.constrained_crop_boxes(seeds[1], height, width, large[0], spec.num_small,
                                                 spec.small_scale, spec.min_overlap, spec.overlap_tries)
    else:
      small_boxes = crops.random_resized_crop_boxes(seeds[1], height, width, spec.num_small, spec.small_scale)
    out['small'] = tf.stack([crops.crop_and_resize(image, small_boxes[i], spec.small_size)
                             for i in range(spec.num_small)])
    boxes.append(small_boxes)
  out['boxes'] = tf.concat(boxes, axis=0)
  return out


def augment_batch(batch, seed, spec: ViewSpec):
  """Augments a batch of crops: MoCo-v2 aug+ for anchors; the positive chain (A+ or aug+) for positives and small
  crops, which are augmented as one stack of B * N views.

  With spec.augment_on_device the views stay as cropped and batch['augment'] holds their parameter records
  ({'anchor', 'positive', 'small'}, each view's parameters on the leading axes of its images) for
  `jax_moco.augment.apply_to_batch`.
  """
  seeds = tf.random.experimental.stateless_split(seed, 3)
  batch = dict(batch)
  params = {}
  for index, key in enumerate(('anchor', 'positive', 'small')):
    if key not in batch:
      continue
    view_seed = seeds[index]
    images = batch[key]
    views_first = tf.shape(images)[:-3]  # [B] or [B, N]
    flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[-3:]], 0))
    size = spec.small_size if key == 'small' else spec.large_size
    count = tf.shape(flat)[0]
    if key == 'anchor' or not spec.aplus:
      record = augment.draw_moco_v2(view_seed, count, spec.blur_sigma(size))
    else:
      record = augment.draw_aplus(view_seed, count, size, spec.blur_sigma(size))
    if spec.augment_on_device:
      params[key] = {k: tf.reshape(v, tf.concat([views_first, tf.shape(v)[1:]], 0)) for k, v in record.items()}
    else:
      batch[key] = tf.reshape(augment.apply(flat, record), tf.shape(images))
  if spec.augment_on_device:
    batch['augment'] = params
  return batch
