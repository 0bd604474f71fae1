"""Our parameter trees <-> PyTorch state dicts, derived from the tree itself (no per-depth name lists).

Flax path `layer4_2/conv3/kernel` is torchvision's `layer4.2.conv3.weight`; the head `fc_0` / `fc_2` (or `fc`) is the
official MoCo checkpoint's `fc.0` / `fc.2` (or `fc`). Convolution kernels are HWIO here and OIHW in PyTorch; Dense
kernels are [in, out] here and [out, in] in PyTorch; BN scale / bias / mean / var are weight / bias / running_mean /
running_var.
This module needs NumPy only; the callers convert to and from torch tensors.
"""

import flax
import numpy as np

LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
NUM_BATCHES_TRACKED = 'num_batches_tracked'  # a PyTorch BN buffer with no counterpart here (unused with momentum)


def head_names(params) -> list:
  """The projection head's top-level modules: everything of the encoder's but the backbone."""
  return [name for name in params if name != 'backbone']


def module_name(path) -> str:
  """('layer4_2', 'downsample_1') -> 'layer4.2.downsample.1'."""
  return '.'.join(part.replace('_', '.') for part in path)


def torch_name(path) -> str:
  """('layer4_2', 'conv3', 'kernel') -> 'layer4.2.conv3.weight'."""
  if path[-1] not in LEAF_NAMES:
    raise ValueError(f'no PyTorch name for parameter {"/".join(path)}')
  return module_name(path[:-1]) + '.' + LEAF_NAMES[path[-1]]


def to_torch_layout(value) -> np.ndarray:
  value = np.asarray(value)
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  if value.ndim == 2:
    return value.T  # [in, out] -> [out, in]
  return value


def from_torch_layout(value) -> np.ndarray:
  value = np.asarray(value)
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if value.ndim == 2:
    return value.T
  return value


def merge(params, batch_stats) -> dict:
  """One tree of a module's parameters and BN statistics (their leaf names never collide)."""
  return flax.traverse_util.unflatten_dict(
    {**flax.traverse_util.flatten_dict(params), **flax.traverse_util.flatten_dict(batch_stats or {})}
  )


def to_state_dict(tree, num_batches_tracked: int = 0) -> dict:
  """A tree (params merged with batch_stats) -> {torch name: float32 array in PyTorch layout}, plus each BN's
  `num_batches_tracked` so that torchvision loads it with strict=True."""
  state_dict = {}
  for path, value in flax.traverse_util.flatten_dict(tree).items():
    state_dict[torch_name(path)] = np.array(to_torch_layout(value), np.float32, order='C')  # a writable copy
    if path[-1] == 'mean':
      state_dict[module_name(path[:-1]) + '.' + NUM_BATCHES_TRACKED] = np.array(num_batches_tracked, np.int64)
  return state_dict


def from_state_dict(state_dict, template, what: str = 'state dict'):
  """{torch name: array} -> a tree shaped like `template`; returns (tree, names of state-dict entries not used).

  Every leaf of the template must be present with the matching shape: a missing name or a wrong shape raises an
  error naming the entry, both shapes and what to check.
  """
  leaves, used = {}, set()
  for path, leaf in flax.traverse_util.flatten_dict(template).items():
    name = torch_name(path)
    if name not in state_dict:
      raise ValueError(
        f'{what} has no {name!r} (needed for {"/".join(path)}): not this architecture? '
        f'Check model.arch / model.stem / model.width in the config.'
      )
    value = from_torch_layout(state_dict[name])
    if value.shape != tuple(leaf.shape):
      raise ValueError(
        f'{what}: {name!r} has shape {tuple(np.shape(state_dict[name]))}, the model needs '
        f'{tuple(to_torch_layout(np.zeros(leaf.shape)).shape)}: check model.arch / model.stem / '
        f'model.width / model.projection_dim in the config.'
      )
    leaves[path] = value.astype(np.float32)
    used.add(name)
  unused = sorted(k for k in state_dict if k not in used and not k.endswith(NUM_BATCHES_TRACKED))
  return flax.traverse_util.unflatten_dict(leaves), unused


def split(tree, template_params):
  """Undoes `merge`: (params, batch_stats) with the parameter leaves of `template_params`."""
  flat = flax.traverse_util.flatten_dict(tree)
  param_paths = set(flax.traverse_util.flatten_dict(template_params))
  params = {p: v for p, v in flat.items() if p in param_paths}
  stats = {p: v for p, v in flat.items() if p not in param_paths}
  return flax.traverse_util.unflatten_dict(params), flax.traverse_util.unflatten_dict(stats)


def encoder_tree(params, batch_stats, with_head: bool = True) -> dict:
  """The encoder's variables as one tree named like a torchvision ResNet whose `fc` is MoCo's MLP head."""
  tree = merge(params['backbone'], batch_stats['backbone'])
  if with_head:
    tree.update({name: params[name] for name in head_names(params)})
  return tree


def encoder_variables(tree, template_params):
  """Inverse of `encoder_tree`: (params, batch_stats) nested as the Encoder's; a tree without the head takes it from
  `template_params`."""
  names = head_names(template_params)
  head = {name: tree.get(name, template_params[name]) for name in names}
  params, stats = split({k: v for k, v in tree.items() if k not in names}, template_params['backbone'])
  return {'backbone': params, **head}, {'backbone': stats}
