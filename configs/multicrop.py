"""MoCo + constrained multi-crop (Van Gansbeke et al. 2021, Sec. 4.1): 2 large + N small crops near the anchor."""

from configs import presets


def get_config(preset=''):
  return presets.config('multicrop', preset)
