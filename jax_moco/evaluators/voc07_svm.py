"""The `voc07_svm` protocol: linear SVMs on frozen features, one per class, scored by mean average precision. This is
the VOC07 column of Van Gansbeke et al. 2021 ("Revisiting Contrastive Methods for Unsupervised Learning of Visual
Representations", Tables 4 and 9), as the authors' `evaluation/voc_svm` code computes it, itself the recipe of Goyal
et al. 2019 ("Scaling and Benchmarking Self-Supervised Visual Representation Learning") with one fixed cost:

- pooled backbone features of VOC 2007 trainval (fit) and test (score), each image's shorter side resized to 256
  and centre-cropped to 224 (`RESIZE_RATIO`), ImageNet mean/std; each feature divided by (its L2 norm + 1e-5);
- per class a scikit-learn LinearSVC(C=0.5, class_weight={1: 2, -1: 1}, squared hinge, L2, dual, tol 1e-4,
  max_iter 2000) on +1 (present) / -1 (otherwise: absent, and difficult-only, as the authors turn VOC's 0 into -1);
- per class the average precision of the SVM's decision values, all-point interpolated as the authors'
  `get_precision_recall` / `calculate_ap` (from PCL) compute it, counting only targets > 0 as positives; the mAP is
  the mean over the classes.

The authors' script does not run as published (it scores an undefined `test_feats`, and its metrics module lacks
its NumPy import); we follow its evident intent, scoring the test features. Two variants behind options: `svm_costs`
with several values picks each class's cost by 3-fold cross-validated AP on the training set (scikit-learn's
`cross_val_score(..., scoring='average_precision')`, as Goyal et al.'s benchmark does), and
`svm_difficult='ignore'` leaves difficult-only images out of each class's fit and score (as VOC's devkit scores them)
instead of counting them as negatives.

Single-label data (the embedded set, a folder of classes) is scored one-vs-rest: class c's targets are 1 where the
label is c, 0 elsewhere; the result then also has the top-1 accuracy of the SVMs' largest decision value.
"""

import logging
import warnings

import joblib
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import cross_val_score
from sklearn.svm import LinearSVC

from input_pipeline import split_lists
from input_pipeline import voc07
from jax_moco import evaluators
from jax_moco.evaluators import common

COST = 0.5  # the authors' C
RESIZE_RATIO = 256 / 224  # shorter side resized to 256, centre crop 224 (torchvision's Resize + CenterCrop)
CROSS_VALIDATION_FOLDS = 3
NORM_EPS = 1e-5
DIFFICULT = ('negative', 'ignore')


def normalize_features(features):
  """Each row divided by (its L2 norm + 1e-5), as the authors' script does (not the max(norm, eps) of l2_normalize)."""
  features = np.asarray(features, np.float64)
  return features / (np.linalg.norm(features, axis=1, keepdims=True) + NORM_EPS)


def precision_recall(targets, scores):
  """(precision, recall) at every cut of the ranking by descending score, as the authors' get_precision_recall:
  targets > 0 are the positives, and tied scores keep NumPy's argsort order, reversed, as theirs do."""
  positive = np.asarray(targets) > 0
  hits = positive[np.argsort(scores)[::-1]].astype(np.float64)
  true_positives, false_positives = np.cumsum(hits), np.cumsum(1.0 - hits)
  return true_positives / (true_positives + false_positives), true_positives / positive.sum()


def average_precision(targets, scores):
  """All-point interpolated AP (%), the authors' calculate_ap: the area under the precision envelope (the best
  precision at this recall or beyond) over the recall steps. NaN for a class without positives."""
  if not np.any(np.asarray(targets) > 0):
    return np.nan
  precision, recall = precision_recall(targets, scores)
  recall = np.concatenate([[0.0], recall, [1.0]])
  envelope = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
  steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
  return float(np.sum((recall[steps] - recall[steps - 1]) * envelope[steps]) * 100)


def class_targets(labels, num_classes):
  """[N, C] targets (1 present, 0 absent, -1 difficult-only): multi-label targets as they are, single labels
  one-vs-rest."""
  labels = np.asarray(labels)
  if labels.ndim == 2:
    return labels
  return (labels[:, None] == np.arange(num_classes)).astype(np.int32)


def svm(cost):
  """The authors' (and Goyal et al.'s) LinearSVC."""
  return LinearSVC(
    C=cost,
    class_weight={1: 2, -1: 1},
    intercept_scaling=1.0,
    penalty='l2',
    loss='squared_hinge',
    dual=True,
    tol=1e-4,
    max_iter=2000,
  )


def _scored(targets, difficult):
  """Which examples count for a class: all (difficult-only ones as negatives), or those not difficult-only."""
  return np.ones(len(targets), bool) if difficult == 'negative' else targets != -1


def cross_validated_aps(x, y, costs):
  """Each cost's mean AP (%) over CROSS_VALIDATION_FOLDS folds of (x, y), as Goyal et al.'s benchmark computes it."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', ConvergenceWarning)  # the folds' fits; the final fit's is reported
    return [
      float(cross_val_score(svm(c), x, y, cv=CROSS_VALIDATION_FOLDS, scoring='average_precision').mean() * 100)
      for c in costs
    ]


def fit_class(features, targets, costs, difficult='negative', name='a class'):
  """One class's SVM on +1 / -1 targets, and {cost, validation_ap (per cost), converged}: the one cost, or the cost
  of the best cross-validated AP (the first among ties)."""
  kept = _scored(targets, difficult)
  x, y = features[kept], np.where(targets[kept] == 1, 1, -1)
  if len(np.unique(y)) < 2:  # a small subset (--max_examples): the class is left out of the mean
    logging.warning(
      'voc07_svm: %s has no %s training example: not scored', name, 'negative' if y[0] > 0 else 'positive'
    )
    return None, {'cost': None, 'validation_ap': [], 'converged': True}
  validation = cross_validated_aps(x, y, costs) if len(costs) > 1 else []
  cost = costs[int(np.argmax(validation))] if validation else costs[0]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always', ConvergenceWarning)
    model = svm(cost).fit(x, y)
  converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
  return model, {'cost': float(cost), 'validation_ap': validation, 'converged': converged}


def fit(features, targets, costs=(COST,), difficult='negative', n_jobs=-1):
  """Per class (columns of `targets`) fit_class's (model, selection), fitted in parallel threads (liblinear releases
  the GIL; worker processes would import this module, and TensorFlow with it, again)."""
  return joblib.Parallel(n_jobs=n_jobs, prefer='threads')(
    joblib.delayed(fit_class)(features, targets[:, c], tuple(costs), difficult, f'class {c}')
    for c in range(targets.shape[1])
  )


def scores(models, features, targets, difficult='negative'):
  """(decision values [N, C], {'map', 'ap_per_class'} (%)): a class without a model (fit_class) has decision -inf
  and AP None, and the mean leaves out such classes and those without a positive test example."""
  unscored = np.full(len(features), -np.inf)
  decisions = np.stack([unscored if m is None else m.decision_function(features) for m in models], axis=1)
  aps = []
  for c in range(targets.shape[1]):
    kept = _scored(targets[:, c], difficult)
    aps.append(np.nan if models[c] is None else average_precision(targets[kept, c], decisions[kept, c]))
  return decisions, {'map': float(np.nanmean(aps)), 'ap_per_class': [None if np.isnan(a) else a for a in aps]}


def parse_costs(costs):
  """'0.5' or '0.01,0.1,1' -> a tuple of positive floats."""
  try:
    values = tuple(float(c) for c in str(costs).split(',') if c.strip())
  except ValueError:
    values = ()  # a word, not a number
  if not values or min(values) <= 0:
    raise ValueError(f'svm_costs={costs!r}: give one positive cost, or several separated by commas')
  return values


class Evaluator:
  """Options (evaluators.OPTIONS): `svm_costs` (one cost, the authors' 0.5, or several for 3-fold cross-validation
  per class), `svm_difficult` ('negative', the authors', or 'ignore', the devkit's), `n_jobs` (classes fitted in
  parallel)."""

  default_image_size = 224
  resize_ratio = RESIZE_RATIO

  @staticmethod
  def open_datasets(config, dataset=None, test_dataset=None):
    """As the other classification protocols', but `--dataset=voc07:PATH[:SPLIT]` alone is scored on that folder's
    test split."""
    if dataset and dataset.startswith('voc07:') and not test_dataset:
      path, _ = split_lists.parse(dataset, 'voc07', 'trainval', voc07.LAYOUT)
      test_dataset = f'voc07:{path}:test'
    return common.labelled_datasets(config, dataset, test_dataset)

  def __init__(self, task: common.Task, **options):
    o = evaluators.options('voc07_svm', **options)
    if o.svm_difficult not in DIFFICULT:
      raise ValueError(f'svm_difficult={o.svm_difficult!r}: choose one of {", ".join(DIFFICULT)}')
    self.task, self.costs, self.difficult, self.n_jobs = task, parse_costs(o.svm_costs), o.svm_difficult, o.n_jobs

  def run(self, variables):
    t = self.task
    train_x, train_y = t.features(variables, t.train, t.max_train)
    test_x, test_y = t.features(variables, t.test, t.max_test)
    fitted = fit(
      normalize_features(train_x), class_targets(train_y, t.num_classes), self.costs, self.difficult, self.n_jobs
    )
    models, selections = zip(*fitted)
    decisions, result = scores(models, normalize_features(test_x), class_targets(test_y, t.num_classes), self.difficult)
    unconverged = [c for c, s in enumerate(selections) if not s['converged']]
    if unconverged:
      logging.warning('voc07_svm: the SVMs of classes %s stopped at max_iter', unconverged)
    yield from result.items()
    yield 'classes', list(t.train.class_names) or [str(c) for c in range(t.num_classes)]
    if np.ndim(test_y) == 1:
      yield 'top1', float(np.mean(np.argmax(decisions, axis=1) == test_y) * 100)
    costs = [s['cost'] for s in selections]
    yield from dict(costs=costs, unscored_classes=[c for c, cost in enumerate(costs) if cost is None]).items()
    yield 'unconverged_classes', unconverged
    yield from dict(difficult=self.difficult, num_train=len(train_y), num_test=len(test_y)).items()

  @staticmethod
  def describe(result):
    costs = sorted({c for c in result['costs'] if c is not None})
    cost = (
      f'C = {costs[0]:g}' if len(costs) == 1 else f'C per class by 3-fold CV ({", ".join(f"{c:g}" for c in costs)})'
    )
    top1 = f', top-1 {result["top1"]:.2f} %' if 'top1' in result else ''
    return (
      f'linear SVM per class ({cost}, difficult as {result["difficult"]})',
      f'mAP {result["map"]:.2f} %{top1}{_per_class(result)}',
    )


def _per_class(result):
  """'; AP per class (%): name AP, ...' of a result, by class id where it predates the names."""
  aps = result.get('ap_per_class', [])
  names = result.get('classes') or range(len(aps))
  listed = ', '.join(f'{name} {"-" if ap is None else f"{ap:.1f}"}' for name, ap in zip(names, aps))
  return f'; AP per class (%): {listed}' if listed else ''
