"""tf.data input pipeline for jax_moco: sources, augmentations, multi-crop views and batching.

TensorFlow only: the pipeline yields NumPy uint8 batches and never imports JAX.
"""
