"""Orbax checkpoints of the whole train state plus the resolved config (the only module that imports Orbax).

The data position needs no item of its own: the pipeline resumes from `state.step * batch_size` examples.
A checkpoint that does not restore (a file cut short or overwritten) is skipped for the newest one that does, and
kept under another name, never deleted.
"""

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import time

import jax
import orbax.checkpoint as ocp

from configs import base
from jax_moco import sharding
from jax_moco import state as state_lib

# Fields that fix the state's shapes or the data stream: resuming with other values would crash or silently change
# the run, so a mismatch is refused with the fields named.
STATE_DEFINING_FIELDS = (
  'model',
  'moco.queue_size',
  'moco.nn_weight',
  'batch_size',
  'bn_groups',
  'dataset',
  'seed',
  'crops',
)


class ConfigMismatchError(ValueError):
  pass


def _lookup(config_dict, dotted):
  """The value of a dotted field; None where the config (one written before the field existed) lacks it."""
  for part in dotted.split('.'):
    if not isinstance(config_dict, dict) or part not in config_dict:
      return None
    config_dict = config_dict[part]
  return config_dict


def with_schema_defaults(saved: dict):
  """A saved config (ConfigDict) with the fields added to the schema since it was written at their defaults, which
  are what its run used."""
  config = base.get_config()
  config.update(saved)
  return config


def check_compatible(saved: dict, current: dict, directory: str, fields=STATE_DEFINING_FIELDS):
  saved = with_schema_defaults(saved).to_dict()  # a field added since (e.g. to `crops`) is no difference by itself
  diffs = []
  for field in fields:
    a, b = _lookup(saved, field), _lookup(current, field)
    if field == 'moco.nn_weight':
      a, b = a > 0, b > 0  # only whether Q_g exists matters for the state
    if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
      diffs.append(f'  {field}: checkpoint {a!r} vs now {b!r}')
  if diffs:
    raise ConfigMismatchError(
      f'the checkpoint in {directory} was written with another config:\n'
      + '\n'.join(diffs)
      + "\nUse a new --workdir, or the checkpoint's values."
    )


class CheckpointWriteError(OSError):
  """A checkpoint that could not be written (a full disk, a quota, a lost mount): the run stops with this message."""


def _os_error(error) -> str:
  """The OS error behind `error`: from an OSError in its chain, or from the code TensorStore's message ends with
  (Orbax's OCDBT writer raises ValueError('RESOURCE_EXHAUSTED: ... [os_error_code=\'28\']'))."""
  while error is not None:
    if isinstance(error, OSError) and error.errno:
      return f'{error.strerror} (errno {error.errno})'
    code = re.search(r"os_error_code='(\d+)'", str(error))
    if code:
      return f'{os.strerror(int(code.group(1)))} (errno {code.group(1)})'
    error = error.__cause__ or error.__context__
  return 'no OS error reported'


def megabytes(n: int) -> str:
  return f'{n / 2**20:.1f} MB'


def state_bytes(state) -> int:
  """What a checkpoint of `state` takes on disk, about: the bytes of its arrays (each replicated array once)."""
  return sum(x.nbytes for x in jax.tree.leaves(state))


def remove_half_written(directory, step=None):
  """Removes the temporary directories (STEP.orbax-checkpoint-tmp) that saves which did not finish left, of `step`
  only if given: a failed save, a run killed while saving. Orbax ignores them when it restores; they only take
  space. Safe because a run's directory is locked (jax_moco/workdir_lock.py): no other run is writing one."""
  for name in os.listdir(directory):
    if '.orbax-checkpoint-tmp' in name and (step is None or name.startswith(f'{step}.')):
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


class NotARunError(FileNotFoundError):
  pass


class UnreadableCheckpointsError(NotARunError):
  pass


def newest_restorable(steps, restore, directory):
  """(step, restore(step), skipped) for the newest of `steps` that restores; skipped: the newer ones that did not,
  each logged with its error. A config mismatch is no damage and is raised at once."""
  errors = []
  for step in sorted(steps, reverse=True):
    try:
      return step, restore(step), [s for s, _ in errors]
    except ConfigMismatchError:
      raise
    except Exception as e:  # what a damaged file makes Orbax raise varies: UnicodeDecodeError, ValueError, ...
      errors.append((step, f'{type(e).__name__}: {str(e)[:300]}'))
      logging.warning('Checkpoint %d in %s does not restore, skipping it: %s', step, directory, errors[-1][1])
  raise UnreadableCheckpointsError(
    f'no checkpoint in {directory} restores (damaged, or not written by jax_moco):\n'
    + '\n'.join(f'  step {s}: {e}' for s, e in errors)
  )


def _state_handler():
  """The state's handler: Orbax's pytree handler with one replica writing each replicated array. Its
  replica-parallel default off the GPU writes them as slices, one per device, and compiles a slicing program for
  every (shape, device) pair at the first save (160 with 8 devices and the test ResNet, a large part of a short
  run's time). Our state is small enough (at most a ResNet-50, its EMA and the queues) for one replica to write it,
  as Orbax does on GPUs. Its own registry (every leaf of our states is a jax.Array), so that nothing global is
  overridden, which Orbax would log as a warning in every run."""
  array_handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
  registry = ocp.type_handlers.create_type_handler_registry((jax.Array, array_handler))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def _manager(directory, options=None):
  """The one way a run's checkpoints are opened, for training and for reading: items 'state' and 'config'."""
  handlers = {'state': _state_handler(), 'config': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _restored_config(manager, step) -> dict:
  return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']


def _restore_tree(manager, step, abstract):
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
  args = ocp.args.Composite(state=ocp.args.PyTreeRestore(abstract, restore_args=restore_args))
  return manager.restore(step, args=args)['state']


def _saved_fields(manager, step) -> dict:
  """{field: its metadata, None where saved as None} of the state saved at `step`."""
  return manager.item_metadata(step)['state'].tree


def _unsaved_optional_fields(manager, step, abstract) -> dict:
  """{field: whether the checkpoint at `step` names it} for the fields of state_lib.OPTIONAL_FIELDS that `abstract`
  (a train state) has and that checkpoint holds no array of: absent (saved before the field existed), or saved as
  None where `abstract` holds an array. (An array saved where `abstract` holds None is simply not read.)"""
  names = [name for name in state_lib.OPTIONAL_FIELDS if hasattr(abstract, name)]
  if not names:
    return {}
  saved = _saved_fields(manager, step)
  return {
    name: name in saved
    for name in names
    if name not in saved or (saved[name] is None and getattr(abstract, name) is not None)
  }


def _restored_state(manager, step, abstract, target=None):
  """The state at `step`, with the structure, shapes, dtypes and shardings of `abstract`. The optional fields of a
  train state (state_lib.OPTIONAL_FIELDS) that the checkpoint does not hold are not read: they take `target`'s
  values (the fresh state's; by default `abstract`'s)."""
  unsaved = _unsaved_optional_fields(manager, step, abstract)
  if not unsaved:
    return _restore_tree(manager, step, abstract)
  # Read as a dict of the state's fields, as the checkpoint holds them: absent ones left out, None ones None.
  item = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)}
  for name, present in unsaved.items():
    if present:
      item[name] = None
    else:
      del item[name]
  target = abstract if target is None else target
  return abstract.replace(**{**_restore_tree(manager, step, item), **{name: getattr(target, name) for name in unsaved}})


class Checkpointer:
  """Saves every `every_steps`, keeps the newest `keep`, and restores the latest. `config_dict` is saved beside
  each state; restoring refuses a checkpoint whose `defining_fields` differ (by default a training run's
  STATE_DEFINING_FIELDS; linear classification passes its own settings)."""

  def __init__(
    self, directory: str, config_dict: dict, every_steps: int, keep: int, defining_fields=STATE_DEFINING_FIELDS
  ):
    self.directory = os.path.abspath(directory)
    self.config_dict, self.defining_fields = config_dict, defining_fields
    options = ocp.CheckpointManagerOptions(
      save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every_steps),
      preservation_policy=ocp.checkpoint_managers.LatestN(keep),
      create=True,
    )
    self.manager = _manager(self.directory, options)
    if jax.process_index() == 0:  # before any save: the other processes meet process 0 at the save's barrier
      remove_half_written(self.directory)
    self.keep, self.pending, self.failed = keep, None, False

  def latest_step(self):
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Whether `step` is one the policy saves (every `every_steps`): the caller checks the state first."""
    return self.manager.should_save(step)

  def save(self, step: int, state, force: bool = False) -> bool:
    """Saves `state` at `step` when the policy (or `force`) says so, asynchronously. A save that fails, this one
    or the pending one before it, raises CheckpointWriteError naming it (see write_error)."""
    args = ocp.args.Composite(state=ocp.args.PyTreeSave(state), config=ocp.args.JsonSave(self.config_dict))
    try:
      self.manager.wait_until_finished()  # a failed asynchronous save raises here, attributed to its own step
    except Exception as e:
      raise self.write_error(self.pending, e) from e
    try:
      saved = self.manager.save(step, args=args, force=force)
    except Exception as e:
      raise self.write_error(step, e) from e
    if saved:
      self.pending = step
      logging.info('Saving checkpoint at step %d to %s', step, self.directory)
    return saved

  def write_error(self, step, error) -> CheckpointWriteError:
    """The one message of a failed save: which checkpoint, where, the OS error, the free space left once its
    half-written temporary directory is removed, and the checkpoint the same command resumes from."""
    self.failed = True
    resumes, free = 'the newest checkpoint there that restores', 'unknown space'
    with contextlib.suppress(OSError):  # the directory itself unreadable (a lost mount): the message still comes
      if jax.process_index() == 0:
        remove_half_written(self.directory, step)
      names = os.listdir(self.directory)
      committed = [int(n) for n in names if n.isdigit() and n != str(step)]
      resumes = f'checkpoint {max(committed)}' if committed else 'step 0 (no checkpoint saved)'
      free = megabytes(shutil.disk_usage(self.directory).free)
    return CheckpointWriteError(
      f'checkpoint {step} could not be written to {self.directory}: {_os_error(error)}; {free} free there. '
      f'The same command resumes from {resumes}.'
    )

  def warn_if_short_of_space(self, state):
    """Warns when the free space is below what `keep` checkpoints of `state` need."""
    size, free = state_bytes(state), shutil.disk_usage(self.directory).free
    if free < self.keep * size:
      logging.warning(
        'Only %s free in %s: keep_checkpoints=%d checkpoints of this state need about %s (%s each); a save that '
        'does not fit stops the run.',
        megabytes(free),
        self.directory,
        self.keep,
        megabytes(self.keep * size),
        megabytes(size),
      )

  def restore(self, target_state):
    """Restores the newest checkpoint that restores into the structure, shapes and shardings of `target_state`.

    Newer ones that do not restore are renamed STEP.unreadable-TIME (Orbax ignores the name, so the run saves that
    step again and the preservation policy never deletes them), and the run resumes from the good one."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)

    def restore(step):
      check_compatible(_restored_config(self.manager, step), self.config_dict, self.directory, self.defining_fields)
      return _restored_state(self.manager, step, abstract, target_state)

    step, state, skipped = newest_restorable(self.manager.all_steps(), restore, self.directory)
    if skipped:
      self._set_aside(skipped, step)
    logging.info('Restored checkpoint at step %d from %s', step, self.directory)
    return state

  def _set_aside(self, steps, restored_step):
    suffix = time.strftime('%Y%m%d-%H%M%S')
    if jax.process_index() == 0:
      for step in steps:
        kept = os.path.join(self.directory, f'{step}.unreadable-{suffix}')
        os.rename(os.path.join(self.directory, str(step)), kept)
        logging.warning('Kept the unreadable checkpoint %d as %s; resuming from step %d', step, kept, restored_step)
    ocp.multihost.sync_global_processes('jax_moco_set_aside_unreadable_checkpoints')
    self.manager.reload()

  def close(self):
    """Commits the pending save (CheckpointWriteError when it fails) and closes; after a failed save, only closes
    (Orbax raises its error again)."""
    if self.failed:
      with contextlib.suppress(Exception):
        self.manager.close()
      return
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise self.write_error(self.pending, e) from e
    self.manager.close()


def load_run(workdir: str, step=None):
  """(config, state, step) of a training run's checkpoint (by default the newest that restores), for evaluation and
  export.

  The config is the one saved with the checkpoint, so the state's shapes are rebuilt exactly as they were trained.
  """
  directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  if not os.path.isdir(directory):
    raise NotARunError(f'{workdir} is not a jax_moco work directory: it has no checkpoints/ folder')
  manager = _manager(directory)
  steps = manager.all_steps()
  if not steps:
    raise NotARunError(f'{directory} holds no checkpoint')
  if step is not None and step not in steps:
    raise ValueError(f'step={step}: no checkpoint at that step in {directory}; saved steps: {sorted(steps)}')
  # Replicated over this process's devices, whatever topology wrote it (e.g. several hosts).
  replicated = sharding.replicated(sharding.create_mesh())

  def restore(step):
    config = with_schema_defaults(_restored_config(manager, step))
    labelled = _saved_fields(manager, step).get('queue_labels') is not None  # restored as saved
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(lambda: state_lib.initial_state(config, seed=0, labelled=labelled)),
    )
    return config, _restored_state(manager, step, abstract)

  step, (config, state), _ = newest_restorable(steps if step is None else [step], restore, directory)
  manager.close()
  return config, state, step
