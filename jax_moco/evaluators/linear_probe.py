"""The `linear_probe` protocol of Van Gansbeke et al. 2021, appendix A.2 (the protocol of Ericsson et al.): logistic
regression (scikit-learn, L-BFGS) on frozen features; the L2 constant chosen on a validation split among 45 log-spaced
values from 1e-5 to 1e5, then the model refit on train + validation and scored on test.

Single-label data: one multinomial (softmax cross-entropy) classifier, top-1 accuracy. Multi-label data (targets
[N, C] of 1 / 0 / -1, VOC07): one binary classifier per class sharing the constant, mean average precision; examples
whose target is -1 (difficult-only) are left out of that class's fit and score.
"""

import logging
import os
import warnings

import jax
import joblib
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import train_test_split

from jax_moco import evaluators
from jax_moco import files
from jax_moco.evaluators import common
from jax_moco.evaluators import features as features_lib

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


def fit_reporting_convergence(features, labels, l2):
  """(fit(), whether L-BFGS converged): scikit-learn's ConvergenceWarning is caught, so a grid of 45 fits, whose
  weakest constants often stop at max_iter, reports which did instead of printing a warning each; other warnings
  pass through."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always', ConvergenceWarning)
    model = fit(features, labels, l2)
  for w in caught:
    if not issubclass(w.category, ConvergenceWarning):
      warnings.showwarning(w.message, w.category, w.filename, w.lineno)
  return model, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def _validation_score(l2, train, validation):
  model, converged = fit_reporting_convergence(*train, l2)
  return score(model, *validation), converged


def select_and_fit(train_features, train_labels, validation=None, grid=L2_GRID, n_jobs=-1):
  """Selects the L2 constant on `validation` ((features, labels); default a 20 % split of train, class-stratified
  for single-label data) and refits on train + validation with it: (model, selection), selection the chosen
  constant, its validation score and the whole validation curve."""
  train_features, train_labels = np.asarray(train_features), np.asarray(train_labels)
  if validation is None:
    train_idx, val_idx = split_train_validation(train_labels)
    validation = (train_features[val_idx], train_labels[val_idx])
    train = (train_features[train_idx], train_labels[train_idx])
  else:
    train = (train_features, train_labels)
  fits = joblib.Parallel(n_jobs=n_jobs)(joblib.delayed(_validation_score)(l2, train, validation) for l2 in grid)
  scores = [s for s, _ in fits]
  best = int(np.argmax(scores))  # the first (strongest regularisation) among ties
  all_x, all_y = np.concatenate([train[0], validation[0]]), np.concatenate([train[1], validation[1]])
  model, converged = fit_reporting_convergence(all_x, all_y, grid[best])
  unconverged = [float(l2) for l2, (_, ok) in zip(grid, fits) if not ok]
  if unconverged:
    logging.info(
      'linear probe: %d of %d fits of the grid stopped at max_iter (L2 %.3g to %.3g)',
      len(unconverged),
      len(grid),
      min(unconverged),
      max(unconverged),
    )
  if not converged:
    logging.warning('linear probe: the final fit at the chosen L2 = %.3g stopped at max_iter', grid[best])
  metric = 'map' if is_multi_label(train_labels) else 'top1'
  return model, {
    'l2': float(grid[best]),
    f'validation_{metric}': float(scores[best]),
    'validation_curve': [[float(l2), float(s)] for l2, s in zip(grid, scores)],
    'unconverged_l2': unconverged,
    'converged': converged,
  }


def test_scores(model, test_features, test_labels):
  """The test score: `top1` (%) for single-label data, `map` (%) with the per-class APs for multi-label data."""
  test_features, test_labels = np.asarray(test_features), np.asarray(test_labels)
  if not is_multi_label(test_labels):
    return {'metric': 'top1', 'top1': accuracy(model, test_features, test_labels)}
  aps = average_precisions(class_scores(model, test_features), test_labels)
  return {
    'metric': 'map',
    'map': float(np.nanmean(aps)),
    'ap_per_class': [None if np.isnan(ap) else float(ap) for ap in aps],
  }


def weights(model, num_classes):
  """The fitted classifier as one linear map: (weight [num_classes, C], bias [num_classes]) whose logits
  features @ weight.T + bias rank the classes as the model does (the multinomial model's logits, or the per-class
  binary models' decision values). scikit-learn keeps one row for two classes, the logit difference: it becomes
  two opposite halves. A class absent from training gets a zero row and bias -inf (never predicted)."""
  if isinstance(model, list):  # multi-label: one binary classifier per class, all classes present
    return np.concatenate([m.coef_ for m in model]), np.concatenate([m.intercept_ for m in model])
  coef, intercept = model.coef_, model.intercept_
  if len(model.classes_) == 2 and len(coef) == 1:
    coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
  weight = np.zeros((num_classes, coef.shape[1]), coef.dtype)
  bias = np.full(num_classes, -np.inf, intercept.dtype)
  weight[model.classes_], bias[model.classes_] = coef, intercept
  return weight, bias


def classifier_path(task, validation=None):
  """Where the classifier fitted on this task's training features is kept (None without a directory): one file per
  train set, size, cap and validation set, next to the features it was fitted on."""
  if task.directory is None:
    return None
  parts = [features_lib.slug(task.train.name), f'{task.features.image_size}px']
  parts += [f'max{task.max_train}'] if task.max_train else []
  parts += [f'validation_{features_lib.slug(validation.name)}'] if validation else []
  return os.path.join(task.directory, f'linear_probe_classifier_{"_".join(parts)}.npz')


def fit_classifier(task, variables, validation=None, n_jobs=-1):
  """(model, selection, classifier) of the probe on the task's training features (and `validation`'s, a labelled
  source), the classifier as {weight [classes, C], bias [classes] (weights()), l2, num_train}, saved where
  classifier_path says."""
  train_x, train_y = task.features(variables, task.train, task.max_train)
  validation_xy = validation and task.features(variables, validation, task.max_train)
  model, selection = select_and_fit(train_x, train_y, validation_xy, n_jobs=n_jobs)
  weight, bias = weights(model, task.num_classes)
  fitted = dict(weight=weight, bias=bias, l2=selection['l2'], num_train=len(train_y))
  path = classifier_path(task, validation)
  if path and jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with files.atomic_write(path, 'wb') as f:
      np.savez(f, **fitted)
  return model, selection, fitted


def classifier(task, variables, validation=None, n_jobs=-1):
  """The probe's classifier as {weight [classes, C], bias [classes], l2, num_train}: read back from where
  classifier_path says when the linear_probe protocol (or an earlier call) fitted it there, else fitted now."""
  path = classifier_path(task, validation)
  if path is None or not os.path.exists(path):
    return fit_classifier(task, variables, validation, n_jobs)[2]
  with np.load(path) as saved:
    return dict(weight=saved['weight'], bias=saved['bias'], l2=float(saved['l2']), num_train=int(saved['num_train']))


def open_validation(task, validation_dataset):
  """The labelled source of --validation_dataset, or None."""
  return validation_dataset and common.labelled(validation_dataset, task.config.data_dir, 'validation')


class Evaluator:
  """Options (evaluators.OPTIONS): `validation_dataset`, a labelled dataset string to choose the constant on
  (default: 20 % of train); `n_jobs`, joblib's parallel fits of the grid. The fitted classifier is kept in the task's
  directory (classifier_path), where the `cam` protocol reads it."""

  open_datasets = staticmethod(common.labelled_datasets)
  default_image_size = None  # the run's crops.large_size

  def __init__(self, task: common.Task, **options):
    o = evaluators.options('linear_probe', **options)
    self.task, self.n_jobs = task, o.n_jobs
    self.validation = open_validation(task, o.validation_dataset)

  def run(self, variables):
    t = self.task
    model, selection, fitted = fit_classifier(t, variables, self.validation, self.n_jobs)
    test_x, test_y = t.features(variables, t.test, t.max_test)
    yield from {**test_scores(model, test_x, test_y), **selection}.items()
    if self.validation:
      yield 'validation_dataset', self.validation.name
    yield from dict(num_train=fitted['num_train'], num_test=len(test_y)).items()

  @staticmethod
  def describe(result):
    metric = result['metric']
    per_class = ', one binary classifier per class' if metric == 'map' else ''
    return (
      f'linear probe (logistic regression, L-BFGS{per_class})',
      f'{"mAP" if metric == "map" else "top-1"} {result[metric]:.2f} % (L2 = {result["l2"]:.3g}, chosen on '
      f'validation at {result["validation_" + metric]:.2f} %)',
    )
