"""MoCo + constrained multi-crop (paper 001, Sec. 4.1): 2 large + N small crops overlapping the anchor."""

from configs import base


def get_config(preset=''):
  c = base.apply_preset(base.get_config(), preset)
  c.method = 'multicrop'
  c.crops.num_small = 4
  c.crops.min_overlap = 0.2
  if preset in ('imagenet', 'coco'):
    c.crops.large_size = 160
    c.moco.momentum = 0.995
  return c
