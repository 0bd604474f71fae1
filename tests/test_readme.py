"""The README's two commands are the ones CI runs and a newcomer types; they cannot drift apart."""

import os

from scripts.readme_command import readme_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_commands():
  install_and_train = readme_command('train')
  assert 'pip install -r requirements.txt' in install_and_train
  assert 'python -m jax_moco.main --config=configs/knn.py' in install_and_train
  test = readme_command('test')
  assert 'pip install -q -r requirements-test.txt' in test and 'pytest' in test


def test_ci_runs_the_readme_test_command():
  ci = open(os.path.join(ROOT, '.ci', 'run')).read()
  assert 'python scripts/readme_command.py test' in ci
  assert 'requirements.txt' in ci and 'requirements-test.txt' in ci
