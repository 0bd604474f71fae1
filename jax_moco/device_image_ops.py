"""Pixel operations in JAX on uint8 views [B, H, W, 3] with per-view parameters [B], PIL's semantics: the
accelerator side of the augmentations whose random choices tf.data draws (input_pipeline/host_augment.py).

Each op computes what its namesake in input_pipeline/host_image_ops.py computes (which tests check against PIL), with
the same float32 arithmetic in the same order and the same integer formulas, so the two sides agree pixel for pixel
except where a value lands within float error of a rounding boundary (tests/test_device_augment.py measures it).
"""

import math

import jax.numpy as jnp

# ITU-R 601-2 luma in PIL's fixed point: L = (19595 R + 38470 G + 7471 B + 2^15) >> 16.
_LUMA_FIXED_POINT = (19595, 38470, 7471)
BLEND_FACTOR_STEPS = 4096.0  # as input_pipeline.ops: blends exact in float32, FMA or not


def _per_image(value):
  """A [B] parameter as [B, 1, 1, 1], to broadcast over [B, H, W, C]."""
  return jnp.asarray(value, jnp.float32).reshape(-1, 1, 1, 1)


def _to_uint8(x):
  """Rounds and clips a float image to uint8 (hue and blur)."""
  return jnp.clip(jnp.round(x), 0.0, 255.0).astype(jnp.uint8)


def luma(images):
  """[B, H, W, 1] int32 luma exactly as PIL's convert('L')."""
  x = images.astype(jnp.int32)
  r, g, b = _LUMA_FIXED_POINT
  return (x[..., 0:1] * r + x[..., 1:2] * g + x[..., 2:3] * b + 32768) >> 16


def grayscale(images):
  return jnp.broadcast_to(luma(images).astype(jnp.uint8), images.shape)


def blend(degenerate, images, factor):
  """PIL's Image.blend(degenerate, image, factor), the basis of ImageEnhance; factor [B]. Floored, as PIL's cast."""
  degenerate = jnp.asarray(degenerate, jnp.float32)
  factor = jnp.round(jnp.asarray(factor, jnp.float32) * BLEND_FACTOR_STEPS) / BLEND_FACTOR_STEPS
  blended = degenerate + _per_image(factor) * (images.astype(jnp.float32) - degenerate)
  return jnp.clip(jnp.floor(blended), 0.0, 255.0).astype(jnp.uint8)


def adjust_brightness(images, factor):
  return blend(0.0, images, factor)


def adjust_contrast(images, factor):
  """Blend with each view's mean luma rounded to an integer (int32: views below 2048 x 2048 px)."""
  gray = luma(images)
  total = jnp.sum(gray, axis=(1, 2, 3), keepdims=True)
  count = math.prod(gray.shape[1:])
  mean = (2 * total + count) // (2 * count)
  return blend(mean.astype(jnp.float32), images, factor)


def adjust_saturation(images, factor):
  return blend(luma(images).astype(jnp.float32), images, factor)


def adjust_hue(images, delta):
  """Rotates hue by delta [B] turns (torchvision's adjust_hue), in the closed form of input_pipeline.ops.

  The one op not bit-exact with TF: XLA's fused float arithmetic rounds a few values differently (about 1e-4 of
  the pixels come out one level apart on CPU).
  """
  x = images.astype(jnp.float32)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  value = jnp.maximum(jnp.maximum(r, g), b)
  chroma = value - jnp.minimum(jnp.minimum(r, g), b)
  safe = jnp.where(chroma > 0, chroma, 1.0)
  sextant = jnp.where(value == r, (g - b) / safe, jnp.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  hue6 = sextant + 6.0 * jnp.asarray(delta, jnp.float32).reshape(-1, 1, 1)
  channels = []
  for n in (5.0, 3.0, 1.0):
    k = jnp.mod(n + hue6, 6.0)
    channels.append(value - chroma * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))
  return _to_uint8(jnp.stack(channels, axis=-1))


def adjust_sharpness(images, factor):
  """ImageEnhance.Sharpness: blend with PIL's SMOOTH filter (1 1 1 / 1 5 1 / 1 1 1, / 13), border pixels kept."""
  x = images.astype(jnp.float32)
  height, width = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  smooth = 0.0
  for dy in range(3):
    for dx in range(3):
      weight = jnp.float32(5.0 if dy == dx == 1 else 1.0) / jnp.float32(13.0)
      smooth = smooth + weight * padded[:, dy : dy + height, dx : dx + width]
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  interior = ((rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1))[None, :, :, None]
  return blend(jnp.where(interior, jnp.round(smooth), x), images, factor)


def invert(images):
  return 255 - images


def posterize(images, bits):
  """Keeps the `bits` [B] most significant bits of each channel."""
  shift = (8 - jnp.asarray(bits).astype(jnp.int32)).astype(jnp.uint8).reshape(-1, 1, 1, 1)
  return jnp.left_shift(jnp.right_shift(images, shift), shift)


def solarize(images, threshold):
  return jnp.where(images.astype(jnp.float32) >= _per_image(threshold), 255 - images, images)


def autocontrast(images):
  """Per-channel stretch of [min, max] to [0, 255], floor((x - lo) * 255 / (hi - lo)) in integers."""
  x = images.astype(jnp.int32)
  lo = jnp.min(x, axis=(1, 2), keepdims=True)
  hi = jnp.max(x, axis=(1, 2), keepdims=True)
  stretched = (x - lo) * 255 // jnp.maximum(hi - lo, 1)
  return jnp.where(hi > lo, stretched, x).astype(jnp.uint8)


def equalize(images):
  """PIL's ImageOps.equalize: a lookup table per view and channel from its histogram."""
  batch = images.shape[0]
  channels = images.reshape(batch, -1, 3).transpose(0, 2, 1).astype(jnp.int32)  # [B, 3, HW]
  rows = jnp.arange(batch * 3).reshape(batch, 3, 1)
  hist = jnp.zeros((batch * 3, 256), jnp.int32).at[rows, channels].add(1).reshape(batch, 3, 256)
  # PIL drops the count of the last non-empty bin from the step.
  last_bin = 255 - jnp.argmax(hist[..., ::-1] > 0, axis=-1)
  last_count = jnp.take_along_axis(hist, last_bin[..., None], axis=-1)[..., 0]
  step = (jnp.sum(hist, axis=-1) - last_count) // 255  # [B, 3]
  cdf_before = jnp.cumsum(hist, axis=-1) - hist
  lut = jnp.minimum((step[..., None] // 2 + cdf_before) // jnp.maximum(step[..., None], 1), 255)
  equalized = jnp.take_along_axis(lut, channels, axis=-1)
  result = jnp.where(step[..., None] > 0, equalized, channels)
  return result.transpose(0, 2, 1).reshape(images.shape).astype(jnp.uint8)


def flip_left_right(images):
  return images[:, :, ::-1, :]


# Affine maps as PIL's coefficients (a, b, c, d, e, f): output pixel (x, y) samples the input at
# (a x + b y + c, d x + e y + f), pixel centres at +0.5. Each takes the view shape and a [B] argument.
def shear_x_coefficients(shape, shear):
  """A shear by the coefficient `shear` about the view centre, as the authors' backport (input_pipeline.ops)."""
  one, zero = jnp.ones_like(shear), jnp.zeros_like(shear)
  return one, shear, -shear * (jnp.float32(shape[1]) / 2.0), zero, one, zero


def shear_y_coefficients(shape, shear):
  one, zero = jnp.ones_like(shear), jnp.zeros_like(shear)
  return one, zero, zero, shear, one, -shear * (jnp.float32(shape[2]) / 2.0)


def _trunc(x):
  return jnp.sign(x) * jnp.floor(jnp.abs(x))


def translate_x_coefficients(shape, pixels):
  one, zero = jnp.ones_like(pixels), jnp.zeros_like(pixels)
  return one, zero, -_trunc(pixels), zero, one, zero


def translate_y_coefficients(shape, pixels):
  one, zero = jnp.ones_like(pixels), jnp.zeros_like(pixels)
  return one, zero, zero, zero, one, -_trunc(pixels)


def rotate_coefficients(shape, degrees):
  """PIL's Image.rotate(degrees) about the view centre (w/2, h/2), counter-clockwise."""
  cx, cy = jnp.float32(shape[2]) / 2.0, jnp.float32(shape[1]) / 2.0
  theta = -degrees * jnp.float32(math.pi) / 180.0
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  return cos, sin, cos * (-cx) + sin * (-cy) + cx, -sin, cos, -sin * (-cx) + cos * (-cy) + cy


def identity_coefficients(shape, unused):
  return shear_x_coefficients(shape, jnp.zeros_like(unused))


def affine_pil(images, coefficients):
  """PIL's Image.transform(size, AFFINE, coefficients, NEAREST, fillcolor=0), as TF's projective transform
  computes it (input_pipeline.ops.affine_pil): coefficients in PIL's 16.16 fixed point, sample points at integer
  centres, rounded half away from zero."""
  a, b, c, d, e, f = (jnp.asarray(v, jnp.float32).reshape(-1, 1, 1) for v in coefficients)
  c = _pil_fixed_point(c + 0.5 * (a + b)) - 0.5
  f = _pil_fixed_point(f + 0.5 * (d + e)) - 0.5
  a, b, d, e = (_pil_fixed_point(v) for v in (a, b, d, e))
  batch, height, width = images.shape[:3]
  y = jnp.arange(height, dtype=jnp.float32)[:, None]
  x = jnp.arange(width, dtype=jnp.float32)[None, :]
  source_x = _round_half_away(a * x + b * y + c)
  source_y = _round_half_away(d * x + e * y + f)
  inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
  rows = jnp.clip(source_y, 0, height - 1).astype(jnp.int32)
  cols = jnp.clip(source_x, 0, width - 1).astype(jnp.int32)
  sampled = images[jnp.arange(batch)[:, None, None], rows, cols]
  return jnp.where(inside[..., None], sampled, jnp.zeros_like(sampled))


def _pil_fixed_point(v):
  return jnp.floor(v * 65536.0 + 0.5) / 65536.0


def _round_half_away(x):
  """C's std::round, which TF's nearest sampling uses (jnp.round rounds half to even)."""
  return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def gaussian_blur(images, sigma, max_radius=6):
  """Separable Gaussian blur with reflect padding, sigma [B] > 0, 2 * max_radius + 1 taps (input_pipeline.ops)."""
  taps = jnp.arange(-max_radius, max_radius + 1, dtype=jnp.float32)
  kernel = jnp.exp(-0.5 * jnp.square(taps / jnp.asarray(sigma, jnp.float32).reshape(-1, 1)))
  kernel = kernel / jnp.sum(kernel, axis=1, keepdims=True)  # [B, taps]
  height, width = images.shape[1:3]
  pad_h, pad_w = min(max_radius, height - 1), min(max_radius, width - 1)
  x = images.astype(jnp.float32)
  # Reflect needs a pad smaller than the view; tiny views fall back to edge padding beyond that.
  x = jnp.pad(x, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)), mode='reflect')
  x = jnp.pad(x, ((0, 0), (max_radius - pad_h,) * 2, (max_radius - pad_w,) * 2, (0, 0)), mode='symmetric')
  size = 2 * max_radius + 1
  vertical = sum(kernel[:, k, None, None, None] * x[:, k : k + height] for k in range(size))
  blurred = sum(kernel[:, k, None, None, None] * vertical[:, :, k : k + width] for k in range(size))
  return _to_uint8(blurred)
