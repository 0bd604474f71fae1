"""Training and evaluation streams of NumPy batches.

Training: a global example counter c = 0, 1, 2, ... is the only state. Example c is image
index_shuffle(c mod N, seed=(seed, c div N)) of the source (a fresh permutation per epoch, i.e. shuffle before
repeat); its crops and its augmentation parameters are drawn with RNGs seeded by (seed, c), so an example's views
depend on nothing else (not the batch, the batch size or the process count). Each process takes every
process_count-th counter, so resuming at step s is starting the counter at s * global_batch: exact and free.
A file that does not decode is replaced by the next counter's file (its views still drawn from its own counter), so
every counter yields one example and that position stays exact when files are bad.
"""

import logging
import math
from typing import Optional

import numpy as np
import tensorflow as tf

from input_pipeline import crops
from input_pipeline import sources
from input_pipeline import views

AUTOTUNE = tf.data.AUTOTUNE
# Files in a row that may fail to decode before the stream stops, naming the source, instead of skipping on forever.
DECODE_TRIES = 16


def view_spec(crops_config) -> views.ViewSpec:
  return views.ViewSpec(
    large_size=crops_config.large_size,
    small_size=crops_config.small_size,
    num_small=crops_config.num_small,
    large_scale=tuple(crops_config.large_scale),
    small_scale=tuple(crops_config.small_scale),
    min_overlap=crops_config.min_overlap,
    overlap_tries=crops_config.overlap_tries,
    max_iou=crops_config.max_iou,
    max_iou_tries=crops_config.max_iou_tries,
    aplus=crops_config.aplus,
    aplus_probability=crops_config.aplus_probability,
    blur_reference_size=crops_config.blur_reference_size,
    blur_probability=crops_config.blur_probability,
    augment_on_device=crops_config.augment_on_device,
  )


def graph_code(fn):
  """Marks a map function as written in graph ops only (tf.cond, tf.where, tf.case; no Python control flow on
  tensors), so tf.data traces it without AutoGraph's conversion, which took most of the train pipeline's tracing time
  and warned about the lambdas it could not convert."""
  return tf.autograph.experimental.do_not_convert(fn)


def local_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f'batch_size={global_batch} is not divisible by the process count {process_count}')
  return global_batch // process_count


def _options():
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return options


def example_index(counter, num_examples, seed):
  """The source index of global example `counter`: a fresh permutation of the source every epoch."""
  counter = tf.cast(counter, tf.int64)
  epoch, position = counter // num_examples, counter % num_examples
  return tf.random.experimental.index_shuffle(position, tf.stack([tf.cast(seed, tf.int64), epoch]), num_examples - 1)


def crop_seed(seed, counter):
  """The seed of global example `counter`'s crop boxes (views.draw_boxes)."""
  return tf.random.experimental.stateless_fold_in(tf.constant([seed, 1], tf.int64), counter)


def _decodable_examples(source: sources.Source, seed: int):
  """counter -> a dataset of one (counter, example): the counter's own example, or when its file does not decode,
  the first of the next DECODE_TRIES - 1 counters' files that does, with 'replaced' = the source index that failed
  (-1: none)."""
  n = source.num_examples

  def candidates(counter):
    first = example_index(counter, n, seed)

    def load(t):
      return t, source.load(example_index(counter + t, n, seed))

    def give_up(_):
      message = f'{source.name}: {DECODE_TRIES} files in a row do not decode, the first of them index'
      with tf.control_dependencies([tf.debugging.Assert(False, [message, first])]):
        return load(tf.constant(0, tf.int64))

    tries = tf.data.Dataset.range(DECODE_TRIES).map(graph_code(load)).ignore_errors()
    chosen = tries.concatenate(tf.data.Dataset.range(1).map(graph_code(give_up))).take(1)

    def mark(t, example):
      return counter, {**example, 'replaced': tf.cast(tf.where(t > 0, first, -1), tf.int32)}

    return chosen.map(graph_code(mark))

  return candidates


def _counter_batches(
  source: sources.Source,
  global_batch: int,
  seed: int,
  start_step: int,
  process_index: int,
  process_count: int,
  make_example,
) -> tf.data.Dataset:
  """This process's batches of the endless counter stream from start_step * global_batch: make_example(example,
  counter) for the source example each counter selects, plus 'replaced' (see _decodable_examples)."""
  batch = local_batch_size(global_batch, process_count)
  n = source.num_examples
  counters = tf.data.Dataset.range(start_step * global_batch, 2**62).shard(process_count, process_index)
  if source.may_fail:
    # One example per counter, in counter order: each inner dataset yields exactly one element.
    ds = counters.interleave(_decodable_examples(source, seed), num_parallel_calls=AUTOTUNE, deterministic=True)
  else:

    def load(counter):  # in parallel: TFDS sources of encoded images decode here
      return counter, {**source.load(example_index(counter, n, seed)), 'replaced': -1}

    ds = counters.map(graph_code(load), num_parallel_calls=AUTOTUNE)

  def make(counter, example):
    return {**make_example(example, counter), 'replaced': example['replaced']}

  ds = ds.map(graph_code(make), num_parallel_calls=AUTOTUNE)
  return ds.batch(batch, drop_remainder=True)


class UnreadableFiles:
  """The files of a source that training cannot use: those its scan left out (source.unreadable) and those met in
  the stream that do not decode (the batches' 'replaced'), of which the first sources.REPORTED_FILES are logged."""

  def __init__(self, source: sources.Source):
    self.source, self.failed = source, set()

  @property
  def count(self) -> int:
    return len(self.source.unreadable) + len(self.failed)

  def watch(self, batches):
    """Yields `batches`, noting the files each one replaced."""
    for batch in batches:
      for index in np.unique(batch['replaced'][batch['replaced'] >= 0]).tolist():
        self._failed(index)
      yield batch

  def _failed(self, index):
    if index in self.failed:
      return
    self.failed.add(index)
    if len(self.failed) <= sources.REPORTED_FILES:
      logging.warning('%s does not decode: replaced by the next file of the stream', self.source.files[index])
    elif len(self.failed) == sources.REPORTED_FILES + 1:
      logging.warning('%s: more files do not decode; summary.json counts them', self.source.name)


def train_dataset(
  source: sources.Source,
  spec: views.ViewSpec,
  global_batch: int,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  keep_boxes: bool = False,
) -> tf.data.Dataset:
  """Batches of views: anchor [B, S, S, 3], positive [B, S, S, 3], small [B, N, s, s, 3] (when N > 0), label; with
  spec.augment_on_device the views as cropped and their parameter records under 'augment'.
  """

  def crop(example, counter):
    augment_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, 2], tf.int64), counter)
    out = views.make_crops(example['image'], crop_seed(seed, counter), spec)
    if not keep_boxes:
      out.pop('boxes')
    out['augment'] = views.draw_augmentation(augment_seed, spec)
    out['label'] = example['label']
    return out

  def augment(batch):
    batch = {**batch, 'augment': views.augmentation_records(batch['augment'], spec)}
    return batch if spec.augment_on_device else views.augment_batch(batch)

  ds = _counter_batches(source, global_batch, seed, start_step, process_index, process_count, crop)
  return ds.map(graph_code(augment), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE).with_options(_options())


def classification_dataset(
  source: sources.Source,
  image_size: int,
  global_batch: int,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> tf.data.Dataset:
  """Supervised training batches for linear classification: RandomResizedCrop (torchvision's defaults, scale
  [0.08, 1]) + horizontal flip, {'image' uint8 [B, S, S, 3], 'label'}; counter-based like train_dataset, so resuming
  at a step is exact."""

  def crop_and_flip(example, counter):
    image = example['image']
    crop_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, 3], tf.int64), counter)
    box = crops.random_resized_crop_boxes(crop_seed, tf.shape(image)[0], tf.shape(image)[1], 1, (0.08, 1.0))[0]
    image = crops.crop_and_resize(image, box, image_size)
    flip = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(crop_seed, 1)) < 0.5
    return {'image': tf.cond(flip, lambda: image[:, ::-1], lambda: image), 'label': example['label']}

  ds = _counter_batches(source, global_batch, seed, start_step, process_index, process_count, crop_and_flip)
  return ds.prefetch(AUTOTUNE).with_options(_options())


def resize_for_eval(image, size, resize=None):
  """Resizes the shorter side to `resize` (default `size`; antialiased bilinear) and centre-crops size x size, as
  torchvision's Resize(resize) + CenterCrop(size)."""
  resize = resize or size
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = resize / tf.reduce_min(shape)
  new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), resize)
  image = tf.image.resize(image, new, method='bilinear', antialias=True)
  top, left = (new[0] - size) // 2, (new[1] - size) // 2
  image = image[top : top + size, left : left + size]
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def eval_dataset(
  source: sources.Source,
  image_size: int,
  global_batch: int,
  process_index: int = 0,
  process_count: int = 1,
  max_examples: Optional[int] = None,
  resize: Optional[int] = None,
) -> tf.data.Dataset:
  """Every example exactly once, in order, un-augmented (resize_for_eval), in whole batches: the tail is padded with
  mask = False.

  Files that do not decode (folder sources) are skipped; the batch they leave short is padded like the tail.
  """
  batch = local_batch_size(global_batch, process_count)
  n = min(source.num_examples, max_examples or source.num_examples)
  padded = math.ceil(n / global_batch) * global_batch

  def load(i):
    example = source.load(tf.minimum(i, n - 1))
    image = resize_for_eval(example['image'], image_size, resize)
    return {'image': image, 'label': example['label'], 'mask': i < n}

  def pad_to_batch(examples):
    missing = batch - tf.shape(examples['mask'])[0]
    return {k: tf.pad(v, [[0, missing]] + [[0, 0]] * (len(v.shape) - 1)) for k, v in examples.items()}

  ds = tf.data.Dataset.range(padded).shard(process_count, process_index)
  ds = ds.map(graph_code(load), num_parallel_calls=AUTOTUNE)
  if source.may_fail:
    ds = ds.ignore_errors(log_warning=True)
  ds = ds.batch(batch).map(graph_code(pad_to_batch))
  return ds.prefetch(AUTOTUNE).with_options(_options())
