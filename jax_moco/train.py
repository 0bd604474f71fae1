"""The training driver: `train_and_evaluate(config, workdir)` builds the parts, resumes from the newest checkpoint,
runs the step with progress and logging, and returns the final state."""

import contextlib
import json
import logging
import math
import os
import queue
import signal
import threading
import time

from clu import metric_writers
from clu import parameter_overview
import jax
import jax.numpy as jnp
from tqdm import tqdm

from input_pipeline import pipeline
from input_pipeline import sources
from jax_moco import checkpointing
from jax_moco import config_checks
from jax_moco import curves
from jax_moco import schedules
from jax_moco import sharding
from jax_moco import state as state_lib
from jax_moco import step as step_lib
from jax_moco import xla_cpu
from jax_moco.monitor import KnnMonitor

STEP_INPUTS = ('anchor', 'positive', 'small', 'augment')
# Values the step reads from its schedules (or the queue's fill): logged as they are at the log step. Every other
# metric is logged as its mean over the steps since the previous log line, as flax's examples log them, so the curves
# show the trend rather than one batch's draw.
AT_THE_STEP = ('lr', 'ema_momentum', 'nn_weight', 'queue_fill')


def step_inputs(batch):
  """The views (and their augmentation parameters, when the step applies them) of a pipeline batch that the train
  step takes; labels and the rest stay on the host."""
  return {k: batch[k] for k in STEP_INPUTS if k in batch}


class NonFiniteLossError(FloatingPointError):
  pass


@contextlib.contextmanager
def stop_requests():
  """Turns SIGTERM / SIGINT into a flag the loop checks, so the run can checkpoint and stop cleanly."""
  requested = []
  handler = lambda signum, frame: requested.append(signal.Signals(signum).name)  # noqa: E731
  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield requested
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def until_stopped(batches, stop, poll_seconds=0.5):
  """Yields from `batches`, read on a thread, until they end or `stop` holds a request: a signal handler only runs
  between bytecodes, so a stop must not wait on an input that blocks (a stalled file system)."""
  ready, done = queue.Queue(maxsize=1), threading.Event()

  def put(item):
    while not done.is_set():
      with contextlib.suppress(queue.Full):
        ready.put(item, timeout=poll_seconds)
        return True
    return False  # the consumer is gone

  def read():
    try:
      for batch in batches:
        if not put((batch, None)):
          return
      put((None, None))
    except Exception as e:  # raised where the batch was wanted
      put((None, e))

  threading.Thread(target=read, name='until_stopped', daemon=True).start()
  try:
    while not stop:
      with contextlib.suppress(queue.Empty):
        batch, error = ready.get(timeout=poll_seconds)
        if error is not None:
          raise error
        if batch is None:
          return
        yield batch
  finally:
    done.set()  # lets the reader (and the tf.data iterator it holds) go


def _check_finite(metrics, step, checkpointer):
  bad = [f'{name} = {value}' for name, value in metrics.items() if not math.isfinite(value)]
  if bad:
    resumes = checkpointer.latest_step()
    resumes = f'the checkpoint at step {resumes}' if resumes is not None else 'step 0 (none saved yet)'
    raise NonFiniteLossError(
      f'non-finite loss at step {step}: {", ".join(bad)}, at learning rate {metrics["lr"]:.4g}.\n'
      f'Nothing after the last good checkpoint was saved: the same command resumes from {resumes} in '
      f'{checkpointer.directory} (a lower --config.optim.base_lr may be needed).'
    )


@jax.jit
def _add_metrics(total, metrics):
  return jax.tree.map(jnp.add, total, metrics)


def window_means(total, count, last):
  """The logged scalars: the means over the window (`total` summed over `count` steps) of the step's metrics, the
  AT_THE_STEP ones from the `last` step."""
  return {name: last[name] if name in AT_THE_STEP else total[name] / count for name in last}


def _write_json(path, payload, mode='w'):
  with open(path, mode) as f:
    f.write(json.dumps(payload, sort_keys=True) + ('\n' if mode == 'a' else ''))


def make_step(config, mesh, encoder, tx, total_steps, steps_per_epoch):
  """The jitted train step of `config`, with its learning-rate and EMA-momentum schedules."""
  return step_lib.make_train_step(
    mesh,
    encoder,
    tx,
    step_lib.step_config(config, steps_per_epoch),
    state_lib.learning_rate_fn(config, total_steps, steps_per_epoch),
    schedules.ema_momentum(config.moco.momentum, total_steps, config.moco.momentum_schedule),
    xla_cpu.compiler_options(config.cpu_ynnpack_convolutions),
  )


def train_and_evaluate(config, workdir: str, on_metrics=None) -> state_lib.TrainState:
  """Trains `config` in `workdir` (resuming from its newest checkpoint) and returns the final state.

  `on_metrics(step, scalars)`, if given, receives every logged scalar dict on process 0 (training metrics every
  `log_every_steps`, `knn/top1` and `knn/top5` at each kNN evaluation): live plots in a notebook, for example.
  """
  config = config_checks.with_resolved_bn_groups(config, jax.device_count())
  config_checks.validate(config, jax.device_count(), jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  is_chief = jax.process_index() == 0
  mesh = sharding.create_mesh()
  source = sources.get_source(config.dataset, config.data_dir)
  steps_per_epoch = max(source.num_examples // config.batch_size, 1)
  total_steps = config.num_train_steps or int(config.num_epochs * steps_per_epoch)
  logging.info(
    '%s on %s: %d steps (%.1f epochs of %d examples), %d devices',
    config.method,
    source.name,
    total_steps,
    total_steps / steps_per_epoch,
    source.num_examples,
    jax.device_count(),
  )

  encoder = state_lib.create_encoder(config)
  tx = state_lib.create_optimizer(config, total_steps, steps_per_epoch)
  state = state_lib.create_train_state(config, encoder, tx, jax.random.key(config.seed))
  state = jax.device_put(state, sharding.replicated(mesh))
  checkpointer = checkpointing.Checkpointer(
    os.path.join(workdir, 'checkpoints'), config.to_dict(), config.checkpoint_every_steps, config.keep_checkpoints
  )
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
  start_step = int(state.step)
  if is_chief:
    _write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    if start_step == 0:
      parameter_overview.log_parameter_overview(state.params)

  train_step = make_step(config, mesh, encoder, tx, total_steps, steps_per_epoch)
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  monitor = KnnMonitor(config, mesh, encoder) if config.eval_dataset else None

  def report(step, scalars, to_jsonl=False):
    writer.write_scalars(step, scalars)
    if is_chief and to_jsonl:
      _write_json(os.path.join(workdir, 'metrics.jsonl'), {'step': step, **scalars}, 'a')
    if is_chief and on_metrics:
      on_metrics(step, scalars)

  def evaluate_knn(step, state):
    result = monitor.run(state.params, state.batch_stats)
    report(step, {f'knn/{k}': v for k, v in result.items()}, to_jsonl=True)
    return result

  knn_every = max(round(config.knn.every_epochs * steps_per_epoch), 1) if monitor and config.knn.every_epochs else 0
  summary = {
    'method': config.method,
    'dataset': source.name,
    'workdir': os.path.abspath(workdir),
    'knn_k': config.knn.k,
    'knn_temperature': config.knn.temperature,
  }
  if monitor and start_step == 0:
    summary['knn_raw_pixels'] = monitor.run_raw_pixels()
    summary['knn_before'] = evaluate_knn(0, state)
    before, raw = (percentages(summary[key]) for key in ('knn_before', 'knn_raw_pixels'))
    logging.info('kNN before training: %s (raw pixels: %s)', before, raw)

  def after_step(step, state, metrics):
    if metrics is not None:
      report(step, metrics, to_jsonl=True)
    if knn_every and step % knn_every == 0 and step < total_steps:
      evaluate_knn(step, state)

  unreadable = pipeline.UnreadableFiles(source)
  data = unreadable.watch(
    pipeline.train_dataset(
      source,
      pipeline.view_spec(config.crops),
      config.batch_size,
      config.seed,
      start_step,
      jax.process_index(),
      jax.process_count(),
    ).as_numpy_iterator()
  )
  started = time.time()
  try:
    state = _train_loop(config, state, train_step, data, mesh, checkpointer, total_steps, is_chief, after_step)
    if checkpointer.latest_step() != int(state.step):
      checkpointer.save(int(state.step), state, force=True)
  finally:
    checkpointer.close()  # commits pending asynchronous saves, also when training stops with an error
  summary.update(
    steps=int(state.step),
    total_steps=total_steps,
    epochs=round(int(state.step) / steps_per_epoch, 2),
    train_seconds=round(time.time() - started, 1),
    checkpoint_dir=checkpointer.directory,
    unreadable_files=unreadable.count,
  )
  if monitor and int(state.step) == total_steps:
    summary['knn_after'] = evaluate_knn(int(state.step), state)
  writer.flush()
  if is_chief:
    summary['curves'] = os.path.join(os.path.abspath(workdir), 'curves.png')
    curves.plot(os.path.join(workdir, 'metrics.jsonl'), summary['curves'], f'{config.method} on {source.name}')
    _write_json(os.path.join(workdir, 'summary.json'), summary)
    print(format_summary(summary), flush=True)
  return state


def _train_loop(config, state, train_step, data, mesh, checkpointer, total_steps, is_chief, after_step):
  """Runs steps until total_steps or a stop request; checks finiteness and checkpoints on the way, and calls
  after_step(step, state, metrics) after every step (metrics: a dict at log steps, else None)."""
  start_step = int(state.step)
  last_log = (start_step, time.time())
  with (
    stop_requests() as stop,
    tqdm(
      total=total_steps, initial=start_step, disable=not is_chief, unit='step', dynamic_ncols=True, mininterval=2.0
    ) as progress,
  ):
    data = until_stopped(data, stop)
    window, window_steps = None, 0  # the metrics summed on device since the last log line
    for step in range(start_step + 1, total_steps + 1):
      batch = next(data, None)
      if batch is None:  # a stop while waiting for input (the stream is endless): the caller saves the last step
        logging.warning(
          '%s received at step %d while waiting for input: stopping; run the same command to resume.', stop[0], step - 1
        )
        break
      state, metrics = train_step(state, sharding.shard_batch(mesh, step_inputs(batch)))
      window = metrics if window is None else _add_metrics(window, metrics)
      window_steps += 1
      progress.update(1)
      log_now = step % config.log_every_steps == 0 or step == total_steps
      if log_now or stop or checkpointer.manager.should_save(step):
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(metrics, step, checkpointer)  # before saving: a bad state is never written
        checkpointer.save(step, state, force=bool(stop))
      if log_now:
        metrics = window_means({k: float(v) for k, v in jax.device_get(window).items()}, window_steps, metrics)
        window, window_steps = None, 0
        # Since the last log line, so the first window includes the step's compilation (as flax's examples log it).
        now = time.time()
        metrics['steps_per_second'] = (step - last_log[0]) / max(now - last_log[1], 1e-9)
        metrics['images_per_second'] = metrics['steps_per_second'] * config.batch_size
        last_log = (step, now)
        progress.set_postfix(
          loss=f'{metrics["loss"]:.3f}', acc=f'{metrics["acc_inst"]:.2f}', img_s=f'{metrics["images_per_second"]:.0f}'
        )
      after_step(step, state, metrics if log_now else None)
      if stop:
        logging.warning(
          '%s received at step %d: checkpoint saved, stopping; run the same command to resume.', stop[0], step
        )
        break
  return state


def percentages(result) -> str:
  """{'top1': 66.649999, 'top5': 98.6} -> 'top1 66.65 %, top5 98.60 %' (float sums print their rounding)."""
  return ', '.join(f'{name} {value:.2f} %' for name, value in result.items())


def format_summary(summary) -> str:
  lines = [
    f'== {summary["method"]} on {summary["dataset"]}: {summary["steps"]}/{summary["total_steps"]} steps in '
    f'{summary["train_seconds"]:.0f} s'
  ]
  if 'knn_before' in summary or 'knn_after' in summary:
    fmt = lambda r: f'{r["top1"]:.2f} %' if r else 'n/a'  # noqa: E731
    lines.append(
      f'kNN top-1 (k={summary["knn_k"]}, T={summary["knn_temperature"]}): '
      f'raw pixels {fmt(summary.get("knn_raw_pixels"))}, random init {fmt(summary.get("knn_before"))} '
      f'-> trained {fmt(summary.get("knn_after"))}'
    )
  if 'curves' in summary:
    lines.append(f'learning curves: {summary["curves"]}')
  if summary.get('unreadable_files'):
    lines.append(f'unreadable files left out or replaced: {summary["unreadable_files"]} (named in the log)')
  lines.append(f'checkpoints: {summary["checkpoint_dir"]}')
  lines.append(f'TensorBoard: tensorboard --logdir {summary["workdir"]}')
  return '\n'.join(lines)
