"""Subsets of a source (`SOURCE|uniform=N`, `|pareto=ALPHA,total=N`, `|random=N`, `,seed=S`, `,scale=F`): class
histograms against their formulas, nesting, determinism across processes, the list in the work directory, refusals."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from input_pipeline import sources
from input_pipeline import subsets
from tests.test_tfds_source import JaxMocoTinyImages


def _histogram(source):
  return np.bincount(source.labels, minlength=source.num_classes)


def test_pareto_sizes_follow_the_stated_density():
  sizes = subsets.pareto_class_sizes(1000, 6.0, 118000)
  assert sizes.sum() == 118000 and np.all(np.diff(sizes) <= 0)
  x = (256 ** (1 / 7) - 1) * np.arange(1000) / 999
  expected = 118000 * (1 + x) ** -7 / np.sum((1 + x) ** -7)
  assert np.max(np.abs(sizes - expected)) < 1
  assert expected[0] / expected[-1] == pytest.approx(256)  # ImageNet-LT's 1280 / 5


def test_class_histograms_of_each_kind():
  pareto = sources.get_source('embedded|pareto=6,total=1000,seed=3')
  histogram = _histogram(pareto)
  assert sorted(histogram, reverse=True) == subsets.pareto_class_sizes(10, 6.0, 1000).tolist()
  uniform = sources.get_source('embedded|uniform=95')
  assert sorted(_histogram(uniform).tolist()) == [9] * 5 + [10] * 5
  assert uniform.subset_list == sources.get_source('embedded|uniform=95,seed=0').subset_list  # seed 0 by default
  random = sources.get_source('embedded|random=300,seed=1')
  assert random.num_examples == 300 and random.name.endswith('|random=300,seed=1')
  # The subset's loader reads the drawn examples: its labels are those of the whole source at the listed indices.
  whole = sources.get_source('embedded')
  indices = np.array([int(line.split('\t')[0]) for line in random.subset_list.splitlines()[1:]])
  assert np.array_equal(whole.labels[indices], random.labels)
  assert int(random.load(7)['label']) == random.labels[7]
  assert np.array_equal(random.load(7)['image'].numpy(), whole.load(int(indices[7]))['image'].numpy())


def test_scales_are_nested_and_seeds_differ():
  def indices(spec):
    return set(subsets.draw(subsets.parse(spec), np.arange(4000) % 10, 4000, spec).tolist())

  for kind in ('random=100', 'uniform=100', 'pareto=6,total=100'):
    one, two, four = (indices(f'x|{kind},scale={s}') for s in (1, 2, 4))
    assert one < two < four and len(two) == pytest.approx(2 * len(one), abs=10)
    assert indices(f'x|{kind},seed=1') != one


def test_the_draw_is_the_same_in_another_process():
  labels = np.arange(5000) % 7
  spec = 'x|pareto=6,total=900,seed=5'
  here = subsets.draw(subsets.parse(spec), labels, len(labels), spec)
  code = (
    'import numpy as np; from input_pipeline import subsets; '
    f'print(subsets.draw(subsets.parse({spec!r}), np.arange(5000) % 7, 5000, "").tolist())'
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  there = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True, check=True).stdout
  assert here.tolist() == eval(there)  # noqa: S307 (a list of ints this test printed)


def test_the_list_is_written_and_a_resumed_run_needs_the_same(tmp_path):
  source = sources.get_source('embedded|random=10,seed=0')
  subsets.record(source, str(tmp_path))
  written = (tmp_path / subsets.LIST_FILE).read_text()
  assert written == source.subset_list and written.startswith('index\tlabel\tfile\n') and written.count('\n') == 11
  subsets.record(sources.get_source('embedded|random=10,seed=0'), str(tmp_path))  # resuming: the same list
  with pytest.raises(ValueError, match='differs from'):
    subsets.record(sources.get_source('embedded|random=10,seed=1'), str(tmp_path))
  subsets.record(sources.get_source('embedded'), str(tmp_path / 'whole'))  # a whole source writes nothing
  assert not os.path.exists(tmp_path / 'whole')


def _folder(root, labelled):
  for i in range(6):
    folder = root / (f'c{i % 2}' if labelled else '')
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(folder / f'{i}.png')
  return f'folder:{root}'


def test_folder_and_tfds_subsets(tmp_path):
  folder = _folder(tmp_path / 'labelled', labelled=True)
  source = sources.get_source(f'{folder}|uniform=4')
  assert source.num_examples == 4 and sorted(_histogram(source).tolist()) == [2, 2]
  assert all(str(tmp_path) in line for line in source.subset_list.splitlines()[1:])
  assert len(source.files) == 4 and source.load(0)['image'].shape == (8, 8, 3)
  assert sources.get_source(f'{_folder(tmp_path / "plain", labelled=False)}|random=5').num_examples == 5
  JaxMocoTinyImages(data_dir=str(tmp_path / 'tfds')).download_and_prepare()
  tfds_source = sources.get_source('tfds:jax_moco_tiny_images|uniform=6', data_dir=str(tmp_path / 'tfds'))
  assert _histogram(tfds_source).tolist() == [2, 2, 2]
  assert sources.held_out_split('embedded|uniform=6') == ('embedded:test', '')


@pytest.mark.parametrize(
  'suffix, message',
  [
    ('uniform=100,random=5', 'name one subset kind'),
    ('pareto=6', 'needs total=N'),
    ('random=5,total=3', 'total is not a parameter'),
    ('random=five', 'invalid literal'),
    ('random=0', 'random=0 must be positive'),
    ('uniform=10,scale=-1', 'scale=-1 must be positive'),
    ('random', 'is not KEY=VALUE'),
    ('random=20000', 'more than the 10000 it has'),
    ('uniform=20000', 'uniform=20000 .* asks 2000 images of class'),
  ],
)
def test_impossible_subsets_are_refused_naming_the_parameter(suffix, message):
  with pytest.raises(ValueError, match=message):
    sources.get_source(f'embedded_subset|{suffix}')


def test_class_sizes_of_an_unlabelled_folder_are_refused(tmp_path):
  folder = _folder(tmp_path, labelled=False)
  for suffix in ('uniform=2', 'pareto=6,total=3'):
    with pytest.raises(ValueError, match='no single labels; use random=N'):
      sources.get_source(f'{folder}|{suffix}')


def test_training_refuses_to_resume_on_another_list(tmp_path):
  from jax_moco import train  # JAX: only this test needs it
  from tests.helpers import tiny_config

  subsets.record(sources.get_source('embedded_subset|random=64,seed=0'), str(tmp_path))
  config = tiny_config(dataset='embedded_subset|random=64,seed=1', eval_dataset='')
  with pytest.raises(ValueError, match='differs from'):  # refused before anything is built
    train.train_and_evaluate(config, str(tmp_path))
