"""kNN-MoCo, the full method of paper 001: constrained multi-crop + A+ + the nearest-neighbour loss."""

from configs import multicrop


def get_config(preset=''):
  c = multicrop.get_config(preset)
  c.method = 'knn-moco'
  c.crops.aplus = True
  c.moco.nn_weight = 0.4
  c.moco.nn_topk = 20
  c.moco.nn_warmup_epochs = 5.0 if preset else 1.0
  return c
