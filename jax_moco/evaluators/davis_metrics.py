"""The DAVIS benchmark's region similarity J and contour accuracy F (Pont-Tuset et al. 2017, "The 2017 DAVIS
Challenge on Video Object Segmentation"; the definitions of its evaluation toolkit), on binary masks of one object
in one frame, and their statistics over a video.

- J: |P & G| / |P | G|, 1 when both masks are empty.
- F: the F-measure of boundary precision and recall. A mask's boundary is the set of pixels whose value differs
  from their east, south or south-east neighbour (neighbours outside the image do not count), so a boundary lies
  half a pixel towards the origin from the segment's edge. A boundary pixel of one mask is matched when a boundary
  pixel of the other lies within a disk of radius r = ceil(0.008 x the image diagonal) pixels (r = `bound_th`
  itself when it is 1 or more): precision = matched prediction pixels / prediction boundary pixels, recall = matched
  ground-truth pixels / ground-truth boundary pixels, F = 2PR / (P + R), 0 when P + R = 0. With no predicted
  boundary P = 1, with no true boundary R = 1 (both empty: F = 1; one empty: F = 0).
- Per object: the mean over the frames scored (the semi-supervised task leaves out the first frame, given, and the
  last), and the recall, the fraction of those frames scoring over 0.5.

Disk dilation is computed as a Euclidean distance transform (scipy, which scikit-learn requires) thresholded at r,
on the boundaries' bounding box: the same set of pixels as a dilation by the disk, at a cost that does not grow
with r.
"""

import math

import numpy as np
from scipy import ndimage

BOUND_TH = 0.008


def region_similarity(prediction, truth) -> float:
  """J of two binary masks [H, W]."""
  prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
  union = np.count_nonzero(prediction | truth)
  return 1.0 if union == 0 else np.count_nonzero(prediction & truth) / union


def boundary(mask):
  """The toolkit's one-pixel boundary map of a binary mask [H, W]."""
  mask = np.asarray(mask, bool)
  edge = np.zeros_like(mask)
  edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]  # east
  edge[:-1, :] |= mask[:-1, :] != mask[1:, :]  # south
  edge[:-1, :-1] |= mask[:-1, :-1] != mask[1:, 1:]  # south-east
  return edge


def tolerance(shape, bound_th=BOUND_TH) -> int:
  """The matching radius in pixels for an image of `shape` (H, W)."""
  return int(bound_th) if bound_th >= 1 else math.ceil(bound_th * math.hypot(*shape[:2]))


def _within(points, targets, radius):
  """Which `points` (a boolean map) lie within `radius` of a `targets` pixel (both maps of the same box)."""
  return ndimage.distance_transform_edt(~targets)[points] <= radius


def boundary_precision_recall(prediction, truth, bound_th=BOUND_TH):
  """(precision, recall) of the predicted mask's boundary against the true mask's."""
  pred_edge, true_edge = boundary(prediction), boundary(truth)
  n_pred, n_true = np.count_nonzero(pred_edge), np.count_nonzero(true_edge)
  if n_pred == 0 or n_true == 0:
    return (1.0 if n_pred == 0 else 0.0), (1.0 if n_true == 0 else 0.0)
  radius = tolerance(pred_edge.shape, bound_th)
  # Only the boundaries' bounding box: it holds every pixel whose distances matter.
  rows, cols = np.nonzero(pred_edge | true_edge)
  box = slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)
  pred_edge, true_edge = pred_edge[box], true_edge[box]
  precision = np.count_nonzero(_within(pred_edge, true_edge, radius)) / n_pred
  recall = np.count_nonzero(_within(true_edge, pred_edge, radius)) / n_true
  return precision, recall


def contour_accuracy(prediction, truth, bound_th=BOUND_TH) -> float:
  """F of two binary masks [H, W]."""
  precision, recall = boundary_precision_recall(prediction, truth, bound_th)
  return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def video_scores(predictions, truths, objects):
  """{object id: (J per scored frame, F per scored frame)} of id masks [T, H, W] (void in `truths` counts as
  background), over frames 1 .. T-2 as the semi-supervised toolkit scores them."""
  scores = {}
  for obj in objects:
    pairs = [(p == obj, t == obj) for p, t in zip(predictions[1:-1], truths[1:-1])]
    scores[obj] = ([region_similarity(p, t) for p, t in pairs], [contour_accuracy(p, t) for p, t in pairs])
  return scores


def statistics(per_frame):
  """(mean, recall) of one object's per-frame scores: NaN for an object without scored frames."""
  if len(per_frame) == 0:
    return math.nan, math.nan
  values = np.asarray(per_frame, np.float64)
  return float(values.mean()), float(np.mean(values > 0.5))
