"""The NN-precision diagnostic: the share of the mined neighbours whose label is their positive's, from a label queue
that travels beside Q_h / Q_g and never reaches the loss; checkpoints with and without that queue."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_moco import checkpointing
from jax_moco import queues
from jax_moco import sharding
from jax_moco import state as state_lib
from jax_moco.sharding import shard_batch
from tests.helpers import build
from tests.helpers import flat_state
from tests.helpers import real_batches
from tests.helpers import tiny_config

pytestmark = pytest.mark.fast_compile  # compile-bound (tests/conftest.py's fast_compile)


@pytest.fixture(scope='module')
def batches():
  return real_batches(tiny_config(), 2, labels=True)


def numpy_precision(picked, queue_labels, labels):
  """Over the images (`labels` [B]) and the rows `picked` (the same for every view of every image): the share
  whose queue label equals the image's, an unknown label (-1) never equal."""
  rows = queue_labels[picked]
  return np.mean((rows[None, :] == labels[:, None]) & (rows[None, :] >= 0))


@pytest.mark.parametrize(
  'order, features',
  [('loss_then_enqueue', 'backbone'), ('enqueue_then_mine', 'backbone'), ('loss_then_enqueue', 'head')],
)
def test_precision_is_the_share_of_neighbours_of_the_positives_label(batches, order, features):
  """The mined queue (Q_g, or Q_h with nn_features='head') all zeros makes the neighbours known on 8 devices: every
  row ties at similarity 0, and lax.top_k takes tied rows lowest index first, so the paper's order mines rows
  0 .. k-1 of the queue before the enqueue; after it (appendix B's order) this step's anchors, whose non-negative
  backbone features are closer than 0, come first and then rows 0 .. k-B-1. The label queue holds random labels
  and initial entries (-1, counted as wrong neighbours); the labels written are the global batch's, at the
  pointer."""
  B, pointer = 32, 64
  config = tiny_config(**{'moco.nn_order': order, 'moco.nn_topk': B + 8, 'moco.nn_features': features})
  K, k = config.moco.queue_size, config.moco.nn_topk
  mesh, state, step = build(config, labelled=True)
  old_labels = np.random.default_rng(0).integers(-1, 10, K).astype(np.int32)
  mined = 'queue_h' if features == 'head' else 'queue_g'
  state = state.replace(queue_labels=jnp.asarray(old_labels), queue_ptr=jnp.int32(pointer))
  state = jax.device_put(state.replace(**{mined: jnp.zeros_like(getattr(state, mined))}), sharding.replicated(mesh))
  batch = batches[0]
  new_state, metrics = step(state, shard_batch(mesh, batch))
  new_labels = old_labels.copy()
  new_labels[pointer : pointer + B] = batch['label']
  np.testing.assert_array_equal(new_state.queue_labels, new_labels)
  if order == 'enqueue_then_mine':
    assert float(metrics['nn_recent_fraction']) == pytest.approx(
      B / k
    )  # the premise: the batch's B rows all mined first
    expected = numpy_precision(np.r_[pointer : pointer + B, 0 : k - B], new_labels, batch['label'])
  else:
    expected = numpy_precision(np.arange(k), old_labels, batch['label'])
  np.testing.assert_allclose(metrics['nn_precision'], expected, rtol=1e-6)
  assert 0 < expected < 1


@pytest.mark.heavy(30)  # two steps compiled; seconds on 2 cores, for the order of tests/conftest.py
def test_loss_and_gradients_are_bit_identical_with_the_diagnostic_on_and_off(batches):
  """The same state with and without the label queue, the same batches with and without labels: equal losses and
  metrics, and equal states after two steps bit for bit: parameters, BN statistics, queues and the optimiser's
  momentum (after the first step: the gradient plus the weight decay)."""
  config = tiny_config()
  mesh, labelled, step = build(config, labelled=True)
  _, plain, _ = build(config)
  assert plain.queue_labels is None
  on, off = [], []
  for batch in batches:
    labelled, metrics_on = step(labelled, shard_batch(mesh, batch))
    plain, metrics_off = step(plain, shard_batch(mesh, {k: v for k, v in batch.items() if k != 'label'}))
    on.append(jax.device_get(metrics_on))
    off.append(jax.device_get(metrics_off))
    if len(on) == 1:
      np.testing.assert_array_equal(np.asarray(labelled.queue_labels[: config.batch_size]), batch['label'])
  for a, b in zip(on, off):
    assert set(a) - set(b) == {'nn_precision'}
    for name in b:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  with_labels, without = flat_state(labelled), flat_state(plain)
  assert set(with_labels) - set(without) == {'.queue_labels'}
  for path, value in without.items():
    np.testing.assert_array_equal(with_labels[path], value, err_msg=path)


def test_precision_counts_unknown_rows_as_wrong():
  indices = jnp.asarray([[0, 1, 2], [3, 0, 1]])
  queue_labels = jnp.asarray([4, queues.UNKNOWN_LABEL, 4, 7])
  np.testing.assert_allclose(
    queues.label_precision(indices, queue_labels, jnp.asarray([4, queues.UNKNOWN_LABEL])), 2 / 6
  )


def save(directory, config, tree):
  checkpointer = checkpointing.Checkpointer(str(directory), config.to_dict(), 100, 3)
  checkpointer.save(1, tree, force=True)
  checkpointer.close()


def test_checkpoints_without_the_label_queue_restore_with_unknown_labels(tmp_path):
  """A checkpoint written before the label queue existed (no such field) or without it (jax_moco.import_torch's,
  None) restores into a labelled run's state with every row's label unknown; one with it restores it, and
  load_run (evaluation, export) restores each as saved."""
  config = tiny_config()
  replicated = sharding.replicated(sharding.create_mesh())
  fresh = jax.device_put(state_lib.initial_state(config, seed=0, labelled=True), replicated)
  trained = jax.device_put(
    state_lib.initial_state(config, seed=1, labelled=True).replace(
      queue_labels=jnp.arange(config.moco.queue_size, dtype=jnp.int32) % 10
    ),
    replicated,
  )
  old = {f.name: getattr(trained, f.name) for f in dataclasses.fields(trained) if f.name != 'queue_labels'}
  for name, tree in (('old', old), ('imported', trained.replace(queue_labels=None)), ('labelled', trained)):
    save(tmp_path / name / 'checkpoints', config, tree)
    restored = checkpointing.Checkpointer(str(tmp_path / name / 'checkpoints'), config.to_dict(), 100, 3).restore(fresh)
    expected = trained if name == 'labelled' else trained.replace(queue_labels=fresh.queue_labels)
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for path, value in flat_state(expected).items():
      np.testing.assert_array_equal(flat_state(restored)[path], value, err_msg=f'{name}: {path}')
    _, loaded, _ = checkpointing.load_run(str(tmp_path / name))
    assert (loaded.queue_labels is None) == (name != 'labelled')
  np.testing.assert_array_equal(fresh.queue_labels, queues.UNKNOWN_LABEL)
