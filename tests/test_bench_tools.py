"""The benchmark tools compute what they claim to time, at a tiny size: bench/conv_ops.py (XLA and PyTorch compute the
same convolution and gradients), bench/folder_scan.py (its listing and torchvision's find the same files),
bench/profile_step.py (its ops sorted into the kinds they compute, their traced times). bench/scaling.py's,
bench/step.py's, bench/device_augment.py's (the same step either way) and bench/input_wait.py's command lines run,
and their tables are checked, in tests/test_bench_gpu.py."""

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_moco import xla_cpu

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench')
sys.path.insert(0, BENCH)


def load(name):
  spec = importlib.util.spec_from_file_location(f'bench_{name}', os.path.join(BENCH, f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


conv_ops, profile_step = load('conv_ops'), load('profile_step')


def test_conv_ops_compares_the_same_forward_and_gradients():
  torch = pytest.importorskip('torch')

  rng = np.random.default_rng(0)
  x, w = rng.normal(size=(2, 8, 8, 4)).astype(np.float32), rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
  g = rng.normal(size=(2, 4, 4, 6)).astype(np.float32)
  nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)  # noqa: E731
  wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
  fwd, dx, dw = conv_ops.torch_ops(nchw(x), wt, nchw(g), 2)
  for setting in ('on', 'off'):  # both XLA:CPU convolution paths compute PyTorch's convolution
    ours = [np.asarray(f(x, w, g)) for f in conv_ops.xla_ops(x, w, 2, xla_cpu.compiler_options(setting))]
    np.testing.assert_allclose(ours[0], fwd().permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours[1], dx()[0].permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours[2], dw()[1].permute(2, 3, 1, 0).numpy(), rtol=1e-4, atol=1e-4)
  rows = conv_ops.run(shapes=((2, 8, 4, 6, 1),), repeats=1, log=lambda line: None)
  assert [r['op'] for r in rows] == ['fwd', 'dx', 'dw']
  assert all(r['ynn_ms'] > 0 and r['xla_ms'] > 0 and r['torch_ms'] > 0 for r in rows)


def test_ynnpack_setting_takes_only_the_convolutions_out_of_ynnpack():
  def ynn_fusions(fn, setting, *args):
    hlo = jax.jit(fn, compiler_options=xla_cpu.compiler_options(setting)).lower(*args).compile().as_text()
    return sum('"kind":"__ynn_fusion"' in line for line in hlo.splitlines())

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  x, w, a = jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32)), jnp.ones((256, 256))
  assert ynn_fusions(conv, 'on', x, w) == 1 and ynn_fusions(conv, 'off', x, w) == 0
  for fn in (lambda a: a @ a, lambda a: a.sum(0)):  # dots and reductions stay in YNNPACK
    assert ynn_fusions(fn, 'off', a) == ynn_fusions(fn, 'on', a) == 1
  assert xla_cpu.compiler_options('auto') == xla_cpu.compiler_options('off')  # what runs saved with 'auto' meant
  with pytest.raises(ValueError, match='cpu_ynnpack_convolutions'):
    xla_cpu.compiler_options('fast')


def test_folder_scan_times_the_listing_torchvision_does_of_the_same_files(tmp_path, monkeypatch):
  from input_pipeline import sources

  pytest.importorskip('torchvision')
  folder_scan = load('folder_scan')
  folder_scan.write_folder(str(tmp_path), files=24, classes=4)
  reference = folder_scan.torchvision_listing(str(tmp_path))
  paths, labels, _ = sources.list_image_files(str(tmp_path))
  assert [(p, label) for p, label in zip(paths, labels)] == reference  # the same files, the same class indices
  assert folder_scan.our_listing_and_scan(str(tmp_path)) == [None] * 24  # every written file passes the scan
  monkeypatch.setattr(folder_scan, 'drop_page_cache', lambda: False)  # not the test machine's cache
  medians, cold = folder_scan.measure(str(tmp_path), rounds=1, log=lambda line: None)
  assert not cold and len(medians) == 3 and all(s > 0 for s in medians.values())
  assert 'page cache WARM' in folder_scan.table(medians, 24, cold)


def test_profile_step_sorts_ops_into_kinds_and_times_the_traced_thunks():
  def step(state, batch):
    y = jax.lax.conv_general_dilated(batch, state['w'], (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    pooled = jnp.mean(jnp.maximum(y, 0.0), axis=(1, 2))
    logits = pooled @ state['q']
    return {**state, 'q': state['q'] + jnp.mean(logits)}, {'loss': jnp.sum(jax.lax.top_k(logits, 2)[0])}

  rng = np.random.default_rng(0)
  state = {'w': jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.float32), 'q': jnp.ones((8, 16), jnp.float32)}
  batch = jnp.asarray(rng.normal(size=(4, 8, 8, 4)), jnp.float32)
  times, kinds, wall = profile_step.profile_ours(jax.jit(step), state, batch, steps=2)
  assert {'convolution', 'matmul (heads, queue logits, small-map convs)', 'top-k and sort (NN mining)'} <= set(
    kinds.values()
  )
  assert set(kinds.values()) <= set(profile_step.KINDS)
  assert times and set(times) <= set(kinds) and 0 < sum(times.values()) / 2 < 2 * wall  # at most 2 threads busy
  assert profile_step.xla_kind(frozenset({'fusion', 'transpose', 'multiply'})) == 'layout transposes and copies'
  assert profile_step.xla_kind(frozenset({'fusion', 'add', 'maximum'})) == 'elementwise'
  for name, kind in (
    ('aten::convolution_backward', 'convolution'),
    ('aten::addmm', 'matmul (heads, queue logits, small-map convs)'),
    ('aten::native_batch_norm', 'batch norm and other reductions'),
    ('aten::topk', 'top-k and sort (NN mining)'),
    ('aten::copy_', 'layout transposes and copies'),
    ('aten::mul_', 'elementwise'),
  ):
    assert profile_step.torch_kind(name) == kind, name
