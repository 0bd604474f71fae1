"""What the command line prints: by default jax_moco's own log lines, the metric writer's periodic lines and every
warning; TensorFlow's C++ start-up notices and log, and other libraries' INFO chatter (JAX probing for a TPU, Orbax
file by file, the parameter table, matplotlib's font cache) only with absl's `--verbosity=1` (`-v 1`) or more."""

import contextlib
import errno
import importlib.util
import logging
import os
import sys

from absl import logging as absl_logging

import input_pipeline
import jax_moco


def _roots():
  clu = importlib.util.find_spec('clu').submodule_search_locations[0]
  packages = (jax_moco.__file__, input_pipeline.__file__, os.path.join(clu, 'metric_writers', '__init__.py'))
  return tuple(os.path.dirname(path) + os.sep for path in packages)


def _rethrown_by_orbax(record):
  """An error logged with its traceback by Orbax (by each thread it passes through), which Orbax also raises to its
  caller: a failed save, which jax_moco says in one line."""
  return os.sep + os.path.join('orbax', 'checkpoint') + os.sep in record.pathname and record.exc_info is not None


def quiet_filter():
  """A logging filter that keeps warnings and errors (but those Orbax raises again), and INFO only from jax_moco,
  input_pipeline and clu's metric writers."""
  roots = _roots()
  return lambda record: (
    (record.levelno >= logging.WARNING and not _rethrown_by_orbax(record)) or record.pathname.startswith(roots)
  )


def _closed_loop_hook(hook):
  """sys.unraisablehook without TensorStore's "Event loop is closed": after a failed write Orbax closes its event
  loop, and each of the other writes that ends later reports that error, which no caller can catch, when its
  callback finds the loop closed."""

  def unraisablehook(unraisable):
    if not (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == 'Event loop is closed'):
      hook(unraisable)

  return unraisablehook


def quiet_logging(verbosity: int):
  """Below verbosity 1, keeps other libraries' INFO lines (JAX probing for a TPU, Orbax file by file) off the
  console: what every command line does first."""
  if verbosity < 1:
    absl_logging.get_absl_handler().addFilter(quiet_filter())


def import_tensorflow(verbosity: int):
  """Imports TensorFlow for the input pipeline as `input_pipeline.import_tensorflow` does (hidden from the
  accelerators; its C++ notices kept off the console below verbosity 1), with quiet_logging. Call it before anything
  imports TensorFlow (clu's metric writers do)."""
  quiet_logging(verbosity)
  input_pipeline.import_tensorflow(verbosity)


@contextlib.contextmanager
def one_line_errors(verbosity: int, *errors):
  """Below verbosity 1, one of `errors`, or a full disk or quota met by any other file (metrics.jsonl,
  config.json), ends the process with its message on one line (rc 1) rather than a traceback, and TensorStore's
  "Event loop is closed" after a failed save is not printed (for the rest of the process). The process ends at once
  (os._exit): Orbax's writer threads after a failed save would otherwise print their own tracebacks while Python
  shuts down."""
  if verbosity < 1:
    sys.unraisablehook = _closed_loop_hook(sys.unraisablehook)
  try:
    yield
  except Exception as e:
    message = _one_line(e, errors)
    if message is None or verbosity >= 1:
      raise
    sys.stdout.flush()
    print(f'error: {message}', file=sys.stderr, flush=True)
    os._exit(1)


def _one_line(error, errors):
  """The one-line message of `error`: one of `errors`, or a full disk or quota met by any file; None for others."""
  if isinstance(error, errors):
    return str(error)
  if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
    return (
      f'{error.filename} could not be written: {error.strerror} (errno {error.errno}); the same command resumes '
      'from the newest checkpoint once there is room'
    )
  return None
