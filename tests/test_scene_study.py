"""scripts/scene_study.py: its rows' configs (each adds one thing; the centric rows differ only in their images), a
folder that is not a generated set refused, the CAM pictures put side by side, and one row end to end on a tiny
generated set (train, every protocol, the table, read back by a second invocation without training again).

The end-to-end test needs the photographs the generator composes from (tests/test_scenes.py's `photographs`: skipped
when neither given nor installed; CI installs them)."""

import dataclasses
import os
import re

import numpy as np
from PIL import Image
import pytest

from input_pipeline import scene_composition as composition
from input_pipeline import scenes
from jax_moco import evaluators
from scripts import runs
from scripts import scene_study
from tests.test_scenes import photographs  # noqa: F401 (a fixture)
from tests.test_scripts import TINY
from tests.test_scripts import files_of

# The linear probe picks its L2 on a stratified 20 % of the training images: at least one a class (7 classes).
SETTINGS = composition.Settings(
  seed=0, size=32, train_images=35, test_images=14, train_videos=1, test_videos=1, frames=4
)
# A set's settings.json as the study reads it, for the tests that need no set on disk.
RECORD = {'settings': dataclasses.asdict(composition.Settings(size=64, train_images=1000))}


def flat_config(rows, name, seed=0, steps=7, overrides=None):
  scale = scene_study.scale_overrides('DATA', RECORD, scene_study.batch_size(overrides))
  return dict(runs.flat_fields(scene_study.row_config(rows, name, seed, scale, steps, overrides).to_dict()))


def test_the_scene_scale_and_the_rows_configs():
  scale = scene_study.scale_overrides('DATA', RECORD, 64)
  # 64 px views, 32 px small crops, a queue of 448 <= 500, half the 1000 training images, in steps of the batch.
  assert scale['crops.large_size'] == 64 and scale['crops.small_size'] == 32 and scale['moco.queue_size'] == 448
  methods = scene_study.study_rows('methods', 'DATA')
  configs = [flat_config(methods, name) for name in methods]
  added = [sorted(k for k in b if b[k] != a[k]) for a, b in zip(configs, configs[1:])]
  assert added == [
    ['crops.min_overlap', 'crops.num_small', 'crops.small_scale', 'method'],
    ['crops.aplus'],
    ['method', 'moco.nn_order', 'moco.nn_weight'],
  ]
  for c in configs:  # the scene-centric training images only; the monitor on the object-centric folders
    assert c['dataset'] == 'voc07:DATA/scene/VOC2007:trainval' and c['crops.large_size'] == 64
    assert c['knn_bank_dataset'] == 'folder:DATA/object/train' and c['eval_dataset'] == 'folder:DATA/object/test'
    assert c['num_train_steps'] == 7 and c['batch_size'] == 64 and c['moco.queue_size'] == 448
  centric = scene_study.study_rows('centric', 'DATA')
  objects, scene = (flat_config(centric, name) for name in ('object', 'scene'))
  assert sorted(k for k in objects if objects[k] != scene[k]) == ['dataset']
  assert objects['dataset'] == 'voc07:DATA/object/VOC2007:trainval' and objects['method'] == 'mocov2'
  # The common overrides come last: a batch of 32 makes the queue a multiple of 32.
  assert flat_config(centric, 'scene', overrides={'batch_size': 32})['moco.queue_size'] == 480
  with pytest.raises(ValueError, match="model.archh: the config has no field 'archh' \\(did you mean arch\\?\\)"):
    flat_config(centric, 'scene', overrides={'model.archh': 'resnet10'})


def test_each_protocol_reads_the_right_part_of_the_set_at_its_size():
  requests = {protocol: keywords for _, protocol, _, keywords in scene_study.protocols('DATA', 64)}
  objects = dict(dataset='folder:DATA/object/train', test_dataset='folder:DATA/object/test', image_size=64)
  assert requests['knn'] == requests['linear_probe'] == objects
  assert requests['voc07_svm'] == dict(dataset='voc07:DATA/scene/VOC2007', image_size=56)  # 7/8, as 224 of 256
  assert requests['segment_retrieval'] == dict(dataset='voc:DATA/scene/VOC2007', image_size=64)
  assert requests['label_propagation'] == dict(dataset='davis:DATA/video')  # frames at their own size
  if 'segmentation' in evaluators.PROTOCOLS:
    assert requests['segmentation']['dataset'] == 'voc:DATA/scene/VOC2007'
    evaluators.options('segmentation', **{k: v for k, v in requests['segmentation'].items() if k != 'dataset'})
  assert [r[1] for r in scene_study.protocols('DATA', 64, ['label_propagation', 'knn'])] == ['knn', 'label_propagation']
  with pytest.raises(ValueError, match='--protocols: kn not among voc07_svm, knn'):
    scene_study.protocols('DATA', 64, ['knn', 'kn'])


def test_a_folder_that_is_not_a_generated_set_is_refused(tmp_path):
  (tmp_path / 'scene' / 'VOC2007' / 'JPEGImages').mkdir(parents=True)
  with pytest.raises(ValueError, match='not a set written by') as refused:
    scene_study.run_study(str(tmp_path), str(tmp_path / 'out'), 'methods')
  assert 'settings.json' in str(refused.value) and 'video/ImageSets/2017' in str(refused.value)
  assert 'scene/VOC2007/JPEGImages' not in str(refused.value)
  assert not (tmp_path / 'out').exists()


def test_pictures_side_by_side(tmp_path):
  colours = [(255, 0, 0), (0, 0, 255)]
  paths = [str(tmp_path / f'{i}.png') for i in range(2)]
  Image.new('RGB', (30, 20), colours[0]).save(paths[0])
  Image.new('RGB', (40, 50), colours[1]).save(paths[1])
  picture = np.asarray(Image.open(scene_study.side_by_side(paths, ['a', 'b'], str(tmp_path / 'both.png'))))
  assert picture.shape == (24 + 50, 70, 3)
  assert (picture[24:44, :30] == colours[0]).all() and (picture[24:, 30:] == colours[1]).all()
  assert (picture[44:, :30] == 255).all() and (picture[:24] < 255).any()  # white below the shorter one; titles above


@pytest.fixture(scope='module')
def scene_set(photographs, tmp_path_factory):  # noqa: F811 (the imported fixture)
  out = str(tmp_path_factory.mktemp('scene_study') / 'set')
  scenes.generate(out, *photographs, SETTINGS)
  return out


@pytest.mark.fast_compile
@pytest.mark.heavy(40)  # seconds on 2 cores: one training of 2 steps, three protocols twice, the CAMs
def test_one_row_trains_is_scored_tabulated_and_read_back(scene_set, tmp_path, monkeypatch):
  overrides = dict(scene_study.ablation.parse_override(o) for o in TINY if not o.startswith(('dataset', 'eval_')))
  out = str(tmp_path / 'out')
  # A protocol of each kind of data: the scene-centric VOC07 lists, the object-centric folders, the videos.
  study = dict(names=['mocov2'], seeds=[0], steps=2, overrides=overrides)
  study['protocol_names'] = ['voc07_svm', 'knn', 'label_propagation']
  table = scene_study.run_study(scene_set, out, 'methods', **study)
  assert (tmp_path / 'out' / 'table.md').read_text() == table + '\n'
  columns = 3
  lines = table.splitlines()
  number = r'\d+\.\d\d'
  assert lines[0].startswith('| pretraining | config | images | VOC07 SVM mAP % | kNN top-1 % |')
  assert re.fullmatch(r'\| random init \| - \| - \|' + rf' {number} \|' * columns + r' 0 \| - \| - \|', lines[2])
  row = r'\| MoCo-v2 \| configs/mocov2.py \| scene-centric \|' + rf' {number} \|' * columns + r' 2 \| 32 \| \d+ \|'
  assert re.fullmatch(row, lines[3])
  assert lines[5].startswith('Seed 0;') and len(lines) == 6 + columns
  assert '(28 px, 14 test images)' in lines[6]  # VOC07: the central 7/8 of the 32 px images
  assert '(at their own size, 1 videos)' in table

  # A second invocation reads every result: no file of the run changes.
  before = files_of(os.path.join(out, 'mocov2_seed0'))
  assert scene_study.run_study(scene_set, out, 'methods', **study) == table
  assert files_of(os.path.join(out, 'mocov2_seed0')) == before

  # The CAM pictures (here of the one row twice), on the same test images, side by side.
  monkeypatch.setattr(scene_study, 'CAM_ROWS', ('mocov2', 'mocov2'))
  (path,) = scene_study.cam_pictures(out, [0], scene_set, None, cam_images=2)
  single = Image.open(os.path.join(out, 'mocov2_seed0', 'eval', 'step_2_online', 'cam.png'))
  assert path == os.path.join(out, 'cam_seed0.png') and Image.open(path).width == 2 * single.width
