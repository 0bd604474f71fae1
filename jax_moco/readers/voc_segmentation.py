"""PASCAL VOC 2012 semantic segmentation in its folder layout, named by one string `voc:PATH[:SPLIT]` (SPLIT a file of
ImageSets/Segmentation/ without `.txt`: train, val, or trainaug where that list exists; default train).

PATH holds JPEGImages/<id>.jpg and the class-index PNGs of SegmentationClassAug/<id>.png when that folder exists
(the augmented set), else SegmentationClass/<id>.png. A mask's values are class ids 0 (background) to 20 and 255
(object boundaries and difficult regions, ignored); anything else, a missing file or a mask of another size than its
image is refused, naming the file. NumPy and PIL only.
"""

import dataclasses
import os

import numpy as np
from PIL import Image

from input_pipeline import dense_transforms
from input_pipeline import split_lists

NUM_CLASSES = 21
INDEX_MODES = ('P', 'L', 'I;16', 'I')  # one integer channel: palette, 8-, 16- or 32-bit grey


@dataclasses.dataclass(frozen=True)
class SegmentationSet:
  name: str
  ids: tuple
  image_dir: str
  mask_dir: str
  num_classes: int = NUM_CLASSES
  multi_label: bool = False
  target: str = 'segmentation'  # what load's second array holds (the dense readers' sets share these fields)

  @property
  def num_examples(self) -> int:
    return len(self.ids)

  @property
  def root(self) -> str:
    """The VOC folder (PATH of voc:PATH)."""
    return os.path.dirname(self.image_dir)

  def load(self, index):
    """(image uint8 [H, W, 3], mask uint8 [H, W]) of example `index`."""
    name = self.ids[index]
    image_path = os.path.join(self.image_dir, f'{name}.jpg')
    mask_path = os.path.join(self.mask_dir, f'{name}.png')
    require_files(self.name, (image_path, mask_path))
    image = read_rgb(image_path)
    known = (*range(NUM_CLASSES), dense_transforms.IGNORE)
    expected = f'VOC has 0-{NUM_CLASSES - 1} and {dense_transforms.IGNORE}'
    return image, read_index_png(mask_path, image.shape[:2], known, expected)


def require_files(dataset_name, paths):
  """Refuses the first of `paths` that does not exist, naming it and the dataset."""
  for path in paths:
    if not os.path.exists(path):
      raise FileNotFoundError(f'{dataset_name}: {path} is missing')


def read_rgb(path):
  """uint8 [H, W, 3] of an image file, converted to RGB."""
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def read_index_png(path, shape, known, description):
  """uint8 [H, W] values of the class-index PNG at `path` (mode P or L; 16- or 32-bit integer grey accepted), refused
  naming the file when it has another mode, a value outside `known` (`description` says what the values may be) or
  another size than `shape`, its image's."""
  with Image.open(path) as mask:
    if mask.mode not in INDEX_MODES:
      raise ValueError(f'{path}: a {mask.mode} image, expected a class-index PNG (mode P or L)')
    mask = np.asarray(mask)
  unknown = sorted(set(np.unique(mask).tolist()) - set(known))
  if unknown:
    raise ValueError(f'{path}: unknown class ids {unknown} ({description})')
  if mask.shape != tuple(shape):
    raise ValueError(f'{path}: mask {mask.shape} and image {tuple(shape)} differ in size')
  return mask.astype(np.uint8)


def get(spec: str, default_split: str = 'train') -> SegmentationSet:
  """The set named by `voc:PATH[:SPLIT]`; errors name the string or the missing file."""
  path, split, lines = split_lists.read(
    spec, 'voc', default_split, os.path.join('ImageSets', 'Segmentation'), 'the PASCAL VOC 2012 folder layout'
  )
  ids = tuple(line.split()[0] for line in lines)
  augmented = os.path.join(path, 'SegmentationClassAug')
  mask_dir = augmented if os.path.isdir(augmented) else os.path.join(path, 'SegmentationClass')
  return SegmentationSet(f'voc:{path}:{split}', ids, os.path.join(path, 'JPEGImages'), mask_dir)
