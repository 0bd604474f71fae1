"""Whether XLA:CPU hands the convolutions to YNNPACK (`cpu_ynnpack_convolutions`); nothing changes on GPU or TPU.

jaxlib 0.10 gives every convolution, dot and large reduction to YNNPACK. For the ResNet step's convolutions that
was the slower path on every CPU kind measured (bench/RESULTS.md, "YNNPACK or XLA's own convolutions"), so the
default, 'off', takes the convolutions back to XLA's own emitter and keeps YNNPACK for dots and reductions; 'on'
leaves jaxlib's default. The choice is made per jitted function (`jax.jit(..., compiler_options=...)`), so tests and
benchmarks (bench/conv_ops.py, bench/step.py) compare both in one process.
"""

import jax

SETTINGS = ('off', 'on')
# Runs saved before the setting had these two values hold 'auto', which was 'off' on every machine.
_SAVED_RUNS = {'auto': 'off'}
YNN_FUSION_OPTION = 'xla_cpu_experimental_ynn_fusion_type'
# jaxlib 0.10.2's default fusion types (dot, convolution, reduce) without LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
WITHOUT_CONVOLUTIONS = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'


def compiler_options(setting: str):
  """`compiler_options` for jax.jit: None (jaxlib's default) off the CPU or with the setting 'on'."""
  setting = _SAVED_RUNS.get(setting, setting)
  if setting not in SETTINGS:
    raise ValueError(f'cpu_ynnpack_convolutions={setting!r}: use one of {SETTINGS}')
  if jax.default_backend() != 'cpu' or setting == 'on':
    return None
  return {YNN_FUSION_OPTION: WITHOUT_CONVOLUTIONS}
