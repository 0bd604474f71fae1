"""NYUD-v2 semantic segmentation (40 classes) and depth in the layout of Vandenhende et al.'s multi-task code
("Multi-Task Learning for Dense Prediction Tasks: A Survey", the NYUD_MT folder its data/nyud.py reads), named by one
string `nyud:PATH[:SPLIT]` (SPLIT a file of gt_sets/ without `.txt`: train, 795 images, or val, the 654 test images;
default train).

PATH holds, for every id listed in gt_sets/SPLIT.txt, the photograph images/<id>.jpg, its labels
segmentation/<id>.png and its depth depth/<id>.npy (the folder's edge/ and normals/ are not read).
- A label PNG (mode L or P) holds 0 for unlabelled pixels and 1-40 for the 40 classes (wall, floor, ..., otherprop);
  `load` returns 0 as 255 (ignored) and the others minus one (0-39), as their loader does.
- A depth file is a NumPy array [H, W] (or [H, W, 1]) of float depths in metres, 0 where the sensor gave none;
  `load` returns float32 [H, W] metres with invalid pixels 0 (dense_transforms.INVALID_DEPTH; their code masks
  label == 0 for its metrics and sets those pixels to 255 for its loss).
One set reads one target (`target='segmentation'` or `'depth'`). Refused naming the string or file: a missing list
or file (when the set is opened); a label PNG of another mode, with a value above 40, a depth array of another shape,
a non-float type, negative or non-finite values, or a target of another size than its photograph (when an example is
loaded; their loader resizes such a target, we refuse it). NumPy and PIL only.
"""

import dataclasses
import os

import numpy as np

from input_pipeline import dense_transforms
from input_pipeline import split_lists
from jax_moco.readers import voc_segmentation

NUM_CLASSES = 40
TARGETS = {'segmentation': ('segmentation', '.png'), 'depth': ('depth', '.npy')}  # target -> (folder, file ending)
LAYOUT = 'the NYUD_MT layout of Vandenhende et al.: gt_sets/SPLIT.txt, images/, segmentation/, depth/'


def semantic_labels(values):
  """The class ids (0-39, 255 ignored) of an array of the label PNGs' values 0-40 (0 unlabelled)."""
  return np.where(values == 0, dense_transforms.IGNORE, values.astype(np.int64) - 1).astype(np.uint8)


def _read_depth(path, shape):
  """float32 [H, W] metres of the depth array at `path`, refused naming the file unless it is a finite, non-negative
  float array of `shape`, its photograph's."""
  try:
    depth = np.load(path, allow_pickle=False)
  except (ValueError, OSError) as error:
    raise ValueError(f'{path}: not a NumPy array file of depths ({error})') from error
  if depth.ndim == 3 and depth.shape[-1] == 1:
    depth = depth[..., 0]
  if not np.issubdtype(depth.dtype, np.floating):
    raise ValueError(f'{path}: a {depth.dtype} array, expected float depths in metres')
  if depth.shape != tuple(shape):
    raise ValueError(f'{path}: depth {depth.shape} and image {tuple(shape)} differ in size')
  if not np.all(np.isfinite(depth)) or np.any(depth < 0):
    raise ValueError(f'{path}: depths must be finite and >= 0 (0 where invalid)')
  return depth.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class NyudSet:
  name: str
  ids: tuple
  root: str
  target: str = 'segmentation'  # or 'depth'
  multi_label: bool = False

  @property
  def num_examples(self) -> int:
    return len(self.ids)

  @property
  def num_classes(self) -> int:
    """The head's output channels: the 40 classes, or 1 for depth."""
    return NUM_CLASSES if self.target == 'segmentation' else 1

  def paths(self, index):
    """(photograph, target file) of example `index`."""
    folder, ending = TARGETS[self.target]
    name = self.ids[index]
    return os.path.join(self.root, 'images', f'{name}.jpg'), os.path.join(self.root, folder, name + ending)

  def load(self, index):
    """(image uint8 [H, W, 3], target) of example `index`: mask uint8 [H, W] of class ids 0-39 and 255, or depth
    float32 [H, W] in metres, dense_transforms.INVALID_DEPTH (0) where invalid."""
    image_path, target_path = self.paths(index)
    image = voc_segmentation.read_rgb(image_path)
    if self.target == 'depth':
      return image, _read_depth(target_path, image.shape[:2])
    values = voc_segmentation.read_index_png(
      target_path, image.shape[:2], range(NUM_CLASSES + 1), f'NYUD labels are 0 (unlabelled) and 1-{NUM_CLASSES}'
    )
    return image, semantic_labels(values)


def get(spec: str, default_split: str = 'train', target: str = 'segmentation') -> NyudSet:
  """The set named by `nyud:PATH[:SPLIT]` with `target` 'segmentation' or 'depth'; errors name the string or the
  missing file."""
  if target not in TARGETS:
    raise ValueError(f'dataset {spec!r}: target {target!r} is not one of {", ".join(TARGETS)}')
  root, split, lines = split_lists.read(spec, 'nyud', default_split, 'gt_sets', LAYOUT)
  dataset = NyudSet(f'nyud:{root}:{split}', tuple(lines), root, target)
  for index in range(dataset.num_examples):
    voc_segmentation.require_files(f'dataset {spec!r}', dataset.paths(index))
  return dataset
