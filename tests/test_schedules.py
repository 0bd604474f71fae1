"""Learning-rate and EMA-momentum schedules against their closed forms."""

import math

import numpy as np
import pytest

from jax_moco import schedules


def test_learning_rate_scales_warms_up_and_decays_to_zero():
  lr = schedules.learning_rate(0.3, 512, warmup_steps=10, total_steps=110)
  peak = 0.3 * 512 / 256
  np.testing.assert_allclose(lr(0), 0.0)
  np.testing.assert_allclose(lr(5), peak / 2, rtol=1e-6)
  np.testing.assert_allclose(lr(10), peak, rtol=1e-6)
  np.testing.assert_allclose(lr(60), peak * 0.5 * (1 + math.cos(math.pi * 50 / 100)), rtol=1e-5)
  np.testing.assert_allclose(lr(110), 0.0, atol=1e-7)
  no_warmup = schedules.learning_rate(0.3, 256, 0, 100)
  np.testing.assert_allclose(no_warmup(25), 0.3 * 0.5 * (1 + math.cos(math.pi / 4)), rtol=1e-5)


def test_ema_momentum_constant_and_cosine_ramp():
  np.testing.assert_allclose(schedules.ema_momentum(0.99, 100, 'constant')(50), 0.99, rtol=1e-7)
  ramp = schedules.ema_momentum(0.99, 100, 'cosine')
  np.testing.assert_allclose([ramp(0), ramp(50), ramp(100)], [0.99, 0.995, 1.0], rtol=1e-6)
  with pytest.raises(ValueError, match='momentum_schedule'):
    schedules.ema_momentum(0.99, 100, 'linear')


def test_per_epoch_cosine_is_the_moco_colabs():
  """The MoCo CIFAR-10 Colab sets lr = lr0 * (1 + cos(pi e / E)) / 2 at the start of epoch e = 1..E."""
  lr = schedules.learning_rate(0.03, 512, 0, total_steps=4 * 10, steps_per_epoch=10)
  expected = [0.06 * 0.5 * (1 + math.cos(math.pi * (s // 10 + 1) / 4)) for s in range(40)]
  np.testing.assert_allclose([float(lr(s)) for s in range(40)], expected, rtol=1e-6, atol=1e-9)


def test_step_schedule_is_moco_v1s():
  """He et al. 2020, Sec. 4: lr 0.03 at batch 256, times 0.1 at the start of epochs 120 and 160 of 200."""
  lr = schedules.step_learning_rate(0.03, 256, steps_per_epoch=10, milestones=(120, 160), factor=0.1)
  steps = [0, 1199, 1200, 1599, 1600, 1999]
  expected = [0.03, 0.03, 0.003, 0.003, 0.0003, 0.0003]
  np.testing.assert_allclose([float(lr(s)) for s in steps], expected, rtol=1e-6)
  np.testing.assert_allclose(float(schedules.step_learning_rate(0.03, 512, 10, (), 0.1)(5)), 0.06, rtol=1e-6)
