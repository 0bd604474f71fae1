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
