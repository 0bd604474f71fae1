"""Dense features of a frozen backbone, for the evaluations without finetuning that need a feature per location (Van
Gansbeke et al. 2021, A.6 and A.7): the last stage's 3x3 convolutions with dilation 2 and stride 1 (torchvision's
`replace_stride_with_dilation=[False, False, True]`, the paper's R50 setting), no average pooling, each location's
feature L2-normalised. The same parameters serve: dilation changes neither shapes nor names.

Images of any size (one size per call: a spatially padded image would give other features near its border, so
sizes are never mixed in a batch); batches are split over the mesh and padded with masked examples, so the device
count never changes a result.
"""

import jax
import numpy as np

from jax_moco import sharding
from jax_moco.normalization import l2_normalize
from jax_moco.normalization import normalize


class DenseFeatures:
  """features(variables, images) -> [n, h, w, C] float32, unit norm along C, for host-local uint8 images
  [n, H, W, 3] of every process (their features concatenated in process order, on every process).

  `variables` are the backbone's (state.backbone_variables); `batch_size` is the global batch (a multiple of the
  device count; default one image a device); `dilate=False` keeps the last stage's stride (the plain backbone)."""

  def __init__(self, mesh, backbone, statistics='imagenet', batch_size=None, dilate=True, compiler_options=None):
    self.mesh = mesh
    self.module = backbone.clone(dilate_last=dilate, pool=False, bn_groups=1)
    self.batch_size = batch_size or mesh.size
    if self.batch_size % mesh.size:
      raise ValueError(f'dense features: batch_size={self.batch_size} is not a multiple of {mesh.size} devices')
    self.local_batch = self.batch_size // jax.process_count()

    def features(variables, images):
      return l2_normalize(self.module.apply(variables, normalize(images, statistics), train=False))

    self.feature_fn = sharding.data_parallel_jit(
      features, mesh, (sharding.REPLICATED, sharding.BATCH), sharding.BATCH, compiler_options=compiler_options
    )

  @property
  def stride(self) -> int:
    return self.module.output_stride

  def output_size(self, height, width):
    """The feature map's (h, w) for an H x W image: ceil(H / stride), ceil(W / stride)."""
    return -(-height // self.stride), -(-width // self.stride)

  def batches(self, variables, images):
    """Yields the global features of consecutive batches of host-local `images`; every process runs as many batches
    as the process with the most images (the others feed masked padding)."""
    images = np.asarray(images)
    counts = sharding.all_processes(np.array([len(images)]))
    for start in range(0, int(counts.max()), self.local_batch):
      chunk = images[start : start + self.local_batch]
      mask = np.arange(self.local_batch) < len(chunk)
      padded = np.zeros((self.local_batch,) + images.shape[1:], images.dtype)
      padded[: len(chunk)] = chunk
      out = sharding.all_processes(self.feature_fn(variables, sharding.shard_batch(self.mesh, padded)))
      yield out[sharding.all_processes(mask)]

  def __call__(self, variables, images):
    return np.concatenate(list(self.batches(variables, images)))

  def of_global_batch(self, variables, images):
    """[n, h, w, C] of at most `batch_size` images that every process holds whole (a batch read on every process,
    as segment retrieval reads its images): each process feeds its contiguous share, in process order."""
    if len(images) > self.batch_size:
      raise ValueError(f'dense features: {len(images)} images in one global batch of {self.batch_size}')
    start = jax.process_index() * self.local_batch
    return self(variables, np.asarray(images)[start : start + self.local_batch])
