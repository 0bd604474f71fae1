"""Linear probe of paper 001, appendix A.2 (the protocol of Ericsson et al.): multinomial logistic regression
(scikit-learn, L-BFGS, softmax cross-entropy) on frozen features; the L2 constant chosen on a validation split among
45 log-spaced values from 1e-5 to 1e5, then the model refit on train + validation and scored on test.
"""

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

L2_GRID = np.logspace(-5, 5, 45)  # the regularisation constants; scikit-learn's C is 1 / L2
VALIDATION_FRACTION = 0.2  # held out of train (class-stratified) when a dataset has no validation split


def split_train_validation(labels, fraction=VALIDATION_FRACTION, seed=0):
  """Index arrays (train, validation), stratified by class and fixed by the seed."""
  indices = np.arange(len(labels))
  return train_test_split(indices, test_size=fraction, random_state=seed, stratify=labels)


def fit(features, labels, l2, max_iter=1000):
  return LogisticRegression(C=1.0 / l2, solver='lbfgs', max_iter=max_iter).fit(features, labels)


def accuracy(model, features, labels):
  return float(np.mean(model.predict(features) == labels) * 100)


def _validation_accuracy(l2, train, validation):
  return accuracy(fit(*train, l2), *validation)


def linear_probe(train_features, train_labels, test_features, test_labels, validation=None, grid=L2_GRID,
                 n_jobs=-1):
  """Selects the L2 constant on `validation` ((features, labels); default a stratified 20 % of train), refits on
  train + validation with it and returns test top-1 (%), the chosen constant and the whole validation curve."""
  train_features, train_labels = np.asarray(train_features), np.asarray(train_labels)
  if validation is None:
    train_idx, val_idx = split_train_validation(train_labels)
    validation = (train_features[val_idx], train_labels[val_idx])
    train = (train_features[train_idx], train_labels[train_idx])
  else:
    train = (train_features, train_labels)
  scores = joblib.Parallel(n_jobs=n_jobs)(joblib.delayed(_validation_accuracy)(l2, train, validation) for l2 in grid)
  best = int(np.argmax(scores))  # the first (strongest regularisation) among ties
  model = fit(np.concatenate([train[0], validation[0]]), np.concatenate([train[1], validation[1]]), grid[best])
  return {'top1': accuracy(model, np.asarray(test_features), np.asarray(test_labels)), 'l2': float(grid[best]),
          'validation_top1': float(scores[best]),
          'validation_curve': [[float(l2), float(s)] for l2, s in zip(grid, scores)]}
