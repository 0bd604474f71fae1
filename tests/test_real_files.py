"""The VOC and DAVIS readers and segment retrieval on real files: Debian's `labelme-examples` ships three PASCAL VOC
2011 photographs with their VOC-palette class masks (examples/semantic_segmentation/data_dataset_voc/) and five
frames of a street video with a mask each (examples/video_annotation/data_dataset_voc/). The tests arrange them in
the VOC and DAVIS folder layouts in a temporary folder (symbolic links) and read them through `voc:` and `davis:`.

Where the files are: $JAX_MOCO_LABELME_EXAMPLES (the package's examples/ folder; .ci/run unpacks the package into a
cache and sets it), else the installed package's folder. With neither, the tests are skipped; with the variable set
to a folder that lacks them, they fail."""

import os
import pathlib

import numpy as np
from PIL import Image
import pytest

from input_pipeline import dense_transforms
from input_pipeline import voc07
from jax_moco.evaluators import segment_retrieval
from jax_moco.readers import davis
from jax_moco.readers import voc_segmentation

ENVIRONMENT_VARIABLE = 'JAX_MOCO_LABELME_EXAMPLES'
INSTALLED = '/usr/share/doc/labelme-examples/examples'  # apt-get install labelme-examples
VOC_FOLDER = pathlib.Path('semantic_segmentation', 'data_dataset_voc')
VIDEO_FOLDER = pathlib.Path('video_annotation', 'data_dataset_voc')
# The first colours of the PASCAL VOC palette, which DAVIS's masks use too: black, dark red, dark green, olive.
PALETTE_START = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]
CELL = 8  # the encoder's stride


@pytest.fixture(scope='module')
def examples():
  """labelme-examples' examples/ folder: skipped when neither given nor installed, failed when given but empty."""
  path = os.environ.get(ENVIRONMENT_VARIABLE)
  if path is None and not os.path.isdir(INSTALLED):
    pytest.skip(f'no real files: apt-get install labelme-examples, or set {ENVIRONMENT_VARIABLE} (see .ci/run)')
  path = pathlib.Path(path or INSTALLED)
  for folder in (VOC_FOLDER, VIDEO_FOLDER):
    if not (path / folder / 'JPEGImages').is_dir():
      pytest.fail(
        f"{path / folder / 'JPEGImages'} is missing: {ENVIRONMENT_VARIABLE} must name labelme-examples' "
        'examples/ folder (.ci/run unpacks the package there)'
      )
  return path


def voc_folder(examples, root):
  """The three photographs as a VOC folder with a val list: labelme names the PNG masks' folder
  SegmentationClassPNG (its SegmentationClass holds NumPy arrays), VOC names it SegmentationClass."""
  source = examples / VOC_FOLDER
  (root / 'ImageSets' / 'Segmentation').mkdir(parents=True)
  os.symlink(source / 'JPEGImages', root / 'JPEGImages')
  os.symlink(source / 'SegmentationClassPNG', root / 'SegmentationClass')
  ids = sorted(p.stem for p in (source / 'JPEGImages').glob('*.jpg'))
  (root / 'ImageSets' / 'Segmentation' / 'val.txt').write_text(''.join(f'{i}\n' for i in ids))
  return voc_segmentation.get(f'voc:{root}:val')


def test_voc_reader_on_real_photographs(examples, tmp_path):
  dataset = voc_folder(examples, tmp_path / 'voc')
  assert dataset.ids == ('2011_000003', '2011_000006', '2011_000025')
  # person and bottle; person, chair and sofa; bus and car (255: the outlines labelme leaves unlabelled)
  expected_classes = ({0, 5, 15, 255}, {0, 9, 15, 18, 255}, {0, 6, 7})
  for index, (name, classes) in enumerate(zip(dataset.ids, expected_classes)):
    image, mask = dataset.load(index)
    with Image.open(examples / VOC_FOLDER / 'JPEGImages' / f'{name}.jpg') as jpeg:
      np.testing.assert_array_equal(image, np.asarray(jpeg.convert('RGB')))
    with Image.open(examples / VOC_FOLDER / 'SegmentationClassPNG' / f'{name}.png') as png:
      assert png.mode == 'P' and png.getpalette()[:12] == PALETTE_START
      np.testing.assert_array_equal(mask, np.asarray(png))
    assert image.shape[:2] == mask.shape and image.shape[1] == 500 and mask.dtype == np.uint8
    assert set(np.unique(mask)) == classes
    # labelme's own class-id arrays (-1 unlabelled) agree: the palette indices are the class ids.
    class_ids = np.load(examples / VOC_FOLDER / 'SegmentationClass' / f'{name}.npy')
    np.testing.assert_array_equal(np.where(class_ids < 0, dense_transforms.IGNORE, class_ids), mask)
  # ... in VOC's order: id c is VOC's class c (after the background), as voc07 lists them.
  names = (examples / VOC_FOLDER / 'class_names.txt').read_text().split('\n')
  normalised = tuple(n.replace(' ', '').replace('/', '') for n in names if n)
  assert normalised == ('_background_', *voc07.CLASSES) and len(normalised) == voc_segmentation.NUM_CLASSES


def test_davis_reader_on_real_video_frames(examples, tmp_path):
  """labelme's video masks are class masks (0 background, 1 car, 2 "track", labelme's truck), but each class is one
  object here, a parked car and a truck driving past, so the class ids serve as DAVIS object ids unchanged."""
  source, root = examples / VIDEO_FOLDER, tmp_path / 'davis'
  stems = sorted(p.stem for p in (source / 'JPEGImages').glob('*.jpg'))
  for folder in ('JPEGImages', 'Annotations'):
    (root / folder / '480p' / 'street').mkdir(parents=True)
  for i, stem in enumerate(stems):
    os.symlink(source / 'JPEGImages' / f'{stem}.jpg', root / 'JPEGImages' / '480p' / 'street' / f'{i:05d}.jpg')
    os.symlink(
      source / 'SegmentationClassPNG' / f'{stem}.png', root / 'Annotations' / '480p' / 'street' / f'{i:05d}.png'
    )
  (root / 'ImageSets' / '2017').mkdir(parents=True)
  (root / 'ImageSets' / '2017' / 'val.txt').write_text('street\n')

  dataset = davis.get(f'davis:{root}')
  assert dataset.name == f'davis:{root}:val' and dataset.num_examples == 1
  video = dataset.videos[0]
  assert video.frame_names == ('00000', '00001', '00002', '00003', '00004') and video.palette()[:12] == PALETTE_START
  frames, masks, objects = video.load()
  assert frames.shape == (5, 563, 1000, 3) and frames.dtype == np.uint8 and objects == (1, 2)
  for frame, mask, stem in zip(frames, masks, stems):
    with Image.open(source / 'JPEGImages' / f'{stem}.jpg') as jpeg:
      np.testing.assert_array_equal(frame, np.asarray(jpeg.convert('RGB')))
    with Image.open(source / 'SegmentationClassPNG' / f'{stem}.png') as png:
      np.testing.assert_array_equal(mask, np.asarray(png))
  # The parked car stays put; the truck drives into the picture, covering more of each frame than of the one before.
  assert all(np.array_equal(m == 1, masks[0] == 1) for m in masks)
  truck = (masks == 2).sum(axis=(1, 2))
  assert (np.diff(truck) > 0).all()


def colour_and_place(images):
  """Dense features of each CELL x CELL cell: its mean colour and its place, centred, so that K-means regions are
  patches of one colour."""
  n, h, w, _ = images.shape
  colour = images.reshape(n, h // CELL, CELL, w // CELL, CELL, 3).mean(axis=(2, 4)) / 255 - 0.5
  place = np.stack(np.meshgrid(np.linspace(-1, 1, h // CELL), np.linspace(-1, 1, w // CELL), indexing='ij'), -1)
  return np.concatenate([colour, np.broadcast_to(place, (n, *place.shape))], axis=-1).astype(np.float32)


def test_segment_retrieval_end_to_end_on_real_photographs(examples, tmp_path):
  """Retrieving from the validation images themselves, every region finds itself, so the score is how well
  the regions follow the real masks: high with many small regions. With the training masks' classes permuted, the
  same regions retrieve wrong classes."""
  dataset = voc_folder(examples, tmp_path / 'voc')
  result = segment_retrieval.segment_retrieval(colour_and_place, dataset, dataset, image_size=128, k=64)
  assert set(result) == {'miou', 'iou_per_class', 'num_train_regions', 'num_train', 'num_test'}
  assert (result['num_train'], result['num_test']) == (3, 3) and 3 * 32 <= result['num_train_regions'] <= 3 * 64
  scored = {c for c, iou in enumerate(result['iou_per_class']) if iou is not None}
  assert scored == {0, 5, 6, 7, 9, 15, 18}  # the classes of the three masks (test_voc_reader_on_real_photographs)
  assert result['miou'] > 55 and result['iou_per_class'][0] > 80

  permuted = tmp_path / 'permuted'
  (permuted / 'SegmentationClass').mkdir(parents=True)
  os.symlink(dataset.image_dir, permuted / 'JPEGImages')
  os.symlink(tmp_path / 'voc' / 'ImageSets', permuted / 'ImageSets')
  shift = np.arange(256, dtype=np.uint8)
  shift[sorted(scored)] = np.roll(sorted(scored), 1)  # each class to another of the masks' classes; 255 stays
  for index, name in enumerate(dataset.ids):
    Image.fromarray(shift[dataset.load(index)[1]]).save(permuted / 'SegmentationClass' / f'{name}.png')
  train = voc_segmentation.get(f'voc:{permuted}:val')
  wrong = segment_retrieval.segment_retrieval(colour_and_place, train, dataset, image_size=128, k=64)
  assert wrong['miou'] < 10
