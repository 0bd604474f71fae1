"""Subsets of a source, named after its dataset string: `SOURCE|KIND=N[,seed=S][,scale=F]`, as the pretraining sets
of Van Gansbeke et al. 2021, "Revisiting Contrastive Methods for Unsupervised Learning of Visual Representations",
Sec. 3 and appendix C:

- `|uniform=N`: N images, the same number in every class (IN-118K: `|uniform=118000`);
- `|pareto=ALPHA,total=N`: N images in classes of long-tailed sizes (IN-118K-LT: `|pareto=6,total=118000`; the
  sizes are `pareto_class_sizes`');
- `|random=N`: N images drawn regardless of labels (OI-118K: `|random=118000`; unlabelled folders too);
- `,scale=F`: F times the set (appendix C's 1x to 8x), nested: each class keeps a prefix of one seeded order of its
  images, so a larger scale holds every image of a smaller one.

The draw depends on the seed and the source's labels only (NumPy's PCG64, the same on every host and platform), so
every process computes the same list and reads its shard of it; `record` writes it to the work directory and makes
a resumed run refuse a source whose list has changed. NumPy and the standard library only.
"""

import dataclasses
import os
from typing import Optional

import numpy as np

from jax_moco import files

KINDS = ('uniform', 'pareto', 'random')
# Liu et al. 2019 ("Large-Scale Long-Tailed Recognition in an Open World"), ImageNet-LT: 1280 images in the largest
# class, 5 in the smallest. Their class sizes are a histogram of draws of numpy.random.pareto(6) (the authors,
# zhmiao/OpenLongTailRecognition-OLTR issue 38); pareto_class_sizes is the same density without the draw's noise.
HEAD_TO_TAIL = 1280 / 5
LIST_FILE = 'subset.tsv'


@dataclasses.dataclass(frozen=True)
class SubsetSpec:
  kind: str
  size: int  # uniform and random: N; pareto: total
  alpha: float = 0.0
  seed: int = 0
  scale: float = 1.0

  def suffix(self) -> str:
    head = f'pareto={self.alpha:g},total={self.size}' if self.kind == 'pareto' else f'{self.kind}={self.size}'
    return f'{head},seed={self.seed}' + (f',scale={self.scale:g}' if self.scale != 1 else '')


def split(spec: str):
  """(the source's dataset string, the subset suffix or '') of a dataset string."""
  base, _, suffix = spec.partition('|')
  return base, suffix


def parse(spec: str) -> Optional[SubsetSpec]:
  """The SubsetSpec of a dataset string, or None when it names a whole source; ValueError naming the string and the
  parameter when the suffix cannot be read."""
  _, suffix = split(spec)
  if not suffix:
    return None
  fields = {}
  for item in suffix.split(','):
    key, equals, value = item.partition('=')
    if not equals or key in fields:
      raise ValueError(f'dataset {spec!r}: {item!r} is not KEY=VALUE (once each), as in |uniform=118000,seed=0')
    fields[key.strip()] = value.strip()
  kinds = [k for k in KINDS if k in fields]
  if len(kinds) != 1:
    raise ValueError(f'dataset {spec!r}: name one subset kind of {", ".join(KINDS)}, as in |random=118000')
  kind = kinds[0]
  allowed = {kind, 'seed', 'scale'} | ({'total'} if kind == 'pareto' else set())
  unknown = sorted(set(fields) - allowed)
  if unknown:
    raise ValueError(f'dataset {spec!r}: {", ".join(unknown)} is not a parameter of a {kind} subset ({allowed})')
  try:
    if kind == 'pareto':
      if 'total' not in fields:
        raise ValueError('a pareto subset needs total=N')
      subset = SubsetSpec(kind, int(fields['total']), alpha=float(fields[kind]))
    else:
      subset = SubsetSpec(kind, int(fields[kind]))
    subset = dataclasses.replace(subset, seed=int(fields.get('seed', 0)), scale=float(fields.get('scale', 1)))
  except ValueError as e:
    raise ValueError(f'dataset {spec!r}: {e}') from None
  _check(spec, subset)
  return subset


def _check(spec, subset):
  size_field = 'total' if subset.kind == 'pareto' else subset.kind
  if subset.size < 1:
    raise ValueError(f'dataset {spec!r}: {size_field}={subset.size} must be positive')
  if subset.kind == 'pareto' and subset.alpha <= 0:
    raise ValueError(f'dataset {spec!r}: pareto={subset.alpha:g} must be positive (Liu et al. 2019 use 6)')
  if subset.scale <= 0:
    raise ValueError(f'dataset {spec!r}: scale={subset.scale:g} must be positive')


def pareto_class_sizes(num_classes: int, alpha: float, total: int) -> np.ndarray:
  """Class sizes by rank (largest first) that follow the Pareto (Lomax) density of power alpha, summing to total:

    n_r proportional to (1 + x_r) ** -(alpha + 1),  x_r = x_max * r / (C - 1),  r = 0 .. C - 1,

  with x_max = HEAD_TO_TAIL ** (1 / (alpha + 1)) - 1, so that the largest class is HEAD_TO_TAIL (256) times the
  smallest, as in ImageNet-LT; rounded by largest remainders, so that the sizes sum to `total` exactly."""
  x_max = HEAD_TO_TAIL ** (1 / (alpha + 1)) - 1
  ranks = np.arange(num_classes) / max(num_classes - 1, 1)
  shape = (1 + x_max * ranks) ** -(alpha + 1)
  exact = shape / shape.sum() * total
  sizes = np.floor(exact).astype(np.int64)
  remainder = np.argsort(-(exact - sizes), kind='stable')[: total - sizes.sum()]
  sizes[remainder] += 1
  return sizes


def uniform_class_sizes(num_classes: int, total: int) -> np.ndarray:
  """total // C images a class, and one more in the first total % C classes (of the seeded class order)."""
  sizes = np.full(num_classes, total // num_classes, np.int64)
  sizes[: total % num_classes] += 1
  return sizes


def draw(subset: SubsetSpec, labels: Optional[np.ndarray], num_examples: int, name: str) -> np.ndarray:
  """The sorted source indices of `subset`; ValueError naming `name` (the dataset string) and the parameter when the
  source cannot give it (class sizes of an unlabelled source, more images than it has)."""
  rng = np.random.default_rng(subset.seed)
  if subset.kind == 'random':
    count = int(subset.scale * subset.size)
    if count > num_examples:
      raise ValueError(
        f'dataset {name!r}: random={subset.size} x scale {subset.scale:g} = {count} images, more than '
        f'the {num_examples} it has'
      )
    return np.sort(rng.permutation(num_examples)[:count])
  if labels is None:
    raise ValueError(
      f'dataset {name!r}: {subset.kind}= sizes classes, but the source has no single labels; use random=N'
    )
  classes = np.unique(labels)
  ranked = rng.permutation(classes)  # which class is the head, which the tail (pareto), which gets one more (uniform)
  if subset.kind == 'uniform':
    base = uniform_class_sizes(len(classes), subset.size)
  else:
    base = pareto_class_sizes(len(classes), subset.alpha, subset.size)
  chosen = []
  for cls, size in zip(ranked, np.floor(subset.scale * base).astype(np.int64)):
    members = np.flatnonzero(labels == cls)
    if size > len(members):
      field = 'total' if subset.kind == 'pareto' else subset.kind
      raise ValueError(
        f'dataset {name!r}: {field}={subset.size} (x scale {subset.scale:g}) asks {size} images of '
        f'class {cls}, which has {len(members)}'
      )
    chosen.append(members[np.random.default_rng([subset.seed, int(cls)]).permutation(len(members))[:size]])
  return np.sort(np.concatenate(chosen))


def listing(indices, labels, paths) -> str:
  """The subset as text: a header, then `index<TAB>label<TAB>file` a line (label -1 unlabelled, file '' in memory)."""
  lines = ['index\tlabel\tfile']
  for i in indices.tolist():
    label = -1 if labels is None else int(labels[i])
    lines.append(f'{i}\t{label}\t{paths[i] if paths else ""}')
  return '\n'.join(lines) + '\n'


def record(source, workdir: str, is_chief: bool = True):
  """Writes the subset `source` reads (source.subset_list, from get_source) to workdir/subset.tsv, or, when a run
  there wrote one before, refuses to go on with another list (the source's files or labels changed since)."""
  if not source.subset_list:
    return
  path = os.path.join(workdir, LIST_FILE)
  if os.path.exists(path):
    with open(path) as f:
      if f.read() != source.subset_list:
        raise ValueError(
          f'{source.name}: the subset drawn now differs from {path}, the list this run started with '
          '(the source changed); restore it or train in a new work directory'
        )
  elif is_chief:
    with files.atomic_write(path) as f:
      f.write(source.subset_list)
