"""kNN-MoCo, the full method of paper 001: constrained multi-crop + A+ + the nearest-neighbour loss."""

from configs import multicrop


def get_config(preset=''):
  c = multicrop.get_config(preset)
  c.method = 'knn-moco'
  c.crops.aplus = True
  c.moco.nn_weight = 0.4
  c.moco.nn_topk = 20
  if preset:  # the paper (Sec. 4.3): losses before the enqueue, NN term after 5 warm-up epochs
    c.moco.nn_order, c.moco.nn_warmup_epochs = 'loss_then_enqueue', 5.0
  else:  # demo: appendix B's order (the authors' scripts), NN term from step 0, independent of the epoch size
    c.moco.nn_order, c.moco.nn_warmup_epochs = 'enqueue_then_mine', 0.0
  return c
