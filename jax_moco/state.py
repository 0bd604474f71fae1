"""The functional train state and how it is created from a config.

Everything a run needs to resume is in this one pytree of arrays: the data position is `step * batch_size`
(input_pipeline.pipeline), so the state's step pins it down.
"""

import functools
from typing import Any
from typing import Optional

import flax
import jax
import jax.numpy as jnp
import optax

from jax_moco import queues
from jax_moco import schedules
from jax_moco.models import encoder as encoder_lib
from jax_moco.models import resnet


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # online encoder f
  batch_stats: Any
  ema_params: Any  # momentum encoder f'
  ema_batch_stats: Any
  opt_state: Any
  queue_h: jax.Array  # [K, C] normalised projections of anchors
  # [K, C_g] normalised backbone features, aligned with queue_h; None without the NN loss or when it mines Q_h
  queue_g: Optional[jax.Array]
  queue_ptr: jax.Array
  rng: jax.Array  # raw uint32 key data (checkpointable); wrapped with jax.random.wrap_key_data when used
  # [K] int32 label of the image in each row of queue_h (and queue_g), queues.UNKNOWN_LABEL for the initial random
  # rows; only for the NN-precision diagnostic (never in a loss), so None unless the NN loss is on and the training
  # source has single labels (label_queue_enabled)
  queue_labels: Optional[jax.Array] = None


# Fields a checkpoint may lack (one written before the field existed, or by jax_moco.import_torch, or by a run whose
# source had no labels then): restoring it keeps the fresh state's value for them (checkpointing._restored_state).
OPTIONAL_FIELDS = ('queue_labels',)


def create_encoder(config) -> encoder_lib.Encoder:
  m = config.model
  backbone = resnet.create_resnet(
    m.arch,
    width=m.width,
    stem=m.stem,
    dilate_last=m.dilate_last,
    zero_init_residual=m.zero_init_residual,
    bn_groups=config.bn_groups,
    dtype=jnp.dtype(m.dtype),
  )
  return encoder_lib.Encoder(backbone, projection_dim=m.projection_dim, hidden_dim=m.hidden_dim, head=m.head)


ENCODERS = ('online', 'momentum')


def encoder_variables(state, encoder='online'):
  """(params, batch_stats) of the online encoder f or of the momentum encoder f' (`encoder`, one of ENCODERS)."""
  if encoder == 'online':
    return state.params, state.batch_stats
  if encoder == 'momentum':
    return state.ema_params, state.ema_batch_stats
  raise ValueError(f'encoder={encoder!r}: choose one of {", ".join(ENCODERS)}')


def backbone_variables(params, batch_stats):
  """The backbone's own variables within the encoder's parameter and BN-statistics trees."""
  return {'params': params['backbone'], 'batch_stats': batch_stats['backbone']}


def learning_rate_fn(config, total_steps, steps_per_epoch):
  o = config.optim
  if o.schedule == 'step':
    return schedules.step_learning_rate(
      o.base_lr, config.batch_size, steps_per_epoch, tuple(o.lr_milestones), o.lr_step_factor
    )
  per_epoch = steps_per_epoch if o.lr_decay_every == 'epoch' else 0
  return schedules.learning_rate(
    o.base_lr, config.batch_size, int(o.warmup_epochs * steps_per_epoch), total_steps, per_epoch
  )


def sgd(learning_rate, momentum, weight_decay) -> optax.GradientTransformation:
  """SGD with momentum and (PyTorch-style, coupled) weight decay on every parameter, as MoCo and its linear eval."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum))


def create_optimizer(config, total_steps, steps_per_epoch) -> optax.GradientTransformation:
  return sgd(learning_rate_fn(config, total_steps, steps_per_epoch), config.optim.momentum, config.optim.weight_decay)


def backbone_queue_enabled(config) -> bool:
  """Q_g is kept for the NN loss mining backbone features (with moco.nn_features='head' it mines Q_h)."""
  return config.moco.nn_weight > 0 and config.moco.nn_features == 'backbone'


def label_queue_enabled(config, labelled: bool) -> bool:
  """The queue's labels are kept, for the NN-precision diagnostic, when the NN loss mines neighbours and the training
  source has single labels (`labelled`: sources.Source.labels is not None)."""
  return config.moco.nn_weight > 0 and labelled


def create_train_state(config, encoder, tx, key, labelled=False) -> TrainState:
  """Fresh state: f' starts as a copy of f; both queues hold random unit vectors (of unknown label, where the labels
  are kept: `labelled`, see label_queue_enabled). Built by one compiled program (op by op, a ResNet's
  initialisation compiles hundreds of tiny ones, most of a short run's start-up on CPU), compiled without backend
  optimisations: it runs once, and its values (random draws, constants) do not depend on them, while compiling it
  with them takes several times as long."""
  build = functools.partial(_fresh_state, config, encoder, tx, label_queue_enabled(config, labelled))
  if isinstance(key, jax.core.Tracer):  # inside a trace (jax.eval_shape of the state's shapes): nothing to compile
    return build(key)
  return jax.jit(build, compiler_options={'xla_backend_optimization_level': 0})(key)


def _fresh_state(config, encoder, tx, with_labels, key) -> TrainState:
  init_key, qh_key, qg_key, rng = jax.random.split(key, 4)
  size = config.crops.large_size
  variables = encoder.init(init_key, jnp.zeros((config.bn_groups, size, size, 3), jnp.float32), train=True)
  params, batch_stats = variables['params'], variables['batch_stats']
  queue_g = None
  if backbone_queue_enabled(config):
    queue_g = queues.init_queue(qg_key, config.moco.queue_size, encoder.backbone.num_features)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    ema_params=jax.tree.map(jnp.copy, params),
    ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
    opt_state=tx.init(params),
    queue_h=queues.init_queue(qh_key, config.moco.queue_size, config.model.projection_dim),
    queue_g=queue_g,
    queue_ptr=jnp.zeros((), jnp.int32),
    rng=jax.random.key_data(rng),
    queue_labels=queues.init_labels(config.moco.queue_size) if with_labels else None,
  )


def initial_state(config, seed, labelled=False) -> TrainState:
  """The state a run starts from, outside training (import, random-init baseline, shapes for restoring): the
  optimiser's schedule does not shape the state, so a one-step one is used."""
  encoder = create_encoder(config)
  return create_train_state(
    config, encoder, create_optimizer(config, total_steps=1, steps_per_epoch=1), jax.random.key(seed), labelled
  )
