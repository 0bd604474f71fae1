"""Semantic segment retrieval (Van Gansbeke et al. 2021, A.7): mIoU against a NumPy transcription of its definition,
nearest upsampling against PIL's, the VOC folder reader on generated folders (its errors name the file), retrieval on
generated images whose segments differ in colour (an "encoder" that reads colour retrieves them perfectly, and shuffled
training labels score near chance), and the protocol end to end on a tiny run's checkpoint, through jax_moco.evaluate
and its command line."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from input_pipeline import dense_transforms
from jax_moco import evaluate
from jax_moco.evaluators import dense_metrics
from jax_moco.evaluators import segment_retrieval
from jax_moco.readers import voc_segmentation
from tests import helpers

# Class c's segments are painted in COLOURS[c].
COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
CELL = 8  # the colour encoder's stride


def test_miou_matches_its_definition():
  rng = np.random.default_rng(0)
  mask = rng.integers(0, 6, (40, 50)).astype(np.uint8)
  mask[rng.random(mask.shape) < 0.1] = dense_transforms.IGNORE
  prediction = np.where(rng.random(mask.shape) < 0.6, mask % 6, rng.integers(0, 8, mask.shape))
  ious = dense_metrics.iou_per_class(dense_metrics.confusion(prediction, mask, voc_segmentation.NUM_CLASSES))
  valid = mask != dense_transforms.IGNORE
  for c in range(voc_segmentation.NUM_CLASSES):
    union = ((prediction == c) | (mask == c)) & valid
    intersection = (prediction == c) & (mask == c) & valid
    expected = intersection.sum() / union.sum() * 100 if union.any() else np.nan
    np.testing.assert_allclose(ious[c], expected)
  assert np.isnan(ious[10:]).all() and not np.isnan(ious[:8]).any()


def test_nearest_upsampling_matches_pil():
  labels = np.random.default_rng(1).integers(0, 15, (7, 5)).astype(np.uint8)
  for height, width in ((21, 10), (50, 33), (7, 5)):
    expected = np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))
    np.testing.assert_array_equal(segment_retrieval.upsample_nearest(labels, height, width), expected)


def segments(rng, size=64):
  """An image of grid-aligned rectangles, each of a random class painted in its colour, and its mask (with a line of
  ignored pixels)."""
  mask = np.zeros((size, size), np.uint8)
  for _ in range(3):
    top, left = rng.integers(0, size // CELL, 2) * CELL
    height, width = rng.integers(2, size // CELL // 2 + 1, 2) * CELL
    mask[top : top + height, left : left + width] = rng.integers(1, len(COLOURS))
  image = COLOURS[mask]
  mask[:, size // 2] = dense_transforms.IGNORE
  return image, mask


def write_voc(root, splits, augmented=False, palette=True):
  """A VOC-layout folder: {split: [(image, mask), ...]} with ids split_i."""
  os.makedirs(root / 'JPEGImages')
  os.makedirs(root / 'ImageSets' / 'Segmentation')
  mask_dir = root / ('SegmentationClassAug' if augmented else 'SegmentationClass')
  os.makedirs(mask_dir)
  for split, examples in splits.items():
    ids = [f'{split}_{i}' for i in range(len(examples))]
    (root / 'ImageSets' / 'Segmentation' / f'{split}.txt').write_text('\n'.join(ids) + '\n')
    for name, (image, mask) in zip(ids, examples):
      Image.fromarray(image).save(root / 'JPEGImages' / f'{name}.jpg', quality=100, subsampling=0)
      png = Image.fromarray(mask)
      if palette:  # VOC's own masks are palette PNGs; SegmentationClassAug's are grayscale
        png = png.convert('P')
      png.save(mask_dir / f'{name}.png')


def colour_encoder(images):
  """Dense features that read colour: each CELL x CELL cell's mean colour, one-hot over the nearest of COLOURS."""
  n, h, w, _ = images.shape
  cells = images.reshape(n, h // CELL, CELL, w // CELL, CELL, 3).mean(axis=(2, 4))
  nearest = np.argmin(((cells[..., None, :] - COLOURS.astype(np.float64)) ** 2).sum(-1), axis=-1)
  return np.eye(len(COLOURS))[nearest]


@pytest.mark.filterwarnings('ignore:Number of distinct clusters')  # fewer colours in an image than K
def test_colour_segments_are_retrieved_perfectly_and_shuffled_labels_score_at_chance(tmp_path):
  rng = np.random.default_rng(2)
  train, val = [segments(rng) for _ in range(12)], [segments(rng) for _ in range(8)]
  write_voc(tmp_path / 'voc', {'train': train, 'val': val})
  train_set, val_set = (voc_segmentation.get(f'voc:{tmp_path / "voc"}:{s}') for s in ('train', 'val'))
  result = segment_retrieval.segment_retrieval(colour_encoder, train_set, val_set, image_size=64)
  assert result['miou'] == 100.0 and result['num_train_regions'] >= 12
  assert [v is not None for v in result['iou_per_class']] == [True] * len(COLOURS) + [False] * 16

  shuffled = [(image, np.where(mask == 255, 255, rng.permutation(len(COLOURS))[mask % 255])) for image, mask in train]
  write_voc(tmp_path / 'shuffled', {'train': [(i, m.astype(np.uint8)) for i, m in shuffled], 'val': val})
  train_set, val_set = (voc_segmentation.get(f'voc:{tmp_path / "shuffled"}:{s}') for s in ('train', 'val'))
  chance = segment_retrieval.segment_retrieval(colour_encoder, train_set, val_set, image_size=64)
  assert chance['miou'] < 40


def test_voc_reader_layout_and_errors(tmp_path):
  rng = np.random.default_rng(3)
  write_voc(tmp_path / 'aug', {'train': [segments(rng)]}, augmented=True, palette=False)
  dataset = voc_segmentation.get(f'voc:{tmp_path / "aug"}')  # the default split: train
  image, mask = dataset.load(0)
  assert dataset.num_examples == 1 and dataset.mask_dir.endswith('SegmentationClassAug')
  assert image.shape == (64, 64, 3) and mask.dtype == np.uint8 and set(np.unique(mask)) <= set(range(5)) | {255}

  write_voc(tmp_path / 'bad', {'val': [segments(rng), segments(rng)]})
  os.remove(tmp_path / 'bad' / 'SegmentationClass' / 'val_1.png')
  unknown = np.full((64, 64), 42, np.uint8)
  Image.fromarray(unknown).convert('P').save(tmp_path / 'bad' / 'SegmentationClass' / 'val_0.png')
  bad = voc_segmentation.get(f'voc:{tmp_path / "bad"}:val')
  with pytest.raises(ValueError, match=r'val_0\.png: unknown class ids \[42\]'):
    bad.load(0)
  with pytest.raises(FileNotFoundError, match=r'SegmentationClass/val_1\.png is missing'):
    bad.load(1)
  with pytest.raises(FileNotFoundError, match=r'ImageSets/Segmentation/test\.txt is missing'):
    voc_segmentation.get(f'voc:{tmp_path / "bad"}:test')
  with pytest.raises(ValueError, match='expected voc:PATH'):
    voc_segmentation.get('voc:')


@pytest.mark.heavy(14)  # seconds on 2 cores (about 9 of them the command line's start), for tests/conftest.py
@pytest.mark.filterwarnings('ignore:Number of distinct clusters')
def test_the_protocol_end_to_end_on_a_saved_run_and_its_command_line(tmp_path):
  rng = np.random.default_rng(4)
  write_voc(tmp_path / 'voc', {'train': [segments(rng) for _ in range(3)], 'val': [segments(rng) for _ in range(2)]})
  workdir = helpers.save_tiny_run(tmp_path / 'run')
  voc = f'voc:{tmp_path / "voc"}'
  # 3 + 2 images in global batches of 16 over 8 devices: masked padding on every batch. By default stages 3 and 4
  # are dilated: output stride 8 with the ImageNet stem, 2 with the tiny run's CIFAR stem.
  default = evaluate.evaluate(workdir, 'segment_retrieval', dataset=voc, image_size=64, kmeans_k=4)
  assert (default['dense_output'], default['output_stride']) == ('stride8_dilated', 2)
  result = evaluate.evaluate(
    workdir, 'segment_retrieval', dataset=voc, image_size=64, kmeans_k=4, dense_output='stride16_dilated'
  )
  assert result['test_dataset'] == f'{voc}:val' and result['image_size'] == 64
  assert (result['num_train'], result['num_test'], result['kmeans_k'], result['output_stride']) == (3, 2, 4, 4)
  assert 3 <= result['num_train_regions'] <= 12 and 0 <= result['miou'] <= 100
  assert json.load(open(tmp_path / 'run' / 'eval' / 'step_3_online' / 'segment_retrieval.json')) == result
  assert 'segment retrieval (K-means, K=4' in evaluate.format_table(result)
  with pytest.raises(ValueError, match='needs --dataset=voc:PATH'):
    evaluate.evaluate(workdir, 'segment_retrieval')
  with pytest.raises(ValueError, match='cam_images: not an option of protocol=segment_retrieval'):
    evaluate.evaluate(workdir, 'segment_retrieval', dataset=voc, cam_images=3)
  with pytest.raises(ValueError, match="dense_output='stride4': choose one of stride32, stride16_dilated"):
    evaluate.evaluate(workdir, 'segment_retrieval', dataset=voc, dense_output='stride4')

  command = ['-m', 'jax_moco.evaluate', f'--workdir={workdir}', '--protocol=segment_retrieval']
  command += [f'--dataset={voc}:train', f'--test_dataset={voc}:val', '--image_size=64', '--kmeans_k=4']
  printed = helpers.run_quietly(command + ['--dense_output=stride16_dilated'])
  assert f'mIoU {result["miou"]:.2f} %' in printed.stdout and f'{voc}:train (3 images, 64 px)' in printed.stdout
  assert 'stride16_dilated, output stride 4)' in printed.stdout
