"""Pixel operations on uint8 HWC RGB images, with PIL's semantics.

Every op takes and returns a uint8 tensor of shape [H, W, 3], so each one can be compared pixel for pixel with
PIL's ImageOps / ImageEnhance (what torchvision applies to PIL images) and chained the way torchvision chains them:
PIL quantises to uint8 after every op, and so do we.
"""

import math

import tensorflow as tf

# ITU-R 601-2 luma in PIL's fixed point: L = (19595 R + 38470 G + 7471 B + 2^15) >> 16.
_LUMA_FIXED_POINT = (19595, 38470, 7471)


def _to_uint8(x):
  """Rounds and clips a float image to uint8 (PIL rounds blends to nearest)."""
  return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def grayscale_luma(image):
  """[H, W, 1] uint8 luma exactly as PIL's convert('L')."""
  rgb = tf.cast(image, tf.int32)
  weights = tf.constant(_LUMA_FIXED_POINT, tf.int32)
  luma = tf.bitwise.right_shift(tf.reduce_sum(rgb * weights, axis=-1, keepdims=True) + 32768, 16)
  return tf.cast(luma, tf.uint8)


def grayscale(image):
  """RGB image whose three channels are PIL's luma (torchvision's Grayscale(num_output_channels=3))."""
  return tf.tile(grayscale_luma(image), [1, 1, 3])


def blend(degenerate, image, factor):
  """PIL's Image.blend(degenerate, image, factor): the basis of ImageEnhance."""
  degenerate = tf.cast(degenerate, tf.float32)
  image = tf.cast(image, tf.float32)
  return _to_uint8(degenerate + factor * (image - degenerate))


def adjust_brightness(image, factor):
  return blend(tf.zeros_like(image), image, factor)


def adjust_contrast(image, factor):
  """Blend with the mean of the luma image, rounded as PIL's ImageEnhance.Contrast does."""
  mean = tf.floor(tf.reduce_mean(tf.cast(grayscale_luma(image), tf.float32)) + 0.5)
  return blend(tf.fill(tf.shape(image), mean), image, factor)


def adjust_saturation(image, factor):
  """ImageEnhance.Color: blend with the grayscale image."""
  return blend(grayscale(image), image, factor)


def adjust_hue(image, delta):
  """Rotates hue by delta (in turns, |delta| <= 0.5), as torchvision's adjust_hue."""
  hsv = tf.image.rgb_to_hsv(tf.cast(image, tf.float32) / 255.0)
  hue = tf.math.floormod(hsv[..., 0] + delta, 1.0)
  rgb = tf.image.hsv_to_rgb(tf.stack([hue, hsv[..., 1], hsv[..., 2]], axis=-1))
  return _to_uint8(rgb * 255.0)


def adjust_sharpness(image, factor):
  """ImageEnhance.Sharpness: blend with PIL's SMOOTH filter, whose output keeps the border pixels."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  x = tf.cast(image, tf.float32)[None]
  smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], 'VALID')[0]
  smooth = tf.round(smooth)
  interior = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  shape = tf.shape(image)
  mask = tf.pad(tf.ones([shape[0] - 2, shape[1] - 2, 3]), [[1, 1], [1, 1], [0, 0]])
  degenerate = mask * interior + (1.0 - mask) * tf.cast(image, tf.float32)
  return blend(degenerate, image, factor)


def invert(image):
  return 255 - image


def posterize(image, bits):
  """Keeps the `bits` most significant bits of each channel."""
  shift = tf.cast(8 - bits, tf.uint8)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image, threshold):
  """Inverts every pixel >= threshold (PIL's ImageOps.solarize)."""
  return tf.where(tf.cast(image, tf.float32) >= threshold, 255 - image, image)


def autocontrast(image):
  """ImageOps.autocontrast(cutoff=0): per-channel linear stretch of [min, max] to [0, 255], truncating."""
  x = tf.cast(image, tf.float64)  # float64 as PIL's lookup table, so truncation lands on the same integers
  lo = tf.reduce_min(x, axis=[0, 1])
  hi = tf.reduce_max(x, axis=[0, 1])
  scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
  offset = tf.where(hi > lo, -lo * scale, 0.0)
  return tf.cast(tf.clip_by_value(tf.floor(x * scale + offset), 0.0, 255.0), tf.uint8)


def _equalize_channel(channel):
  """PIL's ImageOps.equalize lookup table for one uint8 channel [H, W]."""
  flat = tf.cast(tf.reshape(channel, [-1]), tf.int32)
  hist = tf.math.bincount(flat, minlength=256, maxlength=256)
  last_nonzero = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)))
  step = (tf.reduce_sum(hist) - last_nonzero) // 255
  cdf_before = tf.cumsum(hist, exclusive=True)
  lut = tf.minimum((step // 2 + cdf_before) // tf.maximum(step, 1), 255)
  equalized = tf.gather(lut, flat)
  result = tf.where(step > 0, equalized, flat)
  return tf.reshape(tf.cast(result, tf.uint8), tf.shape(channel))


def equalize(image):
  return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], axis=-1)


def affine_pil(image, coeffs):
  """PIL's Image.transform(size, AFFINE, coeffs, NEAREST, fillcolor=0).

  coeffs (a, b, c, d, e, f) map an output pixel (x, y) to the input point (a x + b y + c, d x + e y + f) in PIL's
  continuous coordinates (pixel centres at +0.5, nearest = floor). TF's projective transform samples pixel centres at
  integer coordinates and rounds, so the offsets are shifted by A (0.5, 0.5) - 0.5 to land on the same pixels.
  """
  a, b, c, d, e, f = [tf.cast(v, tf.float32) for v in coeffs]
  c_tf = c + 0.5 * (a + b) - 0.5
  f_tf = f + 0.5 * (d + e) - 0.5
  transform = tf.stack([a, b, c_tf, d, e, f_tf, 0.0, 0.0])[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform, output_shape=tf.shape(image)[:2],
      fill_value=0.0, interpolation='NEAREST', fill_mode='CONSTANT')
  return out[0]


def shear_x(image, magnitude):
  """torchvision's AutoAugment ShearX: affine shear about the top-left corner."""
  return affine_pil(image, (1.0, magnitude, 0.0, 0.0, 1.0, 0.0))


def shear_y(image, magnitude):
  return affine_pil(image, (1.0, 0.0, 0.0, magnitude, 1.0, 0.0))


def translate_x(image, pixels):
  """Shifts right by int(pixels) (torchvision truncates the magnitude to int)."""
  return affine_pil(image, (1.0, 0.0, -_trunc(pixels), 0.0, 1.0, 0.0))


def translate_y(image, pixels):
  return affine_pil(image, (1.0, 0.0, 0.0, 0.0, 1.0, -_trunc(pixels)))


def _trunc(x):
  return tf.sign(x) * tf.floor(tf.abs(x))


def rotate(image, degrees):
  """PIL's Image.rotate(degrees, NEAREST) about the image centre (w/2, h/2), counter-clockwise."""
  shape = tf.cast(tf.shape(image), tf.float32)
  cx, cy = shape[1] / 2.0, shape[0] / 2.0
  theta = -degrees * math.pi / 180.0
  cos, sin = tf.cos(theta), tf.sin(theta)
  c = cos * (-cx) + sin * (-cy) + cx
  f = -sin * (-cx) + cos * (-cy) + cy
  return affine_pil(image, (cos, sin, c, -sin, cos, f))


def flip_left_right(image):
  return image[:, ::-1, :]


def gaussian_blur(image, sigma, max_radius=6):
  """Separable Gaussian blur with reflect padding; a fixed kernel support of 2 * max_radius + 1 taps.

  max_radius = 3 * sigma_max covers the MoCo-v2 range sigma in [0.1, 2.0].
  """
  taps = tf.range(-max_radius, max_radius + 1, dtype=tf.float32)
  kernel = tf.exp(-0.5 * tf.square(taps / sigma))
  kernel = kernel / tf.reduce_sum(kernel)
  x = tf.cast(image, tf.float32)[None]
  size = tf.shape(image)
  pad_h = tf.minimum(max_radius, size[0] - 1)
  pad_w = tf.minimum(max_radius, size[1] - 1)
  # Reflect needs a pad smaller than the image; tiny images fall back to edge padding beyond that.
  x = tf.pad(x, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]], mode='REFLECT')
  x = tf.pad(x, [[0, 0], [max_radius - pad_h] * 2, [max_radius - pad_w] * 2, [0, 0]], mode='SYMMETRIC')
  kh = tf.tile(kernel[:, None, None, None], [1, 1, 3, 1])
  kw = tf.tile(kernel[None, :, None, None], [1, 1, 3, 1])
  x = tf.nn.depthwise_conv2d(x, kh, [1, 1, 1, 1], 'VALID')
  x = tf.nn.depthwise_conv2d(x, kw, [1, 1, 1, 1], 'VALID')
  return _to_uint8(x[0])
