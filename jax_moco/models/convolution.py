"""The convolution of every network here (nn.Conv's `conv_general_dilated`): lax.conv_general_dilated (NHWC, HWIO),
written in two places so that XLA:CPU runs it at the speed of its other convolutions. Same result to float rounding,
same parameters; bench/RESULTS.md ("Training step: ours vs a PyTorch reference") has the measurements.

- Where the input or the output map is smaller than the kernel's extent (a 3x3 conv on the 2x2 or 1x1 maps of the last
  stage for 16-32 px crops, or the stride-2 one that makes them), it is computed as patches @ kernel: XLA:CPU's
  convolution is pathological there, many times slower than the same FLOPs as a matmul. The patches are strided
  slices of the padded input, whose gradient is a pad and a sum (lax.conv_general_dilated_patches would be a grouped
  convolution, and its gradient another, both slow on XLA:CPU).
- On CPU, the input is pinned to its own row-major layout (`_pinned`). A convolution's weight gradient reads its input
  transposed (batch minor); without the pin XLA:CPU recomputes the batch norm and ReLU that made the input inside that
  transpose, where its fusion emitter runs several times slower than a plain transpose of the stored input.
"""

import jax
from jax import lax
from jax.experimental import layout
import jax.numpy as jnp


def convolution(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  precision=None,
):
  """lax.conv_general_dilated's signature, for NHWC inputs and HWIO kernels (nn.Conv's)."""
  if jax.default_backend() == 'cpu':
    lhs = _pinned(lhs)
  kh, kw = rhs.shape[:2]
  dilation = rhs_dilation or (1, 1)
  extent = [(k - 1) * d + 1 for k, d in zip((kh, kw), dilation)]
  pads = lax.padtype_to_pads(lhs.shape[1:3], extent, window_strides, padding) if isinstance(padding, str) else padding
  output = [(n + lo + hi - e) // s + 1 for n, (lo, hi), e, s in zip(lhs.shape[1:3], pads, extent, window_strides)]
  small = any(min(n, o) < e for n, o, e in zip(lhs.shape[1:3], output, extent))  # the input or the output map
  if not small or feature_group_count != 1 or any(d != 1 for d in (lhs_dilation or ())):
    return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      precision=precision,
    )
  patches = _patches(lhs, (kh, kw), window_strides, pads, dilation, output)
  return jnp.dot(patches, rhs.reshape(-1, rhs.shape[3]), precision=precision)


def _patches(x, window, strides, pads, dilation, output):
  """[N, *output, KH * KW * C]: the input under each window position, in the kernel's (KH, KW, C) order (so HWIO
  reshaped to [KH * KW * C, O] is its matrix), one strided slice of the padded input per kernel tap."""
  padded = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
  taps = []
  for i in range(window[0]):
    for j in range(window[1]):
      start = (0, i * dilation[0], j * dilation[1], 0)
      end = (x.shape[0], *(s + (o - 1) * t + 1 for s, o, t in zip(start[1:3], output, strides)), x.shape[3])
      taps.append(lax.slice(padded, start, end, (1, *strides, 1)))
  return jnp.concatenate(taps, axis=-1)


@jax.custom_vjp
def _pinned(x):
  """x in its row-major layout, which XLA must store before any consumer reads it; its gradient passes unconstrained.
  (Autodiff's gradient of a layout constraint is constrained too, and jax.jit hands such a value back, when it is an
  output, in a layout of XLA's choosing, and then may read other outputs, such as the kernels' gradients, in the wrong
  layout: the network's input gradient would be one.)"""
  return layout.with_layout_constraint(x, layout.Layout(major_to_minor=tuple(range(x.ndim))))


_pinned.defvjp(lambda x: (_pinned(x), None), lambda _, grad: (grad,))
