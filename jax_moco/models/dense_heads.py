"""Dense prediction models for the finetuned segmentation and depth protocols (Van Gansbeke et al. 2021, "Revisiting
Contrastive Methods for Unsupervised Learning of Visual Representations", appendix A.3 and A.5): the run's backbone
with its last stage dilated, a head, and the head's outputs upsampled bilinearly to the input.

- FCNHead: the authors' FCN decoder (their segmentation code's `FCN.decoder`, VOC and Cityscapes): two 3x3 convs of
  256 channels at the head's dilation (6 for VOC, 1 for Cityscapes), no bias, each with BN and ReLU, then a 1x1 conv
  to the outputs, no bias, no dropout; PyTorch's default initialisation. Its backbone has every 3x3 conv of the last
  stage at dilation 2, stride 1, the first block's strided one included (resnet.STAGE_STRIDES 'dilated_all').
- DeepLabV3Head: torchvision's DeepLabHead (Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image
  Segmentation"), as the NYUD code the authors ran uses it (Vandenhende et al. 2021, "Multi-Task Learning for Dense
  Prediction Tasks: A Survey": its DeepLabHead): ASPP (a 1x1 branch, three 3x3 branches at rates 12, 24, 36, an
  image-pooling branch; 256 channels each, BN and ReLU), a 1x1 projection with BN, ReLU and dropout 0.5, then a 3x3
  conv with BN and ReLU and a 1x1 conv with bias to the outputs. Its backbone is torchvision's dilated last stage (the
  first block's strided conv keeps dilation 1: that code's ResnetDilated at dilate_scale=16, the paper's "dilation 2
  and stride 1" for NYUD; the code's own default is 8).

Parameter names follow the PyTorch modules (torch_layout): the FCN head's `0`, `1`, `3`, `4`, `6` are `decoder.0` ...
`decoder.6`; the DeepLab head's `0/convs_1_0` is DeepLabHead's `0.convs.1.0`. The model's tree is {'backbone': ...,
'head': ...} (Vandenhende et al.'s SingleTaskModel calls the head `decoder`).

BN runs in train mode while finetuning, per device by default; `sync_bn` averages its statistics over the mesh axis
(PyTorch's SyncBatchNorm, as the authors' multi-GPU Cityscapes runs). DeepLabV3Head's dropout needs a 'dropout' rng
in train mode: `model.apply(variables, x, train=True, rngs={'dropout': key}, mutable=['batch_stats'])`.
"""

import functools
from typing import Sequence

import flax.linen as nn
from flax.traverse_util import flatten_dict
import jax
import jax.numpy as jnp

from jax_moco import sharding
from jax_moco.models import convolution
from jax_moco.models import encoder
from jax_moco.models import resnet
from jax_moco.models.batchnorm import SplitBatchNorm


def torch_conv(features, kernel, dilation=1, bias_fan_in=None, dtype=jnp.float32, name=None):
  """nn.Conv initialised as PyTorch's Conv2d (kaiming_uniform(a=sqrt(5)): the same U(+-1/sqrt(fan_in)) as its Linear),
  padded to keep the size; a bias, initialised as PyTorch's, when its fan-in is given."""
  return nn.Conv(
    features,
    (kernel, kernel),
    padding=dilation * (kernel // 2),
    kernel_dilation=dilation,
    use_bias=bias_fan_in is not None,
    dtype=dtype,
    kernel_init=encoder.torch_linear_kernel_init,
    bias_init=encoder.torch_linear_bias_init(bias_fan_in or 1),
    conv_general_dilated=convolution.convolution,
    name=name,
  )


class FCNHead(nn.Module):
  """The authors' FCN decoder: [n, h, w, C] -> [n, h, w, num_outputs]."""

  num_outputs: int
  dilation: int
  channels: int = 256
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(SplitBatchNorm, dtype=self.dtype, axis_name=self.bn_axis_name)
    for conv in (0, 3):  # decoder.0 and decoder.3; their BNs decoder.1 and decoder.4; ReLUs 2 and 5
      x = torch_conv(self.channels, 3, self.dilation, dtype=self.dtype, name=str(conv))(x.astype(self.dtype))
      x = nn.relu(norm(name=str(conv + 1))(x, train))
    return torch_conv(self.num_outputs, 1, dtype=self.dtype, name='6')(x)


class ASPP(nn.Module):
  """torchvision's ASPP: the branches concatenated, then `project` (1x1 conv, BN, ReLU, dropout)."""

  rates: Sequence[int]
  channels: int = 256
  dropout: float = 0.5
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  def _conv_bn_relu(self, x, kernel, dilation, name, index, train):
    """torchvision's Sequential(conv, BN, ReLU) named `name` with the conv at `index`."""
    x = torch_conv(self.channels, kernel, dilation, dtype=self.dtype, name=f'{name}_{index}')(x)
    norm = SplitBatchNorm(dtype=self.dtype, axis_name=self.bn_axis_name, name=f'{name}_{index + 1}')
    return nn.relu(norm(x, train))

  @nn.compact
  def __call__(self, x, train: bool):
    x = x.astype(self.dtype)
    branches = [self._conv_bn_relu(x, 1, 1, 'convs_0', 0, train)]
    branches += [self._conv_bn_relu(x, 3, rate, f'convs_{i}', 0, train) for i, rate in enumerate(self.rates, 1)]
    # Image pooling (ASPPPooling: AdaptiveAvgPool2d(1) at index 0): its 1x1 map upsampled bilinearly is a constant.
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
    pooled = self._conv_bn_relu(pooled, 1, 1, f'convs_{len(self.rates) + 1}', 1, train)
    branches.append(jnp.broadcast_to(pooled, x.shape[:3] + pooled.shape[3:]))
    out = self._conv_bn_relu(jnp.concatenate(branches, axis=-1), 1, 1, 'project', 0, train)
    return nn.Dropout(self.dropout, deterministic=not train)(out)


class DeepLabV3Head(nn.Module):
  """torchvision's DeepLabHead: [n, h, w, C] -> [n, h, w, num_outputs]."""

  num_outputs: int
  rates: Sequence[int] = (12, 24, 36)
  channels: int = 256
  dropout: float = 0.5
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = ASPP(self.rates, self.channels, self.dropout, self.bn_axis_name, self.dtype, name='0')(x, train)
    x = torch_conv(self.channels, 3, dtype=self.dtype, name='1')(x)
    x = nn.relu(SplitBatchNorm(dtype=self.dtype, axis_name=self.bn_axis_name, name='2')(x, train))
    return torch_conv(self.num_outputs, 1, bias_fan_in=self.channels, dtype=self.dtype, name='4')(x)


def upsample_bilinear(x, height, width):
  """[n, h, w, C] -> [n, height, width, C] float32 as PyTorch's F.interpolate(mode='bilinear', align_corners=False):
  half-pixel centres, the border pixels repeated, and (were it a downsampling) no antialiasing."""
  shape = (x.shape[0], height, width, x.shape[3])
  return jax.image.resize(x.astype(jnp.float32), shape, 'bilinear', antialias=False)


class DenseModel(nn.Module):
  """images [n, H, W, 3] (normalised) -> [n, H, W, outputs] float32: the head on the backbone's feature maps,
  upsampled bilinearly to the input (the authors' FCN.forward; Vandenhende et al.'s SingleTaskModel)."""

  backbone: resnet.ResNet  # unpooled
  head: nn.Module

  @nn.compact
  def __call__(self, images, train: bool):
    logits = self.head(self.backbone(images, train), train)
    return upsample_bilinear(logits, *images.shape[1:3])


# Each head with its reference's last stage (resnet.STAGE_STRIDES of stages 2, 3 and 4).
HEADS = {
  'fcn': ('strided', 'strided', 'dilated_all'),
  'deeplabv3': resnet.DENSE_OUTPUTS['stride16_dilated'],
}


def create_dense_model(backbone, head, num_outputs, dilation=6, sync_bn=False, channels=256) -> DenseModel:
  """`backbone` (the run's resnet.ResNet as trained: state.create_encoder(config).backbone) with `head` ('fcn', at
  `dilation`, or 'deeplabv3') of `channels` (256 in both references) to `num_outputs`; `sync_bn` synchronises every
  BN over the mesh's axis (the step must then run under shard_map), else each device's BN uses its own images."""
  if head not in HEADS:
    raise ValueError(f'dense head {head!r}: choose one of {", ".join(HEADS)}')
  axis_name = sharding.AXIS if sync_bn else None
  backbone = resnet.dense_backbone(backbone, HEADS[head], bn_axis_name=axis_name)
  options = dict(num_outputs=num_outputs, channels=channels, bn_axis_name=axis_name, dtype=backbone.dtype)
  return DenseModel(backbone, FCNHead(dilation=dilation, **options) if head == 'fcn' else DeepLabV3Head(**options))


def _mismatch(given, expected):
  """The first path where two variable trees differ in name, shape or dtype, or None."""
  flat = [
    {'/'.join(path): f'{jnp.dtype(leaf.dtype).name}{list(leaf.shape)}' for path, leaf in flatten_dict(tree).items()}
    for tree in (given, expected)
  ]
  for path in sorted(set(flat[0]) | set(flat[1])):
    if flat[0].get(path) != flat[1].get(path):
      return f'{path}: given {flat[0].get(path)}, the model needs {flat[1].get(path)}'
  return None


def init_variables(model: DenseModel, seed: int, backbone_variables=None):
  """{'params', 'batch_stats'} of `model`, each {'backbone': ..., 'head': ...}: the head initialised from `seed`, the
  backbone's from `backbone_variables` (state.backbone_variables of a checkpoint) or, if None, from `seed` too (a
  random-init baseline)."""
  backbone_key, head_key = jax.random.split(jax.random.key(seed))
  init_backbone = jax.jit(functools.partial(model.backbone.init, backbone_key, train=False))
  images = jnp.zeros((1, 32, 32, 3))
  if backbone_variables is None:
    backbone_variables = init_backbone(images)
  elif mismatch := _mismatch(backbone_variables, jax.eval_shape(init_backbone, images)):
    raise ValueError(f"dense model: the backbone variables do not fit the config's model ({mismatch})")
  features = jnp.zeros((1, 4, 4, model.backbone.num_features), model.backbone.dtype)
  head_variables = jax.jit(functools.partial(model.head.init, head_key, train=False))(features)
  return {c: {'backbone': backbone_variables[c], 'head': head_variables[c]} for c in ('params', 'batch_stats')}
