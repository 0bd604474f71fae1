"""Crop statistics, constrained multi-crop, determinism, resumption, eval padding and robust folder input."""

import io
import os
import re
import shutil

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from input_pipeline import crops
from input_pipeline import pipeline
from input_pipeline import sources
from input_pipeline import views


def boxes_for(fn, n=2000):
  """fn(seed) for the seeds [i, 11], i < n, mapped in one traced graph (eager, op by op, took minutes)."""
  seeds = tf.stack([tf.range(n, dtype=tf.int64), tf.fill([n], tf.constant(11, tf.int64))], axis=1)
  return tf.function(lambda s: tf.map_fn(fn, s, fn_output_signature=tf.int32))(seeds).numpy()


def test_random_resized_crop_area_and_ratio():
  H, W = 300, 400
  boxes = boxes_for(lambda s: crops.random_resized_crop_boxes(s, H, W, 1, (0.2, 1.0))[0], 1500)
  top, left, h, w = boxes.T
  assert np.all(top >= 0) and np.all(left >= 0) and np.all(top + h <= H) and np.all(left + w <= W)
  area = h * w / (H * W)
  ratio = w / h
  # Integer rounding of w and h moves area and ratio slightly past the sampled range.
  assert area.min() >= 0.2 * 0.97 and area.max() <= 1.0
  assert ratio.min() >= 3 / 4 * 0.97 and ratio.max() <= 4 / 3 * 1.03
  # log-uniform ratio: about half the crops are wider than tall.
  assert 0.4 < np.mean(ratio > 1) < 0.6
  # Areas spread over the whole range (uniform sampling; large tries are often rejected for not fitting).
  assert np.mean(area < 0.4) > 0.15 and np.mean(area > 0.8) > 0.05


def test_center_fallback_for_extreme_aspect_ratio():
  # A 10 x 1000 strip: no RandomResizedCrop try fits, so torchvision's centre crop clamps the ratio to 4/3.
  box = crops.random_resized_crop_boxes(tf.constant([0, 1], tf.int64), 10, 1000, 1, (0.2, 1.0))[0].numpy()
  np.testing.assert_array_equal(box, [0, (1000 - 13) // 2, 10, 13])


@pytest.mark.parametrize('threshold', [0.2, 0.5])
def test_constrained_small_crops_overlap_the_anchor(threshold):
  H, W = 240, 320

  def sample(seed):
    seeds = tf.random.experimental.stateless_split(seed, 2)
    anchor = crops.random_resized_crop_boxes(seeds[0], H, W, 1, (0.2, 1.0))[0]
    small = crops.constrained_crop_boxes(seeds[1], H, W, anchor, 4, (0.05, 0.14), threshold, 10)
    return tf.concat([anchor[None], small], 0)

  for b in boxes_for(sample, 500):
    anchor, small = b[0], b[1:]
    for top, left, h, w in small:  # overlap recomputed independently, in NumPy
      assert top >= 0 and left >= 0 and top + h <= H and left + w <= W
      inter_h = max(0, min(top + h, anchor[0] + anchor[2]) - max(top, anchor[0]))
      inter_w = max(0, min(left + w, anchor[1] + anchor[3]) - max(left, anchor[1]))
      assert inter_h * inter_w / (h * w) >= threshold


def test_unconstrained_small_crops_often_miss_the_anchor():
  """Sanity check that the constraint does something: without it, small crops land outside the anchor."""
  H, W = 240, 320
  anchor = tf.constant([0, 0, 100, 100])
  small = boxes_for(lambda s: crops.random_resized_crop_boxes(s, H, W, 1, (0.05, 0.14))[0], 300)
  overlap = crops.own_area_overlap(tf.constant(small), anchor).numpy()
  assert np.mean(overlap < 0.2) > 0.5


SPEC = views.ViewSpec(large_size=32, small_size=16, num_small=3, min_overlap=0.2, aplus=True)


def test_train_batches_shapes_determinism_and_resume():
  source = sources.get_source('embedded_subset')
  ds = pipeline.train_dataset(source, SPEC, 8, seed=3)
  first = list(ds.take(3).as_numpy_iterator())
  assert first[0]['anchor'].shape == (8, 32, 32, 3) and first[0]['anchor'].dtype == np.uint8
  assert first[0]['small'].shape == (8, 3, 16, 16, 3) and first[0]['label'].shape == (8,)
  again = list(pipeline.train_dataset(source, SPEC, 8, seed=3).take(3).as_numpy_iterator())
  resumed = next(pipeline.train_dataset(source, SPEC, 8, seed=3, start_step=2).as_numpy_iterator())
  for key in first[0]:
    assert all(np.array_equal(a[key], b[key]) for a, b in zip(first, again))
    np.testing.assert_array_equal(resumed[key], first[2][key])
  other_seed = next(pipeline.train_dataset(source, SPEC, 8, seed=4).as_numpy_iterator())
  assert not np.array_equal(other_seed['anchor'], first[0]['anchor'])


def test_epoch_visits_every_example_once_and_processes_partition_it():
  source = sources._array_source(
    'toy', np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1).repeat(8, 1).repeat(8, 2), np.arange(40), 40
  )
  spec = views.ViewSpec(large_size=4, small_size=2, num_small=0)
  labels = [b['label'] for b in pipeline.train_dataset(source, spec, 8, 0).take(5).as_numpy_iterator()]
  assert sorted(np.concatenate(labels)) == list(range(40))  # one epoch = a permutation
  per_process = [
    np.concatenate(
      [
        b['label']
        for b in pipeline.train_dataset(source, spec, 8, 0, process_index=p, process_count=2)
        .take(5)
        .as_numpy_iterator()
      ]
    )
    for p in range(2)
  ]
  assert sorted(np.concatenate(per_process)) == list(range(40))
  with pytest.raises(ValueError, match='batch_size=6 .* process count 4'):
    pipeline.train_dataset(source, spec, 6, 0, process_count=4)


def test_eval_padding_masks_so_nothing_is_dropped_or_repeated():
  source = sources.get_source('embedded_subset:test')
  batches = list(pipeline.eval_dataset(source, 32, 300).as_numpy_iterator())
  masks = np.concatenate([b['mask'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])[masks]
  assert len(masks) == 2100 and masks.sum() == 2000
  with np.load(sources.EMBEDDED_SUBSET) as data:
    np.testing.assert_array_equal(labels, data['test_labels'])


def _jpeg(array, **kwargs):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='JPEG', **kwargs)
  return buf.getvalue()


@pytest.fixture(scope='module')
def messy_folder(tmp_path_factory, china):
  root = tmp_path_factory.mktemp('messy')
  for label in ('cats', 'dogs'):
    os.makedirs(root / label)
  good = _jpeg(china)
  (root / 'cats' / 'good.jpg').write_bytes(good)
  (root / 'cats' / 'truncated.jpg').write_bytes(good[: len(good) // 3])
  (root / 'cats' / 'empty.jpg').write_bytes(b'')
  (root / 'cats' / 'text.jpg').write_text('not an image')
  Image.fromarray(china[..., 0]).save(root / 'cats' / 'gray.png')
  Image.fromarray(china).convert('CMYK').save(root / 'dogs' / 'cmyk.jpg')
  Image.fromarray(np.dstack([china, np.full(china.shape[:2], 128, np.uint8)])).save(root / 'dogs' / 'rgba.png')
  Image.fromarray((china[..., 0].astype(np.uint16) * 257)).save(root / 'dogs' / 'sixteen.png')
  Image.fromarray(china[:1, :1]).save(root / 'dogs' / 'pixel.png')
  Image.new('RGB', (10000, 8000), (200, 30, 30)).save(root / 'dogs' / 'huge.jpg', quality=50)
  (root / 'dogs' / 'notes.txt').write_text('ignored: not an image extension')
  return root


def test_folder_source_leaves_out_and_replaces_bad_files_and_converts_modes(messy_folder):
  source = sources.get_source(f'folder:{messy_folder}')
  # The scan leaves out the empty file and the text; the truncated JPEG passes it and fails to decode in the stream.
  assert source.num_examples == 8 and source.num_classes == 2
  reasons = sorted((os.path.basename(path), reason) for path, reason in source.unreadable)
  assert reasons == [('empty.jpg', 'empty file'), ('text.jpg', "not an image (starts with b'not an i')")]
  spec = views.ViewSpec(large_size=32, small_size=16, num_small=2, min_overlap=0.2)
  batches = list(pipeline.train_dataset(source, spec, 1, seed=0).take(16).as_numpy_iterator())  # two passes
  for b in batches:
    assert b['anchor'].shape == (1, 32, 32, 3) and b['small'].shape == (1, 2, 16, 16, 3)
  truncated = source.files.index(str(messy_folder / 'cats' / 'truncated.jpg'))
  replaced = [int(b['replaced'][0]) for b in batches]
  assert sorted(replaced)[-3:] == [-1, truncated, truncated]  # once a pass, by the next file of the stream
  # Every counter still yields one example, so resuming at step * batch is exact with bad files in the folder.
  resumed = pipeline.train_dataset(source, spec, 1, seed=0, start_step=5).take(11).as_numpy_iterator()
  for a, b in zip(batches[5:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_a_folder_without_a_decodable_image_stops_at_once_naming_it(tmp_path, messy_folder):
  for name in ('empty.jpg', 'text.jpg'):
    shutil.copy(messy_folder / 'cats' / name, tmp_path / name)
  with pytest.raises(ValueError, match=re.escape(f'folder:{tmp_path}: none of its 2 image files holds an image')):
    sources.get_source(f'folder:{tmp_path}')
  # A file that passes the scan but does not decode: the stream stops at its first batch, naming the folder.
  shutil.copy(messy_folder / 'cats' / 'truncated.jpg', tmp_path / 'truncated.jpg')
  source = sources.get_source(f'folder:{tmp_path}')
  spec = views.ViewSpec(large_size=32, small_size=16, num_small=0)
  message = re.escape(f'folder:{tmp_path}: {pipeline.DECODE_TRIES} files in a row do not decode')
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    next(pipeline.train_dataset(source, spec, 2, seed=0).as_numpy_iterator())


def test_folder_eval_keeps_every_readable_file(messy_folder):
  source = sources.get_source(f'folder:{messy_folder}')
  batches = list(pipeline.eval_dataset(source, 16, 4).as_numpy_iterator())
  assert all(b['image'].shape == (4, 16, 16, 3) for b in batches)  # whole batches, short ones padded
  masks = np.concatenate([b['mask'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])[masks]
  assert masks.sum() == 7 and sorted(labels) == [0, 0, 1, 1, 1, 1, 1]  # good + gray cats; five dogs


def test_jpeg_decoding_equals_pil(china):
  """JPEGs decode with libjpeg's accurate integer IDCT: PIL's pixels exactly, for colour (4:2:0 and 4:4:4),
  progressive, grayscale and CMYK JPEGs, eagerly and in tf.data; TF's default IDCT is off by about a level."""
  from sklearn.datasets import load_sample_image

  photo = load_sample_image('china.jpg')
  encoded = [
    _jpeg(photo),
    _jpeg(photo, quality=95, subsampling=0),
    _jpeg(china, progressive=True),
    _jpeg(china[..., 0]),
  ]
  buf = io.BytesIO()
  Image.fromarray(china).convert('CMYK').save(buf, format='JPEG')
  encoded.append(buf.getvalue())
  expected = [np.asarray(Image.open(io.BytesIO(data)).convert('RGB')) for data in encoded]
  in_data = tf.data.Dataset.from_tensor_slices(encoded).map(sources.decode_image).as_numpy_iterator()
  for data, want, from_data in zip(encoded, expected, in_data):
    np.testing.assert_array_equal(sources.decode_image(tf.constant(data)).numpy(), want)
    np.testing.assert_array_equal(from_data, want)
  fast = tf.io.decode_image(encoded[0], channels=3).numpy()
  assert np.abs(fast.astype(np.int32) - expected[0]).mean() > 0.3


@pytest.fixture(scope='module')
def pil_only_folder(tmp_path_factory, china):
  """TIFF and Netpbm files (which TF cannot decode), some under a name that is not their format; the expected
  uint8 RGB of each."""
  root = tmp_path_factory.mktemp('pil_only')
  crop = china[:20, :30]
  grey = crop[..., 1]
  grey_rgb = np.repeat(grey[..., None], 3, axis=-1)
  deep = Image.fromarray(grey.astype(np.uint16) * 256 + 200)  # 16-bit: its high byte is grey
  Image.fromarray(crop).save(root / 'rgb.tif')
  Image.fromarray(crop).save(root / 'lzw.tiff', compression='tiff_lzw')
  Image.fromarray(np.dstack([crop, np.full(crop.shape[:2], 9, np.uint8)])).save(root / 'rgba.tiff')
  Image.fromarray(grey).save(root / 'grey.tif')
  deep.save(root / 'deep.tif')
  Image.fromarray(crop).save(root / 'pages.tif', save_all=True, append_images=[Image.fromarray(255 - crop)])
  Image.fromarray(crop).save(root / 'colour.ppm')
  Image.fromarray(grey).save(root / 'grey.pgm')
  deep.save(root / 'deep.pgm')
  (root / 'ascii.pgm').write_bytes(b'P2\n3 1\n255\n0 128 255\n')
  Image.fromarray(crop).save(root / 'really_a_tiff.png', format='TIFF')
  (root / 'really_a_jpeg.tif').write_bytes(_jpeg(crop))
  (root / 'truncated.tif').write_bytes((root / 'rgb.tif').read_bytes()[:300])
  expected = {
    'rgb.tif': crop,
    'lzw.tiff': crop,
    'rgba.tiff': crop,
    'grey.tif': grey_rgb,
    'deep.tif': grey_rgb,
    'pages.tif': crop,
    'colour.ppm': crop,
    'grey.pgm': grey_rgb,
    'deep.pgm': grey_rgb,
    'ascii.pgm': np.repeat(np.array([[[0], [128], [255]]], np.uint8), 3, axis=-1),
    'really_a_tiff.png': crop,
    'really_a_jpeg.tif': np.asarray(Image.open(root / 'really_a_jpeg.tif').convert('RGB')),
  }
  return root, expected


def test_folder_decodes_tiff_and_netpbm_through_pil(pil_only_folder):
  root, expected = pil_only_folder
  source = sources.get_source(f'folder:{root}')
  paths, _, _ = sources.list_image_files(str(root))
  names = [os.path.basename(p) for p in paths]
  assert sorted(names) == sorted(list(expected) + ['truncated.tif'])
  in_data = tf.data.Dataset.range(len(paths)).map(source.load).ignore_errors().as_numpy_iterator()
  decoded = [example['image'] for example in in_data]
  readable = [name for name in names if name in expected]
  assert len(decoded) == len(readable)
  for name, image in zip(readable, decoded):
    np.testing.assert_array_equal(image, expected[name], err_msg=name)
    np.testing.assert_array_equal(source.load(names.index(name))['image'].numpy(), expected[name], err_msg=name)
  with pytest.raises(tf.errors.OpError):  # an error tf.data can skip, as for the formats TF decodes
    next(iter(tf.data.Dataset.from_tensors(names.index('truncated.tif')).map(source.load)))


def test_bad_dataset_strings_name_the_culprit(tmp_path):
  with pytest.raises(ValueError, match='unknown source'):
    sources.get_source('imagenet')
  with pytest.raises(FileNotFoundError, match='is not a directory'):
    sources.get_source(f'folder:{tmp_path}/missing')
  with pytest.raises(FileNotFoundError, match='holds no images'):
    sources.get_source(f'folder:{tmp_path}')
  with pytest.raises(FileNotFoundError, match='not prepared'):
    sources.get_source('tfds:cifar10', data_dir=str(tmp_path))


def test_views_depend_on_the_example_only_not_the_batch_or_process_count():
  """Crops and augmentation parameters are drawn per example from (seed, counter): process 0 of 2 (counters 0, 2,
  4, ...) gets exactly the views a single process makes for those counters, whatever the batch size."""
  source = sources.get_source('embedded_subset')
  single = next(pipeline.train_dataset(source, SPEC, 8, seed=3).as_numpy_iterator())
  first_of_two = next(
    pipeline.train_dataset(source, SPEC, 8, seed=3, process_index=0, process_count=2).as_numpy_iterator()
  )
  for key in ('anchor', 'positive', 'small', 'label'):
    np.testing.assert_array_equal(first_of_two[key], single[key][0::2], err_msg=key)


def test_blur_probability_zero_blurs_no_view():
  """The MoCo CIFAR-10 Colab's chain has no blur (crops.blur_probability = 0); MoCo-v2's blurs half the views."""
  uniforms = {
    'anchor': tf.random.stateless_uniform([400, 20], (1, 2)),
    'positive': tf.random.stateless_uniform([400, 20], (3, 4)),
  }
  for probability, expected in ((0.0, 0.0), (0.5, 0.5)):
    spec = views.ViewSpec(large_size=32, small_size=16, num_small=0, blur_probability=probability)
    records = views.augmentation_records(uniforms, spec)
    for record in records.values():
      assert abs(np.mean(record['blur_sigma'].numpy() > 0) - expected) < 0.1
