"""Every variant and preset as one table of overrides of the schema in base.py.

`config(method, preset)` is base.get_config() with METHODS[method] and then PRESETS[preset] applied. A preset's
value that is a dict keyed by method name is method-dependent (a method it does not name keeps what it had). The
bare name '' is the CPU demo; the others are the papers' runs and the MoCo CIFAR-10 Colab's.
"""

import difflib

from configs import base

# What each variant adds to MoCo-v2 (Van Gansbeke et al. 2021, Sec. 4): constrained multi-crop, then A+ and the NN
# loss. How many small crops and of what size is a matter of scale, so the presets say it.
METHODS = {
  'mocov2': {'method': 'mocov2'},
  'multicrop': {'method': 'multicrop', 'crops.min_overlap': 0.2},
  'knn': {
    'method': 'knn-moco',
    'crops.min_overlap': 0.2,
    'crops.aplus': True,
    'moco.nn_weight': 0.4,
    'moco.nn_topk': 20,
  },
}

# The demo: the schema's defaults (ResNet-10 x 0.25 at 32 px on the embedded Fashion-MNIST, batch 64, 1000 steps) plus
# these.
DEMO = {
  # 2 small crops of 16 px covering 10-35 % of the image: the paper's 4 crops of 5-14 % leave 7-12 px patches of a
  # 32 px image, which measurably slowed learning here.
  'crops.num_small': {'multicrop': 2, 'knn': 2},
  'crops.small_scale': {'multicrop': (0.1, 0.35), 'knn': (0.1, 0.35)},
  # Appendix B's order (the authors' scripts): NN term from step 0, independent of the epoch size.
  'moco.nn_order': {'knn': 'enqueue_then_mine'},
}

# The MoCo CIFAR-10 Colab (facebookresearch/moco, branch colab-notebook), exactly, for mocov2: ResNet-18 with a CIFAR
# stem and ResNet's own fc as a linear 512 -> 128 head, RandomResizedCrop(32) at torchvision's default scale, no
# blur, CIFAR-10 mean/std, 8 split-BN groups, lr 0.06 at batch 512 with the cosine stepped per epoch, and the kNN
# monitor on the normalised head output. Its `--symmetric` is `--config.moco.symmetric=True` here.
CIFAR10 = {
  'dataset': 'tfds:cifar10:train',
  'eval_dataset': 'tfds:cifar10:test',
  'model.arch': 'resnet18',
  'model.width': 1.0,
  'model.stem': 'cifar',
  'model.head': 'linear',
  'model.normalization': 'cifar10',
  'batch_size': 512,
  'bn_groups': 8,
  'num_epochs': 200,
  'num_train_steps': 0,
  'moco.queue_size': 4096,
  'moco.temperature': 0.1,
  'moco.momentum': 0.99,
  'crops.large_scale': (0.08, 1.0),
  'crops.blur_probability': 0.0,
  'crops.num_small': {'multicrop': 4, 'knn': 4},
  'moco.nn_warmup_epochs': {'knn': 5.0},
  'optim.base_lr': 0.03,  # 0.06 at batch 512
  'optim.weight_decay': 5e-4,
  'optim.lr_decay_every': 'epoch',
  'knn.feature': 'head',
  'knn.max_bank_examples': 0,
}

# The same recipe on STL-10's 96 px images: trained on the unlabelled split, the kNN bank is the labelled train split.
STL10 = {
  **CIFAR10,
  'dataset': 'tfds:stl10:unlabelled',
  'knn_bank_dataset': 'tfds:stl10:train',
  'eval_dataset': 'tfds:stl10:test',
  'crops.large_size': 96,
  'crops.small_size': 48,
  'model.normalization': 'imagenet',  # STL-10's images come from ImageNet
}

# Van Gansbeke et al. 2021 on COCO (Table 4): ResNet-50, 2 x 160 + 4 x 96 px (plain MoCo-v2 at 224 px), batch 256 in
# the authors' BN groups of 128, K = 65536, tau = 0.2, lr 0.3 cosine, wd 1e-4, 200 epochs, NN loss after 5 epochs.
COCO = {
  'dataset': 'folder:data/coco/train2017',
  'eval_dataset': '',
  'model.arch': 'resnet50',
  'model.width': 1.0,
  'model.stem': 'imagenet',
  'batch_size': 256,
  'bn_groups': 0,  # auto: the authors' BN batch of 128
  'num_epochs': 200,
  'num_train_steps': 0,
  'moco.queue_size': 65536,
  'moco.temperature': 0.2,
  'moco.momentum': {'mocov2': 0.999, 'multicrop': 0.995, 'knn': 0.995},
  'moco.nn_order': {'knn': 'loss_then_enqueue'},
  'moco.nn_warmup_epochs': {'knn': 5.0},
  'crops.large_size': {'mocov2': 224, 'multicrop': 160, 'knn': 160},
  'crops.small_size': 96,
  'crops.num_small': {'multicrop': 4, 'knn': 4},
  'crops.blur_reference_size': 0,  # the authors' fixed [0.1, 2] px at every view size
  'optim.base_lr': 0.3,
  'optim.weight_decay': 1e-4,
  'knn.max_bank_examples': 0,
  'log_every_steps': 100,
  'checkpoint_every_steps': 2000,
}

# Van Gansbeke et al. 2021, Sec. 3 (appendix A.1: MoCo-v2's defaults, lr 0.3, 400 epochs), on the pretraining sets of
# its Table 1, drawn by input_pipeline/subsets.py (with seed 0; the run writes the list to WORKDIR/subset.tsv). The
# paths are where the data is expected: set others with --config.dataset, keeping the subset suffix.
SECTION3 = {**COCO, 'num_epochs': 400}
IMAGENET_VAL = 'folder:data/imagenet/val'

# MoCo v1 as He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning", ran it on ImageNet
# (Sec. 3.3 and 4): ResNet-50 with a linear 128-d head, batch 256, lr 0.03 stepped x0.1 at epochs 120 and 160 of 200,
# wd 1e-4, m 0.999, tau 0.07, K 65536, 224 px crops of 20-100 % of the image, no blur. One difference stays: the
# colour jitter is MoCo-v2's (ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8), where MoCo v1 applied (0.4, 0.4, 0.4,
# 0.4) always, and the BN groups are the authors' 128 images (auto) where MoCo v1 normalised 32 images a GPU (8 GPUs:
# --config.bn_groups=1 on 8 devices). Meant for configs/mocov2.py (`--config=configs/mocov2.py:mocov1`).
MOCOV1 = {
  **COCO,
  'dataset': 'folder:data/imagenet/train',
  'eval_dataset': IMAGENET_VAL,
  'model.head': 'linear',
  'moco.temperature': 0.07,
  'moco.momentum': 0.999,
  'crops.large_size': 224,
  'crops.blur_probability': 0.0,
  'optim.base_lr': 0.03,
  'optim.schedule': 'step',
  'optim.lr_milestones': (120, 160),
  'optim.lr_step_factor': 0.1,
}

PRESETS = {
  '': DEMO,
  'cifar10': CIFAR10,
  'stl10': STL10,
  'coco': COCO,
  # The final 800-epoch model: the authors warm the NN loss up for 20 epochs there.
  'coco800': {**COCO, 'num_epochs': 800, 'moco.nn_warmup_epochs': {'knn': 20.0}},
  'imagenet': {**COCO, 'dataset': 'folder:data/imagenet/train', 'eval_dataset': IMAGENET_VAL},
  # IN-118K: ImageNet's train split at 118 images a class; IN-118K-LT: 118K images in Pareto (alpha = 6) class sizes.
  'in118k': {**SECTION3, 'dataset': 'folder:data/imagenet/train|uniform=118000,seed=0', 'eval_dataset': IMAGENET_VAL},
  'in118k_lt': {
    **SECTION3,
    'dataset': 'folder:data/imagenet/train|pareto=6,total=118000,seed=0',
    'eval_dataset': IMAGENET_VAL,
  },
  # OI-118K: 118K random images of OpenImages-v4's train split; BDD100K: its whole train split. Both unlabelled here.
  'oi118k': {**SECTION3, 'dataset': 'folder:data/openimages/train|random=118000,seed=0'},
  'bdd100k': {**SECTION3, 'dataset': 'folder:data/bdd100k/images/100k/train'},
  'mocov1': MOCOV1,
}


def override(config, overrides):
  """Sets dotted fields, {'moco.queue_size': 1024, ...}, of `config` in place and returns it. A field that is not
  there (a locked config adds none) is refused in one line naming it and the nearest field."""
  for name, value in overrides.items():
    *parents, leaf = name.split('.')
    target = config
    for parent in parents:
      target = target[_present(target, parent, name)]
    target[_present(target, leaf, name) if target.is_locked else leaf] = value
  return config


def _present(config, key, name):
  """`key` when `config` has it, else a ValueError naming the override `name`, the missing key and the nearest."""
  if key in config:
    return key
  nearest = difflib.get_close_matches(key, list(config.keys()), n=1)
  hint = f' (did you mean {nearest[0]}?)' if nearest else ''
  raise ValueError(f'{name}: the config has no field {key!r}{hint}')


def config(method, preset=''):
  """The resolved config of `method` (a key of METHODS) with `preset` (a key of PRESETS)."""
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; choose one of {", ".join(p for p in PRESETS if p)}')
  c = base.get_config()
  for table in (METHODS[method], PRESETS[preset]):
    override(c, _for_method(table, method))
  return c


def _for_method(table, method):
  """The table's settings for `method`: a method-keyed value resolved, or left out where it names no such method."""
  resolved = {}
  for name, value in table.items():
    if not isinstance(value, dict):
      resolved[name] = value
    elif method in value:
      resolved[name] = value[method]
  return resolved
