"""Evaluation protocols on a frozen backbone (segmentation and depth fine-tune it), in big_vision's evaluators
pattern: one module per protocol, named as the protocol, each holding an `Evaluator(task, **options)` (task:
`common.Task`) whose `run(variables)` yields (name, value) pairs and whose `describe(result)` gives the protocol and
its scores in words; the class also says how its datasets are opened (`open_datasets`) and at what size
(`default_image_size`), see `common`.

`OPTIONS` is the one table of the protocols (their names, in order) and of each protocol's options, with their
types, defaults and help: the Evaluators read their options from it (`options`), and `jax_moco.evaluate` makes a
flag of each, refused for a protocol that does not take it. Adding an option is a row here and its use in the
Evaluator. This module imports nothing heavy: the command line reads the table before TensorFlow is imported."""

import dataclasses
import importlib
import types
from typing import Any


@dataclasses.dataclass(frozen=True)
class Option:
  """One option of a protocol: the keyword its Evaluator reads and the command line's flag of the same name."""

  name: str
  type: type  # int, float, str or bool: the flag's kind
  default: Any  # None: the protocol works it out, as `help` says
  help: str
  positive: bool = False  # a number that must be above 0 (a count, a size, a rate)

  def description(self) -> str:
    """The help with the default, when there is one to state."""
    if self.default is None or self.type is bool:
      return self.help
    return f'{self.help} (default {self.default})'


# Shared by the linear probe and the cam protocol, which reads the probe's classifier.
VALIDATION_DATASET = Option(
  'validation_dataset', str, None, 'a labelled dataset to choose the L2 constant on (default: 20 % of train)'
)
N_JOBS = Option('n_jobs', int, -1, 'parallel fits of the L2 grid as joblib counts them, -1 one a core')


def dense_output(default):
  """The dense protocols' network (models.resnet.DENSE_OUTPUTS), each protocol defaulting to its reference's."""
  return Option(
    'dense_output',
    str,
    default,
    'dense features: stride16_dilated, stride8_dilated, stride8_no_stage4 or stride32 (docs/evaluation.md)',
  )


OPTIONS = {
  'knn': (
    Option('knn_k', int, None, "k neighbours (default: the run's knn.k)", positive=True),
    Option('knn_temperature', float, None, "temperature T (default: the run's knn.temperature)", positive=True),
  ),
  'linear_probe': (VALIDATION_DATASET, N_JOBS),
  # MoCo's ImageNet protocol (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning",
  # Sec. 4.1): 100 epochs of batch 256 at lr 30.
  'linear_classification': (
    Option('epochs', int, 100, 'epochs', positive=True),
    Option('batch_size', int, 256, 'global batch', positive=True),
    Option('lr', float, 30.0, 'learning rate', positive=True),
    # MoCo's main_lincls.py uses 0; Van Gansbeke et al. 2021, appendix A.2, 1e-4 (their ImageNet and Places columns).
    Option('weight_decay', float, 0.0, "weight decay (Van Gansbeke et al. 2021's tables: 1e-4)"),
  ),
  'segment_retrieval': (
    # Van Gansbeke et al. 2021, A.7 (segment_retrieval.K)
    Option('kmeans_k', int, 15, 'K-means regions an image', positive=True),
    Option('kmeans_seed', int, 0, 'K-means seed'),
    Option(
      'batch_size',
      int,
      None,
      'images a global batch (default: 16, rounded up to a multiple of the device count)',
      positive=True,
    ),
    # MaskContrast's retrieval network, which the authors' README runs for A.7 (its 64 x 64 maps at 512 px).
    dense_output('stride8_dilated'),
  ),
  'cam': (Option('cam_images', int, 16, 'test images in the picture', positive=True), VALIDATION_DATASET, N_JOBS),
  # Van Gansbeke et al. 2021's VOC07 SVMs (voc07_svm.COST), Goyal et al. 2019's cross-validated costs as a variant.
  'voc07_svm': (
    Option('svm_costs', str, '0.5', "the SVMs' cost C; several, comma-separated: each class's by 3-fold CV"),
    Option('svm_difficult', str, 'negative', "difficult-only images: 'negative' (the authors') or 'ignore' (devkit)"),
    Option('n_jobs', int, -1, 'classes fitted in parallel as joblib counts them, -1 one a core'),
  ),
  # Jabri et al. 2020's label propagation test, as Van Gansbeke et al. 2021 ran it (label_propagation.Propagation).
  'label_propagation': (
    Option('propagation_context', int, 20, 'previous frames in the context, besides the first'),
    Option('propagation_topk', int, 10, 'neighbours a location takes its labels from', positive=True),
    Option('propagation_temperature', float, 0.07, 'softmax temperature over their affinities', positive=True),
    Option(
      'propagation_radius', float, 12.0, 'how far (in feature cells) the previous frames are searched', positive=True
    ),
    Option('propagation_save_masks', bool, False, 'write the predicted masks as PNGs'),
    dense_output('stride8_no_stage4'),  # the reference's network (its radius is in cells of this map)
  ),
}


def finetuned():
  """The options of the fine-tuned dense protocols (evaluators.finetune): each recipe field by default the dataset's
  (finetune.RECIPES), the number of runs and the BN choice."""
  recipe = "(default: the dataset's recipe, finetune.RECIPES)"
  return (
    Option('epochs', int, None, f'epochs {recipe}', positive=True),
    Option('batch_size', int, None, f'global batch {recipe}', positive=True),
    Option('lr', float, None, f'learning rate {recipe}', positive=True),
    Option('weight_decay', float, None, f"weight decay, coupled as PyTorch's {recipe}"),
    Option('crop_size', int, None, f'training crops (px) {recipe}', positive=True),
    Option('runs', int, 1, 'fine-tunings with seeds seed, seed + 1, ...: their mean and spread', positive=True),
    # Both references compute BN statistics over the whole batch of 16 (one GPU for VOC, SyncBatchNorm for
    # Cityscapes): synchronised by default; --nosync_bn for statistics per device.
    Option('sync_bn', bool, True, 'BN statistics over the global batch (default); --nosync_bn: per device'),
  )


# Van Gansbeke et al. 2021, appendix A.3 and A.5: fine-tuned end to end (evaluators.finetune).
OPTIONS['segmentation'] = finetuned()
OPTIONS['depth'] = finetuned()
PROTOCOLS = tuple(OPTIONS)


def _check(protocol):
  if protocol not in OPTIONS:
    raise ValueError(f'protocol={protocol!r}: choose one of {", ".join(PROTOCOLS)}')


def get(protocol):
  """The Evaluator class of `protocol`; its module is imported only when asked for."""
  _check(protocol)
  return importlib.import_module(f'{__name__}.{protocol}').Evaluator


def options(protocol, **given) -> types.SimpleNamespace:
  """Every option of `protocol` (OPTIONS), its given value or else its default; an option the protocol does not
  take, or a value 0 or below of a positive one, is refused, naming it."""
  _check(protocol)
  accepted = {option.name: option.default for option in OPTIONS[protocol]}
  unknown = sorted(set(given) - set(accepted))
  if unknown:
    raise ValueError(
      f'{", ".join(unknown)}: not an option of protocol={protocol} (its options: {", ".join(sorted(accepted))})'
    )
  values = {o.name: given.get(o.name) for o in OPTIONS[protocol] if o.positive}
  below = [f'{name}={value}' for name, value in values.items() if value is not None and value <= 0]
  if below:
    raise ValueError(f'{", ".join(below)}: must be positive')
  return types.SimpleNamespace(**{**accepted, **given})
