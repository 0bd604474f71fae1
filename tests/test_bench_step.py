"""The PyTorch reference step of bench/step.py computes our step (same losses and update on the same weights and
inputs, so the benchmark compares like with like). The benchmark's command line runs in tests/test_bench_gpu.py."""

import importlib.util
import os
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench')
sys.path.insert(0, BENCH)
_spec = importlib.util.spec_from_file_location('bench_step', os.path.join(BENCH, 'step.py'))
bench_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_step)
import torch_reference_step as ref  # noqa: E402

from tests.helpers import loss_atol  # noqa: E402


def tiny(order):
  config = bench_step.bench_config(batch=8, queue=32, num_small=2, large=32, small=16)
  config.moco.nn_topk, config.moco.nn_order = 5, order
  return config


@pytest.mark.heavy(20)  # seconds on 2 cores, for the order of tests/conftest.py
@pytest.mark.parametrize('order', ['loss_then_enqueue', 'enqueue_then_mine'])
def test_reference_step_computes_our_step(order):
  config = tiny(order)
  fn, state, lr = bench_step.jax_step(config)
  model, optimizer = bench_step.torch_reference(config, state, lr, channels_last=True)
  batch = bench_step.synthetic_batch(config)
  new_state, metrics = fn(state, bench_step.on_mesh(batch))
  theirs = ref.train_step(model, optimizer, {k: torch.from_numpy(v) for k, v in batch.items()})
  atol = loss_atol(config.moco.temperature, config.model.projection_dim, terms=2)
  for name in ('loss', 'loss_inst', 'loss_nn'):
    np.testing.assert_allclose(float(metrics[name]), theirs[name], rtol=1e-5, atol=atol, err_msg=name)
  # The same SGD update of f, the same EMA f' and the same enqueued keys.
  ours = jax.device_get(new_state)
  np.testing.assert_allclose(
    ours.params['backbone']['layer3_0']['conv1']['kernel'].transpose(3, 2, 0, 1),
    model.encoder_q.layer3[0].conv1.weight.detach().numpy(),
    rtol=1e-4,
    atol=1e-6,
  )
  np.testing.assert_allclose(
    ours.params['fc_2']['kernel'].T, model.encoder_q.fc[2].weight.detach().numpy(), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    ours.ema_params['backbone']['conv1']['kernel'].transpose(3, 2, 0, 1),
    model.encoder_k.conv1.weight.numpy(),
    rtol=1e-5,
    atol=1e-7,
  )
  np.testing.assert_allclose(ours.queue_h, model.queue.numpy(), atol=1e-5)
  np.testing.assert_allclose(ours.queue_g, model.queue_backbone.numpy(), atol=1e-5)


def test_xla_options_are_parsed_and_reach_the_compiler():
  assert bench_step.parse_xla_option('xla_cpu_prefer_vector_width=512') == ('xla_cpu_prefer_vector_width', 512)
  assert bench_step.parse_xla_option('xla_cpu_enable_fast_math=True') == ('xla_cpu_enable_fast_math', True)
  assert bench_step.parse_xla_option('a=LIBRARY_FUSION_TYPE_REDUCE') == ('a', 'LIBRARY_FUSION_TYPE_REDUCE')
  with pytest.raises(ValueError, match='NAME=VALUE'):
    bench_step.parse_xla_option('xla_cpu_enable_fast_math')
  config = tiny('loss_then_enqueue')
  fn, state, _ = bench_step.jax_step(config, xla_options={'xla_no_such_option_here': 1})
  with pytest.raises(Exception, match='xla_no_such_option_here'):  # the option was handed to XLA, which refuses it
    fn.lower(state, bench_step.on_mesh(bench_step.synthetic_batch(config))).compile()


def test_rows_without_a_rewrite_trace_the_stand_in_and_put_it_back():
  """--without=layout_pin traces the step without the layout constraints its convolutions carry, and the model's own
  function is back afterwards (the rows after it and the reference compare against the real step)."""
  config = tiny('loss_then_enqueue')
  config.model.arch, config.model.width = 'resnet10', 0.25
  batch = bench_step.on_mesh(bench_step.synthetic_batch(config))

  def lowered():
    fn, state, _ = bench_step.jax_step(config)
    return fn.lower(state, batch).as_text()

  pinned = bench_step.convolution._pinned
  with bench_step.without('layout_pin'):
    unpinned_text = lowered()
  assert bench_step.convolution._pinned is pinned and bench_step.batchnorm._normalise.fun
  assert 'LayoutConstraint' in lowered() and 'LayoutConstraint' not in unpinned_text
