"""Pixel operations on batches of uint8 RGB images [B, H, W, 3], with PIL's semantics and per-image parameters.

Every op takes and returns uint8 [B, H, W, 3]; parameters are float [B] (one value per image), so a whole batch of
views is augmented by a handful of vectorised TF ops instead of one small graph per view (per-op dispatch dominates
at 96-160 px). Each op can be compared pixel for pixel with PIL's ImageOps / ImageEnhance (what torchvision applies
to PIL images) and chained the way torchvision chains them: PIL quantises to uint8 after every op, and so do we.
"""

import math

import tensorflow as tf

# ITU-R 601-2 luma in PIL's fixed point: L = (19595 R + 38470 G + 7471 B + 2^15) >> 16.
_LUMA_FIXED_POINT = (19595, 38470, 7471)


def _per_image(value, dtype=tf.float32):
  """A [B] parameter as [B, 1, 1, 1], to broadcast over [B, H, W, C]."""
  return tf.reshape(tf.cast(value, dtype), [-1, 1, 1, 1])


def _to_uint8(x):
  """Rounds and clips a float image to uint8 (hue and blur)."""
  return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def grayscale_luma(images):
  """[B, H, W, 1] uint8 luma exactly as PIL's convert('L').

  A 1x1 convolution in float32 is exact here (every partial sum is an integer below 2^24) and several times faster
  than an int32 reduction over the channel axis.
  """
  weights = tf.constant(_LUMA_FIXED_POINT, tf.float32)[None, None, :, None]
  weighted = tf.nn.conv2d(tf.cast(images, tf.float32), weights, 1, 'VALID')
  return tf.cast(tf.floor((weighted + 32768.0) / 65536.0), tf.uint8)


def grayscale(images):
  """RGB images whose three channels are PIL's luma (torchvision's Grayscale(num_output_channels=3))."""
  return tf.tile(grayscale_luma(images), [1, 1, 1, 3])


# Blend factors are rounded to multiples of 1 / 4096: with integer-valued images every product and sum of a blend is
# then exact in float32, so fused multiply-adds (XLA) or separate ones (TF) give the same pixels on both sides, and
# PIL's float32 blend of the same factor gives them too.
BLEND_FACTOR_STEPS = 4096.0


def blend(degenerate, images, factor):
  """PIL's Image.blend(degenerate, image, factor), the basis of ImageEnhance; factor [B].

  PIL computes the blend in float32 and casts it to uint8, truncating (after clipping when extrapolating): the floor.
  """
  degenerate = tf.cast(degenerate, tf.float32)
  images = tf.cast(images, tf.float32)
  factor = tf.round(tf.cast(factor, tf.float32) * BLEND_FACTOR_STEPS) / BLEND_FACTOR_STEPS
  blended = degenerate + _per_image(factor) * (images - degenerate)
  return tf.cast(tf.clip_by_value(tf.floor(blended), 0.0, 255.0), tf.uint8)


def adjust_brightness(images, factor):
  return blend(tf.zeros_like(images), images, factor)


def adjust_contrast(images, factor):
  """Blend with the mean of each image's luma, rounded to an integer as PIL's ImageEnhance.Contrast does (here in
  exact integer arithmetic, which the JAX version repeats bit for bit)."""
  luma = tf.cast(grayscale_luma(images), tf.int64)
  total = tf.reduce_sum(luma, axis=[1, 2, 3], keepdims=True)
  count = tf.cast(tf.reduce_prod(tf.shape(luma)[1:]), tf.int64)
  mean = (2 * total + count) // (2 * count)  # floor(total / count + 0.5)
  return blend(tf.cast(mean, tf.float32), images, factor)


def adjust_saturation(images, factor):
  """ImageEnhance.Color: blend with the grayscale image."""
  return blend(grayscale_luma(images), images, factor)


def adjust_hue(images, delta):
  """Rotates hue by delta [B] (in turns, |delta| <= 0.5), as torchvision's adjust_hue.

  A hue rotation keeps each pixel's max V and min V - C, so only the hue is computed (in sextants, as RGB -> HSV
  does) and each channel is read back from the rotated hue with the closed form of HSV -> RGB:
  V - C * clip(min(k, 4 - k), 0, 1), k = (n + 6 H) mod 6 with n = 5, 3, 1 for R, G, B. Elementwise ops only, which
  costs a fraction of TF's rgb_to_hsv / hsv_to_rgb kernels.
  """
  x = tf.cast(images, tf.float32)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  value = tf.maximum(tf.maximum(r, g), b)
  chroma = value - tf.minimum(tf.minimum(r, g), b)
  safe = tf.where(chroma > 0, chroma, 1.0)
  sextant = tf.where(value == r, (g - b) / safe, tf.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  hue6 = sextant + 6.0 * tf.reshape(tf.cast(delta, tf.float32), [-1, 1, 1])
  channels = []
  for n in (5.0, 3.0, 1.0):
    k = tf.math.floormod(n + hue6, 6.0)
    channels.append(value - chroma * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0))
  return _to_uint8(tf.stack(channels, axis=-1))


def adjust_sharpness(images, factor):
  """ImageEnhance.Sharpness: blend with PIL's SMOOTH filter, whose output keeps the border pixels."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  x = tf.cast(images, tf.float32)
  smooth = tf.round(tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], 'VALID'))
  interior = tf.pad(smooth, [[0, 0], [1, 1], [1, 1], [0, 0]])
  shape = tf.shape(images)
  mask = tf.pad(tf.ones([1, shape[1] - 2, shape[2] - 2, 1]), [[0, 0], [1, 1], [1, 1], [0, 0]])
  degenerate = mask * interior + (1.0 - mask) * x
  return blend(degenerate, images, factor)


def invert(images):
  return 255 - images


def posterize(images, bits):
  """Keeps the `bits` [B] most significant bits of each channel."""
  shift = _per_image(8 - tf.cast(bits, tf.int32), tf.uint8)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(images, shift), shift)


def solarize(images, threshold):
  """Inverts every pixel >= threshold [B] (PIL's ImageOps.solarize)."""
  return tf.where(tf.cast(images, tf.float32) >= _per_image(threshold), 255 - images, images)


def autocontrast(images):
  """ImageOps.autocontrast(cutoff=0): per-channel linear stretch of [min, max] to [0, 255], truncating.

  Exact integer arithmetic, floor((x - lo) * 255 / (hi - lo)); PIL evaluates the same line in float64 and lands one
  level lower on some exact integers (x * scale + offset = k - 1e-14), which we do not copy: an integer formula is
  what both the TF and the JAX sides compute identically.
  """
  x = tf.cast(images, tf.int32)
  lo = tf.reduce_min(x, axis=[1, 2], keepdims=True)
  hi = tf.reduce_max(x, axis=[1, 2], keepdims=True)
  stretched = (x - lo) * 255 // tf.maximum(hi - lo, 1)
  return tf.cast(tf.where(hi > lo, stretched, x), tf.uint8)


def equalize(images):
  """PIL's ImageOps.equalize: a lookup table per image and channel from its histogram."""
  shape = tf.shape(images)
  channels = tf.transpose(tf.reshape(tf.cast(images, tf.int32), [shape[0], -1, 3]), [0, 2, 1])  # [B, 3, HW]
  offsets = tf.reshape(tf.range(shape[0] * 3) * 256, [shape[0], 3, 1])
  hist = tf.reshape(
    tf.math.bincount(channels + offsets, minlength=shape[0] * 3 * 256, maxlength=shape[0] * 3 * 256), [shape[0], 3, 256]
  )
  # PIL drops the count of the last non-empty bin from the step.
  last_bin = 255 - tf.argmax(tf.cast(hist[..., ::-1] > 0, tf.int32), axis=-1, output_type=tf.int32)
  last_count = tf.gather(hist, last_bin, batch_dims=2)
  step = (tf.reduce_sum(hist, axis=-1) - last_count) // 255  # [B, 3]
  cdf_before = tf.cumsum(hist, axis=-1, exclusive=True)
  lut = tf.minimum((step[..., None] // 2 + cdf_before) // tf.maximum(step[..., None], 1), 255)
  equalized = tf.gather(lut, channels, batch_dims=2)
  result = tf.where(step[..., None] > 0, equalized, channels)
  return tf.reshape(tf.transpose(tf.cast(result, tf.uint8), [0, 2, 1]), shape)


def affine_pil(images, coeffs):
  """PIL's Image.transform(size, AFFINE, coeffs, NEAREST, fillcolor=0), coeffs a tuple of six [B] tensors.

  coeffs (a, b, c, d, e, f) map an output pixel (x, y) to the input point (a x + b y + c, d x + e y + f) in PIL's
  continuous coordinates (pixel centres at +0.5, nearest = floor). TF's projective transform samples pixel centres at
  integer coordinates and rounds, so the offsets are shifted by A (0.5, 0.5) - 0.5 to land on the same pixels.
  PIL resamples shears and rotations in 16.16 fixed point, so the coefficients (the offsets with the pixel-centre
  shift folded in) are rounded to multiples of 1 / 65536 as PIL rounds them (translations' integers are unchanged):
  sums of such numbers below 256 are exact in float32, so on views up to about 200 px the sample points are PIL's.
  """
  a, b, c, d, e, f = [tf.broadcast_to(tf.cast(v, tf.float32), tf.shape(images)[:1]) for v in coeffs]
  c_tf = _pil_fixed_point(c + 0.5 * (a + b)) - 0.5
  f_tf = _pil_fixed_point(f + 0.5 * (d + e)) - 0.5
  a, b, d, e = (_pil_fixed_point(v) for v in (a, b, d, e))
  zeros = tf.zeros_like(a)
  transforms = tf.stack([a, b, c_tf, d, e, f_tf, zeros, zeros], axis=1)
  return tf.raw_ops.ImageProjectiveTransformV3(
    images=images,
    transforms=transforms,
    output_shape=tf.shape(images)[1:3],
    fill_value=0.0,
    interpolation='NEAREST',
    fill_mode='CONSTANT',
  )


def _pil_fixed_point(v):
  """v rounded to 16.16 fixed point as PIL's affine transform rounds its coefficients, floor(v 2^16 + 0.5) / 2^16."""
  return tf.floor(v * 65536.0 + 0.5) / 65536.0


def shear_x(images, shear):
  """AutoAugment's ShearX as the authors' backport (Van Gansbeke et al. 2021) applies it: an affine shear by the
  coefficient `shear` [B] (the tangent of the shear angle) about the image centre, x_in = x + shear (y - h / 2)."""
  shear = tf.cast(shear, tf.float32)
  half_height = tf.cast(tf.shape(images)[1], tf.float32) / 2.0
  return affine_pil(images, (1.0, shear, -shear * half_height, 0.0, 1.0, 0.0))


def shear_y(images, shear):
  """ShearY as ShearX, about the centre: y_in = y + shear (x - w / 2)."""
  shear = tf.cast(shear, tf.float32)
  half_width = tf.cast(tf.shape(images)[2], tf.float32) / 2.0
  return affine_pil(images, (1.0, 0.0, 0.0, shear, 1.0, -shear * half_width))


def translate_x(images, pixels):
  """Shifts right by int(pixels) (torchvision truncates the magnitude to int)."""
  return affine_pil(images, (1.0, 0.0, -_trunc(pixels), 0.0, 1.0, 0.0))


def translate_y(images, pixels):
  return affine_pil(images, (1.0, 0.0, 0.0, 0.0, 1.0, -_trunc(pixels)))


def _trunc(x):
  x = tf.cast(x, tf.float32)
  return tf.sign(x) * tf.floor(tf.abs(x))


def rotate(images, degrees):
  """PIL's Image.rotate(degrees, NEAREST) about the image centre (w/2, h/2), counter-clockwise."""
  shape = tf.cast(tf.shape(images), tf.float32)
  cx, cy = shape[2] / 2.0, shape[1] / 2.0
  theta = -tf.cast(degrees, tf.float32) * math.pi / 180.0
  cos, sin = tf.cos(theta), tf.sin(theta)
  c = cos * (-cx) + sin * (-cy) + cx
  f = -sin * (-cx) + cos * (-cy) + cy
  return affine_pil(images, (cos, sin, c, -sin, cos, f))


def flip_left_right(images):
  return images[:, :, ::-1, :]


def gaussian_blur(images, sigma, max_radius=6):
  """Separable Gaussian blur with reflect padding, sigma [B]; a fixed support of 2 * max_radius + 1 taps.

  max_radius = 3 * sigma_max covers the MoCo-v2 range sigma in [0.1, 2.0]. Each image has its own kernel: the batch
  is folded into the channels, [B, H, W, 3] -> [1, H, W, 3B], so one depthwise convolution blurs every image.
  """
  taps = tf.range(-max_radius, max_radius + 1, dtype=tf.float32)
  kernel = tf.exp(-0.5 * tf.square(taps / tf.reshape(tf.cast(sigma, tf.float32), [-1, 1])))
  kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)  # [B, taps]
  kernel = tf.transpose(tf.repeat(kernel, 3, axis=0))  # [taps, 3B], channel-major like the folded images
  size = tf.shape(images)
  pad_h = tf.minimum(max_radius, size[1] - 1)
  pad_w = tf.minimum(max_radius, size[2] - 1)
  x = tf.cast(images, tf.float32)
  # Reflect needs a pad smaller than the image; tiny images fall back to edge padding beyond that.
  x = tf.pad(x, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]], mode='REFLECT')
  x = tf.pad(x, [[0, 0], [max_radius - pad_h] * 2, [max_radius - pad_w] * 2, [0, 0]], mode='SYMMETRIC')
  padded = tf.shape(x)
  x = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, padded[1], padded[2], size[0] * 3])
  x = tf.nn.depthwise_conv2d(x, kernel[:, None, :, None], [1, 1, 1, 1], 'VALID')
  x = tf.nn.depthwise_conv2d(x, kernel[None, :, :, None], [1, 1, 1, 1], 'VALID')
  x = tf.transpose(tf.reshape(x, [size[1], size[2], size[0], 3]), [2, 0, 1, 3])
  return _to_uint8(x)


def apply_where(mask, op, images, *params):
  """op(images[mask], *(p[mask] for p in params)) written back in place; the other images pass unchanged.

  How a random op with probability p is applied to a batch: only the selected images are computed.
  """
  return apply_switch(tf.where(mask, 0, -1), [op], images, *params)


def apply_switch(branch, ops_list, images, *params):
  """Image i goes through ops_list[branch[i]] (with its own params); a branch of -1 leaves it unchanged.

  The batch is partitioned by branch, each op runs once on its part (skipped when empty) and the parts are
  stitched back, so a batch costs what its selected views cost, in a few vectorised ops.
  """
  num = len(ops_list)
  part = tf.where((branch >= 0) & (branch < num), branch, num)
  positions = tf.dynamic_partition(tf.range(tf.shape(images)[0]), part, num + 1)
  image_parts = tf.dynamic_partition(images, part, num + 1)
  param_parts = [tf.dynamic_partition(p, part, num + 1) for p in params]
  outputs = []
  for k, op in enumerate(ops_list):
    args = [image_parts[k]] + [p[k] for p in param_parts]
    outputs.append(tf.cond(tf.size(positions[k]) > 0, lambda op=op, args=args: op(*args), lambda k=k: image_parts[k]))
  outputs.append(image_parts[num])
  return tf.dynamic_stitch(positions, outputs)
