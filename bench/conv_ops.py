"""Where XLA loses to PyTorch in the step: one 3x3 convolution's forward, input gradient (dx) and weight gradient
(dw), XLA (jax.jit of lax.conv_general_dilated, NHWC; with the convolutions in YNNPACK and in XLA's own emitter)
against PyTorch (channels-last, aten.convolution_backward) in the same run, on the ResNet-18 CIFAR-stem shapes of the
CPU benchmarks; medians in ms and their ratios.

  python bench/conv_ops.py            # needs torch (requirements-test.txt)
"""

import os
import sys

from absl import app
from absl import flags
import jax
from jax import lax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import step as bench_step  # noqa: E402

from jax_moco import xla_cpu  # noqa: E402

FLAGS = flags.FLAGS
# (batch, height = width, in channels, out channels, stride): stages 1-3 of ResNet-18 at 32 px, width 1 and 0.25.
SHAPES = (
  (64, 32, 64, 64, 1),
  (64, 16, 128, 128, 1),
  (64, 8, 256, 256, 1),
  (64, 32, 64, 128, 2),
  (128, 32, 16, 16, 1),
  (128, 16, 32, 32, 1),
)


def define_flags():
  flags.DEFINE_integer('repeats', 7, 'Timed calls per op (median).')


def median_ms(fn, repeats):
  fn()  # warm-up (and XLA's compilation)
  return bench_step.median_step_seconds(fn, repeats) * 1e3


def xla_ops(x, w, stride, compiler_options=None):
  """Forward, dx and dw of one conv (padding 1) as three jitted functions of (x, w, g)."""

  def conv(x, w):
    return lax.conv_general_dilated(
      x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )

  ops = (
    lambda x, w, g: conv(x, w),
    lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0],
    lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0],
  )
  return [jax.jit(op, compiler_options=compiler_options) for op in ops]


def torch_ops(x, w, g, stride):
  import torch

  conv_args = ([stride, stride], [1, 1], [1, 1], False, [0, 0], 1)
  fwd = lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=1)  # noqa: E731
  dx = lambda: torch.ops.aten.convolution_backward(g, x, w, None, *conv_args, [True, False, False])  # noqa: E731
  dw = lambda: torch.ops.aten.convolution_backward(g, x, w, None, *conv_args, [False, True, False])  # noqa: E731
  return fwd, dx, dw


def run(shapes=SHAPES, repeats=7, log=print):
  """Returns rows {shape, op, ynn_ms, xla_ms, torch_ms} and prints a table: XLA:CPU with the convolutions in
  YNNPACK (jaxlib's default) and in XLA's own emitter (`cpu_ynnpack_convolutions='off'`), and PyTorch."""
  import torch

  rows = []
  for batch, size, cin, cout, stride in shapes:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, cin)).astype(np.float32)
    w = (rng.normal(size=(3, 3, cin, cout)) * 0.05).astype(np.float32)
    out = size // stride
    g = rng.normal(size=(batch, out, out, cout)).astype(np.float32)
    xj, wj, gj = (jax.device_put(a) for a in (x, w, g))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    ynn = xla_ops(xj, wj, stride, xla_cpu.compiler_options('on'))
    own = xla_ops(xj, wj, stride, xla_cpu.compiler_options('off'))
    with torch.no_grad():
      for op, with_ynn, without, theirs in zip(('fwd', 'dx', 'dw'), ynn, own, torch_ops(xt, wt, gt, stride)):
        time_jax = lambda fn: median_ms(lambda: jax.block_until_ready(fn(xj, wj, gj)), repeats)  # noqa: E731,B023
        rows.append(
          dict(
            shape=f'{batch}x{size}x{size}x{cin}->{cout} s{stride}',
            op=op,
            ynn_ms=time_jax(with_ynn),
            xla_ms=time_jax(without),
            torch_ms=median_ms(theirs, repeats),
          )
        )
  log(
    f'3x3 convolutions, float32, {jax.devices()[0].platform}, torch threads {torch.get_num_threads()}, '
    f'median of {repeats}:\n\n| shape (NHWC -> C_out, stride) | op | XLA, YNNPACK convs ms | XLA, own convs ms | '
    'PyTorch ms | own / YNNPACK speed | own / PyTorch speed |\n| --- | --- | --- | --- | --- | --- | --- |'
  )
  for r in rows:
    log(
      f'| {r["shape"]} | {r["op"]} | {r["ynn_ms"]:.1f} | {r["xla_ms"]:.1f} | {r["torch_ms"]:.1f} | '
      f'{r["ynn_ms"] / r["xla_ms"]:.2f}x | {r["torch_ms"] / r["xla_ms"]:.2f}x |'
    )
  return rows


def main(argv):
  del argv
  run(repeats=FLAGS.repeats)


if __name__ == '__main__':
  define_flags()
  app.run(main)
