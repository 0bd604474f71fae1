"""Orbax checkpoints of the whole train state plus the resolved config (the only module that imports Orbax).

The data position needs no item of its own: the pipeline resumes from `state.step * batch_size` examples.
"""

import json
import logging
import os

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
  for part in dotted.split('.'):
    config_dict = config_dict[part]
  return config_dict


def check_compatible(saved: dict, current: dict, directory: str, fields=STATE_DEFINING_FIELDS):
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
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=('state', 'config'))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state, force: bool = False) -> bool:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(self.config_dict))
    saved = self.manager.save(step, args=args, force=force)
    if saved:
      logging.info('Saving checkpoint at step %d to %s', step, self.directory)
    return saved

  def restore(self, target_state, step=None):
    """Restores into the structure, shapes and shardings of `target_state` (the latest step by default)."""
    step = self.latest_step() if step is None else step
    saved_config = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
    check_compatible(saved_config, self.config_dict, self.directory, self.defining_fields)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    logging.info('Restored checkpoint at step %d from %s', step, self.directory)
    return restored['state']

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


class NotARunError(FileNotFoundError):
  pass


def load_run(workdir: str, step=None):
  """(config, state, step) of a training run's checkpoint (the latest by default), for evaluation and export.

  The config is the one saved with the checkpoint, so the state's shapes are rebuilt exactly as they were trained.
  """
  directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  if not os.path.isdir(directory):
    raise NotARunError(f'{workdir} is not a jax_moco work directory: it has no checkpoints/ folder')
  manager = ocp.CheckpointManager(directory, item_names=('state', 'config'))
  steps = manager.all_steps()
  if not steps:
    raise NotARunError(f'{directory} holds no checkpoint')
  step = max(steps) if step is None else step
  if step not in steps:
    raise ValueError(f'step={step}: no checkpoint at that step in {directory}; saved steps: {sorted(steps)}')
  try:
    saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
  except Exception as e:  # a foreign Orbax checkpoint: no config item
    raise NotARunError(f'{directory} step {step} has no jax_moco config: not a jax_moco checkpoint ({e})') from e
  # Fields added to the schema since the run was saved take their defaults, which are what such runs used.
  config = base.get_config()
  config.update(saved)
  # Replicated over this process's devices, whatever topology wrote it (e.g. several hosts).
  replicated = sharding.replicated(sharding.create_mesh())
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
    jax.eval_shape(lambda: state_lib.initial_state(config, seed=0)),
  )
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))['state']
  manager.close()
  return config, state, step
