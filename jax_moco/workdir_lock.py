"""One run per work directory: a lock held for the life of a training run.

The lock is the `filelock` package's FileLock on DIR/run.lock, flock(2) on Unix: the kernel releases it when its
process ends, however it ends (kill -9 included), so a lock is never held by a dead process. DIR/run.lock.json names
the holder (host, process id, start time) for a run that finds the lock held; found beside a free lock, it is what a
run that did not end cleanly left, and the lock is taken over with a warning. Of a multi-host run, process 0 takes
the lock and the other processes follow its answer. How this behaves on network file systems: docs/training.md.
"""

import contextlib
import json
import logging
import os
import socket
import time

import filelock
import jax
from jax.experimental import multihost_utils
import numpy as np

LOCK_NAME, HOLDER_NAME = 'run.lock', 'run.lock.json'


class WorkdirBusyError(RuntimeError):
  pass


class WorkdirUnwritableError(OSError):
  pass


def describe(holder) -> str:
  if not holder:
    return 'holder unknown'
  return f'host {holder.get("host")}, process {holder.get("pid")}, started {holder.get("started")}'


def _read_holder(path):
  with contextlib.suppress(OSError, ValueError):
    with open(path) as f:
      return json.load(f)
  return None


def _take(workdir):
  """The acquired lock of `workdir` (made if missing) and its holder file's path; WorkdirBusyError naming the
  holder when another process holds it."""
  try:
    os.makedirs(workdir, exist_ok=True)
    lock = filelock.FileLock(os.path.join(workdir, LOCK_NAME), timeout=0)
    holder_path = os.path.join(workdir, HOLDER_NAME)
    lock.acquire()
  except filelock.Timeout:
    raise WorkdirBusyError(
      f'{os.path.abspath(workdir)} is in use by another run ({describe(_read_holder(holder_path))}): wait for it to '
      'end, stop it, or use another --workdir'
    ) from None
  except OSError as e:
    raise WorkdirUnwritableError(
      f'cannot write to the work directory {os.path.abspath(workdir)}: {e.strerror or e}'
    ) from e
  left = _read_holder(holder_path)
  if left:
    message = 'Taking over the lock of %s from a run that ended without releasing it (%s)'
    logging.warning(message, workdir, describe(left))
  holder = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': time.strftime('%Y-%m-%d %H:%M:%S %Z')}
  with open(holder_path, 'w') as f:
    json.dump(holder, f)
  return lock, holder_path


def _agreed(taken: bool) -> bool:
  """Whether process 0 took the lock, on every process (a collective with several processes)."""
  if jax.process_count() == 1:
    return taken
  return bool(multihost_utils.broadcast_one_to_all(np.int32(taken)))


@contextlib.contextmanager
def held(workdir: str):
  """Holds `workdir`'s lock for the block; raises WorkdirBusyError, naming the holder, when another run holds it,
  and WorkdirUnwritableError, naming the directory and the OS error, when it cannot be made or written."""
  taken, error = None, None
  if jax.process_index() == 0:
    try:
      taken = _take(workdir)
    except (WorkdirBusyError, WorkdirUnwritableError) as e:
      error = e
  if not _agreed(taken is not None):
    raise error or WorkdirBusyError(f'process 0 could not lock {os.path.abspath(workdir)}: see its console')
  try:
    yield
  finally:
    if taken:
      lock, holder_path = taken
      with contextlib.suppress(OSError):
        os.remove(holder_path)
      lock.release()
