"""The `linear_probe` protocol of paper 001, appendix A.2 (the protocol of Ericsson et al.): logistic regression
(scikit-learn, L-BFGS) on frozen features; the L2 constant chosen on a validation split among 45 log-spaced values
from 1e-5 to 1e5, then the model refit on train + validation and scored on test.

Single-label data: one multinomial (softmax cross-entropy) classifier, top-1 accuracy. Multi-label data (targets
[N, C] of 1 / 0 / -1, VOC07): one binary classifier per class sharing the constant, mean average precision; examples
whose target is -1 (difficult-only) are left out of that class's fit and score.
"""

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import train_test_split

from jax_moco.evaluators import common

L2_GRID = np.logspace(-5, 5, 45)  # the regularisation constants; scikit-learn's C is 1 / L2
VALIDATION_FRACTION = 0.2  # held out of train (class-stratified) when a dataset has no validation split


def is_multi_label(labels) -> bool:
  return np.ndim(labels) == 2


def split_train_validation(labels, fraction=VALIDATION_FRACTION, seed=0):
  """Index arrays (train, validation), stratified by class (single-label) and fixed by the seed."""
  indices = np.arange(len(labels))
  return train_test_split(
    indices, test_size=fraction, random_state=seed, stratify=None if is_multi_label(labels) else labels
  )


def fit(features, labels, l2, max_iter=1000):
  """The multinomial classifier, or for multi-label targets one binary classifier per class."""
  if not is_multi_label(labels):
    return LogisticRegression(C=1.0 / l2, solver='lbfgs', max_iter=max_iter).fit(features, labels)
  models = []
  for c in range(labels.shape[1]):
    known = labels[:, c] != -1
    if len(np.unique(labels[known, c])) < 2:
      raise ValueError(f'linear probe: class {c} has no positive or no negative training example')
    models.append(
      LogisticRegression(C=1.0 / l2, solver='lbfgs', max_iter=max_iter).fit(features[known], labels[known, c])
    )
  return models


def accuracy(model, features, labels):
  return float(np.mean(model.predict(features) == labels) * 100)


def average_precisions(scores, targets):
  """Per-class average precision (%; scikit-learn's, not VOC's 11-point interpolation) over the examples whose target
  is not -1; NaN for a class with no positive among them."""
  aps = []
  for c in range(targets.shape[1]):
    known = targets[:, c] != -1
    positives = targets[known, c] == 1
    aps.append(average_precision_score(positives, scores[known, c]) * 100 if positives.any() else np.nan)
  return np.array(aps)


def class_scores(models, features):
  """[N, C] decision values of the per-class binary classifiers."""
  return np.stack([m.decision_function(features) for m in models], axis=1)


def mean_average_precision(models, features, targets):
  return float(np.nanmean(average_precisions(class_scores(models, features), targets)))


def score(model, features, labels):
  """Top-1 (%) for single-label data, mAP (%) for multi-label data."""
  if is_multi_label(labels):
    return mean_average_precision(model, features, labels)
  return accuracy(model, features, labels)


def _validation_score(l2, train, validation):
  return score(fit(*train, l2), *validation)


def linear_probe(train_features, train_labels, test_features, test_labels, validation=None, grid=L2_GRID, n_jobs=-1):
  """Selects the L2 constant on `validation` ((features, labels); default a 20 % split of train, class-stratified
  for single-label data), refits on train + validation with it and returns the test score (`top1`, or `map` for
  multi-label data, in %), the chosen constant and the whole validation curve."""
  train_features, train_labels = np.asarray(train_features), np.asarray(train_labels)
  if validation is None:
    train_idx, val_idx = split_train_validation(train_labels)
    validation = (train_features[val_idx], train_labels[val_idx])
    train = (train_features[train_idx], train_labels[train_idx])
  else:
    train = (train_features, train_labels)
  scores = joblib.Parallel(n_jobs=n_jobs)(joblib.delayed(_validation_score)(l2, train, validation) for l2 in grid)
  best = int(np.argmax(scores))  # the first (strongest regularisation) among ties
  model = fit(np.concatenate([train[0], validation[0]]), np.concatenate([train[1], validation[1]]), grid[best])
  test_features, test_labels = np.asarray(test_features), np.asarray(test_labels)
  if is_multi_label(train_labels):
    aps = average_precisions(class_scores(model, test_features), test_labels)
    test = {
      'metric': 'map',
      'map': float(np.nanmean(aps)),
      'ap_per_class': [None if np.isnan(ap) else float(ap) for ap in aps],
    }
  else:
    test = {'metric': 'top1', 'top1': accuracy(model, test_features, test_labels)}
  return {
    **test,
    'l2': float(grid[best]),
    f'validation_{test["metric"]}': float(scores[best]),
    'validation_curve': [[float(l2), float(s)] for l2, s in zip(grid, scores)],
  }


class Evaluator:
  """`validation_dataset`: a labelled dataset string to choose the constant on (default: 20 % of train);
  `n_jobs`: joblib's parallel fits of the grid."""

  def __init__(self, task: common.Task, validation_dataset=None, n_jobs=-1):
    self.task, self.n_jobs = task, n_jobs
    self.validation = validation_dataset and common.labelled(validation_dataset, task.config.data_dir, 'validation')

  def run(self, variables):
    t = self.task
    train_x, train_y = t.features(variables, t.train, t.max_train)
    test_x, test_y = t.features(variables, t.test, t.max_test)
    validation = self.validation and t.features(variables, self.validation, t.max_train)
    yield from linear_probe(train_x, train_y, test_x, test_y, validation=validation, n_jobs=self.n_jobs).items()
    if self.validation:
      yield 'validation_dataset', self.validation.name
    yield from dict(num_train=len(train_y), num_test=len(test_y)).items()

  @staticmethod
  def describe(result):
    metric = result['metric']
    per_class = ', one binary classifier per class' if metric == 'map' else ''
    return (
      f'linear probe (logistic regression, L-BFGS{per_class})',
      f'{"mAP" if metric == "map" else "top-1"} {result[metric]:.2f} % (L2 = {result["l2"]:.3g}, chosen on '
      f'validation at {result["validation_" + metric]:.2f} %)',
    )
