"""Crop-overlap statistics (input_pipeline.crop_stats) and the anchor-positive IoU cap (crops.max_iou)."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import crop_stats
from input_pipeline import crops
from input_pipeline import pipeline
from input_pipeline import sources
from input_pipeline import views
from tests.helpers import run_quietly
from tests.helpers import tiny_config
from tests.test_train import ROOT


def _numpy_iou(boxes, anchor):
  top, left = np.maximum(boxes[..., 0], anchor[..., 0]), np.maximum(boxes[..., 1], anchor[..., 1])
  bottom = np.minimum(boxes[..., 0] + boxes[..., 2], anchor[..., 0] + anchor[..., 2])
  right = np.minimum(boxes[..., 1] + boxes[..., 3], anchor[..., 1] + anchor[..., 3])
  inter = np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)
  return inter / (boxes[..., 2] * boxes[..., 3] + anchor[..., 2] * anchor[..., 3] - inter)


def test_sampled_boxes_are_the_pipelines_and_their_ious_numpys(tmp_path):
  config = tiny_config(**{'crops.min_overlap': 0.2})
  source = sources.get_source(config.dataset)
  boxes = crop_stats.sample_boxes(config, 300, source)
  assert boxes.shape == (300, 4, 4)
  spec = pipeline.view_spec(config.crops)
  batch = next(pipeline.train_dataset(source, spec, 8, config.seed, keep_boxes=True).as_numpy_iterator())
  assert np.array_equal(boxes[:8], batch['boxes'])
  iou = crop_stats.overlaps(boxes)
  np.testing.assert_allclose(iou['anchor-positive'], _numpy_iou(boxes[:, 1], boxes[:, 0]), rtol=1e-6)
  np.testing.assert_allclose(iou['small-anchor'], _numpy_iou(boxes[:, 2:], boxes[:, None, 0]).ravel(), rtol=1e-6)
  numbers = crop_stats.summary(iou['anchor-positive'])
  assert numbers['below 0.1'] == np.mean(_numpy_iou(boxes[:, 1], boxes[:, 0]) < 0.1) > 0
  out = crop_stats.plot(config, iou, str(tmp_path / 'iou.png'), 'test')
  assert open(out, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'


def test_the_cap_holds_for_every_pair_and_pairs_under_it_are_kept():
  config = tiny_config(**{'crops.max_iou': 0.3})
  source = sources.get_source(config.dataset)
  capped = crop_stats.sample_boxes(config, 400, source)
  assert np.all(_numpy_iou(capped[:, 1], capped[:, 0]) <= 0.3)
  free = crop_stats.sample_boxes(tiny_config(), 400, source)
  kept = _numpy_iou(free[:, 1], free[:, 0]) <= 0.3
  assert 0 < kept.mean() < 1 and np.array_equal(capped[kept], free[kept])
  same_anchor = np.all(capped[:, 0] == free[:, 0], axis=-1)  # then the small crops are drawn as without the cap
  assert 0 < same_anchor.mean() < 1 and np.array_equal(capped[same_anchor, 2:], free[same_anchor, 2:])


@pytest.mark.parametrize('max_iou', [0.4, 0.15, 0.01])
def test_capped_pair_is_the_first_candidate_under_the_cap_else_the_lowest(max_iou):
  seed, pair = tf.constant([4, 5], tf.int64), tf.constant([[0, 0, 100, 100], [5, 5, 70, 70]])
  chosen = crops.capped_pair_boxes(seed, pair, 100, 100, (0.2, 1.0), max_iou, 6).numpy()
  seeds = tf.random.experimental.stateless_split(seed, 2)
  positives = crops.random_resized_crop_boxes(seeds[0], 100, 100, 5, (0.2, 1.0)).numpy()
  fresh = crops.random_resized_crop_boxes(seeds[1], 100, 100, 12, (0.2, 1.0)).numpy().reshape(6, 2, 4)
  anchors = np.concatenate([np.repeat(pair.numpy()[:1], 6, 0), fresh[:, 0]])
  candidates = np.concatenate([pair.numpy()[1:], positives, fresh[:, 1]])
  iou = _numpy_iou(candidates, anchors)
  ok = np.flatnonzero(iou <= max_iou)
  expected = ok[0] if len(ok) else np.argmin(iou)
  assert np.array_equal(chosen, [anchors[expected], candidates[expected]])


def test_without_the_cap_the_boxes_are_drawn_as_before_it_existed():
  seed, spec = tf.constant([7, 1], tf.int64), views.ViewSpec(32, 16, 2, min_overlap=0.2)
  seeds = tf.random.experimental.stateless_split(seed, 2)
  large = crops.random_resized_crop_boxes(seeds[0], 40, 50, 2, spec.large_scale)
  small = crops.constrained_crop_boxes(seeds[1], 40, 50, large[0], 2, spec.small_scale, 0.2, spec.overlap_tries)
  assert np.array_equal(views.draw_boxes(seed, 40, 50, spec).numpy(), np.concatenate([large, small]))


def test_the_command_lines_print_only_their_results(tmp_path):
  # TensorFlow's import is quieted before anything imports it, as in every command of the repository.
  result = run_quietly(
    ['-m', 'input_pipeline.crop_stats', '--config=configs/mocov2.py', f'--out={tmp_path}/iou.png', '--num_samples=64']
  )
  assert result.stdout.splitlines()[0].startswith('anchor-positive: mean ') and (tmp_path / 'iou.png').exists()
  run_quietly(['-m', 'input_pipeline.show', '--config=configs/knn.py', f'--out={tmp_path}/views.png', '--num_images=2'])
  assert (tmp_path / 'views.png').exists()


def test_a_missing_dataset_is_refused_before_drawing(tmp_path):
  """show opens the dataset, and says its error in one line, before any box is drawn: no traceback
  (crop_stats's main does the same)."""
  missing = tmp_path / 'missing'
  args = ['-m', 'input_pipeline.show', '--config=configs/knn.py', f'--config.dataset=folder:{missing}']
  result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == f'error: folder:{missing} is not a directory'
