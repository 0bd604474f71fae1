"""The scene generator (`input_pipeline.scenes`) on the real photographs: deterministic, labels that agree with the
masks, train and test divided by object instance and background, and every layout read by the project's readers.

Where the photographs are: $JAX_MOCO_TUXPAINT_STAMPS (tuxpaint-stamps-default's stamps/ folder) and
$JAX_MOCO_AI_BENCHMARK (ai-benchmark's ai_benchmark/data/classification/ folder); .ci/run unpacks both packages
into a cache and sets them. Otherwise the installed packages' folders. With neither, those tests are skipped; with
a variable set to a folder that lacks the files, they fail. The parts that need no photographs always run."""

import dataclasses
import filecmp
import json
import os

import numpy as np
from PIL import Image
import pytest

from input_pipeline import scene_composition as composition
from input_pipeline import scenes
from input_pipeline import sources
from input_pipeline import voc07
from jax_moco.readers import davis
from jax_moco.readers import voc_segmentation

SETTINGS = composition.Settings(
  seed=3, size=64, train_images=14, test_images=7, train_videos=2, test_videos=1, frames=5
)


@pytest.fixture(scope='module')
def photographs():
  """(stamps folder, backgrounds folder): skipped when neither given nor installed, failed when given but empty."""
  given = any(os.environ.get(v) for v in (scenes.STAMPS_VARIABLE, scenes.BACKGROUNDS_VARIABLE))
  stamps, backgrounds = scenes.default_folders()
  if not given and not (os.path.isdir(stamps) and os.path.isdir(backgrounds or '')):
    pytest.skip(
      f'no photographs: apt-get install tuxpaint-stamps-default and pip install ai-benchmark, or set '
      f'{scenes.STAMPS_VARIABLE} and {scenes.BACKGROUNDS_VARIABLE} (see .ci/run)'
    )
  try:
    composition.cutouts(stamps)
    composition.backgrounds(backgrounds)
  except FileNotFoundError as error:
    pytest.fail(f'{error} ({scenes.STAMPS_VARIABLE}, {scenes.BACKGROUNDS_VARIABLE}: see .ci/run)')
  return stamps, backgrounds


@pytest.fixture(scope='module')
def generated(photographs, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('scenes') / 'set')
  scenes.generate(out, *photographs, SETTINGS)
  return out


def relative_files(root):
  return sorted(os.path.relpath(os.path.join(p, f), root) for p, _, files in os.walk(root) for f in files)


def test_the_generator_is_deterministic_and_its_seed_matters(generated, photographs, tmp_path):
  again = str(tmp_path / 'again')
  scenes.generate(again, *photographs, SETTINGS)
  files = relative_files(generated)
  assert files == relative_files(again) and len(files) > 100
  _, mismatched, errors = filecmp.cmpfiles(generated, again, files, shallow=False)
  assert not mismatched and not errors
  other = str(tmp_path / 'other')
  scenes.generate(other, *photographs, dataclasses.replace(SETTINGS, seed=4, train_videos=0, test_videos=0))
  image = os.path.join('scene', 'VOC2007', 'JPEGImages', 'train_000000.jpg')
  assert not filecmp.cmp(os.path.join(generated, image), os.path.join(other, image), shallow=False)
  with pytest.raises(FileExistsError, match='not empty'):
    scenes.generate(again, *photographs, SETTINGS)


def labelled_images(root, split):
  """[(id, {class id: VOC 2007 value}, class mask)] of a VOC2007 folder's split."""
  main = os.path.join(root, 'ImageSets', 'Main')
  ids = open(os.path.join(main, f'{split}.txt')).read().split()
  values = {i: {} for i in ids}
  for c, name in enumerate(composition.CLASSES, 1):
    for line in open(os.path.join(main, f'{name}_{split}.txt')):
      image_id, value = line.split()
      values[image_id][c] = int(value)
  return [(i, values[i], np.asarray(Image.open(os.path.join(root, 'SegmentationClass', f'{i}.png')))) for i in ids]


@pytest.mark.parametrize('kind', composition.KINDS)
def test_an_image_is_labelled_with_exactly_the_classes_its_mask_shows(generated, kind):
  counts = []
  for split in ('trainval', 'test'):
    for image_id, values, mask in labelled_images(os.path.join(generated, kind, 'VOC2007'), split):
      shown = set(np.unique(mask).tolist()) - {0, 255}
      assert {c for c, v in values.items() if v == 1} == shown, image_id
      assert 255 in mask and 0 in mask, image_id  # the borders and the background
      counts.append(len(shown))
  if kind == 'object':
    assert set(counts) == {1}
  else:
    assert max(counts) > 1  # scene-centric images hold several objects


def test_objects_are_larger_and_central_in_object_centric_images(generated):
  masks = {
    kind: [m for _, _, m in labelled_images(os.path.join(generated, kind, 'VOC2007'), 'trainval')]
    for kind in composition.KINDS
  }
  shares = {kind: np.median([np.mean(m != 0) for m in masks[kind]]) for kind in masks}
  assert shares['object'] > 1.3 * shares['scene'], shares
  # How far the objects' pixels' centroid is from the image's centre (a fraction of the side, the larger axis): an
  # asymmetric cut-out (a tail, a stem) moves it off its box's centre, so the median is what is bounded.
  offsets = {
    kind: np.median([np.abs(np.argwhere((m != 0) & (m != 255)).mean(0) / len(m) - 0.5).max() for m in masks[kind]])
    for kind in masks
  }
  assert offsets['object'] < 0.12 and offsets['object'] < offsets['scene'], offsets


def test_train_and_test_differ_by_instance_and_background(generated, photographs):
  parts = json.load(open(os.path.join(generated, 'splits.json')))
  for name, all_cutouts in composition.cutouts(photographs[0]).items():
    train, test = parts['cutouts']['train'][name], parts['cutouts']['test'][name]
    assert train and test and not set(train) & set(test) and sorted(train + test) == all_cutouts
  train, test = parts['backgrounds']['train'], parts['backgrounds']['test']
  assert train and test and not set(train) & set(test) and sorted(train + test) == sorted(composition.BACKGROUNDS)
  settings = json.load(open(os.path.join(generated, 'settings.json')))
  assert settings['settings'] == dataclasses.asdict(SETTINGS) and settings['classes'] == list(composition.CLASSES)


def test_the_projects_readers_read_every_layout(generated):
  for kind in composition.KINDS:
    for split, count in (('train', SETTINGS.train_images), ('test', SETTINGS.test_images)):
      labels = sources.get_source(f'voc07:{generated}/{kind}:{scenes.VOC07_SPLITS[split]}')
      assert labels.multi_label and labels.class_names == composition.CLASSES and labels.num_examples == count
      assert labels.load(0)['image'].shape == (SETTINGS.size, SETTINGS.size, 3)
  folder = sources.get_source(f'folder:{generated}/object/train')
  assert folder.class_names == composition.CLASSES and folder.num_examples == SETTINGS.train_images
  segmentation = voc_segmentation.get(f'voc:{generated}/scene/VOC2007:val')
  assert segmentation.num_examples == SETTINGS.test_images
  image, mask = segmentation.load(0)
  assert image.shape == (64, 64, 3) and mask.max() == 255
  videos = davis.get(f'davis:{generated}/video:train')
  assert videos.num_examples == SETTINGS.train_videos
  frames, masks, objects = videos.videos[0].load()
  assert frames.shape == (SETTINGS.frames, 64, 64, 3) and masks.shape == frames.shape[:3] and objects[0] == 1
  assert not np.array_equal(masks[0], masks[-1])  # the objects move


def test_the_border_marks_both_sides_of_every_edge_and_the_labels_follow_the_mask():
  instances = np.zeros((8, 8), np.uint8)
  instances[2:6, 2:6] = 1
  instances[3, 3] = 2  # an object hidden entirely by the border
  placements = [composition.Placement(3, '', (0.5, 0.5), 0.5, False), composition.Placement(5, '', (0, 0), 0.1, False)]
  mask = scenes.class_mask(instances, placements, 1)
  expected = np.zeros((8, 8), np.uint8)
  expected[1:7, 1:7] = 255
  expected[[1, 1, 6, 6], [1, 6, 1, 6]] = 0  # a corner's 4 neighbours are all background
  expected[4, 4] = 3
  np.testing.assert_array_equal(mask, expected)
  labels = scenes.image_labels(instances, mask, placements)
  assert labels == [-1, -1, 1, -1, 0, -1, -1]  # class 5 shows only under the border: "difficult"
  assert scenes.object_borders(instances, 2)[0].any()


def test_the_palette_is_vocs():
  assert scenes.voc_palette()[:15] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128]
  assert scenes.voc_palette()[255 * 3 :] == [224, 224, 192]


def test_voc07_reads_a_folders_own_classes(tmp_path):
  assert voc07.class_names(str(tmp_path)) == voc07.CLASSES
  (tmp_path / 'classes.txt').write_text('cat\ndog\n')
  assert voc07.class_names(str(tmp_path)) == ('cat', 'dog')
  (tmp_path / 'classes.txt').write_text('\n')
  with pytest.raises(ValueError, match='names no class'):
    voc07.class_names(str(tmp_path))


def test_the_instance_split_is_seeded_and_keeps_one_on_each_side():
  parts = composition.split(list('abcdefgh'), 0.25, 7)
  assert parts == composition.split(list('abcdefgh'), 0.25, 7) and len(parts['test']) == 2
  assert sorted(parts['train'] + parts['test']) == list('abcdefgh')
  assert {len(p) for p in composition.split(['a', 'b'], 0.9, 0).values()} == {1}


def test_the_samples_picture_shows_images_masks_and_a_video(generated, tmp_path):
  picture = Image.open(scenes.samples_picture(generated, str(tmp_path / 'samples.png'), count=2))
  assert picture.size == (4 * SETTINGS.size, 4 * SETTINGS.size)  # 2 rows of pairs, the video's frames and masks
  mask = np.asarray(picture)[: SETTINGS.size, SETTINGS.size : 2 * SETTINGS.size]
  assert (mask == 0).all(axis=-1).any() and (mask == 224).any()  # VOC's black background and cream border


def test_a_file_is_refused_as_the_sets_folder(tmp_path):
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(FileExistsError, match=f'{tmp_path}/a_file is a file'):
    scenes.generate(str(tmp_path / 'a_file'), str(tmp_path), str(tmp_path), SETTINGS)
