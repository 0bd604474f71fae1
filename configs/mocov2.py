"""MoCo-v2 (Chen et al. 2020, with its "aug+" augmentations): two crops, no small crops, no NN loss."""

from configs import presets


def get_config(preset=''):
  return presets.config('mocov2', preset)
