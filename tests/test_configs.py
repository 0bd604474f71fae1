"""Every config and preset builds and validates; bad fields are refused, by the CLI too, with the field named; the
kNN monitor's queries follow the training set (eval_dataset='auto'), and a bank and queries that cannot be compared
are refused naming both fields."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from configs import base
from configs import knn
from configs import mocov2
from configs import multicrop
from configs import presets
from input_pipeline import sources
from jax_moco import config_checks
from jax_moco import monitor
from jax_moco import state as state_lib
from jax_moco import train
from jax_moco.evaluators import common
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('module', [mocov2, multicrop, knn])
@pytest.mark.parametrize('preset', presets.PRESETS)
def test_every_config_and_preset_is_valid(module, preset):
  config = module.get_config(preset)
  for devices in (8, 1):
    config_checks.validate(config, num_devices=devices)
    groups = config_checks.bn_groups_for(config, devices)
    assert devices * groups >= 2 and config.batch_size % (devices * groups) == 0
  if preset in ('coco', 'imagenet'):  # the authors' BN batch: 128 images a group on one device and on two
    assert config.batch_size // config_checks.bn_groups_for(config, 1) == 128
    assert config.batch_size // (2 * config_checks.bn_groups_for(config, 2)) == 128


def test_variants_differ_where_the_paper_says():
  m, mc, k = mocov2.get_config(), multicrop.get_config('coco'), knn.get_config()
  assert (m.crops.num_small, m.moco.nn_weight, m.crops.aplus) == (0, 0.0, False)
  assert (mc.crops.num_small, mc.crops.min_overlap, mc.moco.nn_weight) == (4, 0.2, 0.0)
  assert tuple(mc.crops.small_scale) == (0.05, 0.14)
  assert (k.crops.aplus, k.moco.nn_weight, k.moco.nn_topk) == (True, 0.4, 20)
  coco = knn.get_config('coco')
  assert (
    coco.model.arch,
    coco.batch_size,
    coco.moco.queue_size,
    coco.crops.large_size,
    coco.crops.small_size,
    coco.moco.momentum,
    coco.optim.base_lr,
    coco.num_epochs,
  ) == ('resnet50', 256, 65536, 160, 96, 0.995, 0.3, 200)
  cifar = knn.get_config('cifar10')
  assert (cifar.model.arch, cifar.model.stem, cifar.moco.queue_size) == ('resnet18', 'cifar', 4096)


def test_section3_presets_are_mocov2_for_400_epochs_on_the_papers_subsets():
  expected = {
    'in118k': 'folder:data/imagenet/train|uniform=118000,seed=0',
    'in118k_lt': 'folder:data/imagenet/train|pareto=6,total=118000,seed=0',
    'oi118k': 'folder:data/openimages/train|random=118000,seed=0',
    'bdd100k': 'folder:data/bdd100k/images/100k/train',
  }
  for preset, dataset in expected.items():
    c = mocov2.get_config(preset)
    assert c.dataset == dataset
    assert (c.model.arch, c.batch_size, c.optim.base_lr, c.moco.temperature, c.moco.momentum, c.num_epochs) == (
      'resnet50',
      256,
      0.3,
      0.2,
      0.999,
      400,
    )
    assert (c.crops.large_size, c.moco.queue_size, c.crops.max_iou) == (224, 65536, 1.0)


def test_unknown_preset_is_refused():
  with pytest.raises(ValueError, match='unknown preset'):
    knn.get_config('imagenet22k')


def test_cli_refuses_an_invalid_field_before_compiling(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'jax_moco.main',
      '--config=configs/knn.py',
      f'--workdir={tmp_path}',
      '--config.moco.queue_size=1000',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, XLA_FLAGS=''),
  )
  assert result.returncode != 0
  assert 'moco.queue_size: K=1000 must be a positive multiple of the global batch_size=64' in result.stderr
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_cifar10_preset_is_the_moco_colabs_run():
  """facebookresearch/moco's CIFAR-10 Colab: ResNet-18 (3x3 stem, no max-pool), fc 512 -> 128 as the head, K = 4096,
  m = 0.99, T = 0.1, 8 BN splits, batch 512, lr 0.06 cosine per epoch, wd 5e-4, 200 epochs, RandomResizedCrop(32) at
  scale (0.08, 1), no blur, CIFAR-10 mean/std, kNN monitor (k = 200, T = 0.1) on the normalised head output."""
  c = mocov2.get_config('cifar10')
  assert (c.model.arch, c.model.stem, c.model.width, c.model.head, c.model.projection_dim) == (
    'resnet18',
    'cifar',
    1.0,
    'linear',
    128,
  )
  assert (c.moco.queue_size, c.moco.momentum, c.moco.temperature, c.bn_groups) == (4096, 0.99, 0.1, 8)
  assert c.batch_size == 512 and c.optim.base_lr * c.batch_size / 256 == pytest.approx(0.06)
  assert (c.optim.lr_decay_every, c.optim.weight_decay, c.optim.momentum, c.num_epochs) == ('epoch', 5e-4, 0.9, 200)
  assert (c.crops.large_size, tuple(c.crops.large_scale), c.crops.blur_probability) == (32, (0.08, 1.0), 0.0)
  assert c.crops.num_small == 0 and not c.crops.aplus and c.moco.nn_weight == 0 and not c.moco.symmetric
  assert (c.model.normalization, c.knn.feature, c.knn.k, c.knn.temperature) == ('cifar10', 'head', 200, 0.1)
  c.moco.symmetric = True  # its --symmetric
  config_checks.validate(c, num_devices=1)


def test_mocov1_preset_is_the_moco_papers_imagenet_run():
  """He et al. 2020, Sec. 3.3 and 4: ResNet-50, linear 128-d head, batch 256, lr 0.03 x0.1 at 120 and 160 of 200
  epochs, wd 1e-4, m 0.999, tau 0.07, K 65536, no blur; the schedule it builds steps there."""
  c = mocov2.get_config('mocov1')
  assert (c.model.arch, c.model.head, c.model.projection_dim, c.batch_size, c.num_epochs) == (
    'resnet50',
    'linear',
    128,
    256,
    200,
  )
  assert (c.optim.base_lr, c.optim.schedule, tuple(c.optim.lr_milestones), c.optim.weight_decay) == (
    0.03,
    'step',
    (120, 160),
    1e-4,
  )
  assert (c.moco.momentum, c.moco.temperature, c.moco.queue_size, c.crops.blur_probability) == (0.999, 0.07, 65536, 0)
  assert (c.crops.num_small, c.moco.nn_weight, c.crops.aplus, c.crops.large_size) == (0, 0.0, False, 224)
  lr = state_lib.learning_rate_fn(c, total_steps=200 * 5, steps_per_epoch=5)
  assert [float(lr(5 * e)) for e in (0, 119, 120, 159, 160, 199)] == pytest.approx([0.03, 0.03, 3e-3, 3e-3, 3e-4, 3e-4])


def test_coco800_warms_the_nn_loss_up_for_20_epochs():
  assert knn.get_config('coco').moco.nn_warmup_epochs == 5.0
  long = knn.get_config('coco800')
  assert (long.num_epochs, long.moco.nn_warmup_epochs) == (800, 20.0)


@pytest.mark.parametrize(
  'field,value',
  [
    ('optim.base_lr', -1.0),
    ('optim.momentum', 1.0),
    ('optim.weight_decay', -1e-4),
    ('crops.blur_probability', 1.5),
    ('model.head', 'transformer'),
    ('model.normalization', 'mnist'),
    ('knn.feature', 'logits'),
    ('knn.max_query_examples', -1),
    ('optim.lr_decay_every', 'week'),
    ('crops.max_iou', 0.0),
    ('crops.max_iou', 1.5),
    ('crops.max_iou_tries', 0),
    ('optim.schedule', 'linear'),
    ('crops.aplus_probability', 1.5),
    ('moco.nn_features', 'logits'),
  ],
)
def test_out_of_range_fields_are_refused(field, value):
  config = knn.get_config()
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(config_checks.ConfigError, match=field.replace('.', r'\.')):
    config_checks.validate(config, num_devices=1)


@pytest.mark.parametrize(
  'field,overrides',
  [
    ('moco.queue_size', {'moco.queue_size': 100}),
    ('batch_size', {'batch_size': 36}),
    ('bn_groups', {'bn_groups': 3}),
    ('moco.nn_order', {'moco.nn_order': 'sometimes'}),
    ('model.arch', {'model.arch': 'vit'}),
    ('crops.min_overlap', {'crops.min_overlap': 1.5}),
    ('dataset', {'dataset': 'embedded|uniform=5,random=3'}),
    ('knn_bank_dataset', {'knn_bank_dataset': 'embedded|pareto=6'}),
    ('optim.lr_milestones', {'optim.schedule': 'step', 'optim.lr_milestones': (160, 120)}),
    ('optim.lr_milestones', {'optim.schedule': 'step', 'optim.lr_milestones': (0, 120)}),
    ('optim.lr_step_factor', {'optim.schedule': 'step', 'optim.lr_step_factor': 0.0}),
    ('optim.warmup_epochs', {'optim.schedule': 'step', 'optim.warmup_epochs': 5.0}),
    ('optim.lr_decay_every', {'optim.schedule': 'step', 'optim.lr_decay_every': 'epoch'}),
  ],
)
def test_invalid_configs_are_refused_naming_the_field(field, overrides):
  with pytest.raises(config_checks.ConfigError, match=field.replace('.', r'\.')):
    config_checks.validate(tiny_config(**overrides), num_devices=8)


def test_one_bn_group_in_all_is_refused_and_auto_groups_resolve():
  with pytest.raises(config_checks.ConfigError, match='bn_groups.*nothing to shuffle'):
    config_checks.validate(tiny_config(bn_groups=1), num_devices=1)
  config_checks.validate(tiny_config(bn_groups=1), num_devices=8)  # 8 devices are 8 groups
  auto = tiny_config(bn_groups=0, batch_size=256)
  assert config_checks.bn_groups_for(auto, 1) == 2  # the authors' BN batch of 128
  assert config_checks.bn_groups_for(auto, 8) == 1
  assert config_checks.bn_groups_for(tiny_config(bn_groups=0, batch_size=64), 1) == 2
  assert config_checks.resolved(auto, 1).bn_groups == 2 and auto.bn_groups == 0


def two_crop(**overrides):
  """The MoCo-v2 two-crop test config (no small crops, no A+, no NN loss) with `overrides`."""
  return tiny_config(**{'moco.nn_weight': 0.0, 'crops.num_small': 0, 'crops.aplus': False, **overrides})


@pytest.mark.parametrize(
  'overrides',
  [{}, {'moco.nn_weight': 0.0, 'crops.aplus': False}, {'crops.num_small': 0, 'moco.nn_weight': 0.0}],
)
def test_symmetric_loss_is_refused_where_it_is_not_defined(overrides):
  with pytest.raises(config_checks.ConfigError, match=r'moco\.symmetric'):
    config_checks.validate(tiny_config(**{'moco.symmetric': True, **overrides}), num_devices=8)


def test_symmetric_loss_needs_room_for_both_crops_keys():
  config_checks.validate(two_crop(**{'moco.symmetric': True}), num_devices=8)
  with pytest.raises(config_checks.ConfigError, match=r'moco\.queue_size.*both crops'):
    config_checks.validate(two_crop(**{'moco.symmetric': True, 'moco.queue_size': 96}), num_devices=8)


def image_folders(root, layout):
  """{folder: [class sub-folder, ...] or a number of images directly in it}: two 8 x 8 PNGs a class; returns root."""
  pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8)
  for folder, classes in layout.items():
    for sub in [''] if isinstance(classes, int) else classes:
      (root / folder / sub).mkdir(parents=True, exist_ok=True)
      for i in range(classes if isinstance(classes, int) else 2):
        Image.fromarray(pixels).save(root / folder / sub / f'{i}.png')
  return root


def test_auto_eval_dataset_follows_the_training_set(tmp_path):
  image_folders(
    tmp_path,
    {
      'flat': 3,
      'imagenet/train': ['cat', 'dog'],
      'imagenet/val': ['cat', 'dog'],
      'other_classes/train': ['cat', 'dog'],
      'other_classes/val': ['cat', 'fox'],
      'other_classes/test': ['cat', 'dog'],
      'alone/train': ['cat', 'dog'],
      'labelled': ['cat', 'dog'],
    },
  )

  def queries(dataset, **overrides):
    return config_checks.eval_dataset_for(tiny_config(**{'dataset': dataset, 'eval_dataset': 'auto', **overrides}))

  assert base.get_config().eval_dataset == 'auto'
  assert queries('embedded') == ('embedded:test', '')  # the demo's monitor, as before 'auto'
  assert queries('embedded_subset:train') == ('embedded_subset:test', '')
  assert queries('embedded:test')[0] == ''  # nothing held out
  assert queries(f'folder:{tmp_path}/imagenet/train') == (f'folder:{tmp_path}/imagenet/val', '')
  assert queries(f'folder:{tmp_path}/imagenet/train/') == (f'folder:{tmp_path}/imagenet/val', '')
  assert queries(f'folder:{tmp_path}/other_classes/train') == (f'folder:{tmp_path}/other_classes/test', '')
  spec, why = queries(f'folder:{tmp_path}/flat')
  assert spec == '' and why == f'folder:{tmp_path}/flat has no class sub-folders (its images are unlabelled)'
  assert queries(f'folder:{tmp_path}/alone/train') == (
    '',
    f'folder:{tmp_path}/alone/train has no val or test folder with the same class sub-folders beside it',
  )
  assert queries(f'folder:{tmp_path}/labelled')[0] == ''  # not a train folder: no sibling is looked for
  # The queries follow the bank, which is knn_bank_dataset when it is set.
  bank = f'folder:{tmp_path}/imagenet/train'
  assert queries(f'folder:{tmp_path}/flat', knn_bank_dataset=bank)[0] == f'folder:{tmp_path}/imagenet/val'
  # What the user sets is kept; the resolved value is what config.json and the checkpoints record.
  assert queries(bank, eval_dataset='')[0] == '' and queries(bank, eval_dataset='embedded:test')[0] == 'embedded:test'
  assert config_checks.resolved(tiny_config(dataset=bank, eval_dataset='auto'), 8).eval_dataset == bank[:-5] + 'val'


def test_unlabelled_folder_trains_without_monitor_saying_so_once(tmp_path, caplog):
  image_folders(tmp_path, {'flat': 3})
  config = tiny_config(dataset=f'folder:{tmp_path}/flat', eval_dataset='auto')
  with caplog.at_level('WARNING'):
    run, source, monitor_data = train.prepare(config)
  assert run.eval_dataset == '' and monitor_data is None and source.num_classes is None
  said = [r.getMessage() for r in caplog.records if 'kNN monitor' in r.getMessage()]
  assert said == [
    f'kNN monitor off: folder:{tmp_path}/flat has no class sub-folders (its images are unlabelled). To monitor '
    'training, name a labelled split of the same classes: --config.eval_dataset=folder:VAL'
  ]
  caplog.clear()
  with caplog.at_level('WARNING'):  # turned off by the user: nothing to say
    assert train.prepare(tiny_config(dataset=f'folder:{tmp_path}/flat', eval_dataset=''))[2] is None
  assert not [r for r in caplog.records if 'kNN monitor' in r.getMessage()]


def test_labelled_folder_is_monitored_on_its_val_folder(tmp_path):
  image_folders(tmp_path, {'train': ['cat', 'dog'], 'val': ['cat', 'dog']})
  run, source, (bank, queries) = train.prepare(tiny_config(dataset=f'folder:{tmp_path}/train', eval_dataset='auto'))
  assert run.eval_dataset == f'folder:{tmp_path}/val' and bank is source
  assert queries.name == f'folder:{tmp_path}/val' and queries.class_names == bank.class_names == ('cat', 'dog')


@pytest.mark.parametrize(
  'overrides,refused',
  [
    # Fashion-MNIST's queries against the user's images: what eval_dataset's old default did.
    ({'dataset': 'folder:{root}/train', 'eval_dataset': 'embedded_subset:test'}, 'other class names'),
    ({'dataset': 'folder:{root}/train', 'eval_dataset': 'folder:{root}/val_fox'}, r'only in the bank: dog; only'),
    ({'dataset': 'folder:{root}/flat', 'eval_dataset': 'folder:{root}/train'}, r'folder:.*/flat has no single labels'),
    ({'dataset': 'folder:{root}/train', 'eval_dataset': 'folder:{root}/flat'}, 'has no single labels'),
  ],
)
def test_a_bank_and_queries_that_cannot_be_compared_are_refused_naming_the_fields(tmp_path, overrides, refused):
  image_folders(tmp_path, {'flat': 3, 'train': ['cat', 'dog'], 'val_fox': ['cat', 'fox']})
  config = tiny_config(**{k: v.format(root=tmp_path) for k, v in overrides.items()})
  with pytest.raises(train.BadInputError, match=refused) as error:
    train.prepare(config)
  assert isinstance(error.value.__cause__, config_checks.ConfigError)
  first, bank, queries, advice = str(error.value).splitlines()
  assert first.startswith('dataset and eval_dataset: the kNN monitor cannot score these queries against this bank')
  assert bank.startswith(f'  dataset={config.dataset}') and queries.startswith(f'  eval_dataset={config.eval_dataset}')
  assert '--config.eval_dataset=' in advice
  # Through knn_bank_dataset the bank's field is named.
  config = tiny_config(knn_bank_dataset=f'folder:{tmp_path}/train', eval_dataset='embedded_subset:test')
  with pytest.raises(config_checks.ConfigError, match='^knn_bank_dataset and eval_dataset: '):
    monitor.datasets(config)


def test_label_sets_compare_names_then_counts():
  def source(num_classes, names=(), multi_label=False):
    return sources.Source('s', 10, num_classes, None, multi_label=multi_label, class_names=names)

  assert sources.label_mismatch(source(2, ('a', 'b')), source(2, ('a', 'b'))) is None
  assert sources.label_mismatch(source(2), source(2, ('a', 'b'))) is None  # names on one side only: the count
  assert sources.label_mismatch(source(2), source(3)) == '2 classes in the bank, 3 in the queries'
  assert 'another order' in sources.label_mismatch(source(2, ('a', 'b')), source(2, ('b', 'a')))
  assert 'no single labels' in sources.label_mismatch(source(4, multi_label=True), source(4))
  assert sources.label_mismatch(source(None), source(None)) == 's and s have no single labels'
  # The classification protocols take per-class targets on both sides, not on one.
  assert sources.label_mismatch(source(4, multi_label=True), source(4, multi_label=True), multi_label=True) is None
  assert 'per-class targets' in sources.label_mismatch(source(4, multi_label=True), source(4), multi_label=True)


def test_evaluation_refuses_a_test_set_of_other_classes_or_none(tmp_path):
  image_folders(tmp_path, {'flat': 3, 'train': ['cat', 'dog'], 'val': ['cat', 'dog']})
  config = tiny_config(dataset=f'folder:{tmp_path}/train', eval_dataset='')  # a run whose monitor was off
  with pytest.raises(ValueError, match='has no eval_dataset .* --test_dataset'):
    common.labelled_datasets(config)
  with pytest.raises(ValueError, match=r'^--dataset and --test_dataset: .*other class names'):
    common.labelled_datasets(config, test_dataset='embedded_subset:test')
  train_set, test_set = common.labelled_datasets(config, test_dataset=f'folder:{tmp_path}/val')
  assert train_set.class_names == test_set.class_names == ('cat', 'dog')


def test_an_override_of_a_missing_field_is_refused_naming_it_and_the_nearest():
  from configs import presets

  config = presets.config('knn')
  config.lock()
  with pytest.raises(ValueError, match=r"^model\.archx: the config has no field 'archx' \(did you mean arch\?\)$"):
    presets.override(config, {'model.archx': 'resnet10'})
  with pytest.raises(ValueError, match=r"^modl\.arch: the config has no field 'modl' \(did you mean model\?\)$"):
    presets.override(config, {'modl.arch': 'resnet10'})
  assert presets.override(config, {'model.arch': 'resnet10'}).model.arch == 'resnet10'
