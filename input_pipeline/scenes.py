"""Writes colour scenes composed from real photographs (`scene_composition` module) in the layouts the project's
readers read: `python -m input_pipeline.scenes --out=DIR [--size=96 --train_images=1000 ...]`.

The cut-outs come from Debian's `tuxpaint-stamps-default` (--stamps: its stamps/ folder; $JAX_MOCO_TUXPAINT_STAMPS
or the installed /usr/share/tuxpaint/stamps), the backgrounds from PyPI's `ai-benchmark` (--backgrounds: its
ai_benchmark/data/classification/ folder; $JAX_MOCO_AI_BENCHMARK or the installed package's). DIR must be new or
empty. It receives, train split from the train instances and backgrounds, test split from the test ones:
- `scene/VOC2007/` and `object/VOC2007/`: the scene-centric and object-centric images (JPEGImages/<id>.jpg), their
  image-level labels in VOC 2007's classification layout (ImageSets/Main/<class>_<trainval|test>.txt: 1 shown,
  0 shown only under the ignored border, -1 absent; classes.txt names the classes, read by `voc07:`) and their class
  masks in VOC 2012's segmentation layout (SegmentationClass/<id>.png, palette PNGs, 0 background, 1-7 the classes,
  255 a border around every object; ImageSets/Segmentation/<train|val>.txt);
- `object/<train|test>/<class>/<id>.jpg`: the object-centric images again, one folder a class (`folder:`);
- `video/`: short videos of moving, scaling, occluding objects over a panning background, with their instance masks,
  in DAVIS-2017's layout (JPEGImages/480p/<video>/<frame>.jpg, Annotations/480p/..., ImageSets/2017/<train|val>.txt);
- `settings.json` (the settings, classes and source folders) and `splits.json` (each split's cut-outs and
  backgrounds).
"""

import dataclasses
import importlib.util
import json
import os
import shutil

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from input_pipeline import scene_composition as composition
from jax_moco import console
from jax_moco import files

FLAGS = flags.FLAGS
STAMPS_VARIABLE = 'JAX_MOCO_TUXPAINT_STAMPS'
BACKGROUNDS_VARIABLE = 'JAX_MOCO_AI_BENCHMARK'
INSTALLED_STAMPS = '/usr/share/tuxpaint/stamps'  # apt-get install tuxpaint-stamps-default
# Each split's list name in VOC 2007's classification layout, and in VOC 2012's segmentation and DAVIS's layouts.
VOC07_SPLITS = {'train': 'trainval', 'test': 'test'}
VOC12_DAVIS_SPLITS = {'train': 'train', 'test': 'val'}
JPEG_QUALITY = 95


def voc_palette():
  """PASCAL VOC's 256-colour palette (DAVIS's masks use it too), as a flat list of 768 values."""
  palette = []
  for index in range(256):
    rgb = [0, 0, 0]
    for bit in range(8):
      for channel in range(3):
        rgb[channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    palette += rgb
  return palette


def save_mask(path, mask):
  image = Image.frombytes('P', (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask, np.uint8).tobytes())
  image.putpalette(voc_palette())
  image.save(path)


def object_borders(instances, width):
  """Where a pixel is within `width` px (4-connected steps) of a pixel of another instance or the background."""
  edge = np.zeros(instances.shape, bool)
  vertical, horizontal = instances[1:] != instances[:-1], instances[:, 1:] != instances[:, :-1]
  edge[1:] |= vertical
  edge[:-1] |= vertical
  edge[:, 1:] |= horizontal
  edge[:, :-1] |= horizontal
  for _ in range(width - 1):
    grown = edge.copy()
    grown[1:] |= edge[:-1]
    grown[:-1] |= edge[1:]
    grown[:, 1:] |= edge[:, :-1]
    grown[:, :-1] |= edge[:, 1:]
    edge = grown
  return edge


def class_mask(instances, placements, border_width):
  """Class ids uint8 [S, S] (0 background, 1.. the classes), 255 on the objects' borders, as VOC marks them."""
  mask = np.array([0, *(p.class_id for p in placements)], np.uint8)[instances]
  mask[object_borders(instances, border_width)] = 255
  return mask


def image_labels(instances, mask, placements):
  """VOC 2007's value per class: 1 where the class has pixels in `mask`, 0 where it shows only under the ignored
  border, -1 where it does not show."""
  in_mask = set(np.unique(mask).tolist())
  shown = {placements[i - 1].class_id for i in np.unique(instances).tolist() if i}
  return [1 if c in in_mask else 0 if c in shown else -1 for c in range(1, len(composition.CLASSES) + 1)]


def compose(kind, split, index, parts, settings, stamps, background_folder):
  """(image, instances, placements) of image `index` of `kind` and `split`."""
  rng = np.random.default_rng((settings.seed, composition.SPLITS.index(split), composition.KINDS.index(kind), index))
  names = parts['backgrounds'][split]
  background = composition.background_crop(
    rng, os.path.join(background_folder, names[rng.integers(len(names))]), settings.size
  )
  first, cutouts = index % len(composition.CLASSES), parts['cutouts'][split]
  if kind == 'scene':
    placements = composition.scene_placements(rng, first, cutouts, settings, stamps)
  else:
    placements = composition.object_placements(rng, first, cutouts)
  image, instances = composition.render(background, placements, stamps)
  return image, instances, placements


def write_lists(folder, name, lines):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, f'{name}.txt'), 'w') as f:
    f.write(''.join(f'{line}\n' for line in lines))


def write_images(out, kind, parts, settings, stamps, background_folder):
  """The `kind` images of both splits in the VOC layouts (and, for objects, one folder a class)."""
  root = os.path.join(out, kind, 'VOC2007')
  for folder in ('JPEGImages', 'SegmentationClass'):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
  border = max(1, round(settings.size / 100))  # VOC's 5 px border on 500 px images, at least a pixel
  for split in composition.SPLITS:
    ids, labels = [], []
    for index in range(settings.train_images if split == 'train' else settings.test_images):
      image, instances, placements = compose(kind, split, index, parts, settings, stamps, background_folder)
      ids.append(f'{split}_{index:06d}')
      image_path = os.path.join(root, 'JPEGImages', f'{ids[-1]}.jpg')
      Image.fromarray(image).save(image_path, quality=JPEG_QUALITY)
      mask = class_mask(instances, placements, border)
      save_mask(os.path.join(root, 'SegmentationClass', f'{ids[-1]}.png'), mask)
      labels.append(image_labels(instances, mask, placements))
      if kind == 'object':
        class_folder = os.path.join(out, kind, split, composition.CLASSES[placements[0].class_id - 1])
        os.makedirs(class_folder, exist_ok=True)
        shutil.copyfile(image_path, os.path.join(class_folder, f'{ids[-1]}.jpg'))
    main = os.path.join(root, 'ImageSets', 'Main')
    write_lists(main, VOC07_SPLITS[split], ids)
    for c, name in enumerate(composition.CLASSES):
      write_lists(main, f'{name}_{VOC07_SPLITS[split]}', [f'{i} {row[c]:2d}' for i, row in zip(ids, labels)])
    write_lists(os.path.join(root, 'ImageSets', 'Segmentation'), VOC12_DAVIS_SPLITS[split], ids)
  write_lists(root, 'classes', composition.CLASSES)


def write_video(root, split, index, parts, settings, stamps, background_folder):
  """One video: its frames and instance masks (0 background, i the i-th object); returns its name."""
  key = (settings.seed, composition.SPLITS.index(split), len(composition.KINDS), index)
  rng = np.random.default_rng(key)
  names = parts['backgrounds'][split]
  background = os.path.join(background_folder, names[rng.integers(len(names))])
  pan = rng.uniform(-0.15, 0.15, size=2)
  first = index % len(composition.CLASSES)
  tracks = composition.video_tracks(rng, first, parts['cutouts'][split], settings, stamps)
  name = f'{split}_{index:04d}'
  frame_dir, mask_dir = (os.path.join(root, kind, '480p', name) for kind in ('JPEGImages', 'Annotations'))
  os.makedirs(frame_dir)
  os.makedirs(mask_dir)
  for frame in range(settings.frames):
    t = frame / max(settings.frames - 1, 1)
    # The same crop every frame (a generator seeded alike), moved along the pan.
    crop = composition.background_crop(np.random.default_rng(key + (1,)), background, settings.size, pan * t)
    image, instances = composition.render(crop, composition.frame_placements(tracks, t), stamps)
    Image.fromarray(image).save(os.path.join(frame_dir, f'{frame:05d}.jpg'), quality=JPEG_QUALITY)
    save_mask(os.path.join(mask_dir, f'{frame:05d}.png'), instances)
  return name


def generate(out, stamps, background_folder, settings):
  """Writes the whole set under `out` (new or empty); returns the dataset strings that read it."""
  if os.path.isdir(out) and os.listdir(out):
    raise FileExistsError(f'{out} is not empty: the scenes are written into a new or empty folder')
  if os.path.exists(out) and not os.path.isdir(out):
    raise FileExistsError(f'{out} is a file: the scenes are written into a new or empty folder')
  os.makedirs(out, exist_ok=True)
  parts = composition.instance_splits(stamps, background_folder, settings)
  record = {'settings': dataclasses.asdict(settings), 'classes': composition.CLASSES}
  record |= {'stamps': os.path.abspath(stamps), 'backgrounds': os.path.abspath(background_folder)}
  with open(os.path.join(out, 'settings.json'), 'w') as f:
    json.dump(record, f, indent=1)
  with open(os.path.join(out, 'splits.json'), 'w') as f:
    json.dump(parts, f, indent=1)
  for kind in composition.KINDS:
    write_images(out, kind, parts, settings, stamps, background_folder)
  video_root = os.path.join(out, 'video')
  for split in composition.SPLITS:
    count = settings.train_videos if split == 'train' else settings.test_videos
    names = [write_video(video_root, split, i, parts, settings, stamps, background_folder) for i in range(count)]
    write_lists(os.path.join(video_root, 'ImageSets', '2017'), VOC12_DAVIS_SPLITS[split], names)
  return dataset_strings(out)


def dataset_strings(out):
  return {
    'scene-centric, labels': f'voc07:{out}/scene:trainval and voc07:{out}/scene:test',
    'object-centric, labels': f'voc07:{out}/object:trainval and voc07:{out}/object:test',
    'object-centric, one class an image': f'folder:{out}/object/train and folder:{out}/object/test',
    'scene-centric, masks': f'voc:{out}/scene/VOC2007:train and voc:{out}/scene/VOC2007:val',
    'videos': f'davis:{out}/video:train and davis:{out}/video:val',
  }


def _tile(path):
  """An image or mask file as an RGB tile (masks in their palette's colours)."""
  with Image.open(path) as image:
    return image.convert('RGB')


def samples_picture(out, path, count=4):
  """A PNG at `path` of the set under `out`, at its own resolution: `count` test images of each kind (scene-centric,
  then object-centric), each beside its class mask, two a row; then the first test video's frames and instance masks
  at four times."""
  grid = []
  for kind in composition.KINDS:
    root = os.path.join(out, kind, 'VOC2007')
    tiles = []  # image, mask, image, mask, ...: two pairs a row, a kind's last row padded with blanks
    for i in range(count):
      tiles.append(_tile(os.path.join(root, 'JPEGImages', f'test_{i:06d}.jpg')))
      tiles.append(_tile(os.path.join(root, 'SegmentationClass', f'test_{i:06d}.png')))
    grid += [tiles[i : i + 4] for i in range(0, len(tiles), 4)]
  video = os.path.join(out, 'video', '{}', '480p', 'test_0000')
  frames = sorted(os.listdir(video.format('JPEGImages')))
  times = [frames[round(t * (len(frames) - 1))] for t in (0, 1 / 3, 2 / 3, 1)]
  grid.append([_tile(os.path.join(video.format('JPEGImages'), f)) for f in times])
  grid.append([_tile(os.path.join(video.format('Annotations'), f[:-4] + '.png')) for f in times])
  tile = grid[0][0].width
  picture = Image.new('RGB', (4 * tile, len(grid) * tile), 'white')
  for r, row in enumerate(grid):
    for c, image in enumerate(row):
      picture.paste(image, (c * tile, r * tile))
  picture.save(path, optimize=True)
  return path


def default_folders():
  """(stamps, backgrounds): the environment's variables, else the installed packages' folders ('' when absent)."""
  spec = importlib.util.find_spec('ai_benchmark')
  installed = os.path.join(spec.submodule_search_locations[0], 'data', 'classification') if spec else ''
  return os.environ.get(STAMPS_VARIABLE, INSTALLED_STAMPS), os.environ.get(BACKGROUNDS_VARIABLE, installed)


def define_flags():
  """Command-line flags, defined only when run as a program (so the module imports cleanly anywhere)."""
  stamps, backgrounds = default_folders()
  flags.DEFINE_string('out', None, 'A new or empty folder to write the set into.')
  flags.DEFINE_string('stamps', stamps, "tuxpaint-stamps-default's stamps/ folder.")
  flags.DEFINE_string('backgrounds', backgrounds, "ai-benchmark's ai_benchmark/data/classification/ folder.")
  flags.DEFINE_string('samples', '', 'Where to write a PNG of test samples with their masks (samples_picture).')
  defaults = composition.Settings()
  flags.DEFINE_integer('seed', defaults.seed, 'Seeds every draw (the instance split and each image).')
  counts = dict(lower_bound=1)
  flags.DEFINE_integer('size', defaults.size, "The images' side, px.", **counts)
  flags.DEFINE_integer('train_images', defaults.train_images, 'Training images of each kind.', **counts)
  flags.DEFINE_integer('test_images', defaults.test_images, 'Test images of each kind.', **counts)
  flags.DEFINE_integer('max_objects', defaults.max_objects, 'Most objects in a scene-centric image.', **counts)
  flags.DEFINE_integer('train_videos', defaults.train_videos, 'Training videos.', **counts)
  flags.DEFINE_integer('test_videos', defaults.test_videos, 'Test (val) videos.', **counts)
  flags.DEFINE_integer('frames', defaults.frames, "A video's frames.", **counts)
  flags.DEFINE_float(
    'test_fraction',
    defaults.test_fraction,
    "The test split's share of cut-outs and backgrounds.",
    lower_bound=0,
    upper_bound=1,
  )
  flags.mark_flags_as_required(['out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  settings = composition.Settings(**{f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(composition.Settings)})
  with console.bad_input(*console.PATH_ERRORS):
    if FLAGS.samples:  # before the set is made
      files.prepare_output(FLAGS.samples, 'samples')
    made = generate(FLAGS.out, FLAGS.stamps, FLAGS.backgrounds, settings)
  for what, strings in made.items():
    print(f'{what}: {strings}')
  if FLAGS.samples:
    print(f'samples: {samples_picture(FLAGS.out, FLAGS.samples)}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
