"""Image sources named by one string: `embedded[:SPLIT]`, `embedded_subset[:SPLIT]`,
`tfds:NAME[:SPLIT]`, `folder:PATH` and `voc07:PATH[:SPLIT]` (PASCAL VOC 2007 classification, `voc07` module), each
optionally followed by a subset, `|uniform=N`, `|pareto=ALPHA,total=N` or `|random=N` (the `subsets` module).

A source is random access: `load(index)` returns {'image': uint8 [H, W, 3], 'label': int32} for any index in
[0, num_examples), so the pipeline can shuffle, shard and resume by index arithmetic alone. Multi-label sources
(TFDS datasets with a `labels` sequence, such as `voc/2007`, and `voc07:`) give `label` as int32 [num_classes]: 1
present, 0 absent, -1 present only as objects marked difficult (which the VOC07 protocols leave out or count as
negatives).
"""

import concurrent.futures
import dataclasses
import gzip
import io
import logging
import os
import stat
from typing import Callable
from typing import Optional
from typing import Tuple

import numpy as np
from PIL import Image
import tensorflow as tf

from input_pipeline import subsets
from input_pipeline import voc07

EMBEDDED_SUBSET = os.path.join(os.path.dirname(__file__), 'data', 'fashion_mnist_subset.npz')
DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm')
# Formats TF cannot decode (TIFF, Netpbm), recognised by their first bytes and decoded through PIL.
_PIL_ONLY_MAGIC = {4: (b'II*\x00', b'MM\x00*'), 2: tuple(b'P%d' % i for i in range(1, 7))}
# The first bytes of every format decode_image reads (WebP: RIFF, then WEBP at byte 8).
IMAGE_MAGIC = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'BM', b'GIF87a', b'GIF89a', b'RIFF') + sum(
  _PIL_ONLY_MAGIC.values(), ()
)
# Fashion-MNIST's class names, in label order (Xiao et al. 2017).
FASHION_MNIST_CLASSES = (
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
)
REPORTED_FILES = 5  # unreadable files named in the log; the rest are counted
MAX_IN_MEMORY_BYTES = 4 << 30  # TFDS splits are held decoded in memory; bigger ones should use `folder:`.


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  num_examples: int
  num_classes: Optional[int]
  load: Callable[[tf.Tensor], dict]  # index -> {'image': uint8 [H, W, 3], 'label': int32 or int32 [num_classes]}
  may_fail: bool = False  # True when decoding can fail (files): the pipeline then replaces bad examples.
  multi_label: bool = False  # label is a target vector over num_classes (see the module docstring)
  files: tuple = ()  # a folder source's path of each index
  unreadable: tuple = ()  # (path, reason) of the files a folder's scan left out
  class_names: tuple = ()  # the name of each class id, where the dataset has them
  # Each index's single label (None: unlabelled or multi-label), for subsets; an array, so left out of ==.
  labels: Optional[np.ndarray] = dataclasses.field(default=None, compare=False)
  subset_list: str = ''  # a subset's indices as subsets.listing writes them ('' for a whole source)


def _array_source(name, images, labels, num_classes, class_names=()):
  """A source over in-memory uint8 arrays [N, H, W, 3] (or [N, H, W] grayscale) and int labels."""
  if images.ndim == 3:
    images = images[..., None]
  images = tf.constant(images)
  labels_np = np.asarray(labels, np.int32)
  labels = tf.constant(labels_np)

  def load(index):
    image = tf.gather(images, index)
    return {
      'image': tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image,
      'label': tf.gather(labels, index),
    }

  return Source(
    name,
    int(images.shape[0]),
    num_classes,
    load,
    class_names=tuple(class_names),
    labels=_single(labels_np, num_classes),
  )


def _single(labels, num_classes, multi_label=False):
  """The labels a subset may size classes by: None for unlabelled and multi-label sources."""
  return None if num_classes is None or multi_label else labels


def _encoded_source(name, encoded, labels, num_classes, multi_label, class_names=()):
  """A source over in-memory encoded images (variable sizes), decoded when loaded."""
  encoded = tf.constant(encoded)
  labels_np = np.asarray(labels, np.int32)
  labels = tf.constant(labels_np)

  def load(index):
    return {'image': decode_image(tf.gather(encoded, index)), 'label': tf.gather(labels, index)}

  return Source(
    name,
    int(encoded.shape[0]),
    num_classes,
    load,
    multi_label=multi_label,
    class_names=tuple(class_names),
    labels=_single(labels_np, num_classes, multi_label),
  )


def _read_idx(path, offset):
  with gzip.open(path, 'rb') as f:
    return np.frombuffer(f.read(), np.uint8, offset=offset)


def _fashion_mnist(split, subset_only):
  """Fashion-MNIST (MIT licence, Zalando SE): the full set from Debian's dataset-fashion-mnist when installed,
  else the class-balanced subset shipped in input_pipeline/data. 28 px grayscale is padded to 32 px RGB."""
  if split not in ('train', 'test'):
    raise ValueError(f'embedded dataset: unknown split {split!r}; use train or test')
  prefix = 'train' if split == 'train' else 't10k'
  debian_images = os.path.join(DEBIAN_FASHION_MNIST, f'{prefix}-images-idx3-ubyte.gz')
  if not subset_only and os.path.exists(debian_images):
    images = _read_idx(debian_images, 16).reshape(-1, 28, 28)
    labels = _read_idx(os.path.join(DEBIAN_FASHION_MNIST, f'{prefix}-labels-idx1-ubyte.gz'), 8)
    name = f'fashion_mnist (Debian, full):{split}'
  else:
    with np.load(EMBEDDED_SUBSET) as data:
      images, labels = data[f'{split}_images'], data[f'{split}_labels']
    name = f'fashion_mnist (embedded subset):{split}'
  images = np.pad(images, [(0, 0), (2, 2), (2, 2)])
  return _array_source(name, images, labels, 10, FASHION_MNIST_CLASSES)


def _tfds(name, split, data_dir):
  import tensorflow_datasets as tfds  # Imported lazily: it is slow to import and only TFDS sources need it.

  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
      f'tfds:{name} is not prepared in {builder.data_dir!r}. Nothing is downloaded at run time: prepare it with '
      f'`tfds build {name}` (or set --config.data_dir to where it is).'
    )
  info = builder.info
  if split not in info.splits:
    raise ValueError(f'tfds:{name}: no split {split!r}; it has {", ".join(info.splits)}')
  full_name = f'tfds:{name}:{split}'
  features = info.features
  multi_label = 'label' not in features and 'labels' in features
  label_feature = features['label'] if 'label' in features else features['labels'].feature if multi_label else None
  num_classes = None if label_feature is None else label_feature.num_classes
  class_names = getattr(label_feature, 'names', None) or ()
  shape = features['image'].shape
  if None not in shape and not multi_label:  # fixed size, one label: decoded arrays, the fastest to crop from
    size = info.splits[split].num_examples * int(np.prod(shape))
    _check_fits_in_memory(full_name, size)
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    labels = data.get('label', np.full(len(data['image']), -1))
    images = data['image']
    images = images[..., 0] if images.shape[-1] == 1 else images
    return _array_source(full_name, images, labels, *_label_set(labels, num_classes, class_names))
  _check_fits_in_memory(full_name, info.splits[split].num_bytes)  # variable sizes: kept encoded, decoded on load
  encoded, labels = [], []
  dataset = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()})
  for example in tfds.as_numpy(dataset):
    encoded.append(example['image'])
    labels.append(_multi_hot(example, num_classes) if multi_label else example.get('label', -1))
  if not multi_label:
    num_classes, class_names = _label_set(labels, num_classes, class_names)
  return _encoded_source(full_name, encoded, labels, num_classes, multi_label, class_names)


def _label_set(labels, num_classes, class_names):
  """(num_classes, class_names) of a single-label split, or (None, ()) when every label is -1: a split the dataset
  leaves unlabelled (STL-10's `unlabelled`) although its label feature has classes."""
  if len(labels) and np.all(np.asarray(labels) < 0):
    return None, ()
  return num_classes, class_names


def _check_fits_in_memory(name, num_bytes):
  if num_bytes > MAX_IN_MEMORY_BYTES:
    raise ValueError(
      f'{name} is too large to hold in memory ({num_bytes / 2**30:.1f} GiB); use `folder:PATH` for '
      'image collections of this size.'
    )


def _multi_hot(example, num_classes):
  """VOC-style targets: 1 for a class with a non-difficult object, -1 for one with only difficult objects (when
  the dataset marks them, as `labels_no_difficult` does), 0 otherwise."""
  target = np.zeros(num_classes, np.int32)
  if 'labels_no_difficult' in example:
    target[example['labels']] = -1
    target[example['labels_no_difficult']] = 1
  else:
    target[example['labels']] = 1
  return target


def list_image_files(root):
  """Sorted image paths under root (recursive) and their labels from the first-level sub-folder, or -1."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f'folder:{root} is not a directory')
  paths, folders = [], []  # folders: each path's first-level sub-folder, None for a file directly under root
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames.sort()
    relative = os.path.relpath(dirpath, root)
    folder = None if relative == os.curdir else relative.split(os.sep)[0]
    names = [f for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
    paths += [os.path.join(dirpath, f) for f in names]
    folders += [folder] * len(names)
  if not paths:
    raise FileNotFoundError(f'folder:{root} holds no images ({", ".join(IMAGE_EXTENSIONS)})')
  if None not in folders:
    classes = sorted(set(folders))
    index = {name: i for i, name in enumerate(classes)}
    labels = [index[folder] for folder in folders]
  else:
    classes, labels = None, [-1] * len(paths)
  return paths, labels, classes


def decode_image(data):
  """Decodes JPEG/PNG/BMP/GIF/WebP/TIFF/PPM/PGM bytes to uint8 RGB: grayscale and alpha are converted, 16-bit
  scaled down, and only the first frame of an animation kept.

  The format is read from the content, not the file name. JPEGs decode with libjpeg's accurate integer IDCT, which
  gives PIL's pixels exactly (the authors' loader is PIL's); TF's default IDCT is 0.3-1.4 levels off on average.
  """
  needs_pil = tf.reduce_any(
    [tf.reduce_any(tf.equal(tf.strings.substr(data, 0, n), magic)) for n, magic in _PIL_ONLY_MAGIC.items()]
  )
  image = tf.case(
    [
      (tf.io.is_jpeg(data), lambda: tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE')),
      (needs_pil, lambda: tf.numpy_function(_decode_with_pil, [data], tf.uint8, stateful=False)),
    ],
    default=lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False),
  )
  image.set_shape([None, None, 3])
  return image


def _decode_with_pil(data):
  """The first frame as uint8 RGB [H, W, 3], converted as TF converts the other formats: 16-bit grey (PIL's modes
  I;16 and, for Netpbm, I) keeps its high byte as TF's PNG decoder does, where PIL's convert('RGB') would clip it
  at 255; every other mode goes through convert('RGB')."""
  if isinstance(data, np.ndarray):  # eagerly numpy_function passes a 0-d object array, in graphs the bytes
    data = data.item()
  with Image.open(io.BytesIO(data)) as image:
    if image.mode.startswith('I'):
      grey = (np.clip(np.asarray(image, np.int64), 0, 65535) >> 8).astype(np.uint8)
      return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert('RGB'))


def sniff(path) -> Optional[str]:
  """Why the file at `path` cannot be an image, or None when its first bytes are those of a format decode_image
  reads. One open and a 12-byte read: a file cut short or damaged further in passes and is caught when decoded."""
  try:
    if not stat.S_ISREG(os.stat(path).st_mode):
      return 'not a regular file'
    with open(path, 'rb') as f:
      head = f.read(12)
  except OSError as e:
    return f'cannot be read ({e.strerror})'
  if not head:
    return 'empty file'
  if not head.startswith(IMAGE_MAGIC) or (head.startswith(b'RIFF') and head[8:12] != b'WEBP'):
    return f'not an image (starts with {head[:8]!r})'
  return None


def scan(paths, threads=32):
  """sniff() of every path, on threads: the reads wait on storage, not on the CPU."""
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    return list(pool.map(sniff, paths, chunksize=256))


def listing(unreadable) -> str:
  """The first REPORTED_FILES (path, reason) pairs, one a line, and how many more."""
  lines = [f'\n  {path}: {reason}' for path, reason in unreadable[:REPORTED_FILES]]
  more = len(unreadable) - REPORTED_FILES
  return ''.join(lines) + (f'\n  ... and {more} more' if more > 0 else '')


def _file_source(name, paths, labels, classes, multi_label=False):
  """A source over image files (decoded when loaded) with their labels; files that hold no image (scan) are left out
  and logged. `classes`: the class names, or None for unlabelled files."""
  reasons = scan(paths)
  unreadable = tuple((p, r) for p, r in zip(paths, reasons) if r)
  if len(unreadable) == len(paths):
    raise ValueError(f'{name}: none of its {len(paths)} image files holds an image:{listing(unreadable)}')
  if unreadable:
    logging.warning('%s: %d of %d files left out:%s', name, len(unreadable), len(paths), listing(unreadable))
  keep = [i for i, r in enumerate(reasons) if r is None]
  paths, labels = [paths[i] for i in keep], np.asarray(labels, np.int32)[keep]
  paths_t = tf.constant(paths)
  labels_t = tf.constant(labels)
  logging.info('%s: %d images, %s', name, len(paths), f'{len(classes)} classes' if classes else 'unlabelled')

  def load(index):
    return {'image': decode_image(tf.io.read_file(tf.gather(paths_t, index))), 'label': tf.gather(labels_t, index)}

  num_classes = len(classes) if classes else None
  return Source(
    name,
    len(paths),
    num_classes,
    load,
    True,
    multi_label=multi_label,
    files=tuple(paths),
    unreadable=unreadable,
    class_names=tuple(classes or ()),
    labels=_single(labels, num_classes, multi_label),
  )


def _folder(root):
  paths, labels, classes = list_image_files(root)
  return _file_source(f'folder:{root}', paths, labels, classes)


# A training set of VOC07 reads trainval (the split its classifiers are fitted on), a validation set val.
_VOC07_SPLITS = {'train': 'trainval', 'validation': 'val'}


def _voc07(spec, default_split):
  name, paths, targets, classes = voc07.read(spec, _VOC07_SPLITS.get(default_split, default_split))
  return _file_source(name, paths, targets, classes, multi_label=True)


def get_source(spec: str, data_dir: Optional[str] = None, default_split: str = 'train') -> Source:
  """Resolves a dataset string, with its subset if it names one, to a Source; errors name the string."""
  subset = subsets.parse(spec)
  source = _whole_source(subsets.split(spec)[0], data_dir, default_split)
  return _subset_source(source, subset, spec) if subset else source


def _subset_source(source: Source, subset: subsets.SubsetSpec, spec: str) -> Source:
  """The examples of `source` that `subset` draws, in index order (subsets.draw)."""
  indices = subsets.draw(subset, source.labels, source.num_examples, spec)
  indices_t = tf.constant(indices)

  def load(index):
    return source.load(tf.gather(indices_t, index))

  return dataclasses.replace(
    source,
    name=f'{source.name}|{subset.suffix()}',
    num_examples=len(indices),
    load=load,
    files=tuple(source.files[i] for i in indices) if source.files else (),
    labels=None if source.labels is None else source.labels[indices],
    subset_list=subsets.listing(indices, source.labels, source.files),
  )


def _whole_source(spec, data_dir, default_split):
  kind, _, rest = spec.partition(':')
  if kind in ('embedded', 'embedded_subset'):
    return _fashion_mnist(rest or default_split, subset_only=kind == 'embedded_subset')
  if kind == 'tfds':
    name, _, split = rest.partition(':')
    if not name:
      raise ValueError(f'dataset {spec!r}: expected tfds:NAME[:SPLIT]')
    return _tfds(name, split or default_split, data_dir)
  if kind == 'folder':
    if not rest:
      raise ValueError(f'dataset {spec!r}: expected folder:PATH')
    return _folder(os.path.expanduser(rest))
  if kind == 'voc07':
    return _voc07(spec, default_split)
  raise ValueError(
    f'dataset {spec!r}: unknown source {kind!r}; use embedded, embedded_subset, tfds:NAME, folder:PATH or voc07:PATH'
  )


# eval_dataset='auto' on a folder: the sibling folders of a `train` folder that may hold its labelled held-out split,
# in the order they are tried (ImageNet's layout: train/CLASS/*.JPEG beside val/CLASS/*.JPEG).
HELD_OUT_FOLDERS = ('val', 'test')


def held_out_split(spec: str, data_dir: Optional[str] = None) -> Tuple[Optional[str], str]:
  """The labelled split held out beside the set `spec` names, found from what is on disk (nothing is downloaded or
  decoded): (its dataset string, '') or (None, why there is none).

  - embedded[_subset][:train]: the same source's test split;
  - tfds:NAME[:SPLIT]: tfds:NAME:test, when the prepared dataset's metadata lists a test split and a single label;
  - folder:PATH with class sub-folders, whose last part is `train`: the `val` (else `test`) folder beside it when it
    has the same class sub-folders.
  None when `spec` is the test split itself: nothing would be held out. A subset's held-out split is its whole
  source's."""
  kind, _, rest = subsets.split(spec)[0].partition(':')
  if kind in ('embedded', 'embedded_subset'):
    return (None, f'{spec} is the test split itself') if rest == 'test' else (f'{kind}:test', '')
  if kind == 'tfds' and rest:
    name, _, split = rest.partition(':')
    return _held_out_tfds(name, split, data_dir)
  if kind == 'folder' and rest:
    return _held_out_folder(rest)
  return None, f'{spec!r} names no dataset'


def _held_out_tfds(name, split, data_dir):
  import tensorflow_datasets as tfds

  if split == 'test':
    return None, f'tfds:{name}:test is the test split itself'
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    return None, f'tfds:{name} is not prepared in {builder.data_dir!r}'
  if 'test' not in builder.info.splits:
    return None, f'tfds:{name} has no test split (it has {", ".join(builder.info.splits)})'
  if 'label' not in builder.info.features:
    return None, f'tfds:{name} has no single label'
  return f'tfds:{name}:test', ''


def _held_out_folder(path):
  root = os.path.normpath(os.path.expanduser(path))
  classes = class_folders(root)
  if not classes:
    return None, f'folder:{path} has no class sub-folders (its images are unlabelled)'
  if os.path.basename(root) != 'train':
    return None, f'folder:{path} is not a folder named train, beside which a val or test folder is looked for'
  for name in HELD_OUT_FOLDERS:
    if class_folders(os.path.join(os.path.dirname(root), name)) == classes:
      return f'folder:{os.path.join(os.path.dirname(os.path.normpath(path)), name)}', ''
  return None, f'folder:{path} has no {" or ".join(HELD_OUT_FOLDERS)} folder with the same class sub-folders beside it'


def class_folders(root) -> tuple:
  """The sorted names of root's sub-folders when no image lies directly in root (list_image_files then labels its
  images by them), else (): one directory listing, no walk."""
  if not os.path.isdir(root):
    return ()
  with os.scandir(root) as entries:
    entries = list(entries)
  if any(entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS) for entry in entries):
    return ()
  return tuple(sorted(entry.name for entry in entries if entry.is_dir()))


def label_mismatch(bank: Source, queries: Source, multi_label: bool = False) -> Optional[str]:
  """Why a classifier of `bank`'s labels cannot score `queries` (both need the same labels, class id for class id:
  single labels, or with `multi_label` also per-class targets on both sides), or None when it can."""
  unlabelled = [s.name for s in (bank, queries) if s.num_classes is None or (s.multi_label and not multi_label)]
  if unlabelled:
    kind = 'labels' if multi_label else 'single labels'
    return f'{" and ".join(unlabelled)} {"has" if len(unlabelled) == 1 else "have"} no {kind}'
  if bank.multi_label != queries.multi_label:
    return f'{(bank if bank.multi_label else queries).name} has per-class targets, the other single labels'
  if bank.class_names and queries.class_names and bank.class_names != queries.class_names:
    only_bank = [c for c in bank.class_names if c not in queries.class_names]
    only_queries = [c for c in queries.class_names if c not in bank.class_names]
    if not only_bank and not only_queries:
      return 'the same class names in another order (other class ids)'
    return f'other class names (only in the bank: {_few(only_bank)}; only in the queries: {_few(only_queries)})'
  if bank.num_classes != queries.num_classes:
    return f'{bank.num_classes} classes in the bank, {queries.num_classes} in the queries'
  return None


def describe_labels(source: Source) -> str:
  """'unlabelled', or the number of classes and the first few names."""
  if source.num_classes is None:
    return 'unlabelled'
  kind = 'multi-label, ' if source.multi_label else ''
  names = f' ({_few(source.class_names)})' if source.class_names else ''
  return f'{kind}{source.num_classes} classes{names}'


def _few(names, shown=5):
  more = len(names) - shown
  return ', '.join(names[:shown]) + (f' and {more} more' if more > 0 else '') or 'none'
