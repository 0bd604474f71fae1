"""Colour scenes composed from real photographs: cut-outs of animals, food and flowers (Debian's
`tuxpaint-stamps-default`, GPL-2 or later: RGBA photographs whose alpha channel is the object's mask) pasted onto
crops of background photographs (PyPI's `ai-benchmark`, Apache-2.0: 100 photographs of 512 px).

Scene-centric images hold 1 to `max_objects` objects at varied scales anywhere, later ones occluding earlier ones
(as COCO's images do); object-centric images hold one large object near the centre (as ImageNet's do). Both kinds
have the same size, count and class balance: image i's first object has class i mod 7. Train and test differ by
object instance (each class's cut-outs divided) and by background photograph. Everything is drawn from
`numpy.random.default_rng((seed, split, kind, index))`, so an image does not depend on how many others are made.
The `scenes` module writes them in the layouts the project's readers read. NumPy and PIL only.
"""

import dataclasses
import functools
import os

import numpy as np
from PIL import Image

# The classes and the stamp folders (recursive) they come from, in the order of their ids (0 is the background).
CLASS_FOLDERS = {
  'bird': 'animals/birds',
  'fish': 'animals/fish',
  'flower': 'plants/flowers',
  'fruit': 'food/fruit',
  'insect': 'animals/insects',
  'mammal': 'animals/mammals',
  'vegetable': 'food/vegetables',
}
CLASSES = tuple(CLASS_FOLDERS)
# The photographs are kept by a rule and a list: every PNG under a class folder except those under a `cartoon`
# folder (drawings) and these drawings, silhouettes and toys found by looking at every stamp (tuxpaint-stamps
# 2022.06.04).
NOT_PHOTOGRAPHS = ('echidna.png', 'edward_bear.png', 'hedgehog.png', 'shrimp.png', 'whale.png')
# ai-benchmark's photographs are ImageNet-like: half show an animal. The backgrounds are the 48 that show no animal,
# fruit, vegetable or flower (so no object of the classes goes unlabelled), found by looking at all 100 (0.1.2).
BACKGROUNDS = tuple(
  f'{n}.jpg'
  for n in (
    *(1, 7, 9, 10, 12, 14, 16, 17, 20, 24, 25, 27, 28, 30, 32, 33, 35, 36, 38, 39, 40, 42, 44, 45, 46, 49, 50, 52),
    *(53, 54, 56, 57, 58, 59, 61, 65, 66, 68, 69, 70, 71, 73, 75, 77, 78, 87, 91, 99),
  )
)
SPLITS = ('train', 'test')
KINDS = ('scene', 'object')
# An object that shows less than this share of itself after the later ones are pasted is placed again.
MIN_VISIBLE = 0.4


@dataclasses.dataclass(frozen=True)
class Settings:
  seed: int = 0
  size: int = 96  # the images' side, px
  train_images: int = 1000  # per kind
  test_images: int = 500
  max_objects: int = 4  # per scene-centric image
  train_videos: int = 20
  test_videos: int = 10
  frames: int = 24
  test_fraction: float = 0.25  # of each class's cut-outs and of the backgrounds


@dataclasses.dataclass(frozen=True)
class Placement:
  """One pasted object: its class id (1-based), cut-out, centre (fractions of the side), longer side (fraction of
  the side) and whether it is mirrored."""

  class_id: int
  cutout: str
  centre: tuple
  scale: float
  mirrored: bool


def cutouts(stamps):
  """{class: sorted cut-out paths relative to `stamps`} of the photographs (the rule above NOT_PHOTOGRAPHS)."""
  found = {}
  for name, folder in CLASS_FOLDERS.items():
    paths = []
    for parent, folders, files in os.walk(os.path.join(stamps, folder)):
      folders[:] = [f for f in folders if f != 'cartoon']
      paths += [os.path.join(parent, f) for f in files if f.endswith('.png') and f not in NOT_PHOTOGRAPHS]
    if not paths:
      raise FileNotFoundError(f'no cut-outs of {name} under {os.path.join(stamps, folder)} (tuxpaint-stamps-default)')
    found[name] = sorted(os.path.relpath(p, stamps) for p in paths)
  return found


def backgrounds(folder):
  """The BACKGROUNDS' file names, sorted, refused naming the first one `folder` lacks."""
  missing = [name for name in BACKGROUNDS if not os.path.exists(os.path.join(folder, name))]
  if missing:
    raise FileNotFoundError(
      f"{os.path.join(folder, missing[0])} is missing: the backgrounds are ai-benchmark's "
      'ai_benchmark/data/classification/ photographs'
    )
  return sorted(BACKGROUNDS)


def split(items, fraction, seed):
  """{'train': [...], 'test': [...]}: a seeded shuffle of `items` divided, at least one on each side."""
  order = np.random.default_rng(seed).permutation(len(items))
  count = min(max(1, round(len(items) * fraction)), len(items) - 1)
  return {'test': sorted(items[i] for i in order[:count]), 'train': sorted(items[i] for i in order[count:])}


def instance_splits(stamps, background_folder, settings):
  """{'cutouts': {split: {class: paths}}, 'backgrounds': {split: names}}: each class's cut-outs and the
  backgrounds divided between train and test."""
  by_class = {
    name: split(paths, settings.test_fraction, (settings.seed, c))
    for c, (name, paths) in enumerate(cutouts(stamps).items())
  }
  return {
    'cutouts': {s: {name: parts[s] for name, parts in by_class.items()} for s in SPLITS},
    'backgrounds': split(backgrounds(background_folder), settings.test_fraction, (settings.seed, len(CLASSES))),
  }


@functools.lru_cache(maxsize=None)
def load_cutout(path):
  """The RGBA cut-out at `path`, cropped to its alpha's bounding box."""
  with Image.open(path) as image:
    image = image.convert('RGBA')
  return image.crop(image.getchannel('A').point(lambda a: 255 if a > 127 else 0).getbbox())


@functools.lru_cache(maxsize=None)
def load_background(path):
  with Image.open(path) as image:
    return image.convert('RGB')


def background_crop(rng, path, size, shift=(0.0, 0.0)):
  """A random square crop (half to all of the shorter side) of the photograph, mirrored at random, resized to
  `size`; `shift` moves the crop by fractions of its side (a panning camera)."""
  photo = load_background(path)
  side = rng.uniform(0.5, 1.0) * min(photo.size)
  left, top = rng.uniform(0, photo.width - side), rng.uniform(0, photo.height - side)
  mirrored = rng.random() < 0.5
  left = float(np.clip(left + shift[0] * side, 0, photo.width - side))
  top = float(np.clip(top + shift[1] * side, 0, photo.height - side))
  crop = photo.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
  return crop.transpose(Image.FLIP_LEFT_RIGHT) if mirrored else crop


def paste(canvas, instances, placement, instance_id, stamps):
  """Pastes `placement` onto `canvas` (RGB, in place) and marks its pixels `instance_id` in `instances`."""
  size = canvas.width
  cutout = load_cutout(os.path.join(stamps, placement.cutout))
  longer = max(2, round(placement.scale * size))
  ratio = longer / max(cutout.size)
  width, height = max(1, round(cutout.width * ratio)), max(1, round(cutout.height * ratio))
  cutout = cutout.resize((width, height), Image.LANCZOS)
  if placement.mirrored:
    cutout = cutout.transpose(Image.FLIP_LEFT_RIGHT)
  corner = (round(placement.centre[0] * size - width / 2), round(placement.centre[1] * size - height / 2))
  layer = Image.new('RGBA', canvas.size, (0, 0, 0, 0))
  layer.paste(cutout, corner)
  canvas.paste(layer, (0, 0), layer)
  instances[np.asarray(layer.getchannel('A')) > 127] = instance_id


def render(background, placements, stamps):
  """(image uint8 [S, S, 3], instance ids uint8 [S, S]: 0 background, i the i-th placement where it shows)."""
  canvas = background.copy()
  instances = np.zeros((canvas.height, canvas.width), np.uint8)
  for i, placement in enumerate(placements, 1):
    paste(canvas, instances, placement, i, stamps)
  return np.asarray(canvas), instances


def visible_shares(placements, size, stamps):
  """Each placement's visible pixels as a share of its own, after the later ones are pasted over it."""
  blank = Image.new('RGB', (size, size))
  alone = [np.count_nonzero(render(blank, [p], stamps)[1]) for p in placements]
  _, together = render(blank, placements, stamps)
  return [np.count_nonzero(together == i) / max(n, 1) for i, n in enumerate(alone, 1)]


def _placement(rng, class_index, cutouts_by_class, centre_range, scale_range):
  names = cutouts_by_class[CLASSES[class_index]]
  return Placement(
    class_index + 1,
    names[rng.integers(len(names))],
    tuple(float(c) for c in rng.uniform(*centre_range, size=2)),
    float(rng.uniform(*scale_range)),
    bool(rng.random() < 0.5),
  )


def scene_placements(rng, first_class, cutouts_by_class, settings, stamps):
  """1 to max_objects objects, the first of class `first_class`, the others of random classes, 25-60 % of the side,
  centred anywhere but the outer tenth; placed again (20 tries, then with one object fewer, down to the first alone)
  until each shows at least MIN_VISIBLE of itself."""
  count = int(rng.integers(1, settings.max_objects + 1))
  classes = [first_class, *(int(c) for c in rng.integers(len(CLASSES), size=count - 1))]
  while True:
    for _ in range(20):
      placements = [_placement(rng, c, cutouts_by_class, (0.1, 0.9), (0.25, 0.6)) for c in classes]
      if min(visible_shares(placements, settings.size, stamps)) >= MIN_VISIBLE:
        return placements
    if len(classes) == 1:
      return placements
    classes = classes[:-1]


def object_placements(rng, class_index, cutouts_by_class):
  """One object of 70-95 % of the side, centred within a tenth of the image's centre."""
  return [_placement(rng, class_index, cutouts_by_class, (0.4, 0.6), (0.7, 0.95))]


def video_tracks(rng, first_class, cutouts_by_class, settings, stamps):
  """1 to 3 objects, each a (first frame's, last frame's) placement pair: they move in a straight line and change
  scale by up to half; every object shows at least MIN_VISIBLE of itself in the first frame."""
  shown = dataclasses.replace(settings, max_objects=3)
  starts = scene_placements(rng, first_class, cutouts_by_class, shown, stamps)
  ends = [
    dataclasses.replace(
      p, centre=tuple(float(c) for c in rng.uniform(0.1, 0.9, size=2)), scale=p.scale * float(rng.uniform(0.67, 1.5))
    )
    for p in starts
  ]
  return list(zip(starts, ends))


def frame_placements(tracks, t):
  """The placements at time t in [0, 1] along `tracks`."""
  return [
    dataclasses.replace(
      start,
      centre=tuple(a + t * (b - a) for a, b in zip(start.centre, end.centre)),
      scale=start.scale + t * (end.scale - start.scale),
    )
    for start, end in tracks
  ]
