"""Export a checkpoint to the formats PyTorch tools read:

  python -m jax_moco.export --workdir=DIR [--step=N] --format=torchvision|moco|detectron2 --output=FILE
      [--encoder=online|momentum]

- torchvision: the backbone's state dict (no `fc`). Load it into `torchvision.models.resnet50()` after
  `model.fc = torch.nn.Identity()` with strict=True (the model then returns pooled features), or into the plain model
  with strict=False, which reports exactly `fc.weight` and `fc.bias` missing and leaves that classifier at its
  initialisation. A CIFAR-stem backbone also needs `model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)` and
  `model.maxpool = nn.Identity()`.
- moco: the official MoCo checkpoint (`{'epoch', 'arch', 'state_dict': {'module.encoder_q.*', 'module.encoder_k.*',
  'module.queue', 'module.queue_ptr'}}`, MLP head as fc.0 / fc.2) that MoCo's main_lincls.py reads unchanged;
  kNN-MoCo's backbone queue as `module.queue_backbone`, as the authors' builder names it.
- detectron2: the pickle MoCo's convert-pretrain-to-detectron2.py writes (stem.* and res2-5 names, conv*.norm,
  shortcut, `matching_heuristics`), for MODEL.WEIGHTS.
"""

import os
import pickle

from absl import app
from absl import flags
import jax
import numpy as np

from jax_moco import checkpointing
from jax_moco import console
from jax_moco import files
from jax_moco import state as state_lib
from jax_moco import torch_layout

FORMATS = ('torchvision', 'moco', 'detectron2')
TORCHVISION_ARCHS = ('resnet18', 'resnet34', 'resnet50', 'resnet101')


def check_exportable(config, fmt):
  """torchvision's ResNet classes express only the standard widths; detectron2's stem only the ImageNet one."""
  model = config.model
  if model.arch not in TORCHVISION_ARCHS or model.width != 1.0:
    raise ValueError(
      f'model.arch={model.arch!r} with model.width={model.width} has no torchvision counterpart; '
      f'exportable: {", ".join(TORCHVISION_ARCHS)} at width 1.0'
    )
  if fmt == 'detectron2' and model.stem != 'imagenet':
    raise ValueError(f'detectron2 expects the ImageNet stem (7x7 conv + max-pool), not model.stem={model.stem!r}')


def _encoder_arrays(state, encoder, with_head):
  params, stats = jax.device_get(state_lib.encoder_variables(state, encoder))
  tree = torch_layout.encoder_tree(params, stats, with_head)
  return torch_layout.to_state_dict(tree, num_batches_tracked=int(state.step))


def torchvision_state_dict(state, encoder='online'):
  return _encoder_arrays(state, encoder, with_head=False)


def moco_checkpoint(config, state, epoch):
  """The official MoCo layout (queues stored as [dim, K] columns, as its buffers)."""
  state_dict = {}
  for prefix, encoder in (('module.encoder_q.', 'online'), ('module.encoder_k.', 'momentum')):
    state_dict.update({prefix + k: v for k, v in _encoder_arrays(state, encoder, with_head=True).items()})
  state_dict['module.queue'] = np.ascontiguousarray(np.asarray(state.queue_h).T)
  state_dict['module.queue_ptr'] = np.array([int(state.queue_ptr)], np.int64)
  if state.queue_g is not None:
    state_dict['module.queue_backbone'] = np.ascontiguousarray(np.asarray(state.queue_g).T)
  return {'epoch': epoch, 'arch': config.model.arch, 'state_dict': state_dict}


def detectron2_name(name):
  """MoCo's conversion rules: non-stage keys under `stem.`, layerN -> res(N+1), bnK -> convK.norm, downsample ->
  shortcut."""
  if 'layer' not in name:
    name = 'stem.' + name
  for t in (1, 2, 3, 4):
    name = name.replace(f'layer{t}', f'res{t + 1}')
  for t in (1, 2, 3):
    name = name.replace(f'bn{t}', f'conv{t}.norm')
  return name.replace('downsample.0', 'shortcut').replace('downsample.1', 'shortcut.norm')


def detectron2_checkpoint(state, encoder='online'):
  arrays = _encoder_arrays(state, encoder, with_head=True)
  model = {detectron2_name(k): v for k, v in arrays.items() if not k.endswith(torch_layout.NUM_BATCHES_TRACKED)}
  return {'model': model, '__author__': 'jax_moco', 'matching_heuristics': True}


def _epoch(config, step):
  """Completed epochs, when the training data can be read here to know its size (else None)."""
  from input_pipeline import sources

  try:
    num_examples = sources.get_source(config.dataset, config.data_dir).num_examples
  except Exception:  # the data need not be on the machine that exports
    return None
  return step * config.batch_size // num_examples


def export(workdir, fmt, output, step=None, encoder='online'):
  """Writes `output`; returns a one-paragraph summary of what was written."""
  if fmt not in FORMATS:
    raise ValueError(f'format={fmt!r}: choose one of {", ".join(FORMATS)}')
  config, state, step = checkpointing.load_run(workdir, step)
  check_exportable(config, fmt)
  files.prepare_output(output)
  if fmt == 'detectron2':
    payload = detectron2_checkpoint(state, encoder)
    with open(output, 'wb') as f:
      pickle.dump(payload, f)
    arrays = payload['model']
  else:
    import torch

    if fmt == 'torchvision':
      arrays = torchvision_state_dict(state, encoder)
      payload = {k: torch.from_numpy(v) for k, v in arrays.items()}
    else:
      payload = moco_checkpoint(config, state, _epoch(config, step))
      arrays = payload['state_dict']
      payload['state_dict'] = {k: torch.from_numpy(v) for k, v in arrays.items()}
    torch.save(payload, output)
  num_values = sum(int(np.size(v)) for v in arrays.values())
  which = 'both encoders and the queues' if fmt == 'moco' else f'the {encoder} encoder'
  note = (
    " CIFAR stem: replace torchvision's conv1 by a 3x3 stride-1 conv and its maxpool by Identity."
    if config.model.stem == 'cifar'
    else ''
  )
  return (
    f'{fmt}: {output} ({len(arrays)} tensors, {num_values:,} values) from {which} of '
    f'{config.model.arch} at step {step} of {os.path.abspath(workdir)}.{note}'
  )


def define_flags():
  """Command-line flags, defined only when run as a program (so the module imports cleanly anywhere)."""
  flags.DEFINE_string('workdir', None, 'Work directory of a training run.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).', lower_bound=0)
  flags.DEFINE_enum('format', 'torchvision', FORMATS, 'Output format.')
  flags.DEFINE_enum('encoder', 'online', state_lib.ENCODERS, 'Which encoder (torchvision, detectron2).')
  flags.DEFINE_string('output', None, 'Output file (.pth for torchvision / moco, .pkl for detectron2).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS.workdir or not flags.FLAGS.output:
    raise app.UsageError('--workdir and --output are required')
  console.quiet_logging(flags.FLAGS.verbosity)
  with console.bad_input(ValueError, *console.PATH_ERRORS):
    print(export(flags.FLAGS.workdir, flags.FLAGS.format, flags.FLAGS.output, flags.FLAGS.step, flags.FLAGS.encoder))


if __name__ == '__main__':
  define_flags()
  app.run(main)
