"""Where the CPU step's time goes: bench/step.py's kNN-MoCo step traced with jax.profiler (XLA:CPU's thunks, with the
config's convolution setting, cpu_ynnpack_convolutions) and its PyTorch reference with torch.profiler (aten ops,
self time), in one run, each op sorted into the same kinds (convolution, matmul, reductions, layout transposes,
elementwise, ...); ms per step side by side, then our costliest ops.

  python bench/profile_step.py                # the CPU demo scale of bench/step.py
  python bench/profile_step.py --steps=3 --top=15

Both run on ONE core (this process pins itself before JAX starts; PyTorch gets one thread): on several, XLA:CPU
runs a kernel's parallel parts as untraced tasks, so its traced thunks cover only about half of the step, while on
one core they cover all of it and every op's time is its own. A kind holds different ops in the two columns: XLA
fuses the elementwise work (batch norm's normalisation, ReLU, the optimiser) into loop fusions and into the
transposes that lay activations out for its weight-gradient convolutions.
"""

import collections
import functools
import glob
import os
import re
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import step as bench_step  # noqa: E402

FLAGS = flags.FLAGS
# The kinds of op, in the table's order (one name each, so the XLA and PyTorch sides cannot spell one differently).
CONVOLUTION = 'convolution'
MATMUL = 'matmul (heads, queue logits, small-map convs)'
TOP_K = 'top-k and sort (NN mining)'
REDUCTION = 'batch norm and other reductions'
LAYOUT = 'layout transposes and copies'
ELEMENTWISE = 'elementwise'
OTHER = 'other'
KINDS = (CONVOLUTION, MATMUL, TOP_K, REDUCTION, LAYOUT, ELEMENTWISE, OTHER)
# A PyTorch op's kind: the first kind one of whose name fragments its aten name contains.
TORCH_KINDS = (
  (CONVOLUTION, ('conv',)),
  (MATMUL, ('mm', 'matmul', 'linear', 'dot')),
  (TOP_K, ('topk', 'sort')),
  (REDUCTION, ('batch_norm', 'sum', 'mean', 'max', 'norm', 'var', 'std', 'logsumexp')),
  (LAYOUT, ('copy', 'contiguous', 'permute', 'transpose', 'clone', 'cat', 'stack', 'index')),
  (ELEMENTWISE, ('add', 'mul', 'div', 'sub', 'relu', 'threshold', 'exp', 'log', 'neg', 'where', 'fill', 'zero')),
)
LAYOUT_OPCODES = {'transpose', 'copy', 'bitcast', 'reshape', 'parameter', 'tuple', 'get-tuple-element', 'slice'}
INSTRUCTION = re.compile(r'^\s+(?:ROOT )?%([\w.\-]+) = .+? ([a-z][a-z0-9\-]*)\(')
CUSTOM_CALL_TARGET = re.compile(r'custom_call_target="([\w.]+)"')
CALLED = re.compile(r'(?:calls|to_apply|body|condition|branch_computations)=\{?((?:%[\w.\-]+(?:, )?)+)')


def define_flags():
  flags.DEFINE_integer('steps', 3, 'Steps traced of each (after a warm-up step).')
  flags.DEFINE_integer('top', 12, 'Our costliest ops listed.')


def hlo_opcodes(hlo_text):
  """{instruction name: the opcodes it runs}, for every instruction of an optimised HLO module's text: its own
  opcode (and a custom call's target) and those of the computations it calls (a fusion's body, a loop's),
  recursively."""
  own, calls, members, computation = {}, {}, collections.defaultdict(list), None
  for line in hlo_text.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith('{'):
      computation = line.removeprefix('ENTRY ').split()[0].lstrip('%')
      continue
    match = INSTRUCTION.match(line)
    if match and computation:
      name = match.group(1)
      target = CUSTOM_CALL_TARGET.search(line)  # TopK is a custom call on CPU
      own[name] = {match.group(2), *([target.group(1).lower()] if target else [])}
      calls[name] = [c.strip().lstrip('%') for m in CALLED.findall(line) for c in m.split(',')]
      members[computation].append(name)

  @functools.cache
  def opcodes(name):
    found = set(own[name])
    for computation in calls[name]:
      for member in members.get(computation, ()):
        found |= opcodes(member)
    return frozenset(found)

  return {name: opcodes(name) for name in own}


def xla_kind(opcodes):
  if 'convolution' in opcodes:
    return CONVOLUTION
  if 'dot' in opcodes:
    return MATMUL
  if 'sort' in opcodes or 'topk' in opcodes:
    return TOP_K
  if 'transpose' in opcodes or opcodes <= LAYOUT_OPCODES:
    return LAYOUT
  if opcodes & {'reduce', 'reduce-window', 'all-reduce'}:
    return REDUCTION
  if opcodes & {'while', 'conditional', 'call', 'custom-call'}:
    return OTHER
  return ELEMENTWISE


def torch_kind(name):
  lowered = name.lower()
  for label, fragments in TORCH_KINDS:
    if any(f in lowered for f in fragments):
      return label
  return OTHER


def xla_op_times(trace_dir):
  """{HLO instruction: total seconds} of the XLA:CPU thunks in a jax.profiler trace: the events that carry an HLO op
  (their `hlo_op` stat), so the Python and runtime events around them are left out."""
  (path,) = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True)
  totals = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if 'hlo_op' in stats:
          totals[str(stats['hlo_op'])] += event.duration_ns * 1e-9
  return totals


def profile_ours(fn, state, batch, steps):
  """({HLO instruction: seconds}, {instruction: kind}, wall seconds per step) over `steps` traced steps."""
  compiled = fn.lower(state, batch).compile()
  kinds = {name: xla_kind(ops) for name, ops in hlo_opcodes(compiled.as_text()).items()}
  state, metrics = compiled(state, batch)  # warm up outside the trace
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      start = time.perf_counter()
      for _ in range(steps):
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
      wall = (time.perf_counter() - start) / steps
    return xla_op_times(trace_dir), kinds, wall


def profile_reference(model, optimizer, batch, steps):
  """({aten op: self seconds}, {op: kind}, wall seconds per step) over `steps` reference steps."""
  import torch
  import torch_reference_step as ref

  ref.train_step(model, optimizer, batch)  # warm up
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    start = time.perf_counter()
    for _ in range(steps):
      ref.train_step(model, optimizer, batch)
    wall = (time.perf_counter() - start) / steps
  times = collections.Counter({e.key: e.self_cpu_time_total * 1e-6 for e in prof.key_averages()})
  return times, {name: torch_kind(name) for name in times}, wall


def by_kind(times, kinds):
  totals = collections.Counter()
  for name, seconds in times.items():
    totals[kinds.get(name, OTHER)] += seconds
  return totals


def table(ours, reference, steps):
  """Markdown rows: ms per step of each kind in ours and in the reference, and each one's share of its total."""
  (ours_times, ours_kinds, ours_wall), (ref_times, ref_kinds, ref_wall) = ours, reference
  a, b = by_kind(ours_times, ours_kinds), by_kind(ref_times, ref_kinds)
  a_total, b_total = sum(a.values()), sum(b.values())
  rows = [
    '| kind | ours ms / step | share | PyTorch ms / step | share | ours / PyTorch time |',
    '| --- | --- | --- | --- | --- | --- |',
  ]
  for label in KINDS:
    ratio = f'{a[label] / b[label]:.2f}x' if b[label] > 0 else '-'
    rows.append(
      f'| {label} | {a[label] / steps * 1e3:.1f} | {a[label] / a_total:.0%} | {b[label] / steps * 1e3:.1f} | '
      f'{b[label] / b_total:.0%} | {ratio} |'
    )
  rows.append(
    f'| in ops, all | {a_total / steps * 1e3:.1f} | | {b_total / steps * 1e3:.1f} | | {a_total / b_total:.2f}x |'
  )
  rows.append(
    f'| step wall time (traced) | {ours_wall * 1e3:.1f} | | {ref_wall * 1e3:.1f} | | {ours_wall / ref_wall:.2f}x |'
  )
  return rows


def main(argv):
  del argv
  import torch

  torch.set_num_threads(1)
  config = bench_step.bench_config()
  fn, state, lr = bench_step.jax_step(config)
  batch = bench_step.synthetic_batch(config)
  model, optimizer = bench_step.torch_reference(config, state, lr, channels_last=True)
  ours = profile_ours(fn, state, bench_step.on_mesh(batch), FLAGS.steps)
  reference = profile_reference(model, optimizer, {k: torch.from_numpy(v) for k, v in batch.items()}, FLAGS.steps)
  print(
    f'{config.model.arch} ({config.model.stem} stem), batch {config.batch_size}, {config.crops.large_size} px + '
    f'{config.crops.num_small} x {config.crops.small_size} px, K = {config.moco.queue_size}, '
    f'cpu_ynnpack_convolutions={config.cpu_ynnpack_convolutions!r}, torch threads {torch.get_num_threads()}, '
    f'{FLAGS.steps} traced steps each:\n'
  )
  print('\n'.join(table(ours, reference, FLAGS.steps)))
  times, kinds, _ = ours
  print(f'\nour {FLAGS.top} costliest HLO instructions (ms per step, kind):')
  for name, seconds in times.most_common(FLAGS.top):
    print(f'  {seconds / FLAGS.steps * 1e3:8.1f}  {name}  ({kinds.get(name, OTHER)})')


if __name__ == '__main__':
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, before JAX sizes its thread pool (docstring)
  define_flags()
  app.run(main)
