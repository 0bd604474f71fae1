"""PASCAL VOC 2007 classification in its own folder layout, named `voc07:PATH[:SPLIT]`: the images of one split
(trainval, train, val or test) with their per-class targets, read as the authors' VOC loader (from PCL) reads them.

PATH is the VOC2007 folder (`ImageSets/Main/`, `JPEGImages/`), or a folder holding `VOC2007/` (VOCdevkit) or
`VOCdevkit/VOC2007/`. SPLIT's images are listed in ImageSets/Main/SPLIT.txt and, per class, in
ImageSets/Main/<class>_SPLIT.txt as `<image id> <1 | -1 | 0>`: present, absent, or present only as objects marked
difficult. The targets follow the other multi-label sources (`sources` module): 1 present, 0 absent, -1 difficult
only. Standard library and NumPy only.
"""

import os

import numpy as np

from input_pipeline import split_lists

CLASSES = (
  'aeroplane',
  'bicycle',
  'bird',
  'boat',
  'bottle',
  'bus',
  'car',
  'cat',
  'chair',
  'cow',
  'diningtable',
  'dog',
  'horse',
  'motorbike',
  'person',
  'pottedplant',
  'sheep',
  'sofa',
  'train',
  'tvmonitor',
)
LAYOUT = 'a VOC2007 folder: ImageSets/Main/<class>_<split>.txt and JPEGImages/'
# The file's 1 / -1 / 0 as our targets' 1 / 0 / -1.
_TARGETS = {1: 1, -1: 0, 0: -1}


def voc2007_folder(path):
  """The VOC2007 folder at or under `path` (PATH, PATH/VOC2007 or PATH/VOCdevkit/VOC2007), or `path` itself."""
  for candidate in (path, os.path.join(path, 'VOC2007'), os.path.join(path, 'VOCdevkit', 'VOC2007')):
    if os.path.isdir(os.path.join(candidate, 'ImageSets', 'Main')):
      return candidate
  return path


def _class_targets(root, split, name, ids):
  """{image id: target} of one class's list file, refused naming the file where it lacks an image or is malformed."""
  listing = os.path.join(root, 'ImageSets', 'Main', f'{name}_{split}.txt')
  if not os.path.exists(listing):
    raise FileNotFoundError(f'voc07:{root}:{split}: {listing} is missing ({LAYOUT})')
  targets = {}
  with open(listing) as f:
    for number, line in enumerate(f, 1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) != 2 or fields[1] not in ('1', '-1', '0'):
        raise ValueError(f'{listing}, line {number}: expected "<image id> <1|-1|0>", got {line.strip()!r}')
      targets[fields[0]] = _TARGETS[int(fields[1])]
  missing = [i for i in ids if i not in targets]
  if missing:
    raise ValueError(f'{listing} lacks {len(missing)} images of {split}.txt, e.g. {missing[0]}')
  return targets


def class_names(root):
  """The class names of the VOC2007 folder `root`: its classes.txt's lines where it has one, else VOC's 20."""
  listing = os.path.join(root, 'classes.txt')
  if not os.path.exists(listing):
    return CLASSES
  with open(listing) as f:
    names = tuple(line.strip() for line in f if line.strip())
  if not names:
    raise ValueError(f'{listing} names no class (one class name a line expected)')
  return names


def read(spec, default_split='trainval'):
  """(name, image paths, targets int32 [N, C], the C class names) of `spec` = `voc07:PATH[:SPLIT]`, in SPLIT.txt's
  order."""
  path, split = split_lists.parse(spec, 'voc07', default_split, LAYOUT)
  root = voc2007_folder(path)
  ids = split_lists.lines(spec, root, os.path.join('ImageSets', 'Main'), split)
  classes = class_names(root)
  columns = [_class_targets(root, split, name, ids) for name in classes]
  targets = np.array([[column[i] for column in columns] for i in ids], np.int32).reshape(len(ids), len(classes))
  return f'voc07:{root}:{split}', [os.path.join(root, 'JPEGImages', f'{i}.jpg') for i in ids], targets, classes
