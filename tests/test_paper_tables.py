"""scripts/paper_tables.py: Van Gansbeke et al. 2021's Tables 4 and 9 beside a run's rows. End to end on a tiny saved
run and generated data in every layout the columns read (a VOC2007 folder, ImageNet-style class folders, a DAVIS
folder, the embedded set), and the table's logic (rows, columns, the '-' cells and their reasons, the cache, the
fine-tuned columns' spread over runs and jax_moco.evaluate's own results read back) with jax_moco.evaluate replaced
by a stand-in."""

import json
import os

from PIL import Image
import pytest

from jax_moco import evaluate
from jax_moco.evaluators import finetune
from scripts import paper_tables
from tests.helpers import save_tiny_run
from tests.test_finetune import scenes
from tests.test_finetune import write_nyud_depth
from tests.test_finetune import write_voc
from tests.test_label_propagation import moving_shapes
from tests.test_label_propagation import write_davis
from tests.test_voc07_svm import voc07_folder


def table_rows(text):
  """The Markdown table's rows as lists of cells (header first, the --- line left out)."""
  lines = [line for line in text.splitlines() if line.startswith('| ') and not line.startswith('| ---')]
  return [[cell.strip() for cell in line.strip('|').split(' | ')] for line in lines]


def class_folders(root, classes, per_class=3):
  """root/{train,val}/<class>/*.png: each class a flat colour (ImageNet's folder layout); returns TRAIN,VAL."""
  for split in ('train', 'val'):
    for c, name in enumerate(classes):
      os.makedirs(root / split / name)
      for i in range(per_class):
        Image.new('RGB', (24, 20), (80 * c, 40 * i, 200 - 60 * c)).save(root / split / name / f'{i}.png')
  return [str(root / 'train'), str(root / 'val')]


def never(*args, **kwargs):
  raise AssertionError('a cached table ran an evaluation')


@pytest.mark.heavy(20)  # seconds on 2 cores, for the order of tests/conftest.py
def test_every_layout_fills_its_column_and_a_rerun_reads_the_cache(tmp_path, monkeypatch):
  run = save_tiny_run(tmp_path / 'run', step=3)
  frames, masks = moving_shapes(num_frames=4)
  write_davis(tmp_path / 'davis', {'a': (frames, masks)})
  wanted = paper_tables.requests(
    voc07=str(voc07_folder(tmp_path / 'voc', (('trainval', 40), ('test', 20)))),
    imagenet=class_folders(tmp_path / 'imagenet', ['a', 'b']),
    places=class_folders(tmp_path / 'places', ['x', 'y', 'z']),
    davis=str(tmp_path / 'davis'),
    image_size=32,
    max_examples=60,
    linear_epochs=1,
  )
  assert wanted['imagenet']['options'] == {'epochs': 1, 'weight_decay': 1e-4}  # the paper's A.2 weight decay
  arguments = dict(wanted=wanted, image_size=32, max_examples=60)
  text = paper_tables.paper_table([run], '9', **arguments)
  header, *body = table_rows(text)
  assert header == ['method', 'from'] + [paper_tables.COLUMNS[c].header for c in paper_tables.columns('9')]
  assert [row[0] for row in body] == ['Rand. init.', 'MoCo', '+ CC', '+ CC + A+', '+ CC + A+ + kNN', run]
  assert body[4][2:] == ['73.5', '72.3', '41.3', '85.9', '56.1', '48.6', '66.2', '0.580', '', '']
  ours = dict(zip(paper_tables.columns('9'), body[5][2:]))
  assert body[5][1] == 'step 3 (resnet10)'
  assert [ours[c] for c in ('voc_seg', 'cityscapes_seg', 'nyud_seg', 'nyud_depth')] == ['-'] * 4
  for column in ('voc07', 'imagenet', 'places', 'davis', 'own_knn', 'own_svm'):
    assert 0 <= float(ours[column]) <= 100, (column, ours[column])
  assert '- NYUD seg. mIoU, NYUD depth rmse: -: give --nyud=PATH (NYUD-v2 in the NYUD_MT layout' in text
  assert 'linear classification (1 epochs, lr 30.0, weight decay 0.0001, batch 256)' in text
  # Each linear classifier trained on its own set; each result beside jax_moco.evaluate's, with its request.
  kept = tmp_path / 'run' / 'eval' / 'step_3_online' / 'paper_tables'
  assert {'imagenet_linear_classification', 'places_linear_classification', 'voc07.json'} <= set(os.listdir(kept))
  assert json.load(open(kept / 'voc07.json'))['request']['dataset'].startswith('voc07:')

  monkeypatch.setattr(evaluate, 'evaluate', never)
  assert paper_tables.paper_table([run], '9', **arguments) == text
  without_davis = {c: r for c, r in wanted.items() if c != 'davis'}
  header4, *body4 = table_rows(paper_tables.paper_table([run], '4', without_davis, image_size=32, max_examples=60))
  assert len(header4) == 2 + 6 + 2 and [row[0] for row in body4][-1] == run
  assert body4[-1][2:] == [ours[c] for c in paper_tables.columns('4')]


def fake_evaluate(calls, unreadable=()):
  """A stand-in for jax_moco.evaluate.evaluate that records its calls and returns what describe() reads; the runs
  in `unreadable` have no readable own data. linear_classification leaves its checkpoint folder as the real one."""

  def fake(
    workdir, protocol, dataset=None, test_dataset=None, image_size=None, max_examples=None, random_init=False, **options
  ):
    calls.append(dict(workdir=workdir, protocol=protocol, dataset=dataset, image_size=image_size, **options))
    if dataset is None and workdir in unreadable:
      raise ValueError(f'the run of {workdir} has no eval_dataset')
    tag = 'random_init_online' if random_init else 'step_3_online'
    if protocol == 'linear_classification':
      os.makedirs(os.path.join(workdir, 'eval', tag, 'linear_classification'))
    if protocol in paper_tables.FINE_TUNED:  # the fields describe() reads; whole images (image_size 0)
      fine_tuned = dict(
        finetune.recipe_fields(finetune.RECIPES[dataset.split(':')[0]]), sync_bn=True, runs=options['runs']
      )
      image_size = 0
    scores = dict(
      knn=dict(top1=61.25, top5=90.0, k=200, temperature=0.1),
      voc07_svm=dict(map=70.0, costs=[0.5], difficult='negative'),
      linear_classification=dict(top1=42.0, epochs=1, lr=30.0, weight_decay=1e-4, batch_size=256),
      segmentation=dict(miou=71.34, miou_std=0.56),
      depth=dict(rmse=0.6123, rmse_std=0.0123, abs_rel=0.15, delta1=0.8),
    )[protocol]
    scores.update(fine_tuned if protocol in paper_tables.FINE_TUNED else {})
    sets = dict(train_dataset=dataset or 'embedded:train', test_dataset=test_dataset or 'embedded:test')
    run = dict(protocol=protocol, step=None if random_init else 3, arch='resnet50', image_size=32)
    run['image_size'] = 32 if image_size is None else image_size
    return dict(run, num_train=8, num_test=4, **sets, **scores)

  return fake


def test_rows_columns_reasons_and_cache(tmp_path, monkeypatch):
  runs = [str(tmp_path / name) for name in ('A', 'B')]
  for run in runs:
    os.makedirs(os.path.join(run, 'checkpoints', '3'))
  calls = []
  monkeypatch.setattr(evaluate, 'evaluate', fake_evaluate(calls, unreadable=[runs[1]]))
  wanted = paper_tables.requests(imagenet=['data/in/train', 'data/in/val'])
  assert wanted['imagenet']['dataset'] == 'folder:data/in/train' and wanted['imagenet']['image_size'] == 224
  text = paper_tables.paper_table(runs, '4', wanted, random_init=True)
  header, *body = table_rows(text)
  assert len(header) == 10 and header[-2:] == ['own data: kNN top-1', 'own data: SVM mAP (one-vs-rest)']
  assert [row[:2] for row in body[6:]] == [
    [runs[0], 'step 3 (resnet50)'],
    [runs[0], 'random init (resnet50)'],
    [runs[1], 'step 3 (resnet50)'],
    [runs[1], 'random init (resnet50)'],
  ]
  assert body[6][2:] == ['-', '-', '-', '-', '42.0', '-', '61.2', '70.0']
  assert body[8][2:] == ['-', '-', '-', '-', '42.0', '-', '-', '-']
  assert '- VOC07 SVM mAP: -: give --voc07=PATH (a VOCdevkit/VOC2007 folder) or tfds:voc/2007.' in text
  assert '- Places linear top-1: -: give --places=TRAIN,VAL.' in text
  assert f'  - {runs[1]}, step 3 (resnet50): -: the run of {runs[1]} has no eval_dataset' in text
  # The own-data SVMs at the size the kNN ran at (the run's); each finished classifier kept by its column.
  assert {c['image_size'] for c in calls if c['protocol'] == 'voc07_svm'} == {32}
  for tag in ('step_3_online', 'random_init_online'):
    assert os.listdir(os.path.join(runs[0], 'eval', tag, 'paper_tables', 'imagenet_linear_classification')) == []
  done = len(calls)
  assert paper_tables.paper_table(runs, '4', wanted, random_init=True) == text
  assert len(calls) == done + 2  # run B's own data, which has no result to read back, is tried again
  other = paper_tables.requests(imagenet=['data/in/train', 'data/in/val'], max_examples=5)
  paper_tables.paper_table(runs[:1], '4', other)
  assert calls[done + 2]['protocol'] == 'linear_classification'  # another request: measured again

  with pytest.raises(ValueError, match='Table 4 has no DAVIS J&F column'):
    paper_tables.paper_table(runs, '4', paper_tables.requests(davis='data/DAVIS'))
  with pytest.raises(ValueError, match='--places=a: give the training and the validation set'):
    paper_tables.requests(places=['a'])
  with pytest.raises(FileNotFoundError, match='is not a jax_moco work directory'):
    paper_tables.paper_table([str(tmp_path)], '9')
  assert paper_tables.requests(voc07='tfds:voc/2007')['voc07']['test_dataset'] == 'tfds:voc/2007:test'


def nyud_folder(root):
  """A NYUD_MT folder of one train and one val photograph with their segmentation and depth."""
  ((image, mask, depth),) = scenes(0, 1)
  write_nyud_depth(root, {'train': [(image, depth)], 'val': [(image, depth)]})
  os.makedirs(root / 'segmentation')
  for name in ('train_0', 'val_0'):
    Image.fromarray(mask).save(root / 'segmentation' / f'{name}.png')
  return str(root)


def test_fine_tuned_columns_show_the_runs_spread_and_read_evaluates_own_results(tmp_path, monkeypatch):
  run = str(tmp_path / 'A')
  os.makedirs(os.path.join(run, 'checkpoints', '3'))
  ((image, mask, _),) = scenes(0, 1)
  voc = tmp_path / 'voc'
  write_voc(voc, {'train': [(image, mask)] * 2, 'val': [(image, mask)]})
  # jax_moco.evaluate's own result of --protocol=segmentation --dataset=voc:PATH --runs=2, as it writes it.
  sets = dict(train_dataset=f'voc:{voc}:train', test_dataset=f'voc:{voc}:val', num_train=2, num_test=1)
  recipe = dict(finetune.recipe_fields(finetune.RECIPES['voc']), sync_bn=True, seed=0, devices=8)
  written = dict(protocol='segmentation', step=3, encoder='online', random_init=False, arch='resnet50', image_size=0)
  written.update(**sets, **recipe, miou=65.43, miou_std=1.04, runs=2)
  os.makedirs(os.path.join(run, 'eval', 'step_3_online'))
  with open(os.path.join(run, 'eval', 'step_3_online', 'segmentation_voc.json'), 'w') as f:
    json.dump(written, f)
  calls = []
  monkeypatch.setattr(evaluate, 'evaluate', fake_evaluate(calls))
  wanted = paper_tables.fine_tuned_requests(voc=str(voc), nyud=nyud_folder(tmp_path / 'nyud'), runs=2)
  assert wanted['voc_seg']['dataset'] == f'voc:{voc}' and wanted['nyud_depth']['options'] == {'runs': 2}
  text = paper_tables.paper_table([run], '9', wanted, with_own_data=False)
  assert [(c['protocol'], c['dataset'], c['runs']) for c in calls] == [
    ('segmentation', f'nyud:{tmp_path / "nyud"}', 2),
    ('depth', f'nyud:{tmp_path / "nyud"}', 2),
  ]  # VOC read back from its result
  ours = dict(zip(paper_tables.columns('9'), table_rows(text)[-1][2:]))
  assert [ours[c] for c in ('voc_seg', 'cityscapes_seg', 'nyud_seg', 'nyud_depth')] == [
    '65.4 ± 1.0',
    '-',
    '71.3 ± 0.6',
    '0.612 ± 0.012',
  ]
  assert '- Cityscapes seg. mIoU: -: give --cityscapes=PATH (leftImg8bit/, gtFine/).' in text
  assert '- a ± s: the mean and sample standard deviation of --runs fine-tunings' in text
  settings = 'sgd lr 0.003 x0.1 after epochs [30, 40], weight decay 0.0001, crops 513, synchronised BN, 2 run(s))'
  assert f'{settings}, on voc:{voc}:train -> voc:{voc}:val (2 / 1 images, at their own size)' in text

  # Table 4 takes --nyud's segmentation and leaves its depth; then one run each: VOC's result of two does not serve.
  header4, *body4 = table_rows(paper_tables.paper_table([run], '4', wanted, with_own_data=False))
  assert 'NYUD depth rmse' not in header4 and body4[-1][2:5] == ['65.4 ± 1.0', '-', '71.3 ± 0.6'] and len(calls) == 2
  once = paper_tables.fine_tuned_requests(voc=str(voc), runs=1)
  assert table_rows(paper_tables.paper_table([run], '4', once, with_own_data=False))[-1][2] == '71.3'
  assert (calls[-1]['dataset'], calls[-1]['runs']) == (f'voc:{voc}', 1)
  with pytest.raises(ValueError, match='--runs=0: at least one fine-tuning'):
    paper_tables.fine_tuned_requests(voc=str(voc), runs=0)
