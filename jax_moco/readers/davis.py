"""DAVIS-2017 videos with their instance masks, in the benchmark's folder layout, named by one string
`davis:PATH[:SPLIT]` (SPLIT a file of ImageSets/2017/ without `.txt`: train or val; default val).

PATH holds, for every video named in ImageSets/2017/SPLIT.txt, its frames JPEGImages/480p/<video>/<frame>.jpg and
their masks Annotations/480p/<video>/<frame>.png, one mask a frame with the frame's name. A mask is a palette PNG
(mode P; grayscale L is accepted) whose values are object ids: 0 background, 1..K the objects of the first frame,
255 void (the toolkit scores void as background). Refused with a message naming the file or folder: a missing video
folder, a first frame without its mask, frames and masks that do not pair up one to one, a mask that is not an
index image, of another size than its frame, without any object in the first frame, or with an object id the first
frame does not have. The listings are checked when the set is opened, the files' contents when a video is loaded.
NumPy and PIL only.
"""

import dataclasses
import os

import numpy as np
from PIL import Image

from input_pipeline import split_lists

RESOLUTION = '480p'
VOID = 255


def _stems(folder, ending):
  return sorted(name[: -len(ending)] for name in os.listdir(folder) if name.lower().endswith(ending))


@dataclasses.dataclass(frozen=True)
class Video:
  """One video: its frame and mask files, in frame order (the first frame's mask is the one propagated)."""

  name: str
  frame_paths: tuple
  mask_paths: tuple

  @property
  def num_frames(self) -> int:
    return len(self.frame_paths)

  @property
  def frame_names(self) -> tuple:
    return tuple(os.path.splitext(os.path.basename(p))[0] for p in self.frame_paths)

  def palette(self):
    """The first mask's palette (a flat list of 768 values), or None for a grayscale mask."""
    with Image.open(self.mask_paths[0]) as mask:
      return mask.getpalette() if mask.mode == 'P' else None

  def load(self):
    """(frames uint8 [T, H, W, 3], masks uint8 [T, H, W] of object ids, objects: the first frame's ids, sorted)."""
    frames, masks = [], []
    for frame_path, mask_path in zip(self.frame_paths, self.mask_paths):
      with Image.open(frame_path) as image:
        frames.append(np.asarray(image.convert('RGB')))
      masks.append(_read_mask(mask_path, frames[-1].shape[:2]))
    objects = tuple(int(i) for i in np.unique(masks[0]) if i not in (0, VOID))
    if not objects:
      raise ValueError(f'{self.mask_paths[0]}: no object in the first frame (every value is 0 or {VOID})')
    for mask_path, mask in zip(self.mask_paths[1:], masks[1:]):
      unknown = sorted(set(np.unique(mask).tolist()) - set(objects) - {0, VOID})
      if unknown:
        raise ValueError(
          f'{mask_path}: unknown object ids {unknown} (the first frame, {self.mask_paths[0]}, has objects '
          f'{list(objects)})'
        )
    return np.stack(frames), np.stack(masks), objects


def _read_mask(path, size):
  with Image.open(path) as mask:
    if mask.mode not in ('P', 'L'):
      raise ValueError(
        f'{path}: a {mask.mode} image; DAVIS masks are palette PNGs (mode P) whose values are object ids '
        f'(0 background, {VOID} void)'
      )
    mask = np.asarray(mask)
  if mask.shape != size:
    raise ValueError(f'{path}: mask {mask.shape} and its frame {size} differ in size')
  return mask


@dataclasses.dataclass(frozen=True)
class DavisSet:
  name: str
  videos: tuple  # Video, in the order of the split's list

  @property
  def num_examples(self) -> int:
    return len(self.videos)


def _video(root, name):
  frame_dir = os.path.join(root, 'JPEGImages', RESOLUTION, name)
  mask_dir = os.path.join(root, 'Annotations', RESOLUTION, name)
  for folder in (frame_dir, mask_dir):
    if not os.path.isdir(folder):
      raise FileNotFoundError(f'video {name!r}: the folder {folder} is missing')
  frames, masks = _stems(frame_dir, '.jpg'), _stems(mask_dir, '.png')
  if not frames:
    raise FileNotFoundError(f'video {name!r}: no .jpg frames in {frame_dir}')
  if frames[0] not in masks:
    raise FileNotFoundError(
      f"{os.path.join(mask_dir, frames[0] + '.png')} is missing: the first frame's mask (the one propagated)"
    )
  if frames != masks:
    unmasked = [os.path.join(frame_dir, f + '.jpg') for f in sorted(set(frames) - set(masks))]
    unframed = [os.path.join(mask_dir, m + '.png') for m in sorted(set(masks) - set(frames))]
    odd = f'{unmasked[0]} has no mask' if unmasked else f'{unframed[0]} has no frame'
    raise ValueError(
      f'video {name!r}: {len(frames)} frames in {frame_dir} but {len(masks)} masks in {mask_dir}, one a frame '
      f'expected: {odd}'
    )
  return Video(
    name,
    tuple(os.path.join(frame_dir, f + '.jpg') for f in frames),
    tuple(os.path.join(mask_dir, f + '.png') for f in frames),
  )


def get(spec: str, default_split: str = 'val') -> DavisSet:
  """The set named by `davis:PATH[:SPLIT]`; errors name the string or the missing file."""
  root, split, names = split_lists.read(
    spec, 'davis', default_split, os.path.join('ImageSets', '2017'), 'the DAVIS-2017 folder layout'
  )
  return DavisSet(f'davis:{root}:{split}', tuple(_video(root, name) for name in names))
