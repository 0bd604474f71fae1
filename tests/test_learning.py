"""A short real training run learns: instance loss well below ln(K + 1) and instance accuracy far above chance,
and both improve once the queue holds real keys (the first K / B steps see random, easy negatives)."""

import math

import jax
import numpy as np
import pytest

from jax_moco.sharding import shard_batch
from tests.helpers import build
from tests.helpers import real_batches


@pytest.mark.heavy(55)  # seconds on 2 cores, for the order of tests/conftest.py
def test_tiny_resnet_learns_on_embedded_data(make_config):
  config = make_config(
    batch_size=64,
    bn_groups=8,
    **{
      'moco.queue_size': 512,
      'moco.nn_weight': 0.0,
      'crops.num_small': 0,
      'crops.aplus': False,
      'model.width': 0.25,
      'optim.base_lr': 0.06,
      'moco.temperature': 0.1,
      'crops.large_size': 24,  # about half the work of 32 px, and it learns as clearly
    },
  )
  steps = 200
  mesh, state, fn = build(config, devices=jax.devices()[:1], steps_per_epoch=150, total_steps=steps)
  history = []
  for batch in real_batches(config, steps):
    state, metrics = fn(state, shard_batch(mesh, batch))
    history.append(jax.device_get(metrics))
  loss = np.array([m['loss_inst'] for m in history])
  acc = np.array([m['acc_inst'] for m in history])
  queue_full = config.moco.queue_size // config.batch_size
  chance = 1 / (config.moco.queue_size + 1)
  early, late = slice(queue_full, queue_full + 30), slice(-30, None)
  print(
    f'loss {loss[early].mean():.3f} -> {loss[late].mean():.3f}; acc {acc[early].mean():.3f} -> '
    f'{acc[late].mean():.3f}; ln(K+1) = {math.log(config.moco.queue_size + 1):.3f}'
  )
  assert loss[late].mean() < math.log(config.moco.queue_size + 1) - 1.0
  assert loss[late].mean() < loss[early].mean() - 0.4
  assert acc[late].mean() > 20 * chance and acc[late].mean() > 2 * acc[early].mean()
