"""Semantic segment retrieval of paper 001, A.7 (Table 6, Fig. S4), on dense features without finetuning (the
algorithm and its metric; not yet a protocol of jax_moco.evaluate).

Each image is resized to `image_size` (512) squared; its dense feature map (jax_moco.evaluators.dense) is clustered
with scikit-learn's KMeans (K = 15, k-means++ initialisation, one run, seeded) into regions; a region's descriptor is
the mean feature of its locations, L2-normalised. A training region's label is the majority class of the
ground-truth pixels it covers at the mask's resolution, 255 (ignore) left out; a region that covers only ignored
pixels is left out of the bank. Every validation region takes the label of its single nearest training region by
cosine similarity (plain nearest neighbour, not a weighted kNN). The predicted region map is upsampled to the
original image by nearest neighbour and scored by mIoU over the 21 VOC classes, 255 ignored: IoU_c = TP / (TP + FP +
FN) from the confusion matrix summed over the whole validation set, averaged over the classes that occur in the
ground truth or the predictions.
"""

import numpy as np
from PIL import Image
from sklearn.cluster import KMeans

from input_pipeline import voc_segmentation

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
  return assignment.reshape(features.shape[:2]), descriptors


def majority_labels(assignment, mask, num_regions):
  """Each region's majority ground-truth class at the mask's resolution (255 left out); -1 where a region covers
  no labelled pixel."""
  up = upsample_nearest(assignment, *mask.shape)
  known = mask != voc_segmentation.IGNORE
  counts = np.zeros((num_regions, voc_segmentation.NUM_CLASSES), np.int64)
  np.add.at(counts, (up[known], mask[known]), 1)
  return np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), -1)


def confusion(prediction, mask, num_classes=voc_segmentation.NUM_CLASSES):
  """[num_classes, num_classes] counts, rows the ground truth, ignored pixels left out."""
  known = mask != voc_segmentation.IGNORE
  pairs = mask[known].astype(np.int64) * num_classes + prediction[known]
  return np.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(confusion_matrix):
  """IoU (%) of every class; NaN for a class absent from both the ground truth and the predictions."""
  tp = np.diag(confusion_matrix).astype(np.float64)
  union = confusion_matrix.sum(axis=0) + confusion_matrix.sum(axis=1) - tp
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(union > 0, tp / union * 100, np.nan)


def resize(image, size=IMAGE_SIZE):
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def image_regions(dense, dataset, image_size=IMAGE_SIZE, k=K, seed=0, batch_size=8, max_examples=None):
  """Yields (assignment, descriptors, mask) per example of `dataset` (a voc_segmentation.SegmentationSet; the first
  `max_examples`), with `dense(images uint8 [n, S, S, 3]) -> [n, h, w, C]` the dense features."""
  n = min(dataset.num_examples, max_examples or dataset.num_examples)
  for start in range(0, n, batch_size):
    examples = [dataset.load(i) for i in range(start, min(start + batch_size, n))]
    maps = dense(np.stack([resize(image, image_size) for image, _ in examples]))
    for (_, mask), features in zip(examples, maps):
      yield (*regions(np.asarray(features), k, seed), mask)


def segment_retrieval(
  dense, train, val, image_size=IMAGE_SIZE, k=K, seed=0, batch_size=8, max_train=None, max_val=None
):
  """mIoU (%) of segment retrieval from `train` regions to `val` regions, with the per-class IoU."""
  bank, bank_labels = [], []
  for assignment, descriptors, mask in image_regions(dense, train, image_size, k, seed, batch_size, max_train):
    labels = majority_labels(assignment, mask, len(descriptors))
    bank.append(descriptors[labels >= 0])
    bank_labels.append(labels[labels >= 0])
  bank, bank_labels = np.concatenate(bank), np.concatenate(bank_labels)
  total = np.zeros((voc_segmentation.NUM_CLASSES,) * 2, np.int64)
  num_val = 0
  for assignment, descriptors, mask in image_regions(dense, val, image_size, k, seed, batch_size, max_val):
    num_val += 1
    predicted = bank_labels[np.argmax(descriptors @ bank.T, axis=1)]
    total += confusion(upsample_nearest(predicted[assignment], *mask.shape), mask)
  ious = iou_per_class(total)
  return {
    'miou': float(np.nanmean(ious)),
    'iou_per_class': [None if np.isnan(v) else float(v) for v in ious],
    'num_train_regions': len(bank),
    'num_train': min(train.num_examples, max_train or train.num_examples),
    'num_test': num_val,
  }
