"""Views of one image: anchor and positive (RandomResizedCrop) plus N small crops, optionally constrained to
overlap the anchor (paper 001, Sec. 4.1); the image is decoded once and cropped many times."""

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

  def blur_sigma(self, size):
    scale = size / self.blur_reference_size if self.blur_reference_size else 1.0
    return tuple(s * scale for s in augment.BLUR_SIGMA)


def make_views(image, seed, spec: ViewSpec):
  """Returns a dict with uint8 `anchor`, `positive`, `small` ([N, s, s, 3]) and int32 `boxes` ([2 + N, 4]:
  anchor, positive, small crops, in original pixels)."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  seeds = tf.random.experimental.stateless_split(seed, 4 + 2 * spec.num_small)
  large = crops.random_resized_crop_boxes(seeds[0], height, width, 2, spec.large_scale)
  anchor_box, positive_box = large[0], large[1]
  positive_chain = augment.aplus_chain if spec.aplus else augment.moco_v2_chain
  large_blur, small_blur = spec.blur_sigma(spec.large_size), spec.blur_sigma(spec.small_size)
  views = {
      'anchor': augment.moco_v2_chain(crops.crop_and_resize(image, anchor_box, spec.large_size), seeds[1],
                                      large_blur),
      'positive': positive_chain(crops.crop_and_resize(image, positive_box, spec.large_size), seeds[2], large_blur),
  }
  boxes = [large]
  if spec.num_small:
    if spec.min_overlap > 0:
      small_boxes = crops.constrained_crop_boxes(seeds[3], height, width, anchor_box, spec.num_small,
                                                 spec.small_scale, spec.min_overlap, spec.overlap_tries)
    else:
      small_boxes = crops.random_resized_crop_boxes(seeds[3], height, width, spec.num_small, spec.small_scale)
    views['small'] = tf.stack([
        positive_chain(crops.crop_and_resize(image, small_boxes[i], spec.small_size), seeds[4 + i], small_blur)
        for i in range(spec.num_small)])
    boxes.append(small_boxes)
  views['boxes'] = tf.concat(boxes, axis=0)
  return views
