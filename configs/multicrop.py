"""MoCo + constrained multi-crop (paper 001, Sec. 4.1): 2 large + N small crops overlapping the anchor."""

from configs import base


def get_config(preset=''):
  c = base.apply_preset(base.get_config(), preset)
  c.method = 'multicrop'
  c.crops.num_small = 4
  c.crops.min_overlap = 0.2
  if not preset:
    # Demo scale (32 px, a few CPU minutes): 2 small crops of 16 px covering 10-35 % of the image. The paper's
    # 4 crops of 5-14 % leave 7-12 px patches of a 32 px image, which measurably slowed learning here.
    c.crops.num_small, c.crops.small_scale = 2, (0.1, 0.35)
  if preset in ('imagenet', 'coco'):
    c.crops.large_size = 160
    c.moco.momentum = 0.995
  return c
