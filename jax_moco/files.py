"""Files that are there whole or not at all. Standard library only, so the scripts and every evaluator can import it
without pulling in JAX or TensorFlow."""

import contextlib
import os


@contextlib.contextmanager
def atomic_write(path, mode='w'):
  """The open file to write `path`'s new content to: it goes to a temporary file beside `path`, renamed over `path`
  when the block ends (a rename within one directory is atomic), and removed instead when the block raises. A reader
  of `path` (a cache, a second process, a rerun after an interruption) never sees a half-written file."""
  temporary = path + '.tmp'
  try:
    with open(temporary, mode) as f:
      yield f
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def prepare_output(path, flag='output'):
  """Makes the missing folders of a file about to be written at `path`, after refusing, naming the flag, a path
  that cannot be a file (IsADirectoryError: a folder; NotADirectoryError: one under a file), to be said before the
  work whose result the file is to hold."""
  full = os.path.abspath(path)
  if os.path.isdir(full):
    raise IsADirectoryError(f'--{flag}={path} is a directory: name the file to write')
  parent = os.path.dirname(full)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise NotADirectoryError(f'--{flag}={path}: {parent} is a file, not a directory')
  os.makedirs(os.path.dirname(full), exist_ok=True)
