"""Losses against NumPy written from MoCo's Eq. 1 (He et al. 2020) and the NN loss's Eq. 2 (Van Gansbeke et al.
2021, "Revisiting Contrastive Methods for Unsupervised Learning of Visual Representations"), and against a PyTorch
transcription of the latter's Algorithm 2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_moco import losses
from tests.helpers import loss_atol


def unit(rng, *shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_losses(positives, anchors, queue, pos_feats, queue_g, k, tau):
  """Eq. 1 per positive (p with its own anchor a against the queue) and Eq. 2 as the papers write them."""
  inst, nn_terms, correct = [], [], []
  for p, a, f in zip(positives, anchors, pos_feats):
    l_pos = p @ a
    l_neg = queue @ p
    logits = np.concatenate([[l_pos], l_neg]) / tau
    inst.append(-(logits[0] - np.log(np.sum(np.exp(logits)))))
    correct.append(l_pos > l_neg.max())
    sims = queue_g @ (f / np.linalg.norm(f))
    neighbours = np.argsort(-sims)[:k]
    log_softmax = l_neg / tau - np.log(np.sum(np.exp(l_neg / tau)))
    nn_terms.append(-np.mean(log_softmax[neighbours]))
  return np.mean(inst), np.mean(nn_terms), np.mean(correct)


def torch_algorithm2(anchors, positives, positives_small, queue, queue_g, positives_g, k, t):
  """Algorithm 2 of Van Gansbeke et al. 2021 in PyTorch (B images, N small crops; queue as C x K, as in the
  pseudocode)."""
  import torch

  B, C = anchors.shape
  n_views = 1 + positives_small.shape[1]
  pos = torch.cat([positives[:, None], positives_small], dim=1)  # B x N+1 x C
  l_pos = torch.bmm(pos, anchors.view(B, C, 1))  # B x N+1 x 1
  l_neg = torch.mm(pos.reshape(-1, C), queue).view(B, n_views, -1)  # B x N+1 x K
  logits = torch.cat([l_pos, l_neg], dim=2)
  loss_inst = torch.nn.functional.cross_entropy(
    (logits / t).view(B * n_views, -1), torch.zeros(B * n_views, dtype=torch.long)
  )
  feats = torch.nn.functional.normalize(positives_g, dim=-1)
  indices = torch.topk(torch.mm(feats, queue_g), k, dim=1).indices  # B*(N+1) x k
  log_probs = torch.log_softmax(l_neg.view(B * n_views, -1) / t, dim=1)
  loss_nn = -log_probs.gather(1, indices).mean()  # multi-label CE: mean over the k targets and positives
  return loss_inst.item(), loss_nn.item()


def random_inputs(seed):
  """Unit anchors [B, C], positives [B, N + 1, C] and queues, backbone features [B, N + 1, C_g]."""
  rng = np.random.default_rng(seed)
  B, N, C, Cg, K = 6, 3, 16, 24, 64
  anchors, positives, pos_feats = unit(rng, B, C), unit(rng, B, N + 1, C), rng.normal(size=(B, N + 1, Cg))
  return anchors, positives, pos_feats, unit(rng, K, C), unit(rng, K, Cg)


def our_losses(anchors, positives, pos_feats, queue, queue_g, k, tau):
  """(instance loss, NN loss, accuracy) from jax_moco.losses, every view of a positive with its anchor's key."""
  views, C = positives.shape[1:]
  flat_anchors = np.repeat(anchors, views, axis=0)
  l_pos, l_neg = losses.contrastive_logits(
    jnp.asarray(positives.reshape(-1, C)), jnp.asarray(flat_anchors), jnp.asarray(queue)
  )
  loss_inst, acc = losses.instance_loss(l_pos, l_neg, tau)
  indices = losses.nearest_neighbours(jnp.asarray(pos_feats.reshape(-1, pos_feats.shape[-1])), jnp.asarray(queue_g), k)
  return loss_inst, losses.nn_loss(l_neg, indices, tau), acc


@pytest.mark.parametrize('k,tau', [(1, 0.2), (5, 0.07), (20, 0.5)])
def test_losses_match_numpy(k, tau):
  anchors, positives, pos_feats, queue, queue_g = random_inputs(k)
  loss_inst, loss_nn, acc = our_losses(anchors, positives, pos_feats, queue, queue_g, k, tau)
  C, Cg = positives.shape[-1], pos_feats.shape[-1]
  flat_anchors = np.repeat(anchors, positives.shape[1], axis=0)
  ref_inst, ref_nn, ref_acc = numpy_losses(
    positives.reshape(-1, C), flat_anchors, queue, pos_feats.reshape(-1, Cg), queue_g, k, tau
  )
  atol = loss_atol(tau, C)  # float32 logits over C terms; relative tolerances alone fail for small losses
  np.testing.assert_allclose(loss_inst, ref_inst, rtol=1e-5, atol=atol)
  np.testing.assert_allclose(loss_nn, ref_nn, rtol=1e-5, atol=atol)
  np.testing.assert_allclose(acc, ref_acc)


@pytest.mark.parametrize('k,tau', [(1, 0.2), (5, 0.07), (20, 0.5)])
def test_losses_match_a_pytorch_transcription_of_algorithm_2(k, tau):
  torch = pytest.importorskip('torch')
  anchors, positives, pos_feats, queue, queue_g = random_inputs(k)
  loss_inst, loss_nn, _ = our_losses(anchors, positives, pos_feats, queue, queue_g, k, tau)
  t = lambda x: torch.tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
  torch_inst, torch_nn = torch_algorithm2(
    t(anchors),
    t(positives[:, 0]),
    t(positives[:, 1:]),
    t(queue.T),
    t(queue_g.T),
    t(pos_feats.reshape(-1, pos_feats.shape[-1])),
    k,
    tau,
  )
  atol = loss_atol(tau, positives.shape[-1])
  np.testing.assert_allclose(loss_inst, torch_inst, rtol=1e-5, atol=atol)
  np.testing.assert_allclose(loss_nn, torch_nn, rtol=1e-5, atol=atol)


def test_nn_loss_gradient_matches_finite_differences():
  """The NN loss gradient w.r.t. the positives (neighbour indices fixed, as they carry no gradient)."""
  jax.config.update('jax_enable_x64', True)
  try:
    rng = np.random.default_rng(0)
    positives, queue, feats = unit(rng, 5, 8), unit(rng, 32, 8), rng.normal(size=(5, 12))
    queue_g = unit(rng, 32, 12)
    indices = losses.nearest_neighbours(jnp.asarray(feats), jnp.asarray(queue_g), 4)

    def loss(p):
      return losses.nn_loss(losses.contrastive_logits(p, p, jnp.asarray(queue))[1], indices, 0.2)

    grad = jax.grad(loss)(jnp.asarray(positives))
    eps = 1e-6
    for i, j in [(0, 0), (2, 5), (4, 7)]:
      step = np.zeros_like(positives)
      step[i, j] = eps
      numeric = (loss(jnp.asarray(positives + step)) - loss(jnp.asarray(positives - step))) / (2 * eps)
      np.testing.assert_allclose(grad[i, j], numeric, rtol=1e-6, atol=1e-9)
  finally:
    jax.config.update('jax_enable_x64', False)


def test_no_gradient_through_neighbour_indices_or_queues():
  rng = np.random.default_rng(1)
  feats, queue_g = jnp.asarray(rng.normal(size=(4, 6))), jnp.asarray(unit(rng, 16, 6))
  queue = jnp.asarray(unit(rng, 16, 8))

  def total(feats, queue, queue_g):
    indices = losses.nearest_neighbours(feats, queue_g, 3)
    positives = jnp.tile(feats[:, :1], (1, 8)) / 8.0
    return losses.nn_loss(
      losses.contrastive_logits(positives, positives, jax.lax.stop_gradient(queue))[1], indices, 0.2
    )

  g_feats, g_queue, g_queue_g = jax.grad(total, argnums=(0, 1, 2))(feats, queue, queue_g)
  assert np.all(np.asarray(g_queue) == 0) and np.all(np.asarray(g_queue_g) == 0)
  assert np.any(np.asarray(g_feats) != 0)  # the gradient reaches the positives through l_neg only
