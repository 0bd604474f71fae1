"""RandomResizedCrop boxes as torchvision samples them, and the constrained small crops of Van Gansbeke et al.
2021, "Revisiting Contrastive Methods for Unsupervised Learning of Visual Representations", Sec. 4.1.

Boxes are int32 [..., 4] rows (top, left, height, width) in original-image pixels, so the overlap constraint and the
visual check work in the same coordinates as the paper.
"""

import math

import tensorflow as tf

RRC_TRIES = 10  # torchvision's RandomResizedCrop.get_params attempts before its centre-crop fallback.


def _rrc_candidates(seed, height, width, shape, scale, ratio):
  """`shape + [RRC_TRIES]` candidate boxes and whether each fits in the image."""
  seeds = tf.random.experimental.stateless_split(seed, 4)
  full = shape + [RRC_TRIES]
  area = tf.cast(height * width, tf.float32) * tf.random.stateless_uniform(full, seeds[0], scale[0], scale[1])
  log_ratio = tf.random.stateless_uniform(full, seeds[1], math.log(ratio[0]), math.log(ratio[1]))
  aspect = tf.exp(log_ratio)
  w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  valid = (w > 0) & (h > 0) & (w <= width) & (h <= height)
  # torchvision: top = randint(0, H - h + 1); uniform over the allowed offsets.
  top = tf.cast(
    tf.floor(tf.random.stateless_uniform(full, seeds[2]) * tf.cast(tf.maximum(height - h + 1, 1), tf.float32)), tf.int32
  )
  left = tf.cast(
    tf.floor(tf.random.stateless_uniform(full, seeds[3]) * tf.cast(tf.maximum(width - w + 1, 1), tf.float32)), tf.int32
  )
  return tf.stack([top, left, h, w], axis=-1), valid


def _center_fallback(height, width, ratio):
  """torchvision's fallback: the largest centred crop whose aspect ratio is clamped into `ratio`."""
  in_ratio = tf.cast(width, tf.float32) / tf.cast(height, tf.float32)
  w = tf.where(
    in_ratio < ratio[0],
    width,
    tf.where(in_ratio > ratio[1], tf.cast(tf.round(tf.cast(height, tf.float32) * ratio[1]), tf.int32), width),
  )
  h = tf.where(in_ratio < ratio[0], tf.cast(tf.round(tf.cast(width, tf.float32) / ratio[0]), tf.int32), height)
  return tf.stack([(height - h) // 2, (width - w) // 2, h, w])


def random_resized_crop_boxes(seed, height, width, num, scale, ratio=(3 / 4, 4 / 3)):
  """[num, 4] boxes, each drawn as torchvision's RandomResizedCrop.get_params (first fitting try, else centre)."""
  boxes, valid = _rrc_candidates(seed, height, width, [num], scale, ratio)
  first = tf.argmax(tf.cast(valid, tf.int32), axis=-1)
  chosen = tf.gather(boxes, first, batch_dims=1)
  fallback = tf.broadcast_to(_center_fallback(height, width, ratio), [num, 4])
  return tf.where(tf.reduce_any(valid, axis=-1)[:, None], chosen, fallback)


def _intersection(boxes, anchor):
  """(area of each box's intersection with the anchor, each box's area, the anchor's area), float32."""
  boxes = tf.cast(boxes, tf.float32)
  anchor = tf.cast(anchor, tf.float32)
  top = tf.maximum(boxes[..., 0], anchor[..., 0])
  left = tf.maximum(boxes[..., 1], anchor[..., 1])
  bottom = tf.minimum(boxes[..., 0] + boxes[..., 2], anchor[..., 0] + anchor[..., 2])
  right = tf.minimum(boxes[..., 1] + boxes[..., 3], anchor[..., 1] + anchor[..., 3])
  inter = tf.maximum(bottom - top, 0.0) * tf.maximum(right - left, 0.0)
  return inter, boxes[..., 2] * boxes[..., 3], anchor[..., 2] * anchor[..., 3]


def own_area_overlap(boxes, anchor):
  """Fraction of each box's own area that lies inside the anchor box."""
  inter, area, _ = _intersection(boxes, anchor)
  return inter / area


def iou(boxes, anchor):
  """Intersection over union of each box with the anchor box (anchor [4], or [..., 4] as boxes)."""
  inter, area, anchor_area = _intersection(boxes, anchor)
  return inter / (area + anchor_area - inter)


def capped_pair_boxes(seed, pair, height, width, scale, max_iou, max_tries, ratio=(3 / 4, 4 / 3)):
  """[2, 4] anchor and positive whose IoU is at most max_iou (Van Gansbeke et al. 2021, Figs. 2-3). `pair` is drawn
  without the cap; its positive is redrawn up to max_tries - 1 times, and when none meets the cap with that anchor
  (a large anchor allows no small IoU: one covering the image has IoU >= the positive's share of it), up to
  max_tries fresh pairs are drawn. The first candidate under the cap is kept, else the one of lowest IoU."""
  seeds = tf.random.experimental.stateless_split(seed, 2)
  positives = random_resized_crop_boxes(seeds[0], height, width, max_tries - 1, scale, ratio)
  fresh = tf.reshape(random_resized_crop_boxes(seeds[1], height, width, 2 * max_tries, scale, ratio), [max_tries, 2, 4])
  anchors = tf.concat([tf.broadcast_to(pair[0], [max_tries, 4]), fresh[:, 0]], axis=0)
  candidates = tf.concat([pair[1:], positives, fresh[:, 1]], axis=0)
  overlap = iou(candidates, anchors)
  ok = overlap <= max_iou
  chosen = tf.where(tf.reduce_any(ok), tf.argmax(tf.cast(ok, tf.int32)), tf.argmin(overlap))
  return tf.stack([anchors[chosen], candidates[chosen]])


def _move_into(box, anchor):
  """Shifts a box to overlap the anchor as much as its size allows (inside it when it fits)."""

  def clamp_start(start, size, a_start, a_size):
    lo = tf.minimum(a_start, a_start + a_size - size)
    hi = tf.maximum(a_start, a_start + a_size - size)
    return tf.clip_by_value(start, lo, hi)

  top = clamp_start(box[..., 0], box[..., 2], anchor[0], anchor[2])
  left = clamp_start(box[..., 1], box[..., 3], anchor[1], anchor[3])
  return tf.stack([top, left, box[..., 2], box[..., 3]], axis=-1)


def constrained_crop_boxes(seed, height, width, anchor, num, scale, min_overlap, max_tries, ratio=(3 / 4, 4 / 3)):
  """[num, 4] small-crop boxes, each resampled (up to max_tries times) until at least `min_overlap` of its own area
  lies inside `anchor`. When every try fails, the first try is moved towards the anchor: inside it when it fits,
  which with the paper's scales (small <= 0.14, anchor >= 0.2 of the image) always meets the constraint."""
  seeds = tf.random.experimental.stateless_split(seed, max_tries)
  tries = tf.stack(
    [random_resized_crop_boxes(seeds[t], height, width, num, scale, ratio) for t in range(max_tries)], axis=1
  )  # [num, tries, 4]
  ok = own_area_overlap(tries, anchor) >= min_overlap
  chosen = tf.gather(tries, tf.argmax(tf.cast(ok, tf.int32), axis=-1), batch_dims=1)
  return tf.where(tf.reduce_any(ok, axis=-1)[:, None], chosen, _move_into(tries[:, 0], anchor))


def crop_and_resize(image, box, size):
  """Crops a box and resizes it to size x size with antialiased bilinear filtering (as PIL's resize), uint8."""
  crop = image[box[0] : box[0] + box[2], box[1] : box[1] + box[3]]
  resized = tf.image.resize(crop, [size, size], method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
