"""What the command line prints: by default jax_moco's own log lines, the metric writer's periodic lines and every
warning; TensorFlow's C++ start-up notices and log, and other libraries' INFO chatter (JAX probing for a TPU, Orbax
file by file, the parameter table, matplotlib's font cache) only with absl's `--verbosity=1` (`-v 1`) or more."""

import contextlib
import errno
import importlib.util
import logging
import os
import re
import sys
import traceback

from absl import flags
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
  """Training's bad_input: below verbosity 1, one of `errors`, or a full disk or quota met by any file
  (metrics.jsonl, config.json), ends the process with `error: MESSAGE` (rc 1), and TensorStore's "Event loop is
  closed" after a failed save is not printed (for the rest of the process). The process ends at once (os._exit):
  Orbax's writer threads after a failed save would otherwise print their own tracebacks while Python shuts down."""
  if verbosity < 1:
    sys.unraisablehook = _closed_loop_hook(sys.unraisablehook)
  try:
    yield
  except Exception as e:
    message = _one_line(e, errors, full_disk=True)
    if message is None or verbosity >= 1:
      raise
    sys.stdout.flush()
    print(f'error: {message}', file=sys.stderr, flush=True)
    os._exit(1)


def _one_line(error, errors, full_disk=False):
  """The one-line message of `error` when it is one of `errors` (a KeyError's without the quotes its str adds), or
  with `full_disk` a full disk or quota met by any file (training's: its checkpoints resume); None for others."""
  if isinstance(error, errors):
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  if full_disk and isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
    return (
      f'{error.filename} could not be written: {error.strerror} (errno {error.errno}); the same command resumes '
      'from the newest checkpoint once there is room'
    )
  return None


def _verbosity(argv) -> int:
  """absl's --verbosity / -v as given in `argv` (read by hand: the config flag's error interrupts absl's parsing)."""
  for i, arg in enumerate(argv):
    name, equals, value = arg.lstrip('-').partition('=')
    if name in ('v', 'verbosity') and arg.startswith('-'):
      value = value if equals else (argv[i + 1] if i + 1 < len(argv) else '')
      return int(value) if value.lstrip('-').isdigit() else 0
  return 0


def _load_error(error, path) -> str:
  """The cause of a config file's failure to load, on one line, with the file's line where there is one."""
  if isinstance(error, SyntaxError):
    return f'{error.msg} (line {error.lineno})'
  if isinstance(error, OSError):  # a missing file: ml_collections lists the paths it tried, the OS error last
    return str(error).strip().splitlines()[-1].strip()
  if isinstance(error, flags.Error) and isinstance(error.__context__, (TypeError, ValueError)):
    # absl's wrapping of what get_config raised, which ml_collections gave its traceback as text: the last line
    return str(error.__context__).strip().splitlines()[-1].strip()
  lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if os.path.abspath(f.filename) == path]
  return f'{type(error).__name__}: {error}' + (f' (line {lines[-1]})' if lines else '')


def _unknown_field(error, argv):
  """What is wrong with an override (--config.FIELD=VALUE) naming a field the config lacks, or None: ml_collections
  raises an AttributeError or KeyError whose text starts with the missing name (and may suggest another)."""
  missing = re.match(r'\W*(\w+)', str(error)) if isinstance(error, (AttributeError, KeyError)) else None
  if missing is None:
    return None
  for arg in argv:
    name = arg.lstrip('-').split('=', 1)[0]
    if name.startswith('config.') and missing.group(1) in name.split('.')[1:]:
      suggestion = re.search(r'Did you mean "(\w+)"', str(error))
      hint = f' (did you mean {suggestion.group(1)}?)' if suggestion else ''
      return f'--{name}: the config has no field {missing.group(1)!r}{hint}'
  return None


def _config_flag_error(error, argv):
  """The one-line message of an error of the --config flag's parsing, or None for absl's other flag errors."""
  unknown = _unknown_field(error, argv)
  if unknown:
    return unknown
  from_get_config = str(error).startswith('flag --config=') and isinstance(error.__context__, (TypeError, ValueError))
  if isinstance(error, flags.Error) and not from_get_config:
    return None  # --config missing, a value of the wrong type (--config.batch_size=abc), another flag's: absl's line
  config = next((arg.split('=', 1)[1] for arg in argv if arg.startswith('--config=')), '--config')
  return f'the config file {config} does not load: {_load_error(error, os.path.abspath(config.split(":")[0]))}'


def parse_config_flags(argv):
  """absl's flag parsing (app.run's flags_parser) for a command line with an ml_collections --config file, which
  the parsing loads: a file that does not load (missing, a syntax error, an error in get_config or its preset) is
  said in one line naming the file and the cause, an override of a field the config lacks naming the flag; the
  traceback only with --verbosity=1. absl's other flag errors are said as absl says them."""
  try:
    remaining = flags.FLAGS(argv)
    getattr(flags.FLAGS.config, 'to_dict', None)  # a missing file loads as a config that raises when it is used
    return remaining
  except Exception as e:
    message = _config_flag_error(e, argv)
    if message is None and isinstance(e, flags.Error):  # as app.parse_flags_with_usage says it
      print(f'FATAL Flags parsing error: {e}', file=sys.stderr)
      print('Pass --helpshort or --helpfull to see help on flags.', file=sys.stderr, flush=True)
      sys.exit(1)
    if _verbosity(argv) >= 1:
      raise
    print(f'error: {message}', file=sys.stderr, flush=True)
    sys.exit(1)


# What the OS raises naming a path the user gave: one that is missing, is there already, or is of the other kind.
PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)


@contextlib.contextmanager
def bad_input(*errors):
  """Bad input met in the block, one of `errors` (those the library raises naming the culprit: a file, a field, a
  flag), ends the command line with `error: MESSAGE` (rc 1, as one_line_errors says it), not a traceback nor absl's
  usage text; the traceback only with --verbosity=1. A SystemExit: these commands have no writer threads to cut off."""
  try:
    yield
  except Exception as e:
    message = _one_line(e, errors)
    if message is None or flags.FLAGS['verbosity'].value >= 1:
      raise
    raise SystemExit(f'error: {message}') from e
