"""tf.data input pipeline for jax_moco: sources, augmentations, multi-crop views and batching.

TensorFlow only: the pipeline yields NumPy uint8 batches and never imports JAX.
"""


def tensorflow_on_cpu_only():
  """TensorFlow only reads data: hides the accelerators from it so JAX has them all (call before either uses one)."""
  import tensorflow as tf

  tf.config.set_visible_devices([], 'GPU')
