"""End to end: train_and_evaluate on the embedded data with a tiny ResNet on 8 emulated devices."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from jax_moco import checkpointing
from jax_moco import train
from tests.helpers import chatter
from tests.helpers import user_environment
from tests.helpers import write_folder_with_bad_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def leaves_equal(a, b):
  """The same tree (every field, None where the other has None) with equal leaves, bit for bit."""
  a, b = jax.device_get(a), jax.device_get(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def stall_after(monkeypatch, batches, logged):
  """After `batches` training batches the input stalls (as a hung file system would) and, once the step after them
  is logged (`logged` set), the process gets a real SIGTERM, as a scheduler preempting the job. Returns the event
  that ends the stall."""
  make, stalled = train.pipeline.train_dataset, threading.Event()

  def train_dataset(*args, **kwargs):
    dataset = make(*args, **kwargs)

    class Stalling:
      def as_numpy_iterator(self):
        for i, batch in enumerate(dataset.as_numpy_iterator()):
          if i == batches:
            logged.wait()
            os.kill(os.getpid(), signal.SIGTERM)
            stalled.wait()
          yield batch

    return Stalling()

  monkeypatch.setattr(train.pipeline, 'train_dataset', train_dataset)
  return stalled


# The console test's run, as small as a CLI run gets (one device, two BN groups), so its programs are compiled once.
CLI_RUN = {
  'model.arch': 'resnet10',
  'model.width': 0.125,
  'batch_size': 16,
  'bn_groups': 2,
  'moco.queue_size': 64,
  'crops.num_small': 1,
  'crops.small_size': 16,
}


# Six steps, a checkpoint at each: the runs that are stopped (killed, locked out, out of disk) and rerun, compared with
# conftest's lone_run.
SIX_SAVED_STEPS = {'dataset': 'embedded_subset', 'eval_dataset': '', 'num_train_steps': 6, 'checkpoint_every_steps': 1}


def cli(workdir, overrides, **environment):
  """The command line of `python -m jax_moco.main` on the demo config with `overrides`, in the environment a user
  has (TensorFlow's log level unset, one device) plus `environment`: (argv, env)."""
  env = dict(user_environment(), XLA_FLAGS='', **environment)
  argv = [sys.executable, '-m', 'jax_moco.main', '--config=configs/knn.py', f'--workdir={workdir}']
  return argv + [f'--config.{k}={v}' for k, v in {**CLI_RUN, **overrides}.items()], env


def run_cli(workdir, overrides, **environment):
  argv, env = cli(workdir, overrides, **environment)
  return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope='module')
def folder_with_bad_files(tmp_path_factory):
  return write_folder_with_bad_files(tmp_path_factory.mktemp('folder'))


@pytest.mark.heavy(20)  # seconds on 2 cores, for the order of tests/conftest.py
def test_end_to_end_with_knn_summary(make_config, tmp_path, capsys):
  config = make_config(num_train_steps=4, **{'knn.every_epochs': 2 / (10000 // 32)})  # kNN every 2 steps
  reported = []
  state = train.train_and_evaluate(config, str(tmp_path), on_metrics=lambda step, s: reported.append((step, s)))
  assert int(state.step) == 4
  assert [(step, sorted(s)[0]) for step, s in reported] == [
    (0, 'knn/top1'),
    (2, 'acc_inst'),
    (2, 'knn/top1'),
    (4, 'acc_inst'),
    (4, 'knn/top1'),
  ]
  summary = json.load(open(tmp_path / 'summary.json'))
  for key in ('knn_raw_pixels', 'knn_before', 'knn_after'):
    assert 10.0 <= summary[key]['top1'] <= 100.0  # ten balanced classes: chance is 10 %
  assert summary['knn_after']['top1'] == reported[-1][1]['knn/top1']
  assert summary['epochs'] == round(4 / (10000 // 32), 2)
  out = capsys.readouterr().out
  assert 'kNN top-1' in out
  assert os.path.isdir(tmp_path / 'checkpoints' / '4')
  assert json.load(open(tmp_path / 'config.json'))['moco']['queue_size'] == 256
  lines = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  training = [m for m in lines if 'loss' in m]
  assert [m['step'] for m in training] == [2, 4] and all(np.isfinite(m['loss']) for m in training)
  # A labelled source with the NN loss: the mined neighbours' precision, logged and drawn.
  assert all(0 <= m['nn_precision'] <= 1 for m in training) and state.queue_labels is not None
  assert all(m['steps_per_second'] > 0 and m['images_per_second'] > 0 for m in training)
  assert [m['step'] for m in lines if 'knn/top1' in m] == [0, 2, 4]
  assert summary['curves'] == str(tmp_path / 'curves.png') and os.path.getsize(tmp_path / 'curves.png') > 0
  assert 'learning curves:' in out
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(tmp_path))


@pytest.mark.heavy(45)  # seconds on 2 cores, for the order of tests/conftest.py
def test_interrupted_and_resumed_run_equals_uninterrupted(make_config, tmp_path, monkeypatch, folder_with_bad_files):
  # On a folder with bad files (left out by the scan, or replaced when they fail to decode), so resuming at
  # step * batch is tested where examples are dropped.
  dataset = f'folder:{folder_with_bad_files}'
  config = make_config(num_train_steps=5, eval_dataset='', checkpoint_every_steps=100, dataset=dataset)
  uninterrupted = train.train_and_evaluate(config, str(tmp_path / 'straight'))

  with monkeypatch.context() as patch:
    logged = threading.Event()
    stalled = stall_after(patch, 2, logged)
    stopped = train.train_and_evaluate(
      config, str(tmp_path / 'resumed'), on_metrics=lambda step, _: step == 2 and logged.set()
    )
    stalled.set()
  assert int(stopped.step) == 2  # a stop request ends a run that waits on its input, with a checkpoint
  assert os.path.isdir(tmp_path / 'resumed' / 'checkpoints' / '2')
  assert json.load(open(tmp_path / 'resumed' / 'summary.json'))['unreadable_files'] == 3
  resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert int(resumed.step) == 5
  leaves_equal(resumed, uninterrupted)  # bit for bit: parameters, queues, optimiser state, BN statistics
  # An unlabelled source keeps no label queue and logs no NN precision.
  assert uninterrupted.queue_labels is None
  assert not any('nn_precision' in line for line in open(tmp_path / 'resumed' / 'metrics.jsonl'))

  # The newest checkpoint damaged (random bytes over a file of its config): the rerun resumes from step 2, keeps
  # the damaged one under another name and ends equal again.
  checkpoints = tmp_path / 'resumed' / 'checkpoints'
  damaged = os.urandom(200)
  (checkpoints / '5' / 'config' / 'metadata').write_bytes(damaged)
  assert checkpointing.load_run(str(tmp_path / 'resumed'))[2] == 2  # evaluation and export fall back too
  rerun = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  leaves_equal(rerun, uninterrupted)
  (kept,) = [d for d in os.listdir(checkpoints) if d.startswith('5.unreadable-')]
  assert (checkpoints / kept / 'config' / 'metadata').read_bytes() == damaged
  # None restores: refused naming the directory, and nothing is renamed or deleted.
  for step in ('2', '5'):
    (checkpoints / step / 'config' / 'metadata').write_bytes(damaged)
  before = sorted(os.listdir(checkpoints))
  with pytest.raises(checkpointing.UnreadableCheckpointsError, match=f'no checkpoint in {checkpoints} restores'):
    train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert sorted(os.listdir(checkpoints)) == before


@pytest.mark.fast_compile
@pytest.mark.heavy(20)  # seconds on 2 cores, for the order of tests/conftest.py
def test_resuming_with_another_config_is_refused(make_config, tmp_path):
  train.train_and_evaluate(make_config(num_train_steps=2, eval_dataset=''), str(tmp_path))
  with pytest.raises(checkpointing.ConfigMismatchError, match=r'model: checkpoint .*width.* vs now'):
    train.train_and_evaluate(make_config(num_train_steps=4, eval_dataset='', **{'model.width': 0.25}), str(tmp_path))


def test_saving_a_replicated_state_compiles_nothing_and_restores_it(make_config, tmp_path):
  """Orbax's replica-parallel saving compiled a slicing program per parameter shape and device at the first save
  (160 compiles for the tiny state on 8 devices); one replica writes it now."""
  from jax_moco import sharding
  from jax_moco import state as state_lib

  config = make_config()
  replicated = sharding.replicated(sharding.create_mesh())
  state = jax.device_put(state_lib.initial_state(config, seed=0), replicated)
  compiles = []

  def count_compiles(event, duration, **_):
    if event == '/jax/core/compile/backend_compile_duration':
      compiles.append(duration)

  jax.monitoring.register_event_duration_secs_listener(count_compiles)
  try:
    checkpointer = checkpointing.Checkpointer(str(tmp_path), config.to_dict(), 1, 1)
    checkpointer.save(1, state, force=True)
    checkpointer.close()
  finally:
    jax.monitoring.unregister_event_duration_listener(count_compiles)
  assert compiles == []
  leaves_equal(checkpointing.Checkpointer(str(tmp_path), config.to_dict(), 1, 1).restore(state), state)


def test_non_finite_loss_stops_with_the_last_good_checkpoint(make_config, tmp_path):
  config = make_config(
    num_train_steps=8, eval_dataset='', log_every_steps=1, checkpoint_every_steps=1, **{'optim.base_lr': 1e30}
  )
  with pytest.raises(train.NonFiniteLossError, match='non-finite loss at step') as error:
    train.train_and_evaluate(config, str(tmp_path))
  saved = sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit())
  metrics = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert saved and all(np.isfinite(m['loss']) for m in metrics)
  assert max(saved) == metrics[-1]['step']  # nothing after the last finite step was written
  # The message says which losses, the learning rate and where a rerun resumes, not the whole metrics dict.
  first, second = str(error.value).splitlines()
  assert first.startswith(f'non-finite loss at step {max(saved) + 1}: loss = nan') and 'learning rate ' in first
  assert 'acc_inst' not in first and f'resumes from the checkpoint at step {max(saved)} in {tmp_path}' in second


def test_curves_draw_the_panels_the_metrics_have(tmp_path):
  from PIL import Image

  from jax_moco import curves

  path = tmp_path / 'metrics.jsonl'
  rows = [{'step': 0, 'knn/top1': 60.0}, {'step': 50, 'loss': 5.0, 'loss_inst': 4.0, 'acc_inst': 0.1, 'lr': 0.03}]
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  panels = curves.plot(str(path), str(tmp_path / 'curves.png'))
  assert panels == ['loss', 'instance accuracy', 'learning rate', 'kNN top-1 (%)']
  with Image.open(tmp_path / 'curves.png') as image:
    assert image.format == 'PNG'
    four_panels = image.size
    assert np.asarray(image.convert('L')).std() > 10  # drawn on, not a blank page
  assert four_panels[0] > 3 * four_panels[1]  # the panels side by side in one row
  assert curves.read_metrics(str(path))['loss'] == ([50], [5.0])
  path.write_text(json.dumps(rows[1]) + '\n')  # no kNN monitor: no kNN panel
  assert 'kNN top-1 (%)' not in curves.plot(str(path), str(tmp_path / 'curves.png'))
  with Image.open(tmp_path / 'curves.png') as image:
    assert image.size[1] == four_panels[1] and image.size[0] < four_panels[0]  # one panel fewer, as high
  path.write_text(json.dumps({**rows[1], 'nn_precision': 0.3}) + '\n')  # a labelled source with the NN loss
  assert curves.plot(str(path), str(tmp_path / 'curves.png'))[-1] == 'NN precision (same label)'


@pytest.mark.heavy(30)  # seconds on 2 cores, for the order of tests/conftest.py
def test_the_default_console_shows_the_run_and_none_of_the_chatter(tmp_path):
  """The CLI as a user runs it (TensorFlow's log level unset, one device), on a folder with bad files, with a kNN
  monitor: the work directory, the run, the files left out, the progress, the log lines and the summary."""
  (tmp_path / 'folder').mkdir()
  write_folder_with_bad_files(tmp_path / 'folder')
  overrides = {
    'dataset': f'folder:{tmp_path / "folder"}',
    'knn_bank_dataset': 'embedded_subset',
    'eval_dataset': 'embedded_subset:test',
    'num_train_steps': 3,  # 48 examples: every file of the folder is met
    'log_every_steps': 1,
    'knn.max_bank_examples': 200,
    'knn.max_query_examples': 200,
  }
  result = run_cli(tmp_path / 'run', overrides)
  console = result.stdout + result.stderr
  assert result.returncode == 0, console[-4000:]
  assert chatter(console) == []
  assert result.stdout.startswith(f'workdir: {tmp_path / "run"}\n')
  for shown in (
    'knn-moco on folder:',  # steps, epochs, devices
    'files left out:\n  ' + str(tmp_path / 'folder' / 'empty.jpg') + ': empty file',
    'truncated.jpg does not decode: replaced by the next file of the stream',
    '3/3',  # the progress bar
    'images_per_second=',  # a log line
    'kNN top-1 (k=200, T=0.1)',
    'unreadable files left out or replaced: 3',
  ):
    assert shown in console, (shown, console[-4000:])
  # Percentages with 2 decimals, not the float sums' rounding (66.64999999999999).
  assert re.search(r'kNN before training: top1 \d+\.\d\d %, top5 \d+\.\d\d % \(raw pixels: top1 \d+\.\d\d %', console)


@pytest.mark.heavy(25)  # seconds on 2 cores, for the order of tests/conftest.py
def test_own_unlabelled_images_train_without_the_monitor_saying_so_once(tmp_path, folder_with_bad_files):
  """`--config.dataset=folder:MY_IMAGES`, everything else the demo's (eval_dataset='auto'), on images without class
  sub-folders: the run trains, says once that the kNN monitor is off and how to turn it on, scores nothing against
  Fashion-MNIST, and records eval_dataset=''. In a user's environment with TF_CPP_MIN_LOG_LEVEL=2, where TensorFlow's
  errors print: the pipeline's first uint8 op made oneDNN log one (chatter)."""
  folder = f'folder:{folder_with_bad_files}'
  result = run_cli(tmp_path / 'run', {'dataset': folder, 'num_train_steps': 2}, TF_CPP_MIN_LOG_LEVEL='2')
  console = result.stdout + result.stderr
  assert result.returncode == 0, console[-4000:]
  assert chatter(console) == []
  (said,) = [line for line in console.splitlines() if 'kNN monitor' in line]
  assert said.endswith(
    f'kNN monitor off: {folder} has no class sub-folders (its images are unlabelled). To monitor training, name a '
    'labelled split of the same classes: --config.eval_dataset=folder:VAL'
  )
  assert 'kNN top-1' not in console and 'kNN before training' not in console
  assert json.load(open(tmp_path / 'run' / 'summary.json'))['steps'] == 2
  assert json.load(open(tmp_path / 'run' / 'config.json'))['eval_dataset'] == ''


@flax.struct.dataclass
class Counter:
  """A stand-in train state: the step alone (and no label queue)."""

  step: jax.Array
  queue_labels: None = None


def test_logged_metrics_are_window_means_and_checkpoints_follow_the_policy(make_config, tmp_path):
  """Losses and accuracies are logged as their means over the steps since the last log line, the learning rate and
  the other scheduled values as they are at the log step; checkpoints are written at the policy's steps. The loop is
  driven by a stand-in step whose metrics are known, and saves through a real Checkpointer."""
  config = make_config(num_train_steps=7, log_every_steps=3)

  def train_step(state, batch):
    step = state.step + 1
    return Counter(step), {'loss': jnp.float32(step * step), 'acc_inst': jnp.float32(step), 'lr': step / 10.0}

  logged = {}
  batches = iter([{'anchor': np.zeros((1, 2, 2, 3), np.uint8)}] * 7)
  mesh = jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])
  checkpointer = checkpointing.Checkpointer(str(tmp_path), {}, every_steps=2, keep=10)
  record = lambda step, state, metrics: metrics and logged.setdefault(step, metrics)  # noqa: E731
  final = train.train_loop(
    config, Counter(jnp.int32(0)), train_step, batches, mesh, checkpointer, 7, record, show_progress=False
  )
  checkpointer.close()
  assert final.step == 7 and sorted(logged) == [3, 6, 7]  # every third step and the last
  for step, window in ((3, [1, 2, 3]), (6, [4, 5, 6]), (7, [7])):
    np.testing.assert_allclose(logged[step]['loss'], np.mean(np.square(window)), rtol=1e-6)
    np.testing.assert_allclose(logged[step]['acc_inst'], np.mean(window), rtol=1e-6)
    np.testing.assert_allclose(logged[step]['lr'], step / 10.0, rtol=1e-6)
  assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [2, 4, 6]  # every_steps=2


@pytest.mark.heavy(60)  # seconds on 2 cores with conftest.lone_run, which it is the first to need (heaviest first)
def test_killed_while_saving_a_checkpoint_resumes_from_the_last_committed_one(tmp_path, lone_run):
  """A real SIGKILL while Orbax writes a checkpoint (its temporary directory on disk, not yet renamed into place):
  the checkpoints committed before it still restore, the rerun resumes from the newest of them and ends equal, bit
  for bit, to a run that was never killed."""
  checkpoints = tmp_path / 'killed' / 'checkpoints'
  argv, env = cli(tmp_path / 'killed', SIX_SAVED_STEPS)
  process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  saving = []
  while not saving and process.poll() is None:
    names = os.listdir(checkpoints) if checkpoints.is_dir() else []
    saving = [n for n in names if 'tmp' in n and n.split('.')[0].isdigit() and int(n.split('.')[0]) >= 3]
    time.sleep(0.001)
  process.kill()  # SIGKILL: no handler, no finally, no flush
  process.wait()
  assert saving, 'the run ended before a save of step >= 3 was seen in progress'
  committed = sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit())
  assert committed and max(committed) < int(saving[0].split('.')[0])
  assert checkpointing.load_run(str(tmp_path / 'killed'))[2] == max(committed)  # what was committed restores

  rerun = run_cli(tmp_path / 'killed', SIX_SAVED_STEPS)
  assert rerun.returncode == 0, rerun.stderr[-4000:]
  assert f'Restored checkpoint at step {max(committed)} from {checkpoints}' in rerun.stdout + rerun.stderr
  config, resumed, step = checkpointing.load_run(str(tmp_path / 'killed'))
  _, uninterrupted, straight_step = checkpointing.load_run(lone_run)
  assert step == straight_step == 6
  leaves_equal(resumed, uninterrupted)


def test_a_checkpoint_written_before_a_field_existed_resumes_at_its_default(tmp_path):
  current = base.get_config().to_dict()
  saved = json.loads(json.dumps(current))
  del saved['crops']['max_iou'], saved['crops']['aplus_probability']  # an older schema's config
  checkpointing.check_compatible(saved, current, str(tmp_path))
  current['crops']['max_iou'] = 0.3  # not what the older run did
  with pytest.raises(checkpointing.ConfigMismatchError, match=r'crops: checkpoint .*max_iou.: 1\.0'):
    checkpointing.check_compatible(saved, current, str(tmp_path))
