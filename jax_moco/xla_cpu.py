"""Whether XLA:CPU hands the convolutions to YNNPACK (`cpu_ynnpack_convolutions`); nothing changes on GPU or TPU.

jaxlib 0.10 gives every convolution, dot and large reduction to YNNPACK. For convolutions that is not always the
faster path: bench/conv_ops.py and bench/step.py time both settings side by side, and bench/RESULTS.md records
which wins on which CPU kind. The setting keeps YNNPACK for dots and reductions and only takes the convolutions
back to XLA's own emitter, per jitted function (`jax.jit(..., compiler_options=...)`), so tests and benchmarks can
compare both in one process.
"""

import jax

SETTINGS = ('auto', 'on', 'off')
YNN_FUSION_OPTION = 'xla_cpu_experimental_ynn_fusion_type'
# jaxlib 0.10.2's default fusion types (dot, convolution, reduce) without LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
WITHOUT_CONVOLUTIONS = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'


def ynnpack_convolutions(setting: str) -> bool:
  """'on' / 'off', or 'auto': the setting measured faster (bench/RESULTS.md: XLA's own convolutions won the ResNet
  step on every CPU kind measured, AMD EPYC Zen 3, Zen 4 and Zen 5 and an Intel Xeon with AVX-512/AMX)."""
  if setting not in SETTINGS:
    raise ValueError(f'cpu_ynnpack_convolutions={setting!r}: use one of {SETTINGS}')
  return setting == 'on'


def compiler_options(setting: str):
  """`compiler_options` for jax.jit: None (the default) off the CPU or with YNNPACK convolutions on."""
  if jax.default_backend() != 'cpu' or ynnpack_convolutions(setting):
    return None
  return {YNN_FUSION_OPTION: WITHOUT_CONVOLUTIONS}
