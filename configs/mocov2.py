"""MoCo-v2 (paper 002 + aug+): two crops, no small crops, no NN loss."""

from configs import base


def get_config(preset=''):
  c = base.apply_preset(base.get_config(), preset)
  c.method = 'mocov2'
  if preset in ('imagenet', 'coco'):
    c.moco.momentum = 0.999
  return c
