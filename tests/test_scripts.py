"""The demo scripts: the ablation's rows (each adds one thing to the one above), the ablation end to end at test
scale (train, score, tabulate, then read back by a second invocation of its command line without training again),
and the sweep's table."""

import json
import os
import re

import pytest

from jax_moco import train
from scripts import ablation
from scripts import runs
from scripts import sweep_demo
from tests.helpers import run_quietly

# tests/helpers.py's tiny_config as overrides of every row (the rows keep their own crops).
TINY = [
  'dataset=embedded_subset',
  'eval_dataset=embedded_subset:test',
  'model.arch=resnet10',
  'model.width=0.125',
  'batch_size=32',
  'bn_groups=1',
  'moco.queue_size=256',
  'knn.batch_size=400',
  'knn.max_bank_examples=400',
  'knn.max_query_examples=400',
]


def files_of(directory):
  return {
    os.path.join(dirpath, name): os.stat(os.path.join(dirpath, name)).st_mtime_ns
    for dirpath, _, names in os.walk(directory)
    for name in names
  }


def test_ablation_rows_add_one_thing_each_at_an_equal_budget():
  configs = [dict(runs.flat_fields(ablation.row_config(name, 1, steps=7).to_dict())) for name in ablation.ROWS]
  added = [sorted(k for k in b if b[k] != a[k]) for a, b in zip(configs, configs[1:])]
  assert added == [
    ['crops.min_overlap', 'crops.num_small', 'crops.small_scale', 'method'],
    ['crops.aplus'],
    ['method', 'moco.nn_order', 'moco.nn_weight'],
  ]
  assert all(c['num_train_steps'] == 7 and c['seed'] == 1 and c['batch_size'] == 64 for c in configs)
  with pytest.raises(ValueError, match="model.archh: the config has no field 'archh' \\(did you mean arch\\?\\)"):
    ablation.row_config('mocov2', 0, overrides={'model.archh': 'resnet10'})


@pytest.mark.parametrize(
  'study, differing',
  [('class_balance', [['dataset']]), ('iou_cap', [['crops.max_iou'], ['crops.max_iou']])],
)
def test_the_data_studies_rows_differ_in_their_variable_only(study, differing):
  rows = ablation.STUDIES[study]
  configs = [dict(runs.flat_fields(ablation.row_config(name, 0, study=study).to_dict())) for name in rows]
  assert [sorted(k for k in b if b[k] != a[k]) for a, b in zip(configs, configs[1:])] == differing
  assert all(c['method'] == 'mocov2' and c['num_train_steps'] == configs[0]['num_train_steps'] for c in configs)


@pytest.mark.fast_compile
@pytest.mark.heavy(45)  # seconds on 2 cores, for the order of tests/conftest.py
def test_ablation_trains_scores_tabulates_and_reads_back(tmp_path):
  # One row and seed keeps it cheap; the rows' configs are the test above.
  out, workdir = str(tmp_path), tmp_path / 'mocov2_seed0'
  overrides = dict(ablation.parse_override(o) for o in TINY)
  assert overrides['model.width'] == 0.125 and overrides['eval_dataset'] == 'embedded_subset:test'
  table = ablation.run_ablation(out, ['mocov2'], [0], steps=2, overrides=overrides, probe_max_examples=200)
  assert (tmp_path / 'table.md').read_text() == table + '\n'
  lines = table.splitlines()
  number = r'\d+\.\d\d'
  assert re.fullmatch(rf'\| random init \| - \| {number} \| {number} \| - \| 0 \| - \| - \|', lines[2])
  row = rf'\| MoCo-v2 \| configs/mocov2.py \| {number} \| {number} \| {number} \| 2 \| 32 \| \d+ \|'
  assert re.fullmatch(row, lines[3])
  assert lines[5].startswith('Seed 0.') and '200 train / 200 test images' in lines[5]

  # The command line with the same settings reads every result: no file of the run changes.
  before = files_of(workdir)
  command = ['scripts/ablation.py', f'--out={out}', '--steps=2', '--seeds=0', '--rows=mocov2']
  command += ['--probe_max_examples=200'] + [f'--override={o}' for o in TINY]
  printed = run_quietly(command)
  assert table in printed.stdout and files_of(workdir) == before

  # Another budget in the same work directory is refused, naming the field, before anything trains.
  with pytest.raises(SystemExit, match='num_train_steps'):
    ablation.run_ablation(out, ['mocov2'], [0], steps=3, overrides=overrides, probe_max_examples=200)


def test_a_stopped_run_stops_the_script_and_resumes_when_rerun(tmp_path, monkeypatch):
  config, workdir, trained = ablation.row_config('mocov2', 0, steps=4), str(tmp_path), []

  def train_and_evaluate(config, workdir):
    """Stopped (SIGTERM) at step 2 the first time; its summary says so, as the real one's does."""
    trained.append(workdir)
    (tmp_path / 'summary.json').write_text(json.dumps({'steps': 2 * len(trained), 'total_steps': 4}))

  monkeypatch.setattr(train, 'train_and_evaluate', train_and_evaluate)
  with pytest.raises(SystemExit, match='run the same command again to resume'):
    runs.train_once(config, workdir)
  assert runs.train_once(config, workdir)[0]['steps'] == 4 and len(trained) == 2
  assert runs.train_once(config, workdir)[0]['steps'] == 4 and len(trained) == 2  # finished: read, not rerun


def test_sweep_table():
  summary = {
    'knn_raw_pixels': {'top1': 76.56},
    'knn_before': {'top1': 67.24},
    'knn_after': {'top1': 69.1},
    'train_seconds': 353.2,
  }
  lines = sweep_demo.table([('queue1024', {'moco.queue_size': 1024}, summary, '430')]).splitlines()
  assert lines == [
    '| variant | overrides | kNN raw pixels | random init | trained | gain | train s | wall s |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
    '| queue1024 | moco.queue_size=1024 | 76.56 | 67.24 | 69.10 | +1.86 | 353 | 430 |',
  ]


def test_a_cells_bar_is_escaped_so_the_row_keeps_its_columns():
  table = runs.markdown_table(['method', 'config'], [['uniform', 'dataset=embedded|uniform=1800']])
  assert table.splitlines()[2] == '| uniform | dataset=embedded\\|uniform=1800 |'


def test_seeds_that_are_not_integers_are_refused_naming_the_flag():
  assert ablation.parse_seeds(['0', '3']) == [0, 3]
  with pytest.raises(ValueError, match='^--seeds=0,a: give integers'):
    ablation.parse_seeds(['0', 'a'])
  with pytest.raises(ValueError, match='^--seeds: give at least one'):
    ablation.parse_seeds([])
