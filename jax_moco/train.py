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
from input_pipeline import subsets
from jax_moco import checkpointing
from jax_moco import config_checks
from jax_moco import curves
from jax_moco import monitor as monitor_lib
from jax_moco import schedules
from jax_moco import sharding
from jax_moco import state as state_lib
from jax_moco import step as step_lib
from jax_moco import workdir_lock
from jax_moco import xla_cpu

STEP_INPUTS = ('anchor', 'positive', 'small', 'augment')
# Values the step reads from its schedules (or the queue's fill): logged as they are at the log step. Every other
# metric is logged as its mean over the steps since the previous log line, as flax's examples log them, so the curves
# show the trend rather than one batch's draw.
AT_THE_STEP = ('lr', 'ema_momentum', 'nn_weight', 'queue_fill')


def step_inputs(batch, labels=False):
  """The views (and their augmentation parameters, when the step applies them) of a pipeline batch that the train
  step takes, and with `labels` their labels (for the NN-precision diagnostic: a state that keeps queue_labels); the
  rest stays on the host."""
  return {k: batch[k] for k in STEP_INPUTS + (('label',) if labels else ()) if k in batch}


class NonFiniteLossError(FloatingPointError):
  pass


class BadInputError(ValueError):
  """A config or dataset that prepare refused before anything was built (a field out of range, a dataset that does
  not open): bad input, which the command line says in one line; a ValueError raised later is a bug and keeps its
  traceback. A ValueError still, for callers that caught the config checks' errors as one."""


# What stops a run for a reason its message says in full: the command line prints the message alone.
USER_ERRORS = (
  workdir_lock.WorkdirBusyError,
  workdir_lock.WorkdirUnwritableError,
  checkpointing.CheckpointWriteError,
  BadInputError,
)


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


def prepare(config):
  """What a run is made of, checked before anything is built: (the config as the run uses it, see
  config_checks.resolved; the training source; the kNN monitor's (bank, queries), None when it is off). Invalid
  fields, a dataset that does not open, and a bank and queries that cannot be compared are refused naming the
  fields (BadInputError, from the check's ValueError or FileNotFoundError). When eval_dataset='auto' finds no
  labelled split to monitor, the console says so once."""
  try:
    config_checks.validate(config, jax.device_count(), jax.process_count())
    queries, why_none = config_checks.eval_dataset_for(config)  # 'auto' looks on disk: once
    run = config_checks.resolved(config, jax.device_count(), queries)
    if config.eval_dataset == config_checks.AUTO_EVAL_DATASET and not queries:
      logging.warning(
        'kNN monitor off: %s. To monitor training, name a labelled split of the same classes: '
        '--config.eval_dataset=folder:VAL',
        why_none,
      )
    source = sources.get_source(run.dataset, run.data_dir)
    return run, source, monitor_lib.datasets(run, source) if run.eval_dataset else None
  except (ValueError, FileNotFoundError) as e:
    raise BadInputError(str(e)) from e


def plan(config, source):
  """(steps_per_epoch, total_steps) of `config` on `source`, logged with the method and the devices."""
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
  return steps_per_epoch, total_steps


def train_and_evaluate(config, workdir: str, on_metrics=None) -> state_lib.TrainState:
  """Trains `config` in `workdir` (resuming from its newest checkpoint) and returns the final state.

  `on_metrics(step, scalars)`, if given, receives every logged scalar dict on process 0 (training metrics every
  `log_every_steps`, `knn/top1` and `knn/top5` at each kNN evaluation): live plots in a notebook, for example.
  The work directory is locked for the run: a second run on it is refused (workdir_lock.WorkdirBusyError).
  """
  with workdir_lock.held(workdir):
    return _train_and_evaluate(config, workdir, on_metrics)


def _train_and_evaluate(config, workdir, on_metrics):
  config, source, monitor_data = prepare(config)
  steps_per_epoch, total_steps = plan(config, source)
  is_chief = jax.process_index() == 0
  subsets.record(source, workdir, is_chief)  # the list a subset draws, or a resumed run refused another
  mesh = sharding.create_mesh()
  encoder = state_lib.create_encoder(config)
  tx = state_lib.create_optimizer(config, total_steps, steps_per_epoch)
  checkpointer = checkpointing.Checkpointer(
    os.path.join(workdir, 'checkpoints'), config.to_dict(), config.checkpoint_every_steps, config.keep_checkpoints
  )
  state = initial_state(config, encoder, tx, mesh, checkpointer, labelled=source.labels is not None)
  if is_chief:
    checkpointer.warn_if_short_of_space(state)
    _write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    if int(state.step) == 0:
      parameter_overview.log_parameter_overview(state.params)

  monitor = monitor_lib.KnnMonitor(config, mesh, encoder, *monitor_data) if monitor_data else None
  knn_every = max(round(config.knn.every_epochs * steps_per_epoch), 1) if monitor and config.knn.every_epochs else 0
  reports = Reports(workdir, is_chief, on_metrics, monitor, knn_every, total_steps)
  summary = {**_run_summary(config, source, workdir), **reports.before_training(state)}
  train_step = make_step(config, mesh, encoder, tx, total_steps, steps_per_epoch)
  state, unreadable, seconds = train_on(
    source, config, state, train_step, mesh, checkpointer, total_steps, reports.after_step
  )
  step = int(state.step)
  summary.update(
    steps=step,
    total_steps=total_steps,
    epochs=round(step / steps_per_epoch, 2),
    train_seconds=round(seconds, 1),
    checkpoint_dir=checkpointer.directory,
    unreadable_files=unreadable,
    **reports.after_training(state),
  )
  reports.writer.flush()
  if is_chief:
    _write_results(workdir, summary, f'{config.method} on {source.name}')
  return state


def initial_state(config, encoder, tx, mesh, checkpointer, labelled=False):
  """The train state replicated over `mesh` (keeping the queue's labels when `labelled`, see
  state_lib.label_queue_enabled): restored from the newest checkpoint that restores, if there is one, else at its
  initialisation."""
  state = state_lib.create_train_state(config, encoder, tx, jax.random.key(config.seed), labelled)
  state = jax.device_put(state, sharding.replicated(mesh))
  return checkpointer.restore(state) if checkpointer.latest_step() is not None else state


def _run_summary(config, source, workdir):
  return {
    'method': config.method,
    'dataset': source.name,
    'workdir': os.path.abspath(workdir),
    'knn_k': config.knn.k,
    'knn_temperature': config.knn.temperature,
  }


def _write_results(workdir, summary, title):
  """The learning curves, summary.json and the summary's lines on the console (process 0)."""
  summary['curves'] = os.path.join(os.path.abspath(workdir), 'curves.png')
  curves.plot(os.path.join(workdir, 'metrics.jsonl'), summary['curves'], title)
  _write_json(os.path.join(workdir, 'summary.json'), summary)
  print(format_summary(summary), flush=True)


class Reports:
  """Where a run's scalars go (the metric writer: TensorBoard and the log lines; on process 0 also metrics.jsonl
  and `on_metrics`), and when the kNN `monitor` (None: off) runs: before training, every `knn_every` steps (0:
  never) and at the last step."""

  def __init__(self, workdir, is_chief, on_metrics, monitor, knn_every, total_steps):
    self.writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
    self.jsonl = os.path.join(workdir, 'metrics.jsonl') if is_chief else None
    self.on_metrics = on_metrics if is_chief else None
    self.monitor, self.knn_every, self.total_steps = monitor, knn_every, total_steps

  def write(self, step, scalars):
    self.writer.write_scalars(step, scalars)
    if self.jsonl:
      _write_json(self.jsonl, {'step': step, **scalars}, 'a')
    if self.on_metrics:
      self.on_metrics(step, scalars)

  def knn(self, step, state):
    result = self.monitor.run(state.params, state.batch_stats)
    self.write(step, {f'knn/{k}': v for k, v in result.items()})
    return result

  def before_training(self, state):
    """The monitor on raw pixels and at initialisation, for the summary; nothing when resuming."""
    if not self.monitor or int(state.step) != 0:
      return {}
    results = {'knn_raw_pixels': self.monitor.run_raw_pixels(), 'knn_before': self.knn(0, state)}
    before, raw = (percentages(results[key]) for key in ('knn_before', 'knn_raw_pixels'))
    logging.info('kNN before training: %s (raw pixels: %s)', before, raw)
    return results

  def after_step(self, step, state, metrics):
    """The train loop's after_step: the step's logged metrics (None between log steps), and the monitor when due."""
    if metrics is not None:
      self.write(step, metrics)
    if self.knn_every and step % self.knn_every == 0 and step < self.total_steps:
      self.knn(step, state)

  def after_training(self, state):
    """The monitor on a finished run's state, for the summary; nothing after a stop."""
    if not self.monitor or int(state.step) != self.total_steps:
      return {}
    return {'knn_after': self.knn(int(state.step), state)}


def train_on(source, config, state, train_step, mesh, checkpointer, total_steps, after_step):
  """Trains on `source` from the state's step to total_steps (or a stop request) with train_loop, saves the last
  step and closes the checkpointer: (state, the number of unreadable files, seconds)."""
  unreadable = pipeline.UnreadableFiles(source)
  batches = pipeline.train_dataset(
    source,
    pipeline.view_spec(config.crops),
    config.batch_size,
    config.seed,
    int(state.step),
    jax.process_index(),
    jax.process_count(),
  )
  started = time.time()
  try:
    state = train_loop(
      config,
      state,
      train_step,
      unreadable.watch(batches.as_numpy_iterator()),
      mesh,
      checkpointer,
      total_steps,
      after_step,
      show_progress=jax.process_index() == 0,
    )
    if checkpointer.latest_step() != int(state.step):
      checkpointer.save(int(state.step), state, force=True)
  finally:
    checkpointer.close()  # commits pending asynchronous saves, also when training stops with an error
  return state, unreadable.count, time.time() - started


class MetricWindow:
  """The step's metrics summed on device since the last log line, which logs their means (see window_means) and
  the steps and images a second since the line before (the first window includes the step's compilation, as flax's
  examples log it)."""

  def __init__(self, batch_size, step):
    self.batch_size, self.total, self.count, self.since = batch_size, None, 0, (step, time.time())

  def add(self, metrics):
    self.total = metrics if self.total is None else _add_metrics(self.total, metrics)
    self.count += 1

  def scalars(self, step, last):
    """The logged scalars at `step` (`last`: its own metrics, on the host); a new window begins."""
    scalars = window_means(_on_host(self.total), self.count, last)
    now = time.time()
    scalars['steps_per_second'] = (step - self.since[0]) / max(now - self.since[1], 1e-9)
    scalars['images_per_second'] = scalars['steps_per_second'] * self.batch_size
    self.total, self.count, self.since = None, 0, (step, now)
    return scalars


def _on_host(metrics):
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def train_loop(config, state, train_step, batches, mesh, checkpointer, total_steps, after_step, show_progress=True):
  """Runs steps until total_steps or a stop request (SIGTERM, SIGINT). Checks that the loss is finite at every log
  step and before every save (at the checkpointer's policy's steps, and at a stop whatever the step), and calls
  after_step(step, state, metrics) after every step (metrics: the logged scalars at log steps, else None)."""
  start_step = int(state.step)
  progress = tqdm(
    total=total_steps, initial=start_step, disable=not show_progress, unit='step', dynamic_ncols=True, mininterval=2.0
  )
  labels = state.queue_labels is not None  # the step takes the batch's labels where the state keeps the queue's
  with stop_requests() as stop, progress:
    batches, window = until_stopped(batches, stop), MetricWindow(config.batch_size, start_step)
    for step in range(start_step + 1, total_steps + 1):
      batch = next(batches, None)
      if batch is None:  # a stop while waiting for input (the stream is endless): the caller saves the last step
        logging.warning(
          '%s received at step %d while waiting for input: stopping; run the same command to resume.', stop[0], step - 1
        )
        break
      state, metrics = train_step(state, sharding.shard_batch(mesh, step_inputs(batch, labels)))
      window.add(metrics)
      progress.update(1)
      log_now = step % config.log_every_steps == 0 or step == total_steps
      if log_now or stop or checkpointer.should_save(step):
        metrics = _on_host(metrics)
        _check_finite(metrics, step, checkpointer)  # before saving: a bad state is never written
        checkpointer.save(step, state, force=bool(stop))
      if log_now:
        metrics = window.scalars(step, metrics)
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
