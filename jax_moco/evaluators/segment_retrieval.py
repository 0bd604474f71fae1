"""The `segment_retrieval` protocol: semantic segment retrieval of Van Gansbeke et al. 2021, A.7 (Table 6, Fig. S4), on
dense features without finetuning, from the training split of a PASCAL VOC folder (`--dataset=voc:PATH`, default split
train) to its validation split (`--test_dataset`, default the same folder's val).

Each image is resized to `image_size` (512) squared; its dense feature map (jax_moco.evaluators.dense; by default
`stride8_dilated`, stages 3 and 4 dilated: 64 x 64 at 512 px as A.7 says and as the MaskContrast code the authors point
to computes it) is clustered with scikit-learn's KMeans (K = 15, k-means++ initialisation, one run, seeded) into
regions; a region's descriptor is the mean feature of its locations, L2-normalised. A training region's label is the
majority class of the ground-truth pixels it covers at the mask's resolution, 255 (ignore) left out; a region that
covers only ignored pixels is left out of the bank. Every validation region takes the label of its single nearest
training region by cosine similarity (plain nearest neighbour, not a weighted kNN). The predicted region map is
upsampled to the original image by nearest neighbour and scored by mIoU over the 21 VOC classes, 255 ignored:
IoU_c = TP / (TP + FP + FN) from the confusion matrix summed over the whole validation set, averaged over the classes
that occur in the ground truth or the predictions.

Every process reads each batch's images whole and feeds its share to the devices (DenseFeatures.of_global_batch);
the clustering and the retrieval then run on every process alike, on the same gathered features.
"""

import jax
import numpy as np
from PIL import Image
from sklearn.cluster import KMeans
from tqdm import tqdm

from input_pipeline import dense_transforms
from jax_moco import evaluators
from jax_moco import sharding
from jax_moco.evaluators import common
from jax_moco.evaluators import dense as dense_lib
from jax_moco.evaluators import dense_metrics
from jax_moco.readers import voc_segmentation

K, IMAGE_SIZE = 15, 512


def upsample_nearest(labels, height, width):
  """[h, w] -> [height, width]: each output pixel takes the label of the location whose cell holds its centre."""
  rows = (np.arange(height) + 0.5) * labels.shape[0] // height
  cols = (np.arange(width) + 0.5) * labels.shape[1] // width
  return labels[rows.astype(int)[:, None], cols.astype(int)[None, :]]


def regions(features, k=K, seed=0):
  """K-means of one image's feature map [h, w, C]: (assignment [h, w] in 0..R-1, descriptors [R, C] unit norm),
  R <= k the clusters that hold a location."""
  flat = features.reshape(-1, features.shape[-1]).astype(np.float64)
  clusters = KMeans(n_clusters=min(k, len(flat)), n_init=1, random_state=seed).fit_predict(flat)
  used, assignment = np.unique(clusters, return_inverse=True)
  descriptors = np.stack([flat[assignment == r].mean(axis=0) for r in range(len(used))])
  descriptors /= np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
  return assignment.reshape(features.shape[:2]), descriptors.astype(np.float32)  # float32 halves a VOC-sized bank (GBs)


def majority_labels(assignment, mask, num_regions):
  """Each region's majority ground-truth class at the mask's resolution (255 left out); -1 where a region covers
  no labelled pixel."""
  up = upsample_nearest(assignment, *mask.shape)
  known = mask != dense_transforms.IGNORE
  counts = np.zeros((num_regions, voc_segmentation.NUM_CLASSES), np.int64)
  np.add.at(counts, (up[known], mask[known]), 1)
  return np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), -1)


def resize(image, size=IMAGE_SIZE):
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def image_regions(dense, dataset, image_size=IMAGE_SIZE, k=K, seed=0, batch_size=8, max_examples=None, progress=False):
  """Yields (assignment, descriptors, mask) per example of `dataset` (a voc_segmentation.SegmentationSet; the first
  `max_examples`), with `dense(images uint8 [n, S, S, 3]) -> [n, h, w, C]` the dense features; `progress` shows a
  bar on the first process."""
  n = min(dataset.num_examples, max_examples or dataset.num_examples)
  bar = tqdm(
    range(0, n, batch_size),
    desc=f'regions of {dataset.name}',
    unit='batch',
    leave=False,
    disable=not progress or jax.process_index() != 0,
  )
  for start in bar:
    examples = [dataset.load(i) for i in range(start, min(start + batch_size, n))]
    maps = dense(np.stack([resize(image, image_size) for image, _ in examples]))
    for (_, mask), features in zip(examples, maps):
      yield (*regions(np.asarray(features), k, seed), mask)


def segment_retrieval(
  dense, train, val, image_size=IMAGE_SIZE, k=K, seed=0, batch_size=8, max_train=None, max_val=None, progress=False
):
  """mIoU (%) of segment retrieval from `train` regions to `val` regions, with the per-class IoU."""
  bank, bank_labels = [], []
  train_regions = image_regions(dense, train, image_size, k, seed, batch_size, max_train, progress)
  for assignment, descriptors, mask in train_regions:
    labels = majority_labels(assignment, mask, len(descriptors))
    bank.append(descriptors[labels >= 0])
    bank_labels.append(labels[labels >= 0])
  bank, bank_labels = np.concatenate(bank), np.concatenate(bank_labels)
  total = np.zeros((voc_segmentation.NUM_CLASSES,) * 2, np.int64)
  num_val = 0
  for assignment, descriptors, mask in image_regions(dense, val, image_size, k, seed, batch_size, max_val, progress):
    num_val += 1
    predicted = bank_labels[np.argmax(descriptors @ bank.T, axis=1)]
    prediction = upsample_nearest(predicted[assignment], *mask.shape)
    total += np.asarray(dense_metrics.confusion(prediction, mask, voc_segmentation.NUM_CLASSES))
  return {
    **dense_metrics.segmentation_metrics(total),
    'num_train_regions': len(bank),
    'num_train': min(train.num_examples, max_train or train.num_examples),
    'num_test': num_val,
  }


def open_datasets(config, dataset=None, test_dataset=None):
  """(train, val) SegmentationSets: `dataset` (voc:PATH[:SPLIT], default split train) and `test_dataset` (default
  the same folder's val split). The run's own datasets are not segmentation sets, so --dataset is required."""
  del config
  if not dataset:
    raise ValueError('protocol=segment_retrieval needs --dataset=voc:PATH (the PASCAL VOC 2012 folder layout)')
  train = voc_segmentation.get(dataset, 'train')
  return train, voc_segmentation.get(test_dataset or f'voc:{train.root}:val', 'val')


class Evaluator:
  """Options (evaluators.OPTIONS): `kmeans_k` regions per image, `kmeans_seed` for KMeans; `batch_size` images a
  batch over the devices (global; default 16, rounded up to a multiple of the device count); `dense_output` the
  network (resnet.DENSE_OUTPUTS). The image size is --image_size (default 512); --max_examples caps both splits."""

  open_datasets = staticmethod(open_datasets)
  default_image_size = IMAGE_SIZE

  def __init__(self, task: common.Task, **options):
    o = evaluators.options('segment_retrieval', **options)
    f = task.features
    batch_size = o.batch_size or sharding.multiple_of_devices(16, f.mesh)
    self.task, self.k, self.seed = task, o.kmeans_k, o.kmeans_seed
    self.dense = dense_lib.DenseFeatures(
      f.mesh, f.module, o.dense_output, f.statistics, batch_size, compiler_options=f.compiler_options
    )

  def run(self, variables):
    t = self.task
    result = segment_retrieval(
      lambda images: self.dense.of_global_batch(variables, images),
      t.train,
      t.test,
      t.features.image_size,
      self.k,
      self.seed,
      self.dense.batch_size,
      t.max_train,
      t.max_test,
      progress=True,
    )
    yield from result.items()
    yield from dict(
      kmeans_k=self.k, kmeans_seed=self.seed, dense_output=self.dense.output, output_stride=self.dense.stride
    ).items()

  @staticmethod
  def describe(result):
    classes = sum(v is not None for v in result['iou_per_class'])
    return (
      f'segment retrieval (K-means, K={result["kmeans_k"]} regions an image, nearest of '
      f'{result["num_train_regions"]} training regions; {result["dense_output"]}, output stride '
      f'{result["output_stride"]})',
      f'mIoU {result["miou"]:.2f} % over {classes} classes',
    )
