"""Refuses invalid configs before anything is compiled, naming the field; resolves `bn_groups = 0` (auto)."""

from jax_moco import xla_cpu
from jax_moco.models import encoder
from jax_moco.models import resnet
from jax_moco.normalization import NORMALIZATION
from jax_moco.step import ENQUEUE_ORDERS


class ConfigError(ValueError):
  pass


def _require(ok, field, message):
  if not ok:
    raise ConfigError(f'{field}: {message}')


# The authors' BN batch: their COCO runs put batch 256 on 2 GPUs, 128 images a BN group.
AUTHORS_BN_BATCH = 128


def bn_groups_for(config, num_devices: int) -> int:
  """`config.bn_groups`, with 0 (auto) resolved: one group per device on several devices; on one device, groups
  of the authors' 128 images (at least 2, so that there is something to shuffle)."""
  if config.bn_groups != 0:
    return config.bn_groups
  if num_devices > 1:
    return 1
  return max(config.batch_size // AUTHORS_BN_BATCH, 2)


def with_resolved_bn_groups(config, num_devices: int):
  """A copy of `config` whose `bn_groups` is the number the run uses (what checkpoints and config.json record)."""
  resolved = config.copy_and_resolve_references()
  resolved.bn_groups = bn_groups_for(config, num_devices)
  return resolved


def validate(config, num_devices: int = 1, process_count: int = 1):
  """Checks every field whose valid range is known, naming the field: batch_size (divisible by devices and
  processes), bn_groups (splits the per-device batch; at least 2 BN groups in all, since shuffling BN needs
  another group to send keys to), the queue (a multiple of the keys enqueued a step), the symmetric loss (two crops
  only), temperature, EMA momentum, the NN loss, the model (arch, stem, dtype, width, head, input normalisation),
  crop sizes and scales, the constrained multi-crop threshold, the blur probability, the optimiser (positive
  learning rate, momentum in [0, 1), non-negative weight decay and warm-up, the decay unit), the schedule length
  and the kNN monitor (k, temperature, frequency, feature, non-negative bank and query caps)."""
  b, m, cr = config.batch_size, config.moco, config.crops
  _require(b > 0, 'batch_size', f'must be positive, got {b}')
  _require(b % num_devices == 0, 'batch_size', f'{b} is not divisible by the {num_devices} devices')
  _require(b % process_count == 0, 'batch_size', f'{b} is not divisible by the {process_count} processes')
  local = b // num_devices
  groups = bn_groups_for(config, num_devices)
  _require(
    groups >= 1 and local % groups == 0,
    'bn_groups',
    f'the per-device batch {local} cannot be split into {groups} groups',
  )
  _require(
    groups * num_devices >= 2,
    'bn_groups',
    f'{groups} BN group on {num_devices} device leaves shuffling BN nothing to shuffle (every key would be '
    "normalised with its own positive's images, which lets the model cheat): use bn_groups >= 2, or 0 (auto)",
  )
  enqueued = 2 * b if m.symmetric else b  # the symmetric loss enqueues both crops' keys
  _require(
    m.queue_size > 0 and m.queue_size % enqueued == 0,
    'moco.queue_size',
    f'K={m.queue_size} must be a positive multiple of the global batch_size={b}'
    + (f" x 2 = {enqueued} (the symmetric loss enqueues both crops' keys)" if m.symmetric else ''),
  )
  _require(
    not m.symmetric or (cr.num_small == 0 and m.nn_weight == 0 and not cr.aplus),
    'moco.symmetric',
    'the symmetric loss is defined for two crops with the same augmentations and no NN loss (the MoCo '
    "CIFAR-10 Colab's); set crops.num_small=0, moco.nn_weight=0 and crops.aplus=False, e.g. with configs/mocov2.py",
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
  _require(config.model.head in encoder.HEADS, 'model.head', f'{config.model.head!r}: use one of {encoder.HEADS}')
  _require(
    config.model.normalization in NORMALIZATION,
    'model.normalization',
    f'{config.model.normalization!r}: use one of {list(NORMALIZATION)}',
  )
  _require(cr.large_size > 0 and cr.small_size > 0, 'crops.large_size', 'crop sizes must be positive')
  _require(cr.num_small >= 0, 'crops.num_small', f'must be >= 0, got {cr.num_small}')
  for field, scale in (('crops.large_scale', cr.large_scale), ('crops.small_scale', cr.small_scale)):
    _require(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, field, f'{scale} must be 0 < lo <= hi <= 1')
  _require(0 <= cr.min_overlap <= 1, 'crops.min_overlap', f'must be in [0, 1], got {cr.min_overlap}')
  _require(cr.overlap_tries >= 1, 'crops.overlap_tries', 'must be >= 1')
  _require(0 <= cr.blur_probability <= 1, 'crops.blur_probability', f'must be in [0, 1], got {cr.blur_probability}')
  o = config.optim
  _require(o.base_lr > 0, 'optim.base_lr', f'must be positive, got {o.base_lr}')
  _require(0 <= o.momentum < 1, 'optim.momentum', f'must be in [0, 1), got {o.momentum}')
  _require(o.weight_decay >= 0, 'optim.weight_decay', f'must be >= 0, got {o.weight_decay}')
  _require(o.warmup_epochs >= 0, 'optim.warmup_epochs', f'must be >= 0, got {o.warmup_epochs}')
  _require(o.lr_decay_every in ('step', 'epoch'), 'optim.lr_decay_every', f'{o.lr_decay_every!r}: use step or epoch')
  _require(
    o.lr_decay_every == 'step' or o.warmup_epochs == 0,
    'optim.lr_decay_every',
    "a per-epoch cosine (the MoCo CIFAR-10 Colab's) has no warm-up: set optim.warmup_epochs=0",
  )
  _require(config.num_train_steps > 0 or config.num_epochs > 0, 'num_epochs', 'set num_epochs or num_train_steps')
  _require(config.knn.k > 0 and config.knn.temperature > 0, 'knn.k', 'k and temperature must be positive')
  for field in ('max_bank_examples', 'max_query_examples'):
    value = config.knn[field]
    _require(value >= 0, f'knn.{field}', f'must be >= 0 (0: all), got {value}')
  _require(config.knn.every_epochs >= 0, 'knn.every_epochs', f'must be >= 0, got {config.knn.every_epochs}')
  _require(config.knn.feature in ('backbone', 'head'), 'knn.feature', f'{config.knn.feature!r}: use backbone or head')
  _require(
    config.cpu_ynnpack_convolutions in xla_cpu.SETTINGS,
    'cpu_ynnpack_convolutions',
    f'{config.cpu_ynnpack_convolutions!r}: use one of {xla_cpu.SETTINGS}',
  )
