"""The `KIND:PATH[:SPLIT]` strings of the benchmark folders (`voc:`, `davis:`): the folder, the split, and the
lines of the split's list inside it, which name the examples. NumPy- and TensorFlow-free."""

import os


def read(spec: str, kind: str, default_split: str, lists_dir: str, layout: str):
  """(root, split, the non-empty lines of root/lists_dir/SPLIT.txt, stripped) of `spec` = `kind:PATH[:SPLIT]`; a
  trailing `:SPLIT` is one without a path separator, so a colon inside PATH stays part of it. Refused naming the
  string (and `layout`, the folder layout expected) or the missing list."""
  prefix, _, rest = spec.partition(':')
  path, split = rest, default_split
  head, _, tail = rest.rpartition(':')
  if head and os.sep not in tail:
    path, split = head, tail
  if prefix != kind or not path:
    raise ValueError(f'dataset {spec!r}: expected {kind}:PATH[:SPLIT] ({layout})')
  root = os.path.expanduser(path)
  listing = os.path.join(root, lists_dir, f'{split}.txt')
  if not os.path.exists(listing):
    raise FileNotFoundError(f'dataset {spec!r}: {listing} is missing')
  with open(listing) as f:
    return root, split, [line.strip() for line in f if line.strip()]
