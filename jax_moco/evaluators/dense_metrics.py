"""Metrics of dense predictions over a split, accumulated as sums over batches (and processes) and finished at the end.

Segmentation: one confusion matrix over the whole split, the ignore label (255) left out; IoU_c = TP / (TP + FP + FN)
per class; mIoU their mean over the classes that occur in the ground truth or the predictions (the authors'
SemsegMeter averages over all classes, an absent one scoring 0: the same on a split where every class occurs).

Depth (the code of Vandenhende et al. 2021, "Multi-Task Learning for Dense Prediction Tasks: A Survey", which the
authors ran for NYUD: its eval_depth and DepthMeter): on the valid pixels (depth > 0, and not 255, the marker of its
DepthMeter), predictions clamped to at least 1e-9, every error pooled over all valid pixels of the split (not averaged
per image): rmse = sqrt(sum (d - d*)^2 / N) and log_rmse = sqrt(sum (log d - log d*)^2 / N), theirs; abs_rel =
sum |d - d*| / d* / N and delta1 = #{max(d / d*, d* / d) < 1.25} / N, the usual companions (Eigen et al. 2014, "Depth
Map Prediction from a Single Image using a Multi-Scale Deep Network"), pooled the same way.

The sums take NumPy or JAX arrays and run under jit (one global sum over a sharded batch); `valid` masks out padded
examples.
"""

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import dense_transforms

DELTA = 1.25
MIN_DEPTH = 1e-9


def _counted(labels, valid):
  known = labels != dense_transforms.IGNORE
  return known if valid is None else known & jnp.asarray(valid, bool)


def confusion(prediction, labels, num_classes, valid=None):
  """[num_classes, num_classes] int32 counts, rows the ground truth: `prediction` and `labels` integer arrays of one
  shape (labels in 0..num_classes-1 or dense_transforms.IGNORE), `valid` a mask broadcastable to it (None: every
  pixel)."""
  counted = _counted(labels, valid)
  pairs = jnp.where(counted, jnp.asarray(labels, jnp.int32) * num_classes + jnp.asarray(prediction, jnp.int32), 0)
  return jnp.bincount(pairs.ravel(), counted.ravel().astype(jnp.int32), length=num_classes**2).reshape(
    num_classes, num_classes
  )


def iou_per_class(confusion_matrix):
  """IoU (%) of every class; NaN for a class absent from both the ground truth and the predictions."""
  confusion_matrix = np.asarray(confusion_matrix, np.int64)
  tp = np.diag(confusion_matrix).astype(np.float64)
  union = confusion_matrix.sum(axis=0) + confusion_matrix.sum(axis=1) - tp
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(union > 0, tp / union * 100, np.nan)


def segmentation_metrics(confusion_matrix) -> dict:
  """mIoU (%) of a split's summed confusion matrix, with each class's IoU (None where absent)."""
  ious = iou_per_class(confusion_matrix)
  return {'miou': float(np.nanmean(ious)), 'iou_per_class': [None if np.isnan(v) else float(v) for v in ious]}


def depth_sums(prediction, depth, valid=None) -> dict:
  """The sums the depth metrics need over the valid pixels of `prediction` and ground-truth `depth` (same shape;
  `valid` broadcastable to them, None: every pixel whose depth is known)."""
  depth = jnp.asarray(depth, jnp.float32)
  known = (depth > 0) & (depth != dense_transforms.IGNORE)
  known = known if valid is None else known & jnp.asarray(valid, bool)
  truth = jnp.where(known, depth, 1.0)  # any positive stand-in keeps the logs and ratios finite where not counted
  predicted = jnp.maximum(jnp.asarray(prediction, jnp.float32), MIN_DEPTH)

  def total(values):
    return jnp.sum(jnp.where(known, values, 0.0))

  return {
    'squared_error': total(jnp.square(predicted - truth)),
    'squared_log_error': total(jnp.square(jnp.log(predicted) - jnp.log(truth))),
    'relative_error': total(jnp.abs(predicted - truth) / truth),
    'within_delta': total(jnp.maximum(predicted / truth, truth / predicted) < DELTA),
    'pixels': jnp.sum(known),
  }


def add_sums(total, sums):
  """`total` + `sums`, trees of a split's sums (a confusion matrix, depth_sums' dict) from the host or the devices,
  accumulated on the host in 64 bits (float64, int64); `total` None starts at 0."""

  def widened(x):
    x = np.asarray(x)
    return x.astype(np.float64 if np.issubdtype(x.dtype, np.floating) else np.int64)

  sums = jax.tree.map(widened, jax.device_get(sums))
  return sums if total is None else jax.tree.map(np.add, total, sums)


def depth_metrics(sums) -> dict:
  """rmse, log_rmse, abs_rel and delta1 (a fraction) from a split's summed depth_sums."""
  n = float(sums['pixels'])
  if n == 0:
    raise ValueError('depth metrics: no valid depth pixel in the split (depth > 0 and not 255)')
  return {
    'rmse': float(np.sqrt(sums['squared_error'] / n)),
    'log_rmse': float(np.sqrt(sums['squared_log_error'] / n)),
    'abs_rel': float(sums['relative_error'] / n),
    'delta1': float(sums['within_delta'] / n),
    'num_pixels': int(n),
  }
