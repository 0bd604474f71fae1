"""tf.data input pipeline for jax_moco: sources, augmentations, multi-crop views and batching.

TensorFlow only: the pipeline yields NumPy uint8 batches and never imports JAX.
"""

import contextlib
import os


def tensorflow_on_cpu_only():
  """TensorFlow only reads data: hides the accelerators from it so JAX has them all (call before either uses one)."""
  import tensorflow as tf

  tf.config.set_visible_devices([], 'GPU')


@contextlib.contextmanager
def _stderr_silenced():
  """Sends file descriptor 2 to /dev/null: TensorFlow's C++ libraries log through absl before anything can set
  their level (TF_CPP_MIN_LOG_LEVEL does not reach those lines), so the import is the only place to catch them."""
  saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(null, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(null)


def import_tensorflow(verbosity: int):
  """Imports TensorFlow for reading data, hidden from the accelerators; below verbosity 1 without its C++ notices
  (start-up, oneDNN, libjpeg's warnings on a bad file, which the sources report themselves). Call it before anything
  imports TensorFlow: its C++ log reads its level once, at the import.

  Below verbosity 1 the level is 3 (fatal only) whatever the environment says: at the widespread
  TF_CPP_MIN_LOG_LEVEL=2, errors still print, and the oneDNN kernels log one when the pipeline's first uint8 op runs
  ("oneDNN supports DT_UINT8 only on platforms with AVX-512", also on AVX-512 machines), which is no error of the
  run. `-v 1` leaves the environment's level."""
  if verbosity >= 1:
    tensorflow_on_cpu_only()
    return
  os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
  with _stderr_silenced():
    tensorflow_on_cpu_only()
