"""Refuses invalid configs before anything is compiled, naming the field."""

from jax_moco.models import resnet
from jax_moco.step import ENQUEUE_ORDERS


class ConfigError(ValueError):
  pass


def _require(ok, field, message):
  if not ok:
    raise ConfigError(f'{field}: {message}')


def validate(config, num_devices: int = 1, process_count: int = 1):
  b, m, cr = config.batch_size, config.moco, config.crops
  _require(b > 0, 'batch_size', f'must be positive, got {b}')
  _require(b % num_devices == 0, 'batch_size', f'{b} is not divisible by the {num_devices} devices')
  _require(b % process_count == 0, 'batch_size', f'{b} is not divisible by the {process_count} processes')
  local = b // num_devices
  _require(
    config.bn_groups >= 1 and local % config.bn_groups == 0,
    'bn_groups',
    f'the per-device batch {local} cannot be split into {config.bn_groups} groups',
  )
  _require(
    m.queue_size > 0 and m.queue_size % b == 0,
    'moco.queue_size',
    f'K={m.queue_size} must be a positive multiple of the global batch_size={b}',
  )
  _require(m.temperature > 0, 'moco.temperature', f'must be positive, got {m.temperature}')
  _require(0 <= m.momentum < 1, 'moco.momentum', f'must be in [0, 1), got {m.momentum}')
  _require(
    m.momentum_schedule in ('constant', 'cosine'),
    'moco.momentum_schedule',
    f'{m.momentum_schedule!r}: use constant or cosine',
  )
  _require(m.nn_weight >= 0, 'moco.nn_weight', f'must be >= 0, got {m.nn_weight}')
  _require(
    m.nn_weight == 0 or 0 < m.nn_topk <= m.queue_size,
    'moco.nn_topk',
    f'{m.nn_topk} must be in [1, queue_size={m.queue_size}]',
  )
  _require(m.nn_order in ENQUEUE_ORDERS, 'moco.nn_order', f'{m.nn_order!r}: use one of {ENQUEUE_ORDERS}')
  _require(config.model.arch in resnet.ARCHS, 'model.arch', f'{config.model.arch!r}: use one of {list(resnet.ARCHS)}')
  _require(config.model.stem in ('imagenet', 'cifar'), 'model.stem', f'{config.model.stem!r}: use imagenet or cifar')
  _require(
    config.model.dtype in ('float32', 'bfloat16', 'float16'),
    'model.dtype',
    f'{config.model.dtype!r}: use float32, bfloat16 or float16',
  )
  _require(config.model.width > 0 and int(64 * config.model.width) > 0, 'model.width', 'too small')
  _require(cr.large_size > 0 and cr.small_size > 0, 'crops.large_size', 'crop sizes must be positive')
  _require(cr.num_small >= 0, 'crops.num_small', f'must be >= 0, got {cr.num_small}')
  for field, scale in (('crops.large_scale', cr.large_scale), ('crops.small_scale', cr.small_scale)):
    _require(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, field, f'{scale} must be 0 < lo <= hi <= 1')
  _require(0 <= cr.min_overlap <= 1, 'crops.min_overlap', f'must be in [0, 1], got {cr.min_overlap}')
  _require(cr.overlap_tries >= 1, 'crops.overlap_tries', 'must be >= 1')
  _require(config.num_train_steps > 0 or config.num_epochs > 0, 'num_epochs', 'set num_epochs or num_train_steps')
  _require(config.knn.k > 0 and config.knn.temperature > 0, 'knn.k', 'k and temperature must be positive')
  _require(config.knn.every_epochs >= 0, 'knn.every_epochs', f'must be >= 0, got {config.knn.every_epochs}')
