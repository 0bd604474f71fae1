"""ResNets with torchvision's architecture (v1.5: stride on the 3x3 conv) and a parameter tree that maps one to
one onto torchvision's state-dict names: `layer2_0/downsample_1/scale` <-> `layer2.0.downsample.1.weight`.

Options: width multiplier, ImageNet or CIFAR stem (3x3 conv, no max-pool), dilation in the last stage, zero-init of
the last BN of each block, compute dtype (parameters stay float32), and split BN groups. For dense features,
`stage_strides` runs each stage after the first strided as trained, dilated, unstrided or not at all; none of
these changes a parameter's name or shape. DENSE_OUTPUTS names the dense networks the evaluations run, and
dense_backbone makes one of a backbone (unpooled).
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jax_moco.models.batchnorm import SplitBatchNorm
from jax_moco.models.convolution import convolution

# PyTorch's kaiming_normal_(mode='fan_out', nonlinearity='relu'), as torchvision initialises its convolutions.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class ResidualBlock(nn.Module):
  """Fields shared by both block types; `expansion` is the output width over `planes`. `dilation` is the stage's;
  `first_dilation` that of the block's first 3x3 conv, the one that may stride (timm's convention: in the first
  block of a dilated stage it keeps the previous stage's dilation; torchvision's BasicBlock has no dilation)."""

  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  zero_init_last: bool = False
  norm: functools.partial = SplitBatchNorm
  conv: functools.partial = nn.Conv
  first_dilation: int = 1


class BasicBlock(ResidualBlock):
  expansion = 1

  @nn.compact
  def __call__(self, x, train):
    d = self.first_dilation
    out = self.conv(self.planes, (3, 3), self.stride, padding=d, kernel_dilation=d, name='conv1')(x)
    out = nn.relu(self.norm(name='bn1')(out, train))
    out = self.conv(self.planes, (3, 3), padding=self.dilation, kernel_dilation=self.dilation, name='conv2')(out)
    out = self.norm(name='bn2', zero_init=self.zero_init_last)(out, train)
    return nn.relu(out + _shortcut(self, x, train))


class Bottleneck(ResidualBlock):
  expansion = 4

  @nn.compact
  def __call__(self, x, train):
    out = nn.relu(self.norm(name='bn1')(self.conv(self.planes, (1, 1), name='conv1')(x), train))
    d = self.first_dilation
    out = self.conv(self.planes, (3, 3), self.stride, padding=d, kernel_dilation=d, name='conv2')(out)
    out = nn.relu(self.norm(name='bn2')(out, train))
    out = self.conv(self.planes * 4, (1, 1), name='conv3')(out)
    out = self.norm(name='bn3', zero_init=self.zero_init_last)(out, train)
    return nn.relu(out + _shortcut(self, x, train))


# How a stage after the first may run (ResNet.stage_strides): 'strided' as trained (its first block at stride 2);
# 'dilated', stride 1 and the dilation of its 3x3 convs (and of every later stage's) doubled, so that it computes the
# strided stage's outputs and the locations between them (torchvision's replace_stride_with_dilation); 'unstrided',
# stride 1 without dilation (Jabri et al. 2020, "Space-Time Correspondence as a Contrastive Random Walk": their
# ResNet.modify); 'dropped', not run, nor any stage after it; 'dilated_all', 'dilated' with the first block's strided
# 3x3 conv at the new dilation too (the FCN of Van Gansbeke et al. 2021's segmentation code: every 3x3 conv of the last
# stage at dilation 2, their _apply_dilation_2_stride_1).
STAGE_STRIDES = ('strided', 'dilated', 'unstrided', 'dropped', 'dilated_all')

# The dense networks, named by their output stride with the ImageNet stem (the CIFAR stem's is a quarter of it: its
# stem does not downsample): how stages 2, 3 and 4 run (ResNet.stage_strides).
DENSE_OUTPUTS = {
  # The backbone as trained.
  'stride32': ('strided', 'strided', 'strided'),
  # Stage 4's 3x3 convs at dilation 2, stride 1: Van Gansbeke et al. 2021, A.3 and A.7's words ("the 3x3 convolutions
  # in the final ResNet-block have dilation 2 and stride 1"), torchvision's replace_stride_with_dilation=[False, False,
  # True], MaskContrast's ResnetDilated(dilate_scale=16).
  'stride16_dilated': ('strided', 'strided', 'dilated'),
  # Stages 3 and 4 dilated (2 and 4): MaskContrast's ResnetDilated at its default dilate_scale=8 (Van Gansbeke et al.
  # 2021, "Unsupervised Semantic Segmentation by Contrasting Object Mask Proposals": the segment retrieval code the
  # authors' README points to for A.7), torchvision's [False, True, True]; A.7's 64 x 64 output at 512 px.
  'stride8_dilated': ('strided', 'dilated', 'dilated'),
  # Stage 3 at stride 1 without dilation, stage 4 dropped (4x fewer channels): Jabri et al. 2020, "Space-Time
  # Correspondence as a Contrastive Random Walk", their label propagation test's defaults (ResNet.modify,
  # --remove-layers layer4), the code Van Gansbeke et al. 2021, A.6 ran.
  'stride8_no_stage4': ('strided', 'unstrided', 'dropped'),
}


def _shortcut(block, x, train):
  if not block.downsample:
    return x
  y = block.conv(block.planes * block.expansion, (1, 1), block.stride, name='downsample_0')(x)
  return block.norm(name='downsample_1')(y, train)


class ResNet(nn.Module):
  """Backbone: images [B, H, W, 3] (normalised) -> globally pooled features [B, C], or with `pool=False` the last
  stage's feature maps [B, ceil(H / output_stride), ceil(W / output_stride), C] (float32) for dense evaluations
  (C = num_features: that of the last stage that runs)."""

  stage_sizes: Sequence[int]
  block: type
  width: float = 1.0
  stem: str = 'imagenet'  # or 'cifar'
  dilate_last: bool = False  # the last stage 'dilated' (the one setting of stage_strides a config can give)
  stage_strides: Sequence[str] = ()  # one of STAGE_STRIDES for each stage after the first; () as trained
  zero_init_residual: bool = False
  bn_groups: int = 1
  dtype: jnp.dtype = jnp.float32
  pool: bool = True
  bn_axis_name: str | None = None  # SplitBatchNorm.axis_name: synchronised BN over this mesh axis

  @property
  def num_features(self):
    """Channels of the last stage that runs."""
    return int(64 * self.width) * 2 ** (len(self.stages()) - 1) * self.block.expansion

  @property
  def output_stride(self):
    """Input pixels per feature-map location: x4 in the ImageNet stem, x2 in every strided stage."""
    stem = 4 if self.stem == 'imagenet' else 1
    return stem * 2 ** sum(stride == 2 for stride, _, _ in self.stages())

  def stage_modes(self) -> tuple:
    """How each stage after the first runs (STAGE_STRIDES): `stage_strides`, or as trained with the last stage
    dilated under `dilate_last`."""
    later = len(self.stage_sizes) - 1
    if not self.stage_strides:
      return ('strided',) * (later - 1) + ('dilated' if self.dilate_last else 'strided',)
    modes = tuple(self.stage_strides)
    first_dropped = modes.index('dropped') if 'dropped' in modes else later
    if (
      self.dilate_last
      or len(modes) != later
      or not set(modes) <= set(STAGE_STRIDES)
      or modes[first_dropped:] != (('dropped',) * (later - first_dropped))
    ):
      raise ValueError(
        f'model: stage_strides={modes!r} needs {later} of {", ".join(STAGE_STRIDES)}, dropped ones last, '
        f'and no dilate_last (dilate_last={self.dilate_last})'
      )
    return modes

  def stages(self) -> list:
    """(stride, dilation, first dilation) of each stage that runs, torchvision's rule: a dilated stage doubles the
    dilation and its first block's strided 3x3 conv keeps the previous one (timm's for BasicBlock, which torchvision
    does not dilate)."""
    plan, dilation = [(1, 1, 1)], 1
    for mode in self.stage_modes():
      if mode == 'dropped':
        break
      previous = dilation
      dilation *= 2 if mode in ('dilated', 'dilated_all') else 1
      plan.append((2 if mode == 'strided' else 1, dilation, dilation if mode == 'dilated_all' else previous))
    return plan

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(
      nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init, conv_general_dilated=convolution
    )
    norm = functools.partial(
      SplitBatchNorm, groups=self.bn_groups, dtype=self.dtype, zero_init=False, axis_name=self.bn_axis_name
    )
    x = x.astype(self.dtype)
    base = int(64 * self.width)
    if self.stem == 'imagenet':
      x = conv(base, (7, 7), 2, padding=3, name='conv1')(x)
      x = nn.relu(norm(name='bn1')(x, train))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    elif self.stem == 'cifar':
      x = nn.relu(norm(name='bn1')(conv(base, (3, 3), 1, padding=1, name='conv1')(x), train))
    else:
      raise ValueError(f'model.stem={self.stem!r}: use imagenet or cifar')
    in_planes = base
    for stage, (stride, dilation, first_dilation) in enumerate(self.stages()):
      planes = base * 2**stage
      for i in range(self.stage_sizes[stage]):
        downsample = i == 0 and (stride != 1 or in_planes != planes * self.block.expansion)
        x = self.block(
          planes,
          stride if i == 0 else 1,
          dilation,
          downsample,
          self.zero_init_residual,
          norm=norm,
          conv=conv,
          first_dilation=first_dilation if i == 0 else dilation,
          name=f'layer{stage + 1}_{i}',
        )(x, train)
        in_planes = planes * self.block.expansion
    x = x.astype(jnp.float32)
    return jnp.mean(x, axis=(1, 2)) if self.pool else x


ARCHS = {
  'resnet10': ([1, 1, 1, 1], BasicBlock),  # One block a stage: the CPU demo's and the tests' network.
  'resnet18': ([2, 2, 2, 2], BasicBlock),
  'resnet34': ([3, 4, 6, 3], BasicBlock),
  'resnet50': ([3, 4, 6, 3], Bottleneck),
  'resnet101': ([3, 4, 23, 3], Bottleneck),
}


def create_resnet(arch: str, **kwargs) -> ResNet:
  if arch not in ARCHS:
    raise ValueError(f'model.arch={arch!r}: choose one of {", ".join(ARCHS)}')
  stage_sizes, block = ARCHS[arch]
  return ResNet(stage_sizes=stage_sizes, block=block, **kwargs)


def dense_backbone(backbone, stage_strides, **overrides):
  """`backbone` run without pooling, its later stages as `stage_strides` says (STAGE_STRIDES; DENSE_OUTPUTS names
  the dense networks), one BN group; `overrides` set other fields of the clone."""
  return backbone.clone(dilate_last=False, stage_strides=stage_strides, pool=False, bn_groups=1, **overrides)
