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

from input_pipeline import split_lists

NUM_CLASSES = 21
IGNORE = 255


@dataclasses.dataclass(frozen=True)
class SegmentationSet:
  name: str
  ids: tuple
  image_dir: str
  mask_dir: str
  num_classes: int = NUM_CLASSES
  multi_label: bool = False

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
    for path in (image_path, mask_path):
      if not os.path.exists(path):
        raise FileNotFoundError(f'{self.name}: {path} is missing')
    with Image.open(image_path) as image:
      image = np.asarray(image.convert('RGB'))
    with Image.open(mask_path) as mask:
      if mask.mode not in ('P', 'L'):
        raise ValueError(f'{mask_path}: a {mask.mode} image, expected a class-index PNG (mode P or L)')
      mask = np.asarray(mask)
    unknown = sorted(set(np.unique(mask).tolist()) - set(range(NUM_CLASSES)) - {IGNORE})
    if unknown:
      raise ValueError(f'{mask_path}: unknown class ids {unknown} (VOC has 0-{NUM_CLASSES - 1} and {IGNORE})')
    if mask.shape != image.shape[:2]:
      raise ValueError(f'{mask_path}: mask {mask.shape} and image {image.shape[:2]} differ in size')
    return image, mask


def get(spec: str, default_split: str = 'train') -> SegmentationSet:
  """The set named by `voc:PATH[:SPLIT]`; errors name the string or the missing file."""
  path, split, lines = split_lists.read(
    spec, 'voc', default_split, os.path.join('ImageSets', 'Segmentation'), 'the PASCAL VOC 2012 folder layout'
  )
  ids = tuple(line.split()[0] for line in lines)
  augmented = os.path.join(path, 'SegmentationClassAug')
  mask_dir = augmented if os.path.isdir(augmented) else os.path.join(path, 'SegmentationClass')
  return SegmentationSet(f'voc:{path}:{split}', ids, os.path.join(path, 'JPEGImages'), mask_dir)
