"""Views: anchor and positive (RandomResizedCrop) plus N small crops, optionally constrained to overlap the anchor
(Van Gansbeke et al. 2021, Sec. 4.1). Each image is decoded once and cropped many times (`make_crops`, per image);
the crops are given their augmentation parameters (`draw_augmentation`, per example), then augmented a batch at a time
(`augment_batch`), where vectorised ops cost a fraction of per-view ones, or, with `augment_on_device`, leave with
the parameters for the train step to apply on the accelerator."""

import dataclasses

import tensorflow as tf

from input_pipeline import crops
from input_pipeline import host_augment


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
  max_iou: float = 1.0  # cap on the anchor-positive IoU; 1 disables it.
  max_iou_tries: int = 50
  aplus: bool = False
  # With aplus, the share of positive views that get AutoAugment instead of aug+ (A+: 0.5; 1: AutoAugment alone).
  aplus_probability: float = host_augment.P_AUTOAUGMENT
  # The blur sigma range is MoCo-v2's [0.1, 2.0] px at 224 px; scaling it with the view size keeps the same
  # relative blur on small images (a 2 px blur wipes out a 32 px image). Set blur_reference_size=0 for fixed px.
  blur_reference_size: int = 224
  blur_probability: float = host_augment.P_BLUR
  # Draw every random choice here but leave the pixel work (colour, blur, AutoAugment) to the train step.
  augment_on_device: bool = False

  def blur_sigma(self, size):
    scale = size / self.blur_reference_size if self.blur_reference_size else 1.0
    return tuple(s * scale for s in host_augment.BLUR_SIGMA)


def draw_boxes(seed, height, width, spec: ViewSpec):
  """int32 [2 + N, 4] boxes of one image of height x width: anchor, positive, small crops (original pixels)."""
  seeds = tf.random.experimental.stateless_split(seed, 2)
  large = crops.random_resized_crop_boxes(seeds[0], height, width, 2, spec.large_scale)
  if spec.max_iou < 1:
    # The further tries come from their own seed, so a pair under the cap is drawn as without it.
    more_seed = tf.random.experimental.stateless_fold_in(seeds[0], 1)
    large = crops.capped_pair_boxes(more_seed, large, height, width, spec.large_scale, spec.max_iou, spec.max_iou_tries)
  boxes = [large]
  if spec.num_small:
    if spec.min_overlap > 0:
      small_boxes = crops.constrained_crop_boxes(
        seeds[1], height, width, large[0], spec.num_small, spec.small_scale, spec.min_overlap, spec.overlap_tries
      )
    else:
      small_boxes = crops.random_resized_crop_boxes(seeds[1], height, width, spec.num_small, spec.small_scale)
    boxes.append(small_boxes)
  return tf.concat(boxes, axis=0)


def make_crops(image, seed, spec: ViewSpec):
  """The crops of one image, not yet augmented: a dict with uint8 `anchor`, `positive`, `small` ([N, s, s, 3]) and
  int32 `boxes` ([2 + N, 4]: anchor, positive, small crops, in original pixels; draw_boxes)."""
  boxes = draw_boxes(seed, tf.shape(image)[0], tf.shape(image)[1], spec)
  out = {
    'anchor': crops.crop_and_resize(image, boxes[0], spec.large_size),
    'positive': crops.crop_and_resize(image, boxes[1], spec.large_size),
    'boxes': boxes,
  }
  if spec.num_small:
    out['small'] = tf.stack(
      [crops.crop_and_resize(image, boxes[2 + i], spec.small_size) for i in range(spec.num_small)]
    )
  return out


def draw_augmentation(seed, spec: ViewSpec):
  """One example's augmentation uniforms (host_augment.UNIFORMS_PER_VIEW per view), keyed like its views: 'anchor' and
  'positive' [U], 'small' [N, U]; `augmentation_records` turns a batch of them into parameter records.

  Drawn per example from the example's own seed, so its views depend only on (seed, its counter): not on the batch
  it lands in, the batch size or the number of processes. One op per example; the rest is vectorised per batch.
  """
  uniforms = host_augment.draw_uniforms(seed, 2 + spec.num_small)
  drawn = {'anchor': uniforms[0], 'positive': uniforms[1]}
  if spec.num_small:
    drawn['small'] = uniforms[2:]
  return drawn


def augmentation_records(uniforms, spec: ViewSpec):
  """A batch's uniforms (from draw_augmentation, leading axes [B] or [B, N]) -> parameter records of the same
  leading axes: aug+ for anchors; the positive chain (A+ or aug+) for positives and small crops."""
  records = {}
  for key, batch_uniforms in uniforms.items():
    size = spec.small_size if key == 'small' else spec.large_size
    flat = tf.reshape(batch_uniforms, [-1, host_augment.UNIFORMS_PER_VIEW])
    if key == 'anchor' or not spec.aplus:
      record = host_augment.moco_v2_record(flat, spec.blur_sigma(size), spec.blur_probability)
    else:
      record = host_augment.aplus_record(
        flat, size, spec.blur_sigma(size), spec.blur_probability, spec.aplus_probability
      )
    leading = tf.shape(batch_uniforms)[:-1]
    records[key] = {k: tf.reshape(v, tf.concat([leading, tf.shape(v)[1:]], 0)) for k, v in record.items()}
  return records


def augment_batch(batch):
  """Applies a batch's records (batch['augment'], from augmentation_records) to its views and drops them, on the host;
  positives and small crops go through their chain as one stack of B (* N) views. (With spec.augment_on_device the
  pipeline skips this and `jax_moco.device_augment.apply_to_batch` does the same in the train step.)"""
  batch = dict(batch)
  for key, record in batch.pop('augment').items():
    images = batch[key]
    leading = len(images.shape) - 3  # [B] or [B, N]
    flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[-3:]], 0))
    flat_record = {k: tf.reshape(v, [-1] + v.shape[leading:].as_list()) for k, v in record.items()}
    batch[key] = tf.reshape(host_augment.apply(flat, flat_record), tf.shape(images))
  return batch
