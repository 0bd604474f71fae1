"""The fine-tuned dense protocols' data: the training transform against its definition, and the Cityscapes and NYUD
readers on tiny folders in their layouts, with every refused case."""

import os

import numpy as np
from PIL import Image
import pytest

from input_pipeline import dense_transforms
from jax_moco.readers import cityscapes
from jax_moco.readers import nyud
from jax_moco.readers import voc_segmentation

FILL = (124, 116, 104)


def _example(rng, height=30, width=44):
  return rng.integers(0, 256, (height, width, 3), np.uint8), rng.integers(0, 21, (height, width)).astype(np.uint8)


def _by_definition(image, target, geometry, crop, fill, target_fill):
  """The transform written out on whole images: PIL bilinear for the image, centre-pixel nearest for the target,
  flip, pad, crop."""
  crop_h, crop_w = (crop, crop) if np.isscalar(crop) else crop
  height, width = (max(1, round(n * geometry.scale)) for n in image.shape[:2])
  image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
  rows = np.floor((np.arange(height) + 0.5) * target.shape[0] / height).astype(int)
  cols = np.floor((np.arange(width) + 0.5) * target.shape[1] / width).astype(int)
  target = target[rows][:, cols]
  if geometry.flip:
    image, target = np.flip(image, 1), np.flip(target, 1)
  big_image = np.empty((max(height, crop_h), max(width, crop_w), 3), np.uint8)
  big_image[...] = fill
  big_target = np.full(big_image.shape[:2], target_fill, target.dtype)
  big_image[:height, :width], big_target[:height, :width] = image, target
  window = np.s_[geometry.top : geometry.top + crop_h, geometry.left : geometry.left + crop_w]
  return big_image[window], big_target[window]


@pytest.mark.parametrize('crop', [32, (24, 40)])
def test_train_transform_is_its_definition(crop):
  rng = np.random.default_rng(0)
  image, labels = _example(rng)
  crop_hw = (crop, crop) if np.isscalar(crop) else crop
  geometries = [dense_transforms.draw(rng, image.shape[:2], crop) for _ in range(12)]
  geometries += [dense_transforms.Geometry(1.0, True, 0, 4), dense_transforms.Geometry(0.5, True, 0, 0)]
  for geometry in geometries:
    got = dense_transforms.apply(image, labels, geometry, crop, FILL)
    want = _by_definition(image, labels, geometry, crop, FILL, 255)
    np.testing.assert_allclose(got[0], want[0], atol=1)  # resized in the crop's box: PIL's rounding, one level
    assert np.mean(got[0] == want[0]) > 0.9
    np.testing.assert_array_equal(got[1], want[1])
    assert got[0].dtype == np.uint8 and got[1].dtype == np.uint8 and got[1].shape == crop_hw
  scales = [g.scale for g in geometries]
  assert {g.flip for g in geometries} == {True, False} and min(scales) < 1 < max(scales)


def test_nearest_is_the_pixel_under_each_centre():
  # 3 -> 7: centres at (i + 1/2) * 3/7 = 0.21, 0.64, 1.07, 1.5, 1.93, 2.36, 2.79
  np.testing.assert_array_equal(dense_transforms.nearest_indices(3, 7), [0, 0, 1, 1, 1, 2, 2])
  np.testing.assert_array_equal(dense_transforms.nearest_indices(8, 4), [1, 3, 5, 7])
  np.testing.assert_array_equal(dense_transforms.nearest_indices(5, 5), np.arange(5))


def test_image_and_labels_move_together():
  """Regions of one colour per class: away from the edges every pixel's colour still names its label."""
  rng = np.random.default_rng(1)
  labels = np.repeat(np.repeat(rng.integers(0, 6, (6, 8)), 8, 0), 8, 1).astype(np.uint8)  # 48 x 64, blocks of 8
  palette = rng.integers(0, 256, (6, 3), np.uint8)
  for index in range(6):
    image, target = dense_transforms.train_example(palette[labels], labels, 40, rng, FILL)
    valid = target != 255
    interior = valid.copy()
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
      interior &= np.roll(target, (dy, dx), (0, 1)) == target  # a 4-neighbourhood of one class
    interior[[0, -1]], interior[:, [0, -1]] = False, False
    assert interior.sum() > 100
    np.testing.assert_allclose(image[interior], palette[target[interior]], atol=2)
    np.testing.assert_array_equal(image[~valid], np.broadcast_to(FILL, image[~valid].shape))


def test_padding_where_the_scaled_image_is_smaller():
  rng = np.random.default_rng(2)
  image, labels = _example(rng, 20, 30)
  geometry = dense_transforms.Geometry(0.5, False, 0, 0)  # 10 x 15 inside a 24 x 24 crop
  got_image, got_labels = dense_transforms.apply(image, labels, geometry, 24, FILL)
  assert (got_labels[10:] == 255).all() and (got_labels[:, 15:] == 255).all() and (got_labels[:10, :15] != 255).all()
  assert (got_image[10:] == FILL).all() and (got_image[:, 15:] == FILL).all()
  depth = rng.uniform(0.5, 9.0, (20, 30)).astype(np.float32)
  _, got_depth = dense_transforms.apply(image, depth, geometry, 24, FILL)
  assert got_depth.dtype == np.float32 and (got_depth[10:] == 0).all() and (got_depth[:10, :15] > 0).all()
  with pytest.raises(ValueError, match=r'target \(20, 29\) and image \(20, 30\) differ in size'):
    dense_transforms.apply(image, labels[:, 1:], geometry, 24, FILL)


def test_depth_is_nearest_and_divided_by_the_ratio():
  rng = np.random.default_rng(3)
  image, _ = _example(rng, 24, 24)
  depth = rng.uniform(0.5, 9.0, (24, 24)).astype(np.float32)
  depth[:4] = 0  # invalid
  geometry = dense_transforms.Geometry(1.6, True, 5, 7)
  _, got = dense_transforms.apply(image, depth, geometry, 16, FILL)
  _, want = _by_definition(image, depth, geometry, 16, FILL, 0.0)
  np.testing.assert_allclose(got, want / np.float32(1.6), rtol=1e-6)
  _, kept = dense_transforms.apply(image, depth, geometry, 16, FILL, rescale_depth=False)
  np.testing.assert_array_equal(kept, want)
  assert (got == 0).sum() == (want == 0).sum() > 0


def test_draws_are_deterministic_and_cover_the_ranges():
  rng = np.random.default_rng(4)
  image, labels = _example(rng)
  first = dense_transforms.train_example(image, labels, 32, dense_transforms.example_rng(7, 2, 5), FILL)
  again = dense_transforms.train_example(image, labels, 32, dense_transforms.example_rng(7, 2, 5), FILL)
  other = dense_transforms.train_example(image, labels, 32, dense_transforms.example_rng(7, 3, 5), FILL)
  np.testing.assert_array_equal(first[0], again[0])
  np.testing.assert_array_equal(first[1], again[1])
  assert not np.array_equal(first[0], other[0])
  draws = [dense_transforms.draw(dense_transforms.example_rng(0, 0, i), (30, 44), 32) for i in range(300)]
  scales = np.array([d.scale for d in draws])
  assert 0.5 <= scales.min() < 0.6 and 1.9 < scales.max() <= 2.0
  assert 100 < sum(d.flip for d in draws) < 200
  for d in draws:
    height, width = dense_transforms.scaled_size((30, 44), d.scale)
    assert 0 <= d.top <= max(height - 32, 0) and 0 <= d.left <= max(width - 32, 0)
  assert max(d.left for d in draws) > 40  # offsets reach across the larger scaled images


def test_pad_example_for_evaluation_batches():
  rng = np.random.default_rng(5)
  image, labels = _example(rng, 10, 12)
  padded_image, padded_labels, valid = dense_transforms.pad_example(image, labels, (16, 20), FILL)
  assert valid == (10, 12) and padded_image.shape == (16, 20, 3) and padded_labels.shape == (16, 20)
  np.testing.assert_array_equal(padded_image[:10, :12], image)
  np.testing.assert_array_equal(padded_labels[:10, :12], labels)
  assert (padded_labels[10:] == 255).all() and (padded_image[:, 12:] == FILL).all()
  _, padded_depth, _ = dense_transforms.pad_example(image, labels.astype(np.float32), 16, FILL)
  assert padded_depth.dtype == np.float32 and (padded_depth[10:] == 0).all()
  with pytest.raises(ValueError, match=r'an image of \(10, 12\) does not fit in \(8, 20\)'):
    dense_transforms.pad_example(image, labels, (8, 20), FILL)


# The official labels table (cityscapesScripts' labels.py): (name, id, trainId), a few of each kind.
OFFICIAL = [
  ('unlabeled', 0, 255), ('ego vehicle', 1, 255), ('ground', 6, 255), ('road', 7, 0), ('sidewalk', 8, 1),
  ('parking', 9, 255), ('rail track', 10, 255), ('building', 11, 2), ('guard rail', 14, 255), ('pole', 17, 5),
  ('polegroup', 18, 255), ('traffic light', 19, 6), ('sky', 23, 10), ('person', 24, 11), ('car', 26, 13),
  ('caravan', 29, 255), ('trailer', 30, 255), ('train', 31, 16), ('bicycle', 33, 18),
]  # fmt: skip


def test_cityscapes_train_ids_are_the_official_table():
  ids = np.array([label_id for _, label_id, _ in OFFICIAL], np.uint8)
  np.testing.assert_array_equal(cityscapes.train_ids(ids), [train_id for *_, train_id in OFFICIAL])
  names = {train_id: name for name, _, train_id in OFFICIAL if train_id != 255}
  assert all(cityscapes.CLASSES[train_id] == name for train_id, name in names.items())
  assert sorted(cityscapes.TRAIN_IDS.values()) == list(range(19)) == list(range(cityscapes.NUM_CLASSES))


def _png(path, array, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array, mode).save(path)


def _write_cityscapes(root, split, examples):
  """examples: {(city, name): label ids uint8 [H, W]}; photographs of the labels' size."""
  for (city, name), label_ids in examples.items():
    photo = np.zeros((*label_ids.shape, 3), np.uint8)
    photo[..., 0] = label_ids
    _png(os.path.join(root, 'leftImg8bit', split, city, f'{name}_leftImg8bit.png'), photo)
    _png(os.path.join(root, 'gtFine', split, city, f'{name}_gtFine_labelIds.png'), label_ids)


def test_cityscapes_reader(tmp_path):
  rng = np.random.default_rng(6)
  labels = {key: rng.integers(0, 34, (6, 10)).astype(np.uint8) for key in [('zurich', 'b'), ('aachen', 'a')]}
  labels['zurich', 'b'][0, :4] = [7, 26, 9, 33]
  _write_cityscapes(tmp_path, 'train', labels)
  os.makedirs(tmp_path / 'leftImg8bit' / 'train' / 'aachen' / 'notes')  # not a photograph: left out
  dataset = cityscapes.get(f'cityscapes:{tmp_path}')  # the default split: train
  assert dataset.name == f'cityscapes:{tmp_path}:train' and dataset.ids == ('aachen/a', 'zurich/b')
  assert dataset.num_examples == 2 and dataset.num_classes == 19 and dataset.target == 'segmentation'
  image, mask = dataset.load(1)
  assert image.shape == (6, 10, 3) and image.dtype == np.uint8 and mask.dtype == np.uint8
  np.testing.assert_array_equal(mask[0, :4], [0, 13, 255, 18])
  np.testing.assert_array_equal(mask, cityscapes.train_ids(image[..., 0]))


def test_cityscapes_refusals(tmp_path):
  good = np.full((4, 6), 7, np.uint8)
  _write_cityscapes(tmp_path, 'val', {('bonn', 'x'): good, ('bonn', 'y'): good, ('bonn', 'z'): good})
  spec = f'cityscapes:{tmp_path}:val'
  with pytest.raises(ValueError, match=r"'cityscapes:.*:test': split 'test' is not one of train, val"):
    cityscapes.get(f'cityscapes:{tmp_path}:test')
  with pytest.raises(ValueError, match=r'expected cityscapes:PATH'):
    cityscapes.get(f'voc:{tmp_path}')
  with pytest.raises(FileNotFoundError, match=r'leftImg8bit/train is missing'):
    cityscapes.get(f'cityscapes:{tmp_path}:train')
  dataset = cityscapes.get(spec)
  _png(str(tmp_path / 'gtFine/val/bonn/x_gtFine_labelIds.png'), np.full((4, 6), 34, np.uint8))
  with pytest.raises(ValueError, match=r'x_gtFine_labelIds\.png: unknown class ids \[34\]'):
    dataset.load(0)
  _png(str(tmp_path / 'gtFine/val/bonn/y_gtFine_labelIds.png'), np.zeros((4, 6, 3), np.uint8))
  with pytest.raises(ValueError, match=r'y_gtFine_labelIds\.png: a RGB image'):
    dataset.load(1)
  _png(str(tmp_path / 'gtFine/val/bonn/z_gtFine_labelIds.png'), np.full((5, 6), 7, np.uint8))
  with pytest.raises(ValueError, match=r'z_gtFine_labelIds\.png: mask \(5, 6\) and image \(4, 6\) differ'):
    dataset.load(2)
  os.remove(tmp_path / 'gtFine/val/bonn/z_gtFine_labelIds.png')
  with pytest.raises(FileNotFoundError, match=r'gtFine/val/bonn/z_gtFine_labelIds\.png is missing'):
    cityscapes.get(spec)
  os.makedirs(tmp_path / 'leftImg8bit/train/empty')
  with pytest.raises(ValueError, match=r'no \*/\*_leftImg8bit\.png in .*leftImg8bit/train'):
    cityscapes.get(f'cityscapes:{tmp_path}:train')


def _write_nyud(root, split, examples):
  """examples: {id: (label values uint8 [H, W] 0-40, depth float32 [H, W])}."""
  os.makedirs(os.path.join(root, 'gt_sets'), exist_ok=True)
  with open(os.path.join(root, 'gt_sets', f'{split}.txt'), 'w') as f:
    f.write(''.join(f'{name}\n' for name in examples))
  for name, (values, depth) in examples.items():
    _png(os.path.join(root, 'images', f'{name}.jpg'), np.zeros((*values.shape, 3), np.uint8))
    _png(os.path.join(root, 'segmentation', f'{name}.png'), values)
    os.makedirs(os.path.join(root, 'depth'), exist_ok=True)
    np.save(os.path.join(root, 'depth', f'{name}.npy'), depth)


def test_nyud_reader(tmp_path):
  rng = np.random.default_rng(7)
  values = rng.integers(0, 41, (8, 12)).astype(np.uint8)
  values[0, :3] = [0, 1, 40]
  depth = rng.uniform(0.7, 9.9, (8, 12)).astype(np.float32)
  depth[1, :2] = 0  # no sensor reading
  _write_nyud(tmp_path, 'val', {'0003': (values, depth), '0001': (values, depth)})
  segmentation = nyud.get(f'nyud:{tmp_path}:val')
  assert segmentation.ids == ('0003', '0001') and segmentation.num_examples == 2 and segmentation.num_classes == 40
  image, mask = segmentation.load(0)
  assert image.shape == (8, 12, 3) and mask.dtype == np.uint8
  np.testing.assert_array_equal(mask[0, :3], [255, 0, 39])
  np.testing.assert_array_equal(mask, np.where(values == 0, 255, values.astype(int) - 1))  # their void handling
  depths = nyud.get(f'nyud:{tmp_path}:val', target='depth')
  assert depths.target == 'depth' and depths.num_classes == 1 and depths.name == f'nyud:{tmp_path}:val'
  _, got = depths.load(1)
  assert got.dtype == np.float32 and (got[1, :2] == dense_transforms.INVALID_DEPTH).all()
  np.testing.assert_array_equal(got, depth)
  np.save(tmp_path / 'depth' / '0001.npy', depth.astype(np.float64)[..., None])  # [H, W, 1] float64 accepted
  np.testing.assert_array_equal(depths.load(1)[1], depth)


@pytest.mark.parametrize(
  'target,bad,message',
  [
    ('segmentation', np.full((8, 12), 41, np.uint8), r'0001\.png: unknown class ids \[41\]'),
    ('segmentation', np.zeros((8, 12, 3), np.uint8), r'0001\.png: a RGB image'),
    ('segmentation', np.zeros((8, 11), np.uint8), r'0001\.png: mask \(8, 11\) and image \(8, 12\) differ'),
    ('depth', np.ones((8, 11), np.float32), r'0001\.npy: depth \(8, 11\) and image \(8, 12\) differ'),
    ('depth', np.ones((8, 12), np.uint16), r'0001\.npy: a uint16 array, expected float depths'),
    ('depth', np.full((8, 12), -1.0, np.float32), r'0001\.npy: depths must be finite and >= 0'),
    ('depth', np.full((8, 12), np.nan, np.float32), r'0001\.npy: depths must be finite and >= 0'),
    ('depth', b'depth 1.0\n', r'0001\.npy: not a NumPy array file of depths'),
  ],
)
def test_nyud_refused_files(tmp_path, target, bad, message):
  _write_nyud(tmp_path, 'train', {'0001': (np.ones((8, 12), np.uint8), np.ones((8, 12), np.float32))})
  if isinstance(bad, bytes):
    (tmp_path / 'depth' / '0001.npy').write_bytes(bad)
  elif target == 'depth':
    np.save(tmp_path / 'depth' / '0001.npy', bad)
  else:
    _png(str(tmp_path / 'segmentation' / '0001.png'), bad)
  dataset = nyud.get(f'nyud:{tmp_path}', target=target)
  with pytest.raises(ValueError, match=message):
    dataset.load(0)


def test_nyud_refused_sets(tmp_path):
  _write_nyud(tmp_path, 'train', {'0001': (np.ones((8, 12), np.uint8), np.ones((8, 12), np.float32))})
  with pytest.raises(FileNotFoundError, match=r'gt_sets/val\.txt is missing'):
    nyud.get(f'nyud:{tmp_path}:val')
  with pytest.raises(ValueError, match=r"target 'normals' is not one of segmentation, depth"):
    nyud.get(f'nyud:{tmp_path}', target='normals')
  with pytest.raises(ValueError, match=r'expected nyud:PATH'):
    nyud.get('nyud:')
  os.remove(tmp_path / 'depth' / '0001.npy')
  nyud.get(f'nyud:{tmp_path}')  # segmentation does not need the depth files
  with pytest.raises(FileNotFoundError, match=r"'nyud:.*': .*depth/0001\.npy is missing"):
    nyud.get(f'nyud:{tmp_path}', target='depth')
  os.remove(tmp_path / 'images' / '0001.jpg')
  with pytest.raises(FileNotFoundError, match=r'images/0001\.jpg is missing'):
    nyud.get(f'nyud:{tmp_path}')


def test_readers_share_one_interface(tmp_path):
  """What the fine-tuning loop reads of a set: name, num_examples, num_classes, target, load."""
  voc_root = tmp_path / 'voc'
  os.makedirs(voc_root / 'ImageSets' / 'Segmentation')
  (voc_root / 'ImageSets' / 'Segmentation' / 'trainaug.txt').write_text('a\n')
  _png(str(voc_root / 'JPEGImages' / 'a.jpg'), np.zeros((4, 5, 3), np.uint8))
  _png(str(voc_root / 'SegmentationClassAug' / 'a.png'), np.full((4, 5), 3, np.uint8))
  _write_cityscapes(tmp_path / 'cs', 'train', {('c', 'n'): np.full((4, 5), 7, np.uint8)})
  _write_nyud(tmp_path / 'ny', 'train', {'1': (np.ones((4, 5), np.uint8), np.ones((4, 5), np.float32))})
  sets = [
    voc_segmentation.get(f'voc:{voc_root}:trainaug'),
    cityscapes.get(f'cityscapes:{tmp_path / "cs"}'),
    nyud.get(f'nyud:{tmp_path / "ny"}'),
    nyud.get(f'nyud:{tmp_path / "ny"}', target='depth'),
  ]
  assert [(s.num_examples, s.num_classes, s.target) for s in sets] == [
    (1, 21, 'segmentation'), (1, 19, 'segmentation'), (1, 40, 'segmentation'), (1, 1, 'depth'),
  ]  # fmt: skip
  for dataset in sets:
    image, target = dataset.load(0)
    assert image.shape == (4, 5, 3) and target.shape == (4, 5) and isinstance(dataset.name, str)
    assert target.dtype == (np.float32 if dataset.target == 'depth' else np.uint8)
