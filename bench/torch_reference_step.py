"""A PyTorch reference of the kNN-MoCo training step, written from Algorithm 2 of Van Gansbeke et al. 2021,
"Revisiting Contrastive Methods for Unsupervised Learning of Visual Representations" (and the authors' builder):
online and momentum torchvision ResNets with MoCo's MLP head, the key batch shuffled (shuffling BN on one device),
multi-crop InfoNCE on Q_h, the NN loss with neighbours mined in Q_g, SGD with momentum and coupled weight
decay, then the enqueue. One device (the CPU or a GPU), one BN group; with `amp_dtype` the forward pass runs
under autocast (PyTorch's mixed precision). Used by bench/step.py and by the test that checks it computes our
step's losses on the same weights and inputs.
"""

import torch
from torch.nn import functional as F
import torchvision

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255.0
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255.0


def make_encoder(arch, stem, dim, hidden=0):
  model = torchvision.models.__dict__[arch](num_classes=dim)
  if stem == 'cifar':
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
  features = model.fc.in_features
  hidden = hidden or features
  model.fc = torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, dim))
  return model


def encode(model, images):
  """(pooled backbone features, normalised projections) of NCHW float images."""
  x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
  x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
  features = torch.flatten(model.avgpool(x), 1)
  return features, F.normalize(model.fc(features), dim=1)


class KnnMoco(torch.nn.Module):
  def __init__(
    self,
    arch,
    stem,
    dim,
    queue_size,
    temperature,
    momentum,
    nn_topk,
    nn_weight,
    nn_order,
    channels_last=False,
    amp_dtype=None,
  ):
    super().__init__()
    self.encoder_q = make_encoder(arch, stem, dim)
    self.encoder_k = make_encoder(arch, stem, dim)
    self.encoder_k.load_state_dict(self.encoder_q.state_dict())
    for p in self.encoder_k.parameters():
      p.requires_grad = False
    features = self.encoder_q.fc[0].in_features
    self.register_buffer('queue', F.normalize(torch.randn(queue_size, dim), dim=1))  # rows, as Q_h
    self.register_buffer('queue_backbone', F.normalize(torch.randn(queue_size, features), dim=1))
    self.register_buffer('queue_ptr', torch.zeros(1, dtype=torch.long))
    self.register_buffer('mean', IMAGENET_MEAN, persistent=False)  # buffers: they follow the model's device
    self.register_buffer('std', IMAGENET_STD, persistent=False)
    self.temperature, self.momentum, self.nn_topk, self.nn_weight = temperature, momentum, nn_topk, nn_weight
    self.nn_order, self.amp_dtype = nn_order, amp_dtype
    self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
    self.to(memory_format=self.memory_format)

  def _prepare(self, images_uint8_nhwc):
    x = images_uint8_nhwc.permute(0, 3, 1, 2).float()
    return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)

  @torch.no_grad()
  def _keys(self, anchors):
    for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
      k.mul_(self.momentum).add_(q.detach(), alpha=1.0 - self.momentum)
    shuffle = torch.randperm(anchors.shape[0], device=anchors.device)
    features, keys = encode(self.encoder_k, anchors[shuffle])
    unshuffle = torch.argsort(shuffle)
    return features[unshuffle], keys[unshuffle]

  @torch.no_grad()
  def _enqueue(self, keys, features):
    # Tensor row indices, not a Python int pointer: no graph break (and no stale saved queue) under torch.compile.
    rows = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % self.queue.shape[0]
    # float32 queues, as ours: under autocast the keys and features come in its lower precision.
    self.queue.index_copy_(0, rows, keys.float())
    self.queue_backbone.index_copy_(0, rows, F.normalize(features, dim=1).float())
    self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % self.queue.shape[0])

  def forward(self, batch):
    """Losses of one step (B images, N small crops), and the enqueue; returns a dict of scalar tensors."""
    anchors = self._prepare(batch['anchor'])
    key_features, keys = self._keys(anchors)
    feats, projs = encode(self.encoder_q, self._prepare(batch['positive']))
    b, views = feats.shape[0], 1
    feats, projs = feats[:, None], projs[:, None]
    if 'small' in batch:
      small = batch['small']
      f_s, p_s = encode(self.encoder_q, self._prepare(small.reshape((-1,) + small.shape[2:])))
      views += small.shape[1]
      feats = torch.cat([feats, f_s.view(b, small.shape[1], -1)], dim=1)
      projs = torch.cat([projs, p_s.view(b, small.shape[1], -1)], dim=1)
    queue_before = self.queue.clone()
    l_pos = (projs * keys[:, None]).sum(-1).reshape(-1, 1)
    l_neg = projs.reshape(b * views, -1) @ queue_before.T
    logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature
    loss_inst = F.cross_entropy(logits, torch.zeros(b * views, dtype=torch.long, device=logits.device))
    if self.nn_order == 'loss_then_enqueue':
      mine_in = self.queue_backbone.clone()
      self._enqueue(keys, key_features)
    else:  # appendix B: enqueue first, mine in the updated Q_g
      self._enqueue(keys, key_features)
      mine_in = self.queue_backbone.clone()
    with torch.no_grad():
      neighbours = torch.topk(F.normalize(feats.reshape(b * views, -1), dim=1) @ mine_in.T, self.nn_topk).indices
    loss_nn = -torch.log_softmax(l_neg / self.temperature, dim=1).gather(1, neighbours).mean()
    loss = loss_inst + self.nn_weight * loss_nn
    return {'loss': loss, 'loss_inst': loss_inst, 'loss_nn': loss_nn}


def make_optimizer(model, lr, momentum, weight_decay):
  return torch.optim.SGD(model.encoder_q.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def train_step(model, optimizer, batch):
  with torch.autocast(model.queue.device.type, model.amp_dtype, enabled=model.amp_dtype is not None):
    losses = model(batch)
  optimizer.zero_grad(set_to_none=True)
  losses['loss'].backward()
  optimizer.step()
  return {k: float(v.detach()) for k, v in losses.items()}
