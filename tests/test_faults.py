"""Faults a user meets, on real processes of the command line: a second run on a busy work directory, the lock a
killed run left, a full disk, and start-up errors; each said in one line, not a traceback."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from jax_moco import checkpointing
from jax_moco import console
from jax_moco import evaluate
from jax_moco import workdir_lock
from tests.helpers import save_tiny_run
from tests.helpers import user_environment
from tests.test_train import ROOT
from tests.test_train import SIX_SAVED_STEPS as OVERRIDES  # the full disk is met at the third checkpoint
from tests.test_train import cli
from tests.test_train import leaves_equal
from tests.test_train import run_cli


@pytest.fixture(scope='module')
def lone_state(lone_run):
  """The final state of a run of OVERRIDES that nothing disturbed."""
  return checkpointing.load_run(lone_run)[1]


def started_and_locked(workdir):
  """A run of OVERRIDES on `workdir`, returned once it holds the work directory's lock."""
  argv, env = cli(workdir, OVERRIDES)
  process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  while not os.path.exists(workdir / workdir_lock.HOLDER_NAME):
    assert process.poll() is None, process.stdout.read()[-4000:]
    time.sleep(0.05)
  return process


def assert_said_in_one_line(result, pattern):
  """The run failed (rc 1) and its console ends with one `error: ...` line matching `pattern`, no traceback."""
  console = result.stdout + result.stderr
  assert result.returncode == 1, console[-4000:]
  assert 'Traceback' not in console and 'RuntimeError' not in console, console[-4000:]
  assert re.fullmatch(pattern, console.strip().splitlines()[-1]), console[-2000:]


@pytest.mark.heavy(20)  # seconds on 2 cores, for the order of tests/conftest.py
def test_a_second_run_on_a_busy_workdir_is_refused_naming_the_first(tmp_path, lone_state):
  first = started_and_locked(tmp_path)
  first.send_signal(signal.SIGSTOP)  # held in place while the second starts, so it is sure to meet the lock
  try:
    second = run_cli(tmp_path, OVERRIDES)
  finally:
    first.send_signal(signal.SIGCONT)
  assert_said_in_one_line(
    second,
    f'error: {tmp_path} is in use by another run \\(host \\S+, process {first.pid}, started [^)]+\\): wait for it to '
    'end, stop it, or use another --workdir',
  )
  console, _ = first.communicate(timeout=300)
  assert first.returncode == 0, console[-4000:]
  leaves_equal(checkpointing.load_run(str(tmp_path))[1], lone_state)
  assert not os.path.exists(tmp_path / workdir_lock.HOLDER_NAME)  # released


@pytest.mark.heavy(20)  # seconds on 2 cores, for the order of tests/conftest.py
def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, lone_state):
  killed = started_and_locked(tmp_path)
  killed.kill()  # SIGKILL: the holder's file stays, the kernel frees the lock
  killed.wait()
  rerun = run_cli(tmp_path, OVERRIDES)
  assert rerun.returncode == 0, rerun.stderr[-4000:]
  assert re.search(
    f'Taking over the lock of {tmp_path} from a run that ended without releasing it \\(host \\S+, process '
    f'{killed.pid}, started',
    rerun.stderr,
  )
  leaves_equal(checkpointing.load_run(str(tmp_path))[1], lone_state)


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 3 MB file system (a tmpfs, which needs root: CI runs as root, so it runs the test), unmounted after."""
  directory = tmp_path / 'small'
  directory.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', str(directory)], capture_output=True)
  if mounted.returncode != 0:
    pytest.skip(f'mounting a tmpfs is not permitted here (CI runs as root and runs this test): {mounted.stderr!r}')
  try:
    yield directory
  finally:
    subprocess.run(['umount', str(directory)], check=True)


@pytest.mark.heavy(30)  # seconds on 2 cores, for the order of tests/conftest.py
def test_a_full_disk_stops_the_run_in_one_line_and_the_rerun_on_a_freed_disk_resumes(small_tmpfs, lone_state):
  """On 3 MB the third checkpoint (1.1 MB each) does not fit: the run stops naming it, where, the OS error, the free
  space and the checkpoint a rerun resumes from, after a warning before training; the half-written checkpoint is
  removed. With room again (the tmpfs grown), the same command resumes and ends as the lone run."""
  workdir = small_tmpfs / 'run'
  full = run_cli(workdir, OVERRIDES)
  checkpoints = workdir / 'checkpoints'
  assert_said_in_one_line(
    full,
    f'error: checkpoint (\\d) could not be written to {checkpoints}: No space left on device \\(errno 28\\); '
    '\\d+\\.\\d MB free there. The same command resumes from checkpoint (\\d).',
  )
  failed, resumes = map(int, re.search(r'checkpoint (\d) could.*from checkpoint (\d)', full.stderr).groups())
  assert 'keep_checkpoints=3 checkpoints of this state need about' in full.stderr
  assert sorted(os.listdir(checkpoints)) == [str(s) for s in range(1, failed)] and resumes == failed - 1

  subprocess.run(['mount', '-o', 'remount,size=20m', str(small_tmpfs)], check=True)
  rerun = run_cli(workdir, OVERRIDES)
  assert rerun.returncode == 0, rerun.stderr[-4000:]
  assert f'Restored checkpoint at step {resumes} from {checkpoints}' in rerun.stdout + rerun.stderr
  leaves_equal(checkpointing.load_run(str(workdir))[1], lone_state)


def command(*args):
  """`python -m jax_moco.main ARGS` in a user's environment, one device."""
  argv = [sys.executable, '-m', 'jax_moco.main', *args]
  env = dict(user_environment(), XLA_FLAGS='')
  return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.heavy(30)  # seconds on 2 cores, for the order of tests/conftest.py
def test_start_up_errors_are_one_line_naming_the_path_and_the_cause(tmp_path):
  syntax_error = tmp_path / 'syntax_error.py'
  syntax_error.write_text('def get_config(:\n')
  fails = tmp_path / 'fails.py'
  fails.write_text('def get_config():\n  return undefined_name\n')
  (tmp_path / 'a_file').write_text('')
  missing = tmp_path / 'missing.py'
  for args, said in (
    ([f'--config={syntax_error}'], f'error: the config file {syntax_error} does not load: .+ \\(line 1\\)'),
    (
      [f'--config={fails}'],
      f'error: the config file {fails} does not load: NameError: .*undefined_name.* \\(line 2\\)',
    ),
    ([f'--config={missing}'], f'error: the config file {missing} does not load: \\[Errno 2\\] No such file .*'),
    (
      ['--config=configs/knn.py:nopreset'],
      "error: the config file configs/knn.py:nopreset does not load: ValueError: unknown preset 'nopreset'; .*",
    ),
    (
      ['--config=configs/knn.py', '--config.model.archh=resnet10'],
      "error: --config.model.archh: the config has no field 'archh' \\(did you mean arch\\?\\)",
    ),
    (  # refused by train.prepare before anything is built: bad input, not a bug
      ['--config=configs/knn.py', f'--config.dataset=folder:{missing}', f'--workdir={tmp_path / "run"}'],
      f'error: folder:{missing} is not a directory',
    ),
    (
      ['--config=configs/knn.py', '--config.batch_size=0', f'--workdir={tmp_path / "run"}'],
      'error: batch_size: must be positive, got 0',
    ),
    (
      ['--config=configs/knn.py', f'--workdir={tmp_path / "a_file" / "run"}'],
      f'error: cannot write to the work directory {tmp_path / "a_file" / "run"}: Not a directory',
    ),
  ):
    assert_said_in_one_line(command(*args), said)
  checkpoints = tmp_path / 'damaged' / 'checkpoints'
  (checkpoints / '5').mkdir(parents=True)
  (checkpoints / '5' / 'junk').write_text('')
  damaged = command('--config=configs/knn.py', f'--workdir={checkpoints.parent}')
  assert_said_in_one_line(damaged, '  step 5: .*')  # the error's last line: why each checkpoint did not restore
  assert f'error: no checkpoint in {checkpoints} restores' in damaged.stderr
  verbose = command(f'--config={syntax_error}', '--verbosity=1')
  assert verbose.returncode == 1 and 'Traceback' in verbose.stderr and 'SyntaxError' in verbose.stderr
  refused = command('--config=configs/knn.py', '--config.batch_size=0', f'--workdir={tmp_path / "run"}', '-v=1')
  assert refused.returncode == 1 and 'Traceback' in refused.stderr and 'ConfigError: batch_size' in refused.stderr


def test_an_evaluation_is_refused_while_another_process_holds_the_run(tmp_path):
  """Evaluation writes under the run's directory (features, results), so it takes the lock too; the holder here is
  this process's own lock taken anew, which flock treats as another holder."""
  workdir = save_tiny_run(tmp_path)
  with workdir_lock.held(workdir):
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f'{workdir} is in use by another run \\(host '):
      evaluate.evaluate(workdir, 'knn', max_examples=100)
  assert not os.path.exists(os.path.join(workdir, 'eval'))


def test_half_written_checkpoints_are_removed_and_a_failed_save_is_said_without_its_directory(tmp_path):
  """What a run killed while saving left is removed when the next run opens its checkpoints; a failed save's
  message names the OS error from TensorStore's text, and still comes when the directory cannot be listed."""
  (tmp_path / '3.orbax-checkpoint-tmp' / 'state').mkdir(parents=True)
  (tmp_path / '2').mkdir()
  checkpointer = checkpointing.Checkpointer(str(tmp_path), {}, every_steps=1, keep=2)
  assert sorted(os.listdir(tmp_path)) == ['2']
  orbax_error = ValueError("RESOURCE_EXHAUSTED: Error writing ...: No space left on device [os_error_code='28']")
  (tmp_path / '4.orbax-checkpoint-tmp').mkdir()
  said = str(checkpointer.write_error(4, orbax_error))
  assert re.fullmatch(
    f'checkpoint 4 could not be written to {tmp_path}: No space left on device \\(errno 28\\); \\d+\\.\\d MB free '
    'there. The same command resumes from checkpoint 2.',
    said,
  )
  assert sorted(os.listdir(tmp_path)) == ['2']
  checkpointer.directory = str(tmp_path / 'lost_mount')
  assert str(checkpointer.write_error(4, OSError(5, 'Input/output error'))).endswith(
    'Input/output error (errno 5); unknown space free there. The same command resumes from the newest checkpoint '
    'there that restores.'
  )
  checkpointer.close()


def console_of(raised, verbosity=0, errors='checkpointing.CheckpointWriteError'):
  """(rc, stderr) of a process that raises `raised` (Python source) inside console.one_line_errors(`errors`)."""
  source = (
    'from jax_moco import console, checkpointing\n'
    f'with console.one_line_errors({verbosity}, {errors}):\n'
    f'  raise {raised}\n'
  )
  result = subprocess.run([sys.executable, '-c', source], cwd=ROOT, capture_output=True, text=True, timeout=120)
  return result.returncode, result.stderr


def test_a_full_disk_met_by_any_file_is_one_line_and_other_errors_keep_their_traceback():
  rc, said = console_of("OSError(28, 'No space left on device', '/run/metrics.jsonl')")
  assert rc == 1 and said == (
    'error: /run/metrics.jsonl could not be written: No space left on device (errno 28); the same command resumes '
    'from the newest checkpoint once there is room\n'
  )
  rc, said = console_of("checkpointing.CheckpointWriteError('checkpoint 3 could not be written')")
  assert rc == 1 and said == 'error: checkpoint 3 could not be written\n'
  assert console_of("KeyError('no run x')", errors='KeyError') == (1, 'error: no run x\n')  # as bad_input says it
  for raised, verbosity in (("OSError(28, 'No space left on device', '/run/metrics.jsonl')", 1), ('KeyError(1)', 0)):
    rc, said = console_of(raised, verbosity)
    assert rc == 1 and 'Traceback' in said


def test_bad_input_is_one_line_naming_it_and_other_errors_pass():
  with pytest.raises(SystemExit, match='^error: --workdir=x: no checkpoints$'):
    with console.bad_input(ValueError):
      raise ValueError('--workdir=x: no checkpoints')
  with pytest.raises(SystemExit, match='^error: Key "archh" does not exist$'):  # a KeyError's message, not its repr
    with console.bad_input(KeyError):
      raise KeyError('Key "archh" does not exist')
  with pytest.raises(TypeError):
    with console.bad_input(ValueError):
      raise TypeError('a bug')
