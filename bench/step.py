"""Images/s of the full kNN-MoCo training step (both encoders, key shuffle, multi-crop, NN loss, queue update,
optimiser) for jax_moco and for a PyTorch reference of the same step (bench/torch_reference_step.py), same weights,
batch, crops and queue, on the same device, alternating rounds; medians and their ratio.

  python bench/step.py                      # CPU demo scale: ResNet-18, CIFAR stem, 32 px + 2 x 16 px, batch 64
  python bench/step.py --arch=resnet50 --stem=imagenet --large=160 --small=96 --num_small=4 --batch=256 \\
      --queue=65536 --dtype=bfloat16        # the GPU setting (PyTorch reference then with AMP in bfloat16)
  python bench/step.py --xla_option=xla_cpu_prefer_vector_width=512 --xla_option=xla_cpu_enable_fast_math=true
                                            # + a row of ours compiled with each XLA option added
  python bench/step.py --without=layout_pin --without=closed_form_bn
                                            # + a row of ours without each of the model's CPU rewrites (WITHOUT)

Also prints XLA's compile time, the model FLOPs per step from XLA's cost analysis, achieved FLOP/s and peak host RSS.
One device, one BN group (the reference has no split BN). The reference runs on the GPU when JAX does (and PyTorch
sees one), with autocast to bfloat16 when --dtype=bfloat16. On CPU both of XLA:CPU's convolution paths are timed.
"""

import contextlib
import functools
import os
import resource
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from configs import knn  # noqa: E402
from jax_moco import schedules  # noqa: E402
from jax_moco import sharding  # noqa: E402
from jax_moco import state as state_lib  # noqa: E402
from jax_moco import step as step_lib  # noqa: E402
from jax_moco import torch_layout  # noqa: E402
from jax_moco import xla_cpu  # noqa: E402
from jax_moco.models import batchnorm  # noqa: E402
from jax_moco.models import convolution  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string('arch', 'resnet18', 'torchvision architecture.')
  flags.DEFINE_enum('stem', 'cifar', ('cifar', 'imagenet'), 'Stem.')
  flags.DEFINE_integer('batch', 64, 'Images per step.')
  flags.DEFINE_integer('large', 32, 'Anchor / positive size.')
  flags.DEFINE_integer('small', 16, 'Small-crop size.')
  flags.DEFINE_integer('num_small', 2, 'Small crops per image.')
  flags.DEFINE_integer('queue', 4096, 'Queue length K.')
  flags.DEFINE_enum('dtype', 'float32', ('float32', 'bfloat16'), 'Compute dtype of ours.')
  flags.DEFINE_integer('steps', 5, 'Steps timed per round.')
  flags.DEFINE_integer('rounds', 3, 'Alternating rounds.')
  flags.DEFINE_bool('torch_compile', False, 'Also time torch.compile of the reference (slow to compile on CPU).')
  flags.DEFINE_bool('channels_last', True, 'Channels-last memory format for the reference.')
  flags.DEFINE_multi_string(
    'xla_option',
    [],
    'NAME=VALUE: one more row, our step compiled with this XLA option added (e.g. '
    'xla_cpu_prefer_vector_width=512); repeat the flag for more rows.',
  )
  flags.DEFINE_multi_enum(
    'without',
    [],
    list(WITHOUT),
    'One more row: our step without this rewrite of the model for XLA:CPU; repeat the flag for more rows.',
  )


# The model's rewrites for XLA:CPU that a row of ours can go without (--without): the module attribute each lives in
# and what the step traces in its place. Both stand-ins compute the same values; only XLA's program differs.
WITHOUT = {
  # The convolutions' inputs not pinned to their layout (models/convolution.py).
  'layout_pin': (convolution, '_pinned', lambda x: x),
  # Split BN's backward by autodiff of the same forward, not the closed form (models/batchnorm.py).
  'closed_form_bn': (batchnorm, '_normalise', batchnorm._normalise.fun),
}


@contextlib.contextmanager
def without(name):
  """While tracing in this block, the model goes without the rewrite WITHOUT[name]."""
  module, attribute, stand_in = WITHOUT[name]
  original = getattr(module, attribute)
  setattr(module, attribute, stand_in)
  try:
    yield
  finally:
    setattr(module, attribute, original)


def bench_config(
  arch='resnet18', stem='cifar', batch=64, large=32, small=16, num_small=2, queue=4096, dtype='float32', width=1.0
):
  c = knn.get_config()
  c.model.arch, c.model.stem, c.model.width, c.model.dtype = arch, stem, width, dtype
  c.batch_size, c.bn_groups, c.moco.queue_size = batch, 1, queue
  c.crops.large_size, c.crops.small_size, c.crops.num_small = large, small, num_small
  c.moco.nn_topk = min(c.moco.nn_topk, queue)
  return c


def synthetic_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  s, t, n, b = config.crops.large_size, config.crops.small_size, config.crops.num_small, config.batch_size
  batch = {
    'anchor': rng.integers(0, 256, (b, s, s, 3), np.uint8),
    'positive': rng.integers(0, 256, (b, s, s, 3), np.uint8),
  }
  if n:
    batch['small'] = rng.integers(0, 256, (b, n, t, t, 3), np.uint8)
  return batch


def on_mesh(batch, num_devices=1):
  """`batch` on the devices of jax_step's mesh, split over them as the step's explicit mesh axis requires."""
  return jax.device_put(batch, sharding.batch_sharded(sharding.create_mesh(jax.devices()[:num_devices])))


def parse_xla_option(text):
  """'NAME=VALUE' -> (NAME, VALUE as an int or a bool where it reads as one, else the string)."""
  name, sep, value = text.partition('=')
  if not sep or not name:
    raise ValueError(f'--xla_option={text!r}: use NAME=VALUE')
  if value.lower() in ('true', 'false'):
    return name, value.lower() == 'true'
  return name, int(value) if value.lstrip('-').isdigit() else value


def jax_step(config, seed=0, num_devices=1, ynnpack_convolutions=None, xla_options=None):
  """(train step on the first `num_devices` devices, initial state, constant learning rate) for `config`, with
  XLA:CPU's convolutions as `ynnpack_convolutions` ('on' / 'off') or the config's setting, and `xla_options`
  ({name: value}) added to the compiler options."""
  mesh = sharding.create_mesh(jax.devices()[:num_devices])
  encoder = state_lib.create_encoder(config)
  lr = config.optim.base_lr * config.batch_size / 256
  tx = state_lib.sgd(lr, config.optim.momentum, config.optim.weight_decay)
  # Replicated over the mesh as the step returns it: the calls after the first find their program compiled.
  state = jax.device_put(
    state_lib.create_train_state(config, encoder, tx, jax.random.key(seed)), sharding.replicated(mesh)
  )
  fn = step_lib.make_train_step(
    mesh,
    encoder,
    tx,
    step_lib.step_config(config, 1000),
    lambda step: lr,
    schedules.ema_momentum(config.moco.momentum, 1, 'constant'),
    {**(xla_cpu.compiler_options(ynnpack_convolutions or config.cpu_ynnpack_convolutions) or {}), **(xla_options or {})}
    or None,
  )
  return fn, state, lr


def torch_reference(config, state, lr, channels_last=False, device='cpu'):
  """The PyTorch reference holding exactly `state`'s encoders and queues, on `device`, in `config`'s dtype."""
  import torch
  import torch_reference_step as ref

  m = config.moco
  model = ref.KnnMoco(
    config.model.arch,
    config.model.stem,
    config.model.projection_dim,
    m.queue_size,
    m.temperature,
    m.momentum,
    m.nn_topk,
    m.nn_weight,
    m.nn_order,
    channels_last,
    torch.bfloat16 if config.model.dtype == 'bfloat16' else None,
  )
  for name, params, stats in (
    ('encoder_q', state.params, state.batch_stats),
    ('encoder_k', state.ema_params, state.ema_batch_stats),
  ):
    arrays = torch_layout.to_state_dict(torch_layout.encoder_tree(jax.device_get(params), jax.device_get(stats)))
    getattr(model, name).load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
  model.to(device, memory_format=model.memory_format)
  with torch.no_grad():
    model.queue.copy_(torch.from_numpy(np.array(state.queue_h)))
    model.queue_backbone.copy_(torch.from_numpy(np.array(state.queue_g)))
  optimizer = ref.make_optimizer(model, lr, config.optim.momentum, config.optim.weight_decay)
  return model, optimizer


def median_step_seconds(run_one, steps):
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    run_one()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _run_compiled(compiled, holder, batch):
  holder['state'], metrics = compiled(holder['state'], batch)
  jax.block_until_ready(metrics['loss'])


def _compile_ours(config, device_batch, xla_options, on_cpu, without_rewrites=()):
  """{row name: one step} of ours (on CPU with both convolution settings, then with each of `xla_options` added, then
  without each of `without_rewrites`), {row name: compile seconds}, the model FLOPs per step, the name of the row of
  the config's setting, and the initial state and learning rate."""
  ours_setting = config.cpu_ynnpack_convolutions
  names = {'on': 'jax_moco (XLA, YNNPACK convolutions)', 'off': 'jax_moco (XLA, own convolutions)'}
  if not on_cpu:  # the setting is XLA:CPU's alone: one program elsewhere
    names = {ours_setting: 'jax_moco (XLA)'}
  variants = [(setting, name, None, contextlib.nullcontext) for setting, name in names.items()]
  for text in xla_options:
    variants.append(
      (ours_setting, f'{names[ours_setting]} + {text}', dict([parse_xla_option(text)]), contextlib.nullcontext)
    )
  for rewrite in without_rewrites:
    variants.append(
      (ours_setting, f'{names[ours_setting]} without {rewrite}', None, functools.partial(without, rewrite))
    )
  runners, compile_s = {}, {}
  for setting, name, options, context in variants:
    fn, state, lr = jax_step(config, ynnpack_convolutions=setting, xla_options=options)
    start = time.perf_counter()
    with context():
      compiled = fn.lower(state, device_batch).compile()
    compile_s[name] = time.perf_counter() - start
    flops = (compiled.cost_analysis() or {}).get('flops', float('nan'))
    runners[name] = functools.partial(_run_compiled, compiled, {'state': state}, device_batch)
  return runners, compile_s, flops, names[ours_setting], state, lr


def run(
  config, steps=5, rounds=3, torch_compile=False, channels_last=True, xla_options=(), without_rewrites=(), log=print
):
  """Alternating rounds of ours and the reference(s), of ours with each of `xla_options` ('NAME=VALUE') added and
  without each of `without_rewrites` (WITHOUT's names); returns {name: median images/s} and prints a summary."""
  import torch
  import torch_reference_step as ref

  on_cpu = jax.default_backend() == 'cpu'
  device = 'cuda' if not on_cpu and torch.cuda.is_available() else 'cpu'
  torch.backends.cudnn.benchmark = True  # cuDNN picks its convolution algorithms as XLA autotunes (no-op on CPU)
  batch = synthetic_batch(config)
  torch_batch = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
  runners, compile_s, flops, ours, state, lr = _compile_ours(
    config, on_mesh(batch), xla_options, on_cpu, without_rewrites
  )
  model, optimizer = torch_reference(config, state, lr, channels_last, device)  # the same initial state (seed 0)
  runners['PyTorch reference (eager)'] = lambda: ref.train_step(model, optimizer, torch_batch)
  if torch_compile:
    compiled_model = torch.compile(model)
    runners['PyTorch reference (torch.compile)'] = lambda: ref.train_step(compiled_model, optimizer, torch_batch)
  for run_one in runners.values():
    run_one()  # warm-up (and torch.compile's compilation)
  results = {name: [] for name in runners}
  for r in range(rounds):
    for name, run_one in runners.items():
      results[name].append(config.batch_size / median_step_seconds(run_one, steps))
    log(f'round {r + 1}: ' + ', '.join(f'{k} {v[-1]:.1f} img/s' for k, v in results.items()))
  medians = {k: statistics.median(v) for k, v in results.items()}
  ours_rate = medians[ours]
  log(
    f'\n{config.model.arch} ({config.model.stem} stem), batch {config.batch_size}, {config.crops.large_size} px + '
    f'{config.crops.num_small} x {config.crops.small_size} px, K = {config.moco.queue_size}, {config.model.dtype}, '
    f'{jax.devices()[0].platform}, reference on {device} ({model.amp_dtype or torch.float32}), torch threads '
    f'{torch.get_num_threads()}, median of {rounds} rounds:'
  )
  if on_cpu:
    log(f'  ours = {ours}, the setting cpu_ynnpack_convolutions={config.cpu_ynnpack_convolutions!r}')
  width = max(map(len, medians))
  for name, value in medians.items():
    log(f'  {name:{width}s} {value:8.1f} images/s   ours / this: {ours_rate / value:.2f}x')
  log(
    '  XLA compile '
    + ' / '.join(f'{seconds:.1f} s ({name})' for name, seconds in compile_s.items())
    + f'; model FLOPs per step {flops / 1e9:.1f} G '
    f'({flops * ours_rate / config.batch_size / 1e9:.1f} GFLOP/s achieved); '
    f'peak host RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB'
  )
  return medians


def main(argv):
  del argv
  config = bench_config(
    FLAGS.arch, FLAGS.stem, FLAGS.batch, FLAGS.large, FLAGS.small, FLAGS.num_small, FLAGS.queue, FLAGS.dtype
  )
  run(config, FLAGS.steps, FLAGS.rounds, FLAGS.torch_compile, FLAGS.channels_last, FLAGS.xla_option, FLAGS.without)


if __name__ == '__main__':
  define_flags()
  app.run(main)
