"""The data of the fine-tuned dense protocols (jax_moco.evaluators.finetune): each process's share of the global
training and evaluation batches, loaded by the dataset's reader on host threads, a few examples ahead.

Training (TrainData): epochs of num_examples // batch_size steps in epoch_order, a permutation drawn from (seed,
epoch) alone; each example augmented by input_pipeline.dense_transforms with its (seed, epoch, index) Generator, so a
run resumed at any step reads the batches of an uninterrupted one.

Evaluation (eval_batches): whole test images at their own size, each global batch padded at the bottom and right to
its largest image over all processes (rounded up to EVAL_PAD_MULTIPLE) with the mean colour (image_fill) and the
ignore label or invalid depth, and the tail of the split filled with blank examples that score nothing.
"""

import concurrent.futures
import dataclasses
from typing import Any

import jax
import numpy as np

from input_pipeline import dense_transforms
from jax_moco import sharding
from jax_moco.normalization import NORMALIZATION

EVAL_PAD_MULTIPLE = 32  # evaluation batches are padded to a multiple of this: few shapes to compile
LOADER_THREADS = 8


def image_fill(statistics):
  """The mean colour of the input normalisation, uint8: padding that the network sees as zeros."""
  return np.round(np.asarray(NORMALIZATION[statistics][0]) * 255).astype(np.uint8)


ORDER_STREAM = 2**32 - 1  # the epoch order's Generator: [seed, epoch, ORDER_STREAM], apart from any example's


def epoch_order(seed, epoch, num_examples):
  """The order of the training examples in `epoch`, a permutation drawn from (seed, epoch) alone."""
  return np.random.default_rng([seed, epoch, ORDER_STREAM]).permutation(num_examples)


def prefetched(load, keys, pool, depth):
  """Yields load(key) for each of `keys` in order, with up to `depth` loads running ahead on `pool`."""
  keys, pending = iter(keys), []
  for key in keys:
    pending.append(pool.submit(load, key))
    if len(pending) > depth:
      yield pending.pop(0).result()
  for future in pending:
    yield future.result()


def stacked(examples):
  """(images [n, h, w, 3], targets [n, h, w]) of a list of (image, target) pairs."""
  return np.stack([e[0] for e in examples]), np.stack([e[1] for e in examples])


@dataclasses.dataclass(frozen=True)
class TrainData:
  """This process's share of each global training batch: `batch_size` examples a step (the global batch, split over
  the processes in process order), epochs of num_examples // batch_size steps in epoch_order, each example
  augmented by dense_transforms with its (seed, epoch, index) Generator."""

  dataset: Any
  num_examples: int
  crop_size: int
  batch_size: int
  seed: int
  fill: np.ndarray

  @property
  def steps_per_epoch(self) -> int:
    return self.num_examples // self.batch_size

  def local_keys(self, step):
    """(epoch, index) of this process's examples at `step` (from 0)."""
    epoch, position = divmod(step, self.steps_per_epoch)
    rows = epoch_order(self.seed, epoch, self.num_examples)[
      position * self.batch_size : (position + 1) * self.batch_size
    ]
    local = self.batch_size // jax.process_count()
    return [(epoch, int(i)) for i in rows[jax.process_index() * local : (jax.process_index() + 1) * local]]

  def example(self, key):
    epoch, index = key
    image, target = self.dataset.load(index)
    rng = dense_transforms.example_rng(self.seed, epoch, index)
    return dense_transforms.train_example(image, target, self.crop_size, rng, self.fill)

  def batches(self, start, stop):
    """Yields (images, targets) of this process for steps start, ..., stop - 1."""
    local = self.batch_size // jax.process_count()
    keys = (key for step in range(start, stop) for key in self.local_keys(step))
    with concurrent.futures.ThreadPoolExecutor(LOADER_THREADS) as pool:
      examples = prefetched(self.example, keys, pool, 2 * max(local, LOADER_THREADS))
      for _ in range(start, stop):
        yield stacked([next(examples) for _ in range(local)])


def padded(example, size, fill, target_dtype):
  """`example` padded to `size` (dense_transforms.pad_example), or for None a blank example that scores nothing: the
  fill colour, its target 255 for labels or 0 (invalid) for depth, as the padding."""
  if example is not None:
    return dense_transforms.pad_example(*example, size, fill)[:2]
  floating = np.issubdtype(target_dtype, np.floating)
  target = np.full(size, dense_transforms.INVALID_DEPTH if floating else dense_transforms.IGNORE, target_dtype)
  return np.tile(fill, size + (1,)), target


def padded_size(examples):
  """The (height, width) every example of the global batch is padded to: the largest over all processes, rounded up
  to EVAL_PAD_MULTIPLE."""
  sizes = np.array([e[0].shape[:2] for e in examples] or [(1, 1)])
  largest = sharding.all_processes(sizes.max(0, keepdims=True)).max(0)
  return tuple(int(-(-n // EVAL_PAD_MULTIPLE) * EVAL_PAD_MULTIPLE) for n in largest)


def eval_batches(dataset, num_examples, batch_size, fill):
  """Yields this process's (images, targets) of each global batch of `batch_size` test examples (its contiguous
  share, in process order), padded to padded_size; positions past the split's end are blank examples."""
  local = batch_size // jax.process_count()
  starts = range(0, num_examples, batch_size)
  keys = [s + jax.process_index() * local + i for s in starts for i in range(local)]
  target_dtype = dataset.load(0)[1].dtype
  with concurrent.futures.ThreadPoolExecutor(LOADER_THREADS) as pool:
    loaded = prefetched(lambda i: dataset.load(i) if i < num_examples else None, keys, pool, 2 * LOADER_THREADS)
    for _ in starts:
      examples = [next(loaded) for _ in range(local)]
      size = padded_size([e for e in examples if e is not None])
      yield stacked([padded(e, size, fill, target_dtype) for e in examples])
