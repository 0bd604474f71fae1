"""The fine-tuned dense protocols (jax_moco.evaluators.finetune, segmentation, depth): the schedules and optimisers
against their definitions, learnable generated tasks far from shuffled controls, exact resumption, refused reruns
and the command line."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from input_pipeline import dense_transforms
from jax_moco import checkpointing
from jax_moco import evaluate
from jax_moco import schedules
from jax_moco import sharding
from jax_moco import state as state_lib
from jax_moco.evaluators import depth as depth_protocol
from jax_moco.evaluators import finetune
from jax_moco.evaluators import finetune_data
from jax_moco.evaluators import segmentation
from jax_moco.evaluators import training_loop
from jax_moco.models import dense_heads
from tests import helpers

COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230]], np.uint8)  # classes 1, 2, 3
DEPTHS = np.array([0.5, 1.0, 1.5])  # the depth (m) of an object of each colour


def scene(rng, size=40):
  """A textured background (class 0) with two shapes (squares or discs) of classes 1-3, each in its colour with
  noise; its mask; and its depth: the background at 2 m, each object at its colour's depth (a crop shows nothing
  of where it lies in the image)."""
  yy, xx = np.mgrid[:size, :size]
  phase = rng.uniform(0, 6, 3)
  image = rng.integers(90, 170, 3) + 25 * np.sin(xx[..., None] / rng.uniform(1.5, 4) + phase)
  image = image + rng.normal(0, 8, (size, size, 3))
  mask = np.zeros((size, size), np.uint8)
  depth = np.full((size, size), 2.0)
  for _ in range(2):
    c, (cy, cx), r = rng.integers(1, 4), rng.integers(8, size - 8, 2), rng.integers(5, 10)
    square = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r)
    inside = square if rng.random() < 0.5 else (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    mask[inside], depth[inside] = c, DEPTHS[c - 1]
    image[inside] = COLOURS[c - 1] + rng.normal(0, 10, (inside.sum(), 3))
  return np.clip(image, 0, 255).astype(np.uint8), mask, depth.astype(np.float32)


def write_voc(root, splits):
  """A VOC-layout folder: {split: [(image, mask), ...]} with ids split_i."""
  for folder in ('JPEGImages', 'SegmentationClass', os.path.join('ImageSets', 'Segmentation')):
    os.makedirs(root / folder, exist_ok=True)
  for split, examples in splits.items():
    ids = [f'{split}_{i}' for i in range(len(examples))]
    (root / 'ImageSets' / 'Segmentation' / f'{split}.txt').write_text('\n'.join(ids) + '\n')
    for name, (image, mask) in zip(ids, examples):
      Image.fromarray(image).save(root / 'JPEGImages' / f'{name}.jpg', quality=95)
      Image.fromarray(mask).save(root / 'SegmentationClass' / f'{name}.png')


def write_nyud_depth(root, splits):
  """A folder in the NYUD_MT layout with depths only: {split: [(image, depth), ...]}."""
  for folder in ('gt_sets', 'images', 'depth'):
    os.makedirs(root / folder, exist_ok=True)
  for split, examples in splits.items():
    ids = [f'{split}_{i}' for i in range(len(examples))]
    (root / 'gt_sets' / f'{split}.txt').write_text('\n'.join(ids) + '\n')
    for name, (image, depth) in zip(ids, examples):
      Image.fromarray(image).save(root / 'images' / f'{name}.jpg', quality=95)
      np.save(root / 'depth' / f'{name}.npy', depth)


def scenes(seed, n):
  rng = np.random.default_rng(seed)
  return [scene(rng) for _ in range(n)]


def test_schedules_are_the_authors_per_epoch_rates():
  """adjust_learning_rate of the authors' code, at the start of each epoch e (from 0): 'step' lr * 0.1 **
  #{m : e > m}, 'poly' lr * (1 - e / E) ** 0.9."""
  voc = finetune.learning_rate(finetune.RECIPES['voc'], steps_per_epoch=3)
  epochs = np.arange(45)
  expected = 0.003 * 0.1 ** np.sum(epochs[:, None] > np.array([30, 40]), axis=1)
  np.testing.assert_allclose([float(voc(3 * e + 2)) for e in epochs], expected, rtol=1e-6)
  np.testing.assert_allclose([float(voc(3 * e)) for e in epochs], expected, rtol=1e-6)
  city = finetune.learning_rate(finetune.RECIPES['cityscapes'], steps_per_epoch=5)
  epochs = np.arange(150)
  np.testing.assert_allclose(
    [float(city(5 * e + 4)) for e in epochs], 1e-4 * (1 - epochs / 150) ** 0.9, rtol=1e-5, atol=1e-12
  )
  lr = schedules.step_decay(1.0, 2, (1, 3), 0.5)
  np.testing.assert_allclose([float(lr(s)) for s in range(8)], [1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25])


def test_adam_weight_decay_is_coupled_as_torch_adams():
  torch = pytest.importorskip('torch')
  recipe = finetune.RECIPES['nyud']
  tx = finetune.optimizer(recipe, steps_per_epoch=100)
  rng = np.random.default_rng(0)
  w, grads = rng.normal(size=5).astype(np.float32), [rng.normal(size=5).astype(np.float32) for _ in range(3)]
  params, state = jnp.asarray(w), tx.init(jnp.asarray(w))
  reference = torch.nn.Parameter(torch.tensor(w))
  adam = torch.optim.Adam([reference], lr=recipe.lr, weight_decay=recipe.weight_decay)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g), state, params)
    params = params + updates
    reference.grad = torch.tensor(g)
    adam.step()
  np.testing.assert_allclose(np.asarray(params), reference.detach().numpy(), rtol=1e-6, atol=1e-8)


@pytest.mark.fast_compile
def test_a_step_on_8_devices_with_synchronised_bn_equals_one_device_on_the_global_batch():
  """The loss is the global batch's mean over labelled pixels and the gradients are summed over the devices, so
  with BN synchronised the step does not depend on the device count."""
  config = helpers.tiny_config()
  recipe = finetune.Recipe('fcn', 2, 1, 8, 'sgd', 0.1, 'step', (), 1e-4, 16)
  task = segmentation.dense_task(type('Set', (), {'num_classes': 4})())
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 16, 16, 3)).astype(np.uint8)
  labels = rng.integers(0, 4, (8, 16, 16)).astype(np.uint8)
  labels[:2, :5] = 255  # devices with fewer labelled pixels weigh less in the mean
  after = []
  for devices, sync in ((jax.devices(), True), (jax.devices()[:1], False)):
    mesh = sharding.create_mesh(devices)
    model = dense_heads.create_dense_model(
      state_lib.create_encoder(config).backbone, recipe.head, 4, recipe.dilation, sync_bn=sync
    )
    variables = dense_heads.init_variables(model, 0)
    tx = finetune.optimizer(recipe, 1)
    state = finetune.FinetuneState(jnp.zeros((), jnp.int32), variables['params'], variables['batch_stats'], None)
    state = jax.device_put(state.replace(opt_state=tx.init(state.params)), sharding.replicated(mesh))
    step = finetune.make_train_step(mesh, model, tx, task, 'imagenet', seed=0)
    state, loss = step(state, *sharding.shard_batch(mesh, (images, labels)))
    after.append((jax.device_get(state.params), jax.device_get(state.batch_stats), float(loss)))
  (params8, stats8, loss8), (params1, stats1, loss1) = after
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5), params8, params1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), stats8, stats1)


SETTINGS = dict(batch_size=8, crop_size=32, lr=0.1)  # BN over the global batch by default
# The learning tests train on 16 scenes, each listed REPEATS times: 5 epochs of 8 steps see each scene as often as 20
# epochs of 2 would, with a quarter of the checkpoints (one an epoch, a large share of a tiny fine-tuning's time).
REPEATS = 4


@pytest.mark.fast_compile
@pytest.mark.heavy(40)  # four fine-tunings: the task, a shuffled control, an interrupted run and its resumption
def test_segmentation_learns_resumes_exactly_and_refuses_other_settings(tmp_path, monkeypatch):
  train, val = [(i, m) for i, m, _ in scenes(0, 16)], [(i, m) for i, m, _ in scenes(1, 8)]
  write_voc(tmp_path / 'voc', {'train': train * REPEATS, 'val': val})
  shuffled = [(i, np.random.default_rng(k).permutation(4).astype(np.uint8)[m]) for k, (i, m) in enumerate(train)]
  write_voc(tmp_path / 'shuffled', {'train': shuffled * REPEATS, 'val': val})
  workdir = helpers.save_tiny_run(tmp_path / 'run')
  learnt = evaluate.evaluate(workdir, 'segmentation', dataset=f'voc:{tmp_path / "voc"}', epochs=5, **SETTINGS)
  control = evaluate.evaluate(
    helpers.save_tiny_run(tmp_path / 'control'),
    'segmentation',
    dataset=f'voc:{tmp_path / "shuffled"}',
    epochs=5,
    **SETTINGS,
  )
  assert learnt['miou'] > 55 and control['miou'] < 35, (learnt['miou'], control['miou'])
  assert learnt['iou_per_class'][4:] == [None] * 17 and learnt['num_train'] == 64 and learnt['num_test'] == 8
  assert learnt['test_dataset'] == f'voc:{tmp_path / "voc"}:val' and learnt['milestones'] == [30, 40]
  assert json.load(open(tmp_path / 'run' / 'eval' / 'step_3_online' / 'segmentation_voc.json')) == learnt
  assert 'mIoU' in evaluate.format_table(learnt)

  # Stopped in epoch 2 (after the epoch-1 checkpoint), then rerun: the same result as a run never stopped. 16 images:
  # 2 steps an epoch.
  write_voc(tmp_path / 'small', {'train': train, 'val': val})
  short = dict(dataset=f'voc:{tmp_path / "small"}', epochs=3, **SETTINGS)
  straight = evaluate.evaluate(helpers.save_tiny_run(tmp_path / 'straight'), 'segmentation', **short)
  resumed_dir = helpers.save_tiny_run(tmp_path / 'resumed')
  batches = finetune_data.TrainData.batches

  class Preempted(Exception):
    pass

  def preempted_in_epoch_two(self, start, stop):
    for step, batch in enumerate(batches(self, start, stop), start):
      if step == 3:
        raise Preempted
      yield batch

  with monkeypatch.context() as patch:
    patch.setattr(finetune_data.TrainData, 'batches', preempted_in_epoch_two)
    with pytest.raises(Preempted):
      evaluate.evaluate(resumed_dir, 'segmentation', **short)
  run_dir = tmp_path / 'resumed' / 'eval' / 'step_3_online' / 'segmentation_voc' / 'run_0'
  assert sorted(n for n in os.listdir(run_dir) if n.isdigit()) == ['2']
  resumed = evaluate.evaluate(resumed_dir, 'segmentation', **short)
  assert resumed['per_run'] == straight['per_run']
  with pytest.raises(checkpointing.ConfigMismatchError, match=r'lr: checkpoint 0\.1 vs now 0\.2'):
    evaluate.evaluate(resumed_dir, 'segmentation', **{**short, 'lr': 0.2})
  with pytest.raises(checkpointing.ConfigMismatchError, match=r'crop_size: checkpoint 32 vs now 24'):
    evaluate.evaluate(resumed_dir, 'segmentation', **{**short, 'crop_size': 24})


@pytest.mark.fast_compile
@pytest.mark.heavy(40)  # two fine-tunings: the task and a control
def test_depth_learns_far_from_shuffled_depths(tmp_path, monkeypatch):
  # No rescaling: the scale augmentation divides a depth by its ratio (dense_transforms), which nothing in these
  # scenes shows (a real photograph's texture and object sizes do), so only its mean would be learnable.
  unscaled = functools.partial(dense_transforms.train_example, scale_range=(1.0, 1.0))
  monkeypatch.setattr(finetune_data.dense_transforms, 'train_example', unscaled)
  train, val = [(i, d) for i, _, d in scenes(2, 16)], [(i, d) for i, _, d in scenes(3, 8)]
  write_nyud_depth(tmp_path / 'nyud', {'train': train * REPEATS, 'val': val})
  shuffled = [(i, train[(k + 5) % 16][1]) for k, (i, _) in enumerate(train)]
  write_nyud_depth(tmp_path / 'shuffled', {'train': shuffled * REPEATS, 'val': val})
  workdir = helpers.save_tiny_run(tmp_path / 'run')
  settings = dict(epochs=5, batch_size=8, crop_size=32, lr=3e-3)
  learnt = evaluate.evaluate(workdir, 'depth', dataset=f'nyud:{tmp_path / "nyud"}', **settings)
  control_dir = helpers.save_tiny_run(tmp_path / 'control')
  control = evaluate.evaluate(control_dir, 'depth', dataset=f'nyud:{tmp_path / "shuffled"}', **settings)
  constant = np.concatenate([d.ravel() for _, d in val]).std()  # the rmse of predicting the mean depth
  assert learnt['rmse'] < 0.75 * control['rmse'] and learnt['rmse'] < 0.9 * constant, (learnt['rmse'], control['rmse'])
  assert learnt['head'] == 'deeplabv3' and learnt['optimizer'] == 'adam' and learnt['schedule'] == 'poly'
  assert 'rmse' in evaluate.format_table(learnt)


class RecordedLoss:
  """A step's loss that records its step when the loop waits for it."""

  def __init__(self, step, waited):
    self.step, self.waited = step, waited

  def block_until_ready(self):
    self.waited.append(self.step)
    return self

  def __float__(self):
    return 0.0


def test_the_loop_waits_for_step_s_minus_1_before_running_step_s_plus_1(tmp_path):
  # JAX dispatches a step without waiting for it; unbounded, the loop would queue an epoch of steps and each save
  # (which needs the state) would wait for that backlog, while the bar counted steps not yet computed.
  waited, waited_before = [], {}

  def step_fn(state, batch):
    step = int(state.step) + 1
    waited_before[step] = list(waited)
    return state.replace(step=state.step + 1), RecordedLoss(step, waited)

  zeros = jnp.zeros(2)
  state = finetune.FinetuneState(jnp.zeros((), jnp.int32), zeros, zeros, zeros)
  training_loop.train(str(tmp_path), {'seed': 0}, state, step_fn, lambda start: iter(range(start, 6)), 3, 6, 'test')
  assert waited_before == {s: list(range(1, s - 1)) for s in range(1, 7)}


def test_refusals(tmp_path):
  workdir = helpers.save_tiny_run(tmp_path / 'run')
  with pytest.raises(ValueError, match='needs --dataset=voc:PATH, cityscapes:PATH or nyud:PATH'):
    evaluate.evaluate(workdir, 'segmentation')
  with pytest.raises(ValueError, match='reads voc:PATH, cityscapes:PATH, nyud:PATH'):
    evaluate.evaluate(workdir, 'segmentation', dataset=f'davis:{tmp_path}')
  with pytest.raises(ValueError, match='protocol=depth needs --dataset=nyud:PATH'):
    evaluate.evaluate(workdir, 'depth', dataset=f'voc:{tmp_path}')
  write_voc(tmp_path / 'voc', {'train': [(i, m) for i, m, _ in scenes(0, 2)], 'val': []})
  with pytest.raises(ValueError, match='scores whole test images at their own size'):
    evaluate.evaluate(workdir, 'segmentation', dataset=f'voc:{tmp_path / "voc"}', image_size=32)
  with pytest.raises(ValueError, match='fewer than batch_size=16'):
    evaluate.evaluate(workdir, 'segmentation', dataset=f'voc:{tmp_path / "voc"}')
  with pytest.raises(ValueError, match='kmeans_k: not an option of protocol=segmentation'):
    evaluate.evaluate(workdir, 'segmentation', dataset=f'voc:{tmp_path / "voc"}', kmeans_k=3)


@pytest.mark.heavy(25)
def test_the_command_line(tmp_path):
  write_voc(
    tmp_path / 'voc', {'train': [(i, m) for i, m, _ in scenes(0, 8)], 'val': [(i, m) for i, m, _ in scenes(1, 3)]}
  )
  workdir = helpers.save_tiny_run(tmp_path / 'run')
  result = helpers.run_quietly(
    [
      '-m',
      'jax_moco.evaluate',
      f'--workdir={workdir}',
      '--protocol=segmentation',
      f'--dataset=voc:{tmp_path / "voc"}',
      '--epochs=1',
      '--batch_size=8',
      '--crop_size=32',
      '--runs=2',
    ]
  )
  assert 'fine-tuned segmentation (fcn head, 1 epochs, batch 8, sgd lr 0.003' in result.stdout
  assert f'voc:{tmp_path / "voc"}:train (8 images, at their own size)' in result.stdout
  saved = json.load(open(tmp_path / 'run' / 'eval' / 'step_3_online' / 'segmentation_voc.json'))
  assert saved['num_test'] == 3 and saved['runs'] == 2 and [r['miou'] for r in saved['per_run']] != [saved['miou']] * 2
  assert saved['miou'] == pytest.approx(np.mean([r['miou'] for r in saved['per_run']]))
  assert saved['miou_std'] == pytest.approx(np.std([r['miou'] for r in saved['per_run']], ddof=1))
  assert sorted(os.listdir(tmp_path / 'run' / 'eval' / 'step_3_online' / 'segmentation_voc')) == ['run_0', 'run_1']


def test_runs_are_summarised_by_their_mean_spread_and_each_run():
  runs = [{'miou': 60.0, 'iou_per_class': [80.0, None, 40.0]}, {'miou': 70.0, 'iou_per_class': [90.0, 10.0, 50.0]}]
  summary = finetune.summary(runs, 'miou')
  assert summary['miou'] == 65.0 and summary['miou_std'] == pytest.approx(np.std([60, 70], ddof=1))
  assert summary['iou_per_class'] == [85.0, None, 45.0] and summary['runs'] == 2 and summary['per_run'] == runs
  assert finetune.summary(runs[:1], 'miou')['miou_std'] == 0.0


def test_each_kind_opens_its_train_and_val_splits(tmp_path):
  ((image, mask, depth),) = scenes(0, 1)
  write_voc(tmp_path / 'voc', {'train': [(image, mask)], 'trainaug': [(image, mask)] * 2, 'val': [(image, mask)]})
  train, test = segmentation.open_datasets(None, f'voc:{tmp_path / "voc"}')
  assert (train.name, train.num_examples) == (f'voc:{tmp_path / "voc"}:trainaug', 2)  # A.3's train_aug
  assert test.name == f'voc:{tmp_path / "voc"}:val'
  assert segmentation.open_datasets(None, f'voc:{tmp_path / "voc"}:train')[0].num_examples == 1
  for split in ('train', 'val'):
    for folder, suffix, array in (('leftImg8bit', 'leftImg8bit', image), ('gtFine', 'gtFine_labelIds', mask + 7)):
      os.makedirs(tmp_path / 'city' / folder / split / 'aachen', exist_ok=True)
      Image.fromarray(array).save(tmp_path / 'city' / folder / split / 'aachen' / f'aachen_0_{suffix}.png')
  train, test = segmentation.open_datasets(None, f'cityscapes:{tmp_path / "city"}')
  assert (train.name, test.name, train.num_classes) == (
    f'cityscapes:{tmp_path / "city"}:train',
    f'cityscapes:{tmp_path / "city"}:val',
    19,
  )
  write_nyud_depth(tmp_path / 'nyud', {'train': [(image, depth)], 'val': [(image, depth)]})
  os.makedirs(tmp_path / 'nyud' / 'segmentation')
  for name in ('train_0', 'val_0'):
    Image.fromarray(mask).save(tmp_path / 'nyud' / 'segmentation' / f'{name}.png')
  train, test = segmentation.open_datasets(None, f'nyud:{tmp_path / "nyud"}')
  assert (test.name, train.num_classes, train.target) == (f'nyud:{tmp_path / "nyud"}:val', 40, 'segmentation')
  with pytest.raises(ValueError, match='is not a nyud set like'):
    segmentation.open_datasets(None, f'nyud:{tmp_path / "nyud"}', f'voc:{tmp_path / "voc"}')
  train, test = depth_protocol.open_datasets(None, f'nyud:{tmp_path / "nyud"}')
  assert (train.num_classes, test.target) == (1, 'depth') and np.array_equal(test.load(0)[1], depth)


def test_evaluation_batches_pad_to_a_multiple_of_32_and_fill_the_tail_with_blank_examples():
  rng = np.random.default_rng(0)
  examples = [
    (rng.integers(0, 256, (h, w, 3)).astype(np.uint8), rng.integers(0, 21, (h, w)).astype(np.uint8))
    for h, w in ((30, 40), (50, 20), (10, 10))
  ]
  dataset = type('Set', (), {'load': lambda self, i: examples[i]})()
  fill = finetune_data.image_fill('imagenet')
  batches = list(finetune_data.eval_batches(dataset, 3, 2, fill))
  assert [b[0].shape for b in batches] == [(2, 64, 64, 3), (2, 32, 32, 3)]
  (images, labels), (tail_images, tail_labels) = batches
  for (image, label), padded_image, padded_label in zip(examples, [*images, tail_images[0]], [*labels, tail_labels[0]]):
    h, w = label.shape
    np.testing.assert_array_equal(padded_image[:h, :w], image)
    np.testing.assert_array_equal(padded_label[:h, :w], label)
    assert (padded_label == 255).sum() == padded_label.size - label.size and (padded_image[h:] == fill).all()
  assert (tail_labels[1] == 255).all() and (tail_images[1] == fill).all()  # past the split's end: scores nothing
