"""The host-side transforms of the fine-tuned dense protocols (segmentation and depth), NumPy and PIL only.

Training (Van Gansbeke et al. 2021, appendix A.3, after He et al. 2020's fine-tuning protocol): scale the image and
its target by one ratio drawn uniformly from [0.5, 2.0] (the image bilinear by PIL; labels and depth nearest, the
pixel under each output pixel's centre), flip both horizontally with probability 1/2, pad them at the bottom and
right to at least the crop size (the image with `image_fill`, labels with 255, depth with 0, invalid) and cut one
random crop of the crop size at the same offsets. Depths are divided by the ratio (Eigen et al. 2014's convention,
which Vandenhende et al.'s NYUD code follows: magnifying the scene as if the camera were nearer), unless
`rescale_depth=False`.

A target is a class-index mask (integer dtype, 255 ignored) or a depth map (float dtype, metres, 0 invalid): the
dtype says which. Pixels stay uint8; the training loop normalises them (jax_moco.normalization), so pass the
normalisation's mean colour as `image_fill` to pad with what becomes 0, as DeepLab pads.

Every random choice comes from one numpy Generator; `example_rng(seed, epoch, index)`'s makes an example's crop a
function of the run's seed, the epoch and the example alone, so a resumed epoch draws the same crops. Evaluation
reads whole images at their own size; `pad_example` pads an image and its target to a common size for batching, the
target with ignore/invalid so the padding scores nothing.
"""

import dataclasses

import numpy as np
from PIL import Image

SCALE_RANGE = (0.5, 2.0)
IGNORE = 255  # the label of unlabelled pixels (every dataset's void), and of padding
INVALID_DEPTH = 0.0  # the depth of pixels without a measurement, and of padding


@dataclasses.dataclass(frozen=True)
class Geometry:
  """The random choices of one training example: scale ratio, flip, and the crop's top-left corner in the scaled,
  flipped and padded image."""

  scale: float
  flip: bool
  top: int
  left: int


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """The Generator of example `index` in `epoch` of a run seeded `seed`: the same triple draws the same crop."""
  return np.random.default_rng([seed, epoch, index])


def _pair(size):
  return (size, size) if np.isscalar(size) else tuple(size)


def scaled_size(size, scale):
  """(height, width) of an image of `size` (height, width) scaled by `scale`, rounded, at least 1 pixel."""
  return tuple(max(1, round(n * scale)) for n in size)


def draw(rng: np.random.Generator, size, crop_size, scale_range=SCALE_RANGE) -> Geometry:
  """The Geometry of one example of `size` (height, width): ratio, then flip, then the crop's offsets."""
  crop_h, crop_w = _pair(crop_size)
  scale = float(rng.uniform(*scale_range))
  flip = bool(rng.random() < 0.5)
  height, width = scaled_size(size, scale)
  top = int(rng.integers(0, max(height, crop_h) - crop_h + 1))
  left = int(rng.integers(0, max(width, crop_w) - crop_w + 1))
  return Geometry(scale, flip, top, left)


def _is_depth(target):
  return np.issubdtype(target.dtype, np.floating)


def _padding(target):
  """What pads a target: INVALID_DEPTH for depth, IGNORE for labels."""
  return INVALID_DEPTH if _is_depth(target) else IGNORE


def nearest_indices(n_in, n_out):
  """The source index of each of `n_out` samples of `n_in`: floor((i + 1/2) n_in / n_out), the pixel under each
  output pixel's centre (integer arithmetic, so exact)."""
  return (2 * np.arange(n_out) + 1) * n_in // (2 * n_out)


def _window(geometry: Geometry, size, crop):
  """(top, bottom, left, right): the part of the scaled, unflipped image of `size` that the crop takes (the crop's
  rest is padding)."""
  height, width = size
  bottom, right = min(geometry.top + crop[0], height), min(geometry.left + crop[1], width)
  left = geometry.left
  if geometry.flip:
    left, right = width - right, width - left
  return geometry.top, bottom, left, right


def _pad_to(array, size, fill):
  """`array` padded at the bottom and right with `fill` to `size` (height, width)."""
  out = np.empty((*size, *array.shape[2:]), array.dtype)
  out[...] = fill
  out[: array.shape[0], : array.shape[1]] = array
  return out


def apply(image, target, geometry: Geometry, crop_size, image_fill, rescale_depth=True):
  """(image uint8 [h, w, 3], target [h, w]) of `geometry` on one example, (h, w) = crop_size; the target's dtype
  is kept (labels uint8, depth float32). Only the cropped part is resized: the image equals PIL's resize of the
  whole image, then cropped, to one level (PIL's fixed-point rounding); the target equals it exactly."""
  if target.shape != image.shape[:2]:
    raise ValueError(f'target {target.shape} and image {image.shape[:2]} differ in size')
  crop, depth = _pair(crop_size), _is_depth(target)
  (source_h, source_w), size = image.shape[:2], scaled_size(image.shape[:2], geometry.scale)
  top, bottom, left, right = _window(geometry, size, crop)
  box = (left * source_w / size[1], top * source_h / size[0], right * source_w / size[1], bottom * source_h / size[0])
  image = np.asarray(Image.fromarray(image).resize((right - left, bottom - top), Image.BILINEAR, box=box))
  rows = nearest_indices(source_h, size[0])[top:bottom]
  target = target[rows][:, nearest_indices(source_w, size[1])[left:right]]
  target = target.astype(np.float32) if depth else target.astype(np.uint8)
  if depth and rescale_depth:
    target = target / np.float32(geometry.scale)  # 0 (invalid) stays 0
  if geometry.flip:
    image, target = image[:, ::-1], target[:, ::-1]
  return _pad_to(image, crop, np.asarray(image_fill, np.uint8)), _pad_to(target, crop, _padding(target))


def train_example(image, target, crop_size, rng, image_fill, scale_range=SCALE_RANGE, rescale_depth=True):
  """One augmented training example (image uint8 [h, w, 3], target [h, w]) of `crop_size` (an int or (h, w)), its
  random choices drawn from `rng` (see example_rng)."""
  geometry = draw(rng, image.shape[:2], crop_size, scale_range)
  return apply(image, target, geometry, crop_size, image_fill, rescale_depth)


def pad_example(image, target, size, image_fill):
  """(image, target, (height, width)): a whole evaluation example padded at the bottom and right to `size`, the
  image with `image_fill`, the target with 255 (labels) or 0 (depth), and its own size, the valid region's."""
  size = _pair(size)
  if image.shape[0] > size[0] or image.shape[1] > size[1]:
    raise ValueError(f'pad_example: an image of {image.shape[:2]} does not fit in {size}')
  padded_image = _pad_to(image, size, np.asarray(image_fill, np.uint8))
  return padded_image, _pad_to(target, size, _padding(target)), image.shape[:2]
