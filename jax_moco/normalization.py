"""Input and feature normalisation, shared by the train step, the evaluators and the config checks."""

import jax.numpy as jnp
import numpy as np

# Per-channel (mean, std) of the input images in [0, 1] (`model.normalization`), applied on the accelerator.
NORMALIZATION = {
  'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
  'cifar10': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),  # the MoCo CIFAR-10 Colab's values
}


def normalize(images, statistics='imagenet'):
  """uint8 NHWC -> float32 with the per-channel mean/std named by `statistics` (a key of NORMALIZATION)."""
  # NumPy constants, not module-level jnp arrays, which would start the XLA backend at import time.
  mean, std = (np.asarray(v, np.float32) * 255.0 for v in NORMALIZATION[statistics])
  return (images.astype(jnp.float32) - mean) / std


def l2_normalize(x, axis=-1, eps=1e-12, xp=jnp):
  """x / max(||x||, eps) along `axis`; `xp=np` keeps a host array (a kNN bank too large for the device) on the host."""
  return x * (1.0 / xp.maximum(xp.linalg.norm(x, axis=axis, keepdims=True), eps))
