"""The per-device step on 8 emulated devices: shuffling BN, queues, EMA, replication, both enqueue orders."""

import chex
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from jax_moco import queues
from jax_moco import sharding
from jax_moco import shuffle
from jax_moco import state as state_lib
from jax_moco import step as step_lib
from jax_moco.normalization import normalize
from jax_moco.sharding import shard_batch
from tests.helpers import build
from tests.helpers import loss_atol
from tests.helpers import real_batches
from tests.helpers import tiny_config

# Compile-bound: many small programs, each run a few times (tests/conftest.py's fast_compile).
pytestmark = pytest.mark.fast_compile


@pytest.mark.parametrize('groups', [2, 4, 8])
def test_shuffle_puts_about_one_key_in_g_in_its_positives_bn_group(groups):
  """Shuffling BN as MoCo shuffles: a key is encoded in its positive's BN group 1/G of the time, as under any
  uniform permutation (a shift of every slot by a nonzero offset would give 0, and at G = 2 would make every
  key's BN mates exactly the images of its positive's group). Over draws x slots the fraction is within a 4-sigma
  binomial interval of 1/G."""
  size, draws = 16, 400
  batch = groups * size
  group = np.arange(batch) // size
  keys = jax.random.split(jax.random.key(0), draws)
  perms = np.asarray(jax.vmap(lambda k: shuffle.batch_permutation(k, batch))(keys))
  # Slot t of the shuffled batch is encoded in BN group group[t] and holds anchor perm[t], whose positive is
  # normalised in BN group group[perm[t]] of the online encoder.
  same = np.mean(group[perms] == group[None, :])
  p, n = 1 / groups, draws * batch
  assert abs(same - p) < 4 * np.sqrt(p * (1 - p) / n), same
  # Nor does any BN group of keys come wholesale from one group of positives.
  assert min(len(set(group[perm[:size]])) for perm in perms) > 1


def test_unshuffle_restores_the_order_and_every_device_draws_the_same_permutation():
  perm = shuffle.batch_permutation(jax.random.key(3), 40)
  assert sorted(np.asarray(perm)) == list(range(40))
  x = jnp.arange(40) * 10
  np.testing.assert_array_equal(x[perm][shuffle.inverse_permutation(perm)], x)
  mesh = sharding.create_mesh()
  per_device = jax.shard_map(
    lambda key: shuffle.batch_permutation(key[0], 40)[None], mesh=mesh, in_specs=P(), out_specs=P(sharding.AXIS)
  )
  rows = np.asarray(jax.jit(per_device)(jax.random.key(3)[None]))
  assert rows.shape == (8, 40)
  for row in rows:
    np.testing.assert_array_equal(row, np.asarray(perm))


def test_enqueue_fifo_and_wraparound():
  q = jnp.zeros((8, 2))
  ptr = 0
  for i in range(5):
    q = queues.enqueue(q, jnp.full((4, 2), i + 1.0), ptr)
    ptr = queues.advance(ptr, 4, 8)
  # After 5 batches of 4 into 8 slots: slots 0-3 hold batch 5, slots 4-7 batch 4; the pointer is back at 4.
  np.testing.assert_array_equal(q[:, 0], [5, 5, 5, 5, 4, 4, 4, 4])
  assert ptr == 4


@pytest.fixture(scope='module')
def batches():
  return real_batches(tiny_config(), 3)


def run(config, batches, devices=None, keep_states=False):
  """Steps through the batches; returns the final state (or host copies of every state), metrics and the step."""
  mesh, state, fn = build(config, devices)
  metrics, states = [], []
  for b in batches:
    state, m = fn(state, shard_batch(mesh, b))
    metrics.append(jax.device_get(m))
    if keep_states:
      states.append(jax.device_get(state))  # copies: the next step donates the device buffers
  return (states if keep_states else state), metrics, fn


def assert_replicated(tree):
  for leaf in jax.tree.leaves(tree):
    shards = [np.asarray(s.data) for s in leaf.addressable_shards]
    assert len(shards) == 8
    for s in shards[1:]:
      np.testing.assert_array_equal(s, shards[0])


@pytest.fixture
def traced_once(monkeypatch):
  """The per-device step may be traced (so compiled) only once by the steps built in this test."""
  chex.clear_trace_counter()  # chex counts per function, across tests
  monkeypatch.setattr(step_lib, 'train_step', chex.assert_max_traces(step_lib.train_step, n=1))


def test_step_state_replicated_queues_aligned_and_compiled_once(make_config, batches, traced_once):
  config = make_config()
  state, metrics, fn = run(config, batches)  # three steps, one trace
  assert_replicated(state)
  B, K = config.batch_size, config.moco.queue_size
  assert int(state.step) == 3 and int(state.queue_ptr) == 3 * B
  # Rows written so far are unit vectors; rows not yet reached keep their random init (also unit).
  np.testing.assert_allclose(np.linalg.norm(state.queue_h, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(state.queue_g, axis=1), 1.0, rtol=1e-5)
  for m in metrics:
    assert all(np.isfinite(v) for v in m.values())
  np.testing.assert_allclose(metrics[-1]['queue_fill'], 3 * B / K)


def test_queues_written_in_the_same_rows(make_config, batches):
  config = make_config()
  mesh, state0, fn = build(config)
  qh0, qg0 = np.asarray(state0.queue_h), np.asarray(state0.queue_g)
  state1, _ = fn(state0, shard_batch(mesh, batches[0]))
  B = config.batch_size
  changed_h = np.any(np.asarray(state1.queue_h) != qh0, axis=1)
  changed_g = np.any(np.asarray(state1.queue_g) != qg0, axis=1)
  np.testing.assert_array_equal(changed_h, np.arange(len(qh0)) < B)
  np.testing.assert_array_equal(changed_g, changed_h)


def test_ema_uses_current_online_params_and_gets_no_gradient(make_config, batches):
  config = make_config(**{'moco.momentum': 0.9})
  mesh, state, fn = build(config)
  state1, _ = fn(state, shard_batch(mesh, batches[0]))
  params0 = jax.device_get(state1.params)  # online params before step 2
  ema0 = jax.device_get(state1.ema_params)
  state2, _ = fn(state1, shard_batch(mesh, batches[1]))
  expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, ema0, params0)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), jax.device_get(state2.ema_params), expected
  )
  # The online encoder did move (the SGD step happened).
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.any(a != b), jax.device_get(state2.params), params0))
  assert any(moved)


def test_eight_devices_equal_one_device_with_eight_bn_groups(make_config, batches):
  """Split BN on one device and cross-device shuffling BN are the same algorithm: the same losses on every step and
  the same state after the first (later states drift apart at float32 summation-order noise, which SGD through
  low-variance BN channels amplifies, so they are compared through the next step's losses instead)."""
  multi, m_multi, _ = run(make_config(bn_groups=1), batches[:2], keep_states=True)
  single, m_single, _ = run(make_config(bn_groups=8), batches[:2], devices=jax.devices()[:1], keep_states=True)
  for a, b in zip(m_multi, m_single):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)  # noqa: E731
  jax.tree.map(close, multi[0], single[0])


@pytest.mark.heavy(30)  # seconds on 2 cores, for the order of tests/conftest.py
def test_enqueue_then_mine_picks_from_the_current_batch(make_config, batches):
  """Appendix B's order mines in Q_g after this step's enqueue: the positives' own anchors are there, and they are
  their nearest neighbours far more often than chance; the paper's order never sees them at step 0."""
  _, m_first, _ = run(make_config(**{'moco.nn_order': 'enqueue_then_mine', 'moco.nn_topk': 1}), batches[:1])
  _, m_after, _ = run(make_config(**{'moco.nn_order': 'loss_then_enqueue', 'moco.nn_topk': 1}), batches[:1])
  chance = make_config().batch_size / make_config().moco.queue_size
  assert m_first[0]['nn_recent_fraction'] > 0.9
  assert m_after[0]['nn_recent_fraction'] < 0.5 + chance


def test_nn_warmup_switches_the_term_on(make_config, batches):
  config = make_config(**{'moco.nn_warmup_epochs': 0.02})  # 2 steps at 100 steps an epoch
  _, metrics, _ = run(config, batches)
  assert [float(m['nn_weight']) for m in metrics] == pytest.approx([0.0, 0.0, 0.4])


def test_mocov2_has_no_backbone_queue(make_config, batches):
  config = make_config(**{'moco.nn_weight': 0.0, 'crops.num_small': 0})
  state, metrics, _ = run(config, [{k: v for k, v in b.items() if k != 'small'} for b in batches[:1]])
  assert state.queue_g is None and 'loss_nn' not in metrics[0]


def test_head_mining_takes_the_neighbours_in_q_h_by_the_projection(batches):
  """moco.nn_features='head' (Van Gansbeke et al. 2021, Sec. 4.3's alternative): the neighbours of a positive are
  the k rows of Q_h most similar to its projection, so in the paper's order the NN term is minus the mean of the k
  largest log-softmax(l_neg / tau) of each positive. Recomputed from the state before the step; no Q_g is kept."""
  head = {'moco.nn_features': 'head', 'moco.nn_order': 'loss_then_enqueue', 'moco.nn_weight': 0.4, 'moco.nn_topk': 5}
  config, two = two_crop(head, batches[:1])
  # The same batch twice: its own anchors' keys, enqueued by the first step, are the second step's likely neighbours.
  (before, _), metrics, _ = run(config, [two[0], two[0]], devices=jax.devices()[:1], keep_states=True)
  assert before.queue_g is None
  variables = {'params': before.params, 'batch_stats': before.batch_stats}
  images = normalize(two[0]['positive'], config.model.normalization)
  (_, projections), _ = state_lib.create_encoder(config).apply(variables, images, train=True, mutable=['batch_stats'])
  log_probs = jax.nn.log_softmax(np.asarray(projections) @ before.queue_h.T / config.moco.temperature, axis=1)
  expected = -np.mean(np.sort(np.asarray(log_probs), axis=1)[:, -config.moco.nn_topk :])
  atol = loss_atol(config.moco.temperature, config.model.projection_dim)
  np.testing.assert_allclose(metrics[1]['loss_nn'], expected, rtol=1e-5, atol=atol)


def test_bfloat16_compute_keeps_float32_params(make_config, batches):
  state, metrics, _ = run(make_config(**{'model.dtype': 'bfloat16'}), batches[:2])
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.params))
  assert all(np.isfinite(v) for m in metrics for v in m.values())


def test_no_implicit_host_device_transfers_inside_the_loop(make_config, batches, traced_once):
  """Besides the batch (placed explicitly), the step moves nothing between host and device: any implicit
  transfer (a Python scalar argument, a NumPy constant re-uploaded each call) fails under the transfer guard."""
  mesh, state, fn = build(make_config())
  sharded = [shard_batch(mesh, b) for b in batches]  # explicit transfers, allowed
  state, _ = fn(state, sharded[0])  # compile outside the guard
  with jax.transfer_guard('disallow'):
    for b in sharded[1:]:
      state, metrics = fn(state, b)
  assert int(jax.device_get(state.step)) == 3
  with jax.transfer_guard('disallow'), pytest.raises(Exception, match='[Dd]isallowed'):
    jax.jit(lambda x: x + 1)(batches[0]['anchor'])  # the guard is live: a host NumPy array is an implicit transfer


def two_crop(config_overrides, batches):
  """A MoCo-v2 two-crop config and its batches (no small crops)."""
  overrides = {'moco.nn_weight': 0.0, 'crops.num_small': 0, 'crops.aplus': False, **config_overrides}
  return tiny_config(**overrides), [{k: v for k, v in b.items() if k != 'small'} for b in batches]


def test_symmetric_loss_is_both_directions_summed_and_enqueues_both_crops(batches):
  """The MoCo CIFAR-10 Colab's symmetric loss: loss(q = positive, k = anchor) + loss(q = anchor, k = positive), both
  crops' keys enqueued ([positive keys, anchor keys]). On one device with one BN group the shuffle cannot change a
  key (BN over the whole batch), so each direction equals the plain step on the batch or on its swap."""
  config, two = two_crop({'moco.symmetric': True}, batches[:1])
  plain_config, _ = two_crop({}, batches[:1])
  one = jax.devices()[:1]
  batch = two[0]
  swapped = {'anchor': batch['positive'], 'positive': batch['anchor']}
  (sym,), (m_sym,), _ = run(config, [batch], devices=one, keep_states=True)
  (forward,), (m_forward,), _ = run(plain_config, [batch], devices=one, keep_states=True)
  (backward,), (m_backward,), _ = run(plain_config, [swapped], devices=one, keep_states=True)
  atol = loss_atol(config.moco.temperature, config.model.projection_dim, terms=2)
  np.testing.assert_allclose(m_sym['loss_inst'], m_forward['loss_inst'] + m_backward['loss_inst'], rtol=1e-5, atol=atol)
  np.testing.assert_allclose(m_sym['acc_inst'], (m_forward['acc_inst'] + m_backward['acc_inst']) / 2, atol=1e-6)
  B = config.batch_size
  assert int(sym.queue_ptr) == 2 * B and m_sym['queue_fill'] == pytest.approx(2 * B / config.moco.queue_size)
  np.testing.assert_allclose(sym.queue_h[:B], backward.queue_h[:B], atol=1e-5)  # the positives' keys first
  np.testing.assert_allclose(sym.queue_h[B : 2 * B], forward.queue_h[:B], atol=1e-5)


def test_symmetric_loss_on_eight_devices_stays_replicated(batches):
  config, two = two_crop({'moco.symmetric': True}, batches[:2])
  state, metrics, _ = run(config, two)
  assert_replicated(state)
  assert int(state.queue_ptr) == 4 * config.batch_size and all(np.isfinite(list(metrics[-1].values())))
