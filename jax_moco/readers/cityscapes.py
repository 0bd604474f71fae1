"""Cityscapes semantic segmentation in the official folder layout, named by one string `cityscapes:PATH[:SPLIT]`
(SPLIT train, the 2975 images of train_fine, or val, 500; default train; the test split's labels are withheld).

PATH holds the photographs leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and their fine annotations
gtFine/<split>/<city>/<name>_gtFine_labelIds.png, one a photograph, as the Cityscapes download unpacks them. A label-id
PNG (mode L; P accepted) holds the 34 label ids 0-33 of the official labels table (cityscapesScripts' labels.py);
`load` maps them to its 19 training ids 0-18 (road, sidewalk, ..., bicycle) and every other id (unlabeled, ego
vehicle, parking, guard rail, caravan, ...) to 255, ignored, as the official `trainId` column and Van Gansbeke et
al.'s evaluation code do. Examples are in city then file name order. Refused naming the string or file: another
split, a missing split folder, a photograph without its label-id PNG, a split without photographs (when the set is
opened); a label PNG of another mode or size than its photograph, or with an id outside 0-33 (when an example is
loaded). NumPy and PIL only.
"""

import dataclasses
import os

import numpy as np

from input_pipeline import dense_transforms
from input_pipeline import split_lists
from jax_moco.readers import voc_segmentation

SPLITS = ('train', 'val')
NUM_LABEL_IDS = 34  # label ids 0-33; license plate's id -1 is never drawn in the label images
# label id -> training id: the official table's trainId column, for its 19 evaluated classes.
TRAIN_IDS = {
  7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15,
  31: 16, 32: 17, 33: 18,
}  # fmt: skip
CLASSES = (
  'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign', 'vegetation', 'terrain',
  'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle',
)  # fmt: skip
NUM_CLASSES = len(CLASSES)
IMAGE_SUFFIX = '_leftImg8bit.png'
LABEL_SUFFIX = '_gtFine_labelIds.png'
LAYOUT = 'the Cityscapes layout leftImg8bit/SPLIT/CITY/*_leftImg8bit.png, gtFine/SPLIT/CITY/*_gtFine_labelIds.png'


def _train_id_table():
  table = np.full(256, dense_transforms.IGNORE, np.uint8)
  table[list(TRAIN_IDS)] = list(TRAIN_IDS.values())
  return table


TRAIN_ID_TABLE = _train_id_table()  # uint8 [256]: the training id of every label id, 255 for the unevaluated ones


def train_ids(label_ids):
  """The training ids (0-18, 255 ignored) of an array of Cityscapes label ids 0-33."""
  return TRAIN_ID_TABLE[label_ids]


@dataclasses.dataclass(frozen=True)
class CityscapesSet:
  name: str
  ids: tuple  # CITY/NAME, NAME without the suffixes
  image_paths: tuple
  mask_paths: tuple
  num_classes: int = NUM_CLASSES
  multi_label: bool = False
  target: str = 'segmentation'

  @property
  def num_examples(self) -> int:
    return len(self.ids)

  def load(self, index):
    """(image uint8 [H, W, 3], mask uint8 [H, W] of training ids 0-18 and 255) of example `index`."""
    image = voc_segmentation.read_rgb(self.image_paths[index])
    label_ids = voc_segmentation.read_index_png(
      self.mask_paths[index], image.shape[:2], range(NUM_LABEL_IDS), f'Cityscapes label ids are 0-{NUM_LABEL_IDS - 1}'
    )
    return image, train_ids(label_ids)


def _examples(spec, root, split):
  """(ids, image paths, label paths) of the split's photographs, each with its label PNG, in city and name order."""
  image_root = os.path.join(root, 'leftImg8bit', split)
  if not os.path.isdir(image_root):
    raise FileNotFoundError(f'dataset {spec!r}: {image_root} is missing ({LAYOUT})')
  ids, image_paths, mask_paths = [], [], []
  for city in sorted(os.listdir(image_root)):
    if not os.path.isdir(os.path.join(image_root, city)):
      continue
    for file_name in sorted(os.listdir(os.path.join(image_root, city))):
      if file_name.endswith(IMAGE_SUFFIX):
        stem = file_name[: -len(IMAGE_SUFFIX)]
        ids.append(f'{city}/{stem}')
        image_paths.append(os.path.join(image_root, city, file_name))
        mask_paths.append(os.path.join(root, 'gtFine', split, city, stem + LABEL_SUFFIX))
  if not ids:
    raise ValueError(f'dataset {spec!r}: no */*{IMAGE_SUFFIX} in {image_root}')
  return tuple(ids), tuple(image_paths), tuple(mask_paths)


def get(spec: str, default_split: str = 'train') -> CityscapesSet:
  """The set named by `cityscapes:PATH[:SPLIT]`; errors name the string or the missing file."""
  root, split = split_lists.parse(spec, 'cityscapes', default_split, LAYOUT)
  if split not in SPLITS:
    raise ValueError(f'dataset {spec!r}: split {split!r} is not one of {", ".join(SPLITS)} (test has no labels)')
  ids, image_paths, mask_paths = _examples(spec, root, split)
  voc_segmentation.require_files(f'dataset {spec!r}', mask_paths)
  return CityscapesSet(f'cityscapes:{root}:{split}', ids, image_paths, mask_paths)
