"""What the folder source's start-up costs on a large folder: listing the image files and the header scan that
leaves out files that cannot be images (input_pipeline/sources.py), side by side with the listing torchvision's
ImageFolder does for the same folder (the start-up every PyTorch user already pays), in the same run.

  python bench/folder_scan.py [--files=200000] [--classes=1000] [--dir=/tmp/jax_moco_folder_scan] [--rounds=3]

The folder is written once (ImageNet's layout: one sub-folder a class, small real JPEGs; kept for reruns). Before
every timing the page cache is dropped where the process may (root on Linux), so the scan reads from storage as on
a first run; otherwise the table says the cache was warm. Medians over alternating rounds; the last column
extrapolates linearly to ImageNet's 1.28M training images.
"""

import argparse
import io
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image

# Before TensorFlow (which input_pipeline imports): torchvision 0.29 imported after it segfaults loading triton.
from torchvision.datasets import folder as torchvision_folder

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from input_pipeline import sources  # noqa: E402

IMAGENET_TRAIN_FILES = 1_281_167


def small_jpegs(count, seed=0):
  """`count` distinct small JPEG encodings (about 1 KB: 32 px noise), so that files do not share content."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(buffer, 'JPEG', quality=75)
    out.append(buffer.getvalue())
  return out


def write_folder(root, files, classes):
  """ImageNet's layout under root: `classes` sub-folders holding `files` JPEGs in all; reused when complete."""
  done = os.path.join(root, '.complete')
  if os.path.exists(done) and open(done).read() == f'{files} {classes}':
    return
  encodings = small_jpegs(256)
  for i in range(files):
    folder = os.path.join(root, f'n{i % classes:08d}')
    if i < classes:
      os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f'{i:08d}.JPEG'), 'wb') as f:
      f.write(encodings[i % len(encodings)] + i.to_bytes(8, 'little'))  # trailing bytes: every file differs
  with open(done, 'w') as f:
    f.write(f'{files} {classes}')


def drop_page_cache() -> bool:
  try:
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w') as f:
      f.write('3\n')
    return True
  except OSError:
    return False


def torchvision_listing(root):
  _, class_to_idx = torchvision_folder.find_classes(root)
  return torchvision_folder.make_dataset(root, class_to_idx, extensions=torchvision_folder.IMG_EXTENSIONS)


def our_listing(root):
  return sources.list_image_files(root)[0]


def our_listing_and_scan(root):
  paths = sources.list_image_files(root)[0]
  return sources.scan(paths)


def measure(root, rounds, log=print):
  """{name: median seconds} of each start-up, and whether every timing began with a cold page cache."""
  candidates = {
    'torchvision ImageFolder listing (reference)': torchvision_listing,
    'ours: listing only': our_listing,
    'ours: listing + header scan (what folder: does)': our_listing_and_scan,
  }
  seconds, cold = {name: [] for name in candidates}, True
  for r in range(rounds):
    order = list(candidates) if r % 2 == 0 else list(reversed(candidates))
    for name in order:
      cold &= drop_page_cache()
      start = time.perf_counter()
      count = len(candidates[name](root))
      seconds[name].append(time.perf_counter() - start)
      log(f'round {r + 1}: {name}: {seconds[name][-1]:.2f} s ({count} files)')
  return {name: statistics.median(values) for name, values in seconds.items()}, cold


def table(medians, files, cold):
  reference = medians['torchvision ImageFolder listing (reference)']
  rows = [
    '| start-up | s | us a file | vs torchvision | at 1.28M files (s) |',
    '| --- | --- | --- | --- | --- |',
  ]
  for name, s in medians.items():
    rows.append(
      f'| {name} | {s:.2f} | {s / files * 1e6:.1f} | {s / reference:.2f}x | {s / files * IMAGENET_TRAIN_FILES:.0f} |'
    )
  cache = 'page cache dropped before every timing' if cold else 'page cache WARM (could not drop it: not root)'
  return '\n'.join(rows) + f'\n\n{files} files; {cache}; medians over alternating rounds.'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--files', type=int, default=200_000)
  parser.add_argument('--classes', type=int, default=1000)
  parser.add_argument('--dir', default='/tmp/jax_moco_folder_scan')
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()
  if args.files < args.classes or args.classes < 1:
    parser.error(f'--files={args.files} must be at least --classes={args.classes} >= 1')
  start = time.perf_counter()
  write_folder(args.dir, args.files, args.classes)
  print(f'folder {args.dir}: {args.files} files in {args.classes} classes ({time.perf_counter() - start:.0f} s)')
  medians, cold = measure(args.dir, args.rounds)
  print(table(medians, args.files, cold))


if __name__ == '__main__':
  main()
