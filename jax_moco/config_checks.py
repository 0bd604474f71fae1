"""Refuses invalid configs before anything is compiled, naming the field; resolves `bn_groups = 0` and
`eval_dataset = 'auto'` to what the run uses."""

from typing import Tuple

from input_pipeline import subsets
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


# eval_dataset's default: the kNN monitor's queries follow its bank (see eval_dataset_for).
AUTO_EVAL_DATASET = 'auto'


def eval_dataset_for(config) -> Tuple[str, str]:
  """(the kNN monitor's queries, why there are none): `config.eval_dataset` ('' turns the monitor off), with 'auto'
  resolved to the labelled split held out beside the bank, `knn_bank_dataset` or else `dataset` (the rules are
  input_pipeline.sources.held_out_split's), or to '' when there is none."""
  if config.eval_dataset != AUTO_EVAL_DATASET:
    return config.eval_dataset, ''
  from input_pipeline import sources  # TensorFlow: imported once the command line has quieted it

  spec, why = sources.held_out_split(config.knn_bank_dataset or config.dataset, config.data_dir)
  return spec or '', why


def resolved(config, num_devices: int, eval_dataset=None):
  """A copy of `config` with `bn_groups` and `eval_dataset` as the run uses them (what checkpoints and config.json
  record, so that evaluation reads the queries the monitor scored). `eval_dataset`: eval_dataset_for's answer where
  the caller has it already."""
  run = config.copy_and_resolve_references()
  run.bn_groups = bn_groups_for(config, num_devices)
  run.eval_dataset = eval_dataset_for(config)[0] if eval_dataset is None else eval_dataset
  return run


def validate(config, num_devices: int = 1, process_count: int = 1):
  """Checks every field whose valid range is known, naming the field (ConfigError)."""
  _check_batch(config, num_devices, process_count)
  _check_moco(config)
  _check_model(config.model)
  _check_crops(config.crops)
  _check_optimizer(config.optim)
  _check_schedule_and_monitor(config)
  _check_subsets(config)


def _check_subsets(config):
  """The subset suffix of each dataset string reads (input_pipeline.subsets.parse); whether the source can give it
  is known once the source is read."""
  for field in ('dataset', 'knn_bank_dataset', 'eval_dataset'):
    try:
      subsets.parse(config[field])
    except ValueError as e:
      raise ConfigError(f'{field}: {e}') from None


def _check_batch(config, num_devices, process_count):
  """batch_size divisible by the devices and the processes; bn_groups splitting the per-device batch, with at least
  2 BN groups in all (shuffling BN needs another group to send keys to)."""
  b = config.batch_size
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


def _check_moco(config):
  """The queue (a multiple of the keys enqueued a step), the symmetric loss (two crops only), temperature, EMA
  momentum and the NN loss (its order and the features it mines)."""
  b, m, cr = config.batch_size, config.moco, config.crops
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
  _require(m.nn_features in ('backbone', 'head'), 'moco.nn_features', f'{m.nn_features!r}: use backbone or head')


def _check_model(model):
  """Arch, stem, dtype, width, head and input normalisation."""
  _require(model.arch in resnet.ARCHS, 'model.arch', f'{model.arch!r}: use one of {list(resnet.ARCHS)}')
  _require(model.stem in ('imagenet', 'cifar'), 'model.stem', f'{model.stem!r}: use imagenet or cifar')
  _require(
    model.dtype in ('float32', 'bfloat16', 'float16'),
    'model.dtype',
    f'{model.dtype!r}: use float32, bfloat16 or float16',
  )
  _require(model.width > 0 and int(64 * model.width) > 0, 'model.width', 'too small')
  _require(model.head in encoder.HEADS, 'model.head', f'{model.head!r}: use one of {encoder.HEADS}')
  _require(
    model.normalization in NORMALIZATION,
    'model.normalization',
    f'{model.normalization!r}: use one of {list(NORMALIZATION)}',
  )


def _check_crops(cr):
  """Crop sizes and scales, the constrained multi-crop threshold, the anchor-positive IoU cap, the blur probability
  and A+'s AutoAugment share."""
  _require(cr.large_size > 0 and cr.small_size > 0, 'crops.large_size', 'crop sizes must be positive')
  _require(cr.num_small >= 0, 'crops.num_small', f'must be >= 0, got {cr.num_small}')
  for field, scale in (('crops.large_scale', cr.large_scale), ('crops.small_scale', cr.small_scale)):
    _require(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, field, f'{scale} must be 0 < lo <= hi <= 1')
  _require(0 <= cr.min_overlap <= 1, 'crops.min_overlap', f'must be in [0, 1], got {cr.min_overlap}')
  _require(cr.overlap_tries >= 1, 'crops.overlap_tries', 'must be >= 1')
  _require(0 < cr.max_iou <= 1, 'crops.max_iou', f'must be in (0, 1] (1: no cap), got {cr.max_iou}')
  _require(cr.max_iou_tries >= 1, 'crops.max_iou_tries', 'must be >= 1')
  _require(0 <= cr.blur_probability <= 1, 'crops.blur_probability', f'must be in [0, 1], got {cr.blur_probability}')
  _require(0 <= cr.aplus_probability <= 1, 'crops.aplus_probability', f'must be in [0, 1], got {cr.aplus_probability}')


def _check_optimizer(o):
  """A positive learning rate, momentum in [0, 1), non-negative weight decay and warm-up, the decay unit and the
  schedule."""
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
  _require(o.schedule in ('cosine', 'step'), 'optim.schedule', f'{o.schedule!r}: use cosine or step')
  if o.schedule == 'step':
    _check_step_schedule(o)


def _check_step_schedule(o):
  """Milestones: positive increasing epochs; a factor in (0, 1]; no warm-up and no per-epoch cosine (the step
  schedule has neither)."""
  milestones = list(o.lr_milestones)
  _require(
    all(isinstance(m, int) and m > 0 for m in milestones) and milestones == sorted(set(milestones)),
    'optim.lr_milestones',
    f'{tuple(milestones)} must be positive, increasing epochs',
  )
  _require(0 < o.lr_step_factor <= 1, 'optim.lr_step_factor', f'must be in (0, 1], got {o.lr_step_factor}')
  _require(o.warmup_epochs == 0, 'optim.warmup_epochs', 'the step schedule has no warm-up: set it to 0')
  _require(
    o.lr_decay_every == 'step',
    'optim.lr_decay_every',
    "'epoch' steps the cosine per epoch; the step schedule changes at its milestones: leave it at 'step'",
  )


def _check_schedule_and_monitor(config):
  """The schedule's length, the kNN monitor (k, temperature, frequency, feature, non-negative bank and query caps)
  and the XLA:CPU convolution setting."""
  _require(config.num_train_steps > 0 or config.num_epochs > 0, 'num_epochs', 'set num_epochs or num_train_steps')
  knn = config.knn
  _require(knn.k > 0 and knn.temperature > 0, 'knn.k', 'k and temperature must be positive')
  for field in ('max_bank_examples', 'max_query_examples'):
    _require(knn[field] >= 0, f'knn.{field}', f'must be >= 0 (0: all), got {knn[field]}')
  _require(knn.every_epochs >= 0, 'knn.every_epochs', f'must be >= 0, got {knn.every_epochs}')
  _require(knn.feature in ('backbone', 'head'), 'knn.feature', f'{knn.feature!r}: use backbone or head')
  _require(
    config.cpu_ynnpack_convolutions in xla_cpu.SETTINGS,
    'cpu_ynnpack_convolutions',
    f'{config.cpu_ynnpack_convolutions!r}: use one of {xla_cpu.SETTINGS}',
  )
