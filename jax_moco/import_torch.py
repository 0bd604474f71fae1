"""Import a PyTorch checkpoint into a jax_moco work directory that `evaluate`, `export` and training accept:

  python -m jax_moco.import_torch --checkpoint=FILE --workdir=DIR --config=configs/mocov2.py:imagenet

Reads the official MoCo / kNN-MoCo `.pth.tar` layout (`state_dict` with `module.encoder_q.*`, `module.encoder_k.*`,
`module.queue`, `module.queue_ptr`, `module.queue_backbone`) or a plain torchvision ResNet state dict (backbone only:
the head is freshly initialised, the momentum encoder is a copy and the queues random). The config names the
architecture; a tensor of another shape is refused with its name. Files are read with `weights_only=True`, so no
arbitrary object is ever unpickled.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from jax_moco import checkpointing
from jax_moco import console
from jax_moco import state as state_lib
from jax_moco import torch_layout


def read_torch_checkpoint(path):
  """{name: NumPy array} with any DistributedDataParallel `module.` prefix removed, and the layout's name."""
  import torch

  try:
    payload = torch.load(path, map_location='cpu', weights_only=True)
  except OSError:  # a missing or unreadable file, which the error names
    raise
  except Exception as e:  # bytes of another kind: the unpickler's error varies (UnpicklingError, IndexError, ...)
    raise ValueError(f'{path} is not a PyTorch checkpoint (torch.load: {type(e).__name__})') from e
  state_dict = payload.get('state_dict', payload) if isinstance(payload, dict) else None
  if not isinstance(state_dict, dict) or not all(hasattr(v, 'numpy') for v in state_dict.values()):
    raise ValueError(f'{path}: neither a MoCo checkpoint nor a state dict of tensors')
  arrays = {k.removeprefix('module.'): v.detach().cpu().numpy() for k, v in state_dict.items()}
  layout = 'moco' if any(k.startswith('encoder_q.') for k in arrays) else 'torchvision'
  return arrays, layout


def _prefixed(arrays, prefix):
  return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def _queue(arrays, name, current, path):
  """A [dim, K] MoCo queue buffer as our [K, dim] rows; must match the config's queue."""
  if name not in arrays:
    return current
  queue = np.ascontiguousarray(arrays[name].T)
  if queue.shape != current.shape:
    raise ValueError(
      f'{path}: {name!r} is {arrays[name].shape} ([dim, K]); the config needs '
      f'{current.shape[::-1]}: set moco.queue_size to its K'
    )
  return jnp.asarray(queue)


def state_from_torch(config, arrays, layout, path):
  """A fresh train state for `config` whose encoders (and, for MoCo checkpoints, queues) come from `arrays`."""
  state = state_lib.initial_state(config, config.seed)
  template = torch_layout.encoder_tree(state.params, state.batch_stats, with_head=layout == 'moco')

  def load(tree_arrays, what):
    tree, unused = torch_layout.from_state_dict(tree_arrays, template, what)
    if unused:
      logging.info('%s: not used: %s', what, ', '.join(unused))
    return jax.tree.map(jnp.asarray, torch_layout.encoder_variables(tree, state.params))

  if layout == 'torchvision':
    params, stats = load(arrays, path)
    return state.replace(params=params, batch_stats=stats, ema_params=params, ema_batch_stats=stats)
  params, stats = load(_prefixed(arrays, 'encoder_q.'), f'{path} encoder_q')
  ema_params, ema_stats = (
    load(_prefixed(arrays, 'encoder_k.'), f'{path} encoder_k')
    if any(k.startswith('encoder_k.') for k in arrays)
    else (params, stats)
  )
  queue_g = _queue(arrays, 'queue_backbone', state.queue_g, path) if state.queue_g is not None else None
  pointer = (
    jnp.asarray(int(arrays['queue_ptr'][0]), state.queue_ptr.dtype) if 'queue_ptr' in arrays else state.queue_ptr
  )
  return state.replace(
    params=params,
    batch_stats=stats,
    ema_params=ema_params,
    ema_batch_stats=ema_stats,
    queue_h=_queue(arrays, 'queue', state.queue_h, path),
    queue_g=queue_g,
    queue_ptr=pointer,
  )


def import_checkpoint(path, workdir, config):
  """Writes a step-0 checkpoint of `path` into `workdir/checkpoints`; returns a summary line."""
  if os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise FileExistsError(f'{workdir} already holds checkpoints; import into a new work directory')
  arrays, layout = read_torch_checkpoint(path)
  state = state_from_torch(config, arrays, layout, path)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config.to_dict(), f, indent=2)
  checkpointer = checkpointing.Checkpointer(
    os.path.join(workdir, 'checkpoints'), config.to_dict(), config.checkpoint_every_steps, config.keep_checkpoints
  )
  checkpointer.save(0, state, force=True)
  checkpointer.close()
  return f'imported {path} ({layout} layout, {config.model.arch}) into {os.path.abspath(workdir)}'


def define_flags():
  """Command-line flags, defined only when run as a program (so the module imports cleanly anywhere)."""
  config_flags.DEFINE_config_file(
    'config', None, 'Config whose model matches the checkpoint (as for training).', lock_config=True
  )
  flags.DEFINE_string('checkpoint', None, 'PyTorch checkpoint (.pth / .pth.tar).')
  flags.DEFINE_string('workdir', None, 'New work directory to write.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS.checkpoint or not flags.FLAGS.workdir or flags.FLAGS.config is None:
    raise app.UsageError('--checkpoint, --workdir and --config are required')
  console.quiet_logging(flags.FLAGS.verbosity)
  with console.bad_input(ValueError, *console.PATH_ERRORS):
    print(import_checkpoint(flags.FLAGS.checkpoint, flags.FLAGS.workdir, flags.FLAGS.config))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=console.parse_config_flags)
