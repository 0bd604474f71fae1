"""The `KIND:PATH[:SPLIT]` strings of the benchmark folders (`voc:`, `davis:`, `voc07:`): the folder, the split, and
the lines of the split's list inside it, which name the examples. Standard library only."""

import os


def parse(spec: str, kind: str, default_split: str, layout: str):
  """(PATH, SPLIT) of `spec` = `kind:PATH[:SPLIT]`, PATH with `~` expanded; a trailing `:SPLIT` is one without a path
  separator, so a colon inside PATH stays part of it. Refused naming the string and `layout`, the folder layout
  expected."""
  prefix, _, rest = spec.partition(':')
  path, split = rest, default_split
  head, _, tail = rest.rpartition(':')
  if head and os.sep not in tail:
    path, split = head, tail
  if prefix != kind or not path:
    raise ValueError(f'dataset {spec!r}: expected {kind}:PATH[:SPLIT] ({layout})')
  return os.path.expanduser(path), split


def lines(spec: str, root: str, lists_dir: str, split: str):
  """The non-empty lines of root/lists_dir/SPLIT.txt, stripped; a missing list is refused naming it and `spec`."""
  listing = os.path.join(root, lists_dir, f'{split}.txt')
  if not os.path.exists(listing):
    raise FileNotFoundError(f'dataset {spec!r}: {listing} is missing')
  with open(listing) as f:
    return [line.strip() for line in f if line.strip()]


def read(spec: str, kind: str, default_split: str, lists_dir: str, layout: str):
  """(root, split, the lines of root/lists_dir/SPLIT.txt) of `spec` = `kind:PATH[:SPLIT]` (parse, lines)."""
  root, split = parse(spec, kind, default_split, layout)
  return root, split, lines(spec, root, lists_dir, split)
