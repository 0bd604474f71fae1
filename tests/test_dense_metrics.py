"""Dense metrics against hand-computed small cases: the confusion matrix (255 and masked examples left out, eager and
under jit, summed over batches), IoU per class and mIoU (an absent class left out of the mean), and the depth errors
(rmse, log_rmse, abs_rel, delta1 pooled over the valid pixels of the split; missing depth, 255 and padding left out;
non-positive predictions clamped)."""

import jax
import numpy as np
import pytest

from jax_moco.evaluators import dense_metrics


def test_confusion_counts_pixels_by_truth_and_prediction_leaving_out_255_and_masked_examples():
  labels = np.array([[[0, 0, 1], [1, 2, 255]], [[2, 2, 2], [0, 1, 255]]], np.uint8)
  prediction = np.array([[[0, 1, 1], [1, 0, 2]], [[1, 1, 1], [1, 1, 1]]])
  # Rows the truth, columns the prediction: (0,0), (0,1), (1,1), (1,1), (2,0) from the first image.
  first = [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
  np.testing.assert_array_equal(dense_metrics.confusion(prediction[:1], labels[:1], 3), first)
  # The second adds (2,1) x3, (0,1), (1,1); a mask of examples leaves it out.
  both = [[1, 2, 0], [0, 3, 0], [1, 3, 0]]
  np.testing.assert_array_equal(dense_metrics.confusion(prediction, labels, 3), both)
  valid = np.array([True, False])[:, None, None]
  jitted = jax.jit(dense_metrics.confusion, static_argnums=2)
  np.testing.assert_array_equal(jitted(prediction, labels, 3, valid), first)
  # Summed over batches on the host in 64 bits.
  second = dense_metrics.add_sums(None, jitted(prediction[1:], labels[1:], 3))
  summed = dense_metrics.add_sums(second, jitted(prediction[:1], labels[:1], 3))
  assert summed.dtype == np.int64
  np.testing.assert_array_equal(summed, both)


def test_iou_per_class_and_miou():
  matrix = np.array([[1, 2, 0, 0], [0, 3, 0, 0], [1, 3, 0, 0], [0, 0, 0, 0]])
  # IoU = TP / (row + column - TP): class 0: 1 / (3 + 2 - 1); 1: 3 / (3 + 8 - 3); 2: 0 / (4 + 0 - 0); 3 absent.
  expected = [25.0, 37.5, 0.0]
  ious = dense_metrics.iou_per_class(matrix)
  np.testing.assert_allclose(ious[:3], expected)
  assert np.isnan(ious[3])
  metrics = dense_metrics.segmentation_metrics(matrix)
  assert metrics['iou_per_class'] == [*expected, None]
  assert metrics['miou'] == pytest.approx(62.5 / 3)


def test_depth_metrics_pool_the_valid_pixels_of_the_split():
  depth = np.array([[1.0, 2.0], [0.0, 4.0]])  # 0: missing depth
  prediction = np.array([[1.0, 3.0], [5.0, 2.0]])
  # Valid pixels (1, 1), (2, 3), (4, 2): squared errors 0, 1, 4; relative 0, 1/2, 1/2; ratios 1, 1.5, 2.
  expected = {
    'rmse': np.sqrt(5 / 3),
    'log_rmse': np.sqrt((np.log(1.5) ** 2 + np.log(2) ** 2) / 3),
    'abs_rel': 1 / 3,
    'delta1': 1 / 3,
    'num_pixels': 3,
  }
  metrics = dense_metrics.depth_metrics(dense_metrics.add_sums(None, dense_metrics.depth_sums(prediction, depth)))
  assert metrics == pytest.approx(expected, rel=1e-6)
  # Split into two batches, one with a 255 pixel and a masked padding example: the same pooled metrics.
  second = dense_metrics.depth_sums(
    np.stack([prediction[1:], np.full((1, 2), 9.0)]),
    np.stack([depth[1:], np.full((1, 2), 3.0)]),
    valid=np.array([True, False])[:, None, None],
  )
  first = jax.jit(dense_metrics.depth_sums)(np.array([[1.0, 3.0, 7.0]]), np.array([[1.0, 2.0, 255.0]]))
  pooled_sums = dense_metrics.add_sums(dense_metrics.add_sums(None, first), second)
  assert pooled_sums['squared_error'].dtype == np.float64 and pooled_sums['pixels'].dtype == np.int64
  pooled = dense_metrics.depth_metrics(pooled_sums)
  assert pooled == pytest.approx(expected, rel=1e-6)


def test_depth_clamps_non_positive_predictions_and_refuses_a_split_without_depth():
  metrics = dense_metrics.depth_metrics(dense_metrics.depth_sums(np.array([-1.0]), np.array([2.0])))
  assert metrics['rmse'] == pytest.approx(2.0) and metrics['delta1'] == 0.0
  assert metrics['log_rmse'] == pytest.approx(np.log(2.0) - np.log(1e-9), rel=1e-5)
  with pytest.raises(ValueError, match='no valid depth pixel'):
    dense_metrics.depth_metrics(dense_metrics.depth_sums(np.ones(3), np.zeros(3)))
