"""Writes N real-photo JPEGs of about 500 px (random crops of scikit-learn's two sample photographs, resized) for
the pipeline benchmark. Usage: python bench/make_jpegs.py DIR [N]."""

import os
import sys

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_image


def make_jpegs(directory, count=256, seed=0):
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  photos = [Image.fromarray(load_sample_image(name)) for name in ('china.jpg', 'flower.jpg')]
  for i in range(count):
    photo = photos[i % 2]
    w, h = photo.size
    cw, ch = rng.integers(w // 2, w), rng.integers(h // 2, h)
    left, top = rng.integers(0, w - cw), rng.integers(0, h - ch)
    crop = photo.crop((left, top, left + cw, top + ch)).resize((500, 375), Image.BICUBIC)
    crop.save(os.path.join(directory, f'{i:05d}.jpg'), quality=90)
  return directory


if __name__ == '__main__':
  make_jpegs(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 256)
