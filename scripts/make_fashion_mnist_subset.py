"""Rebuilds input_pipeline/data/fashion_mnist_subset.npz from Debian's dataset-fashion-mnist package.

`apt-get install dataset-fashion-mnist && python scripts/make_fashion_mnist_subset.py`: 1000 train and 200 test
images per class, chosen with NumPy seed 0, kept in their original order.
"""

import gzip
import os

import numpy as np

SOURCE = '/usr/share/datasets/fashion-mnist'
OUT = os.path.join(os.path.dirname(__file__), '..', 'input_pipeline', 'data', 'fashion_mnist_subset.npz')


def read(name, offset):
  with gzip.open(os.path.join(SOURCE, name)) as f:
    return np.frombuffer(f.read(), np.uint8, offset=offset)


def main():
  rng = np.random.default_rng(0)
  arrays = {}
  for split, prefix, per_class in (('train', 'train', 1000), ('test', 't10k', 200)):
    images = read(f'{prefix}-images-idx3-ubyte.gz', 16).reshape(-1, 28, 28)
    labels = read(f'{prefix}-labels-idx1-ubyte.gz', 8)
    keep = np.sort(
      np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)])
    )
    arrays[f'{split}_images'], arrays[f'{split}_labels'] = images[keep], labels[keep]
  np.savez_compressed(OUT, **arrays)
  print(f'wrote {OUT}: ' + ', '.join(f'{k} {v.shape}' for k, v in arrays.items()))


if __name__ == '__main__':
  main()
