"""kNN-MoCo, the full method of Van Gansbeke et al. 2021: constrained multi-crop + A+ + the nearest-neighbour loss."""

from configs import presets


def get_config(preset=''):
  return presets.config('knn', preset)
