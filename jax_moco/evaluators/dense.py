"""Dense features of a frozen backbone, for the evaluations without finetuning that need a feature per location (Van
Gansbeke et al. 2021, A.6 and A.7): the backbone without average pooling, its later stages run at a smaller output
stride (resnet.DENSE_OUTPUTS), each location's feature L2-normalised. The same parameters serve: neither dilating nor
unstriding a stage changes a shape or a name.

Images of any size (one size per call: a spatially padded image would give other features near its border, so
sizes are never mixed in a batch); batches are split over the mesh and padded with masked examples, so the device
count never changes a result.
"""

import jax
import numpy as np

from jax_moco import sharding
from jax_moco.models import resnet
from jax_moco.normalization import l2_normalize
from jax_moco.normalization import normalize


class DenseFeatures:
  """features(variables, images) -> [n, h, w, C] float32, unit norm along C, for host-local uint8 images
  [n, H, W, 3] of every process (their features concatenated in process order, on every process).

  `output` names the network (resnet.DENSE_OUTPUTS); `variables` are the backbone's (state.backbone_variables);
  `batch_size` is the global batch (a multiple of the device count; default one image a device)."""

  def __init__(self, mesh, backbone, output, statistics='imagenet', batch_size=None, compiler_options=None):
    if output not in resnet.DENSE_OUTPUTS:
      raise ValueError(f'dense_output={output!r}: choose one of {", ".join(resnet.DENSE_OUTPUTS)}')
    self.mesh, self.output = mesh, output
    self.module = resnet.dense_backbone(backbone, resnet.DENSE_OUTPUTS[output])
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
