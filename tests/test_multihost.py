"""Multi-host training with real processes: two processes on 127.0.0.1 (4 emulated CPU devices each) train the tiny
config through JAX's distributed runtime and must match one process with 8 devices on the same global batches; then
both fine-tune a segmentation from their checkpoint (each loading its share of every global batch) and must report
what one process with 8 devices reports from the same checkpoint."""

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

from jax_moco import checkpointing
from jax_moco import evaluate
from jax_moco import train
from tests.helpers import flat_state
from tests.helpers import loss_atol
from tests.helpers import multihost_config
from tests.test_finetune import scenes
from tests.test_finetune import write_voc

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'multihost_worker.py')


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_pair(workdir, finetune, timeout=600):
  """Starts both processes (training, then the fine-tuning of evaluate.evaluate(**finetune)), waits for them, and
  kills whatever is left, also when something fails."""
  address = f'127.0.0.1:{free_port()}'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  procs = [
    subprocess.Popen(
      [sys.executable, WORKER, address, '2', str(i), workdir, json.dumps(finetune)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  try:
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f'process {i} failed:\n{out[-4000:]}'
  return outputs


def feed_both_processes_batches(monkeypatch):
  """Makes a single process train on the global batches of the pair: process 0's then process 1's local batch.

  (Every example's views depend only on the seed and its counter, so the pair and a single process see the same
  views; but a global batch of the pair holds process 0's counters 0, 2, 4, ... then process 1's 1, 3, 5, ..., another
  arrangement over the devices and BN groups than a single process's 0, 1, 2, ...)"""
  one_process = train.pipeline.train_dataset

  def global_batches(source, spec, global_batch, seed, start_step=0, process_index=0, process_count=1):
    parts = tuple(one_process(source, spec, global_batch, seed, start_step, i, 2) for i in range(2))
    return tf.data.Dataset.zip(parts).map(lambda a, b: {k: tf.concat([a[k], b[k]], 0) for k in a})

  monkeypatch.setattr(train.pipeline, 'train_dataset', global_batches)


def write_uneven_voc(root):
  """A VOC folder of generated scenes whose splits do not fill the global batch of 8: 17 training images (an epoch
  of 2 steps leaves one out) and 10 test images, the first 4 (process 0's share of the first batch) cropped to 28 x
  30 and so padded to 32 px alone, the others to 64 px, and the last batch of 2 images (process 1's share blank)."""
  val = [(image, mask) for image, mask, _ in scenes(1, 10)]
  val[:4] = [(image[:28, :30], mask[:28, :30]) for image, mask in val[:4]]
  write_voc(root, {'train': [(image, mask) for image, mask, _ in scenes(0, 17)], 'val': val})
  return root


def finetuned_state(workdir, step):
  """Every array of the segmentation fine-tuning's checkpoint at `step` under `workdir`, as NumPy arrays by path."""
  path = os.path.join(workdir, 'eval', 'step_4_online', 'segmentation_voc', 'run_0', str(step), 'state')
  checkpointer = ocp.PyTreeCheckpointer()
  as_numpy = jax.tree.map(
    lambda _: ocp.RestoreArgs(restore_type=np.ndarray), checkpointer.metadata(path).item_metadata.tree
  )
  return flat_state(checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy)))


@pytest.mark.heavy(100)  # seconds on 2 cores, for the order of tests/conftest.py
def test_two_processes_match_one_process_with_eight_devices(tmp_path, monkeypatch):
  assert jax.device_count() == 8
  finetune = dict(dataset=f'voc:{write_uneven_voc(tmp_path / "voc")}', epochs=2, batch_size=8, crop_size=32, lr=0.1)
  run_pair(str(tmp_path / 'pair'), finetune)
  first, second = (dict(np.load(tmp_path / 'pair' / f'process_{i}.npz')) for i in range(2))
  assert first.keys() == second.keys() and len(first) > 20
  for name in first:  # both processes hold identical parameters, EMA, optimiser state, queues and BN statistics
    np.testing.assert_array_equal(first[name], second[name], err_msg=name)

  feed_both_processes_batches(monkeypatch)
  single = train.train_and_evaluate(multihost_config(), str(tmp_path / 'single'))
  leaves = flat_state(single)
  assert leaves.keys() == first.keys()
  for name in first:
    # The same global batches and per-device programs, but sums that add in another order: the cross-process
    # reductions (gloo), and the per-channel sums of split BN's closed-form backward, which XLA:CPU hands to
    # YNNPACK, whose threads split a reduction by what else the process runs (4 local devices here, 8 there; with
    # XLA's own reductions the parameters agreed to 1.4e-6). Four steps amplify that through BN's bias gradients
    # (sums with heavy cancellation): parameters to 1e-4, BN statistics to 3e-4 (seen: 7.3e-5 and 3.0e-4), queues
    # 1.4e-5; SGD's momentum buffers, dominated by the last step's gradient (applied with the cosine schedule's
    # near-zero last rate), to ~1e-2 (seen: 1.3e-2). An example missed or seen twice moves them by 1e-1.
    atol = 3e-2 if name.startswith('.opt_state') else 1e-3
    np.testing.assert_allclose(first[name], leaves[name], rtol=0, atol=atol, err_msg=name)
  pair_losses, single_losses = (
    [m['loss'] for m in map(json.loads, open(tmp_path / d / 'metrics.jsonl')) if 'loss' in m]
    for d in ('pair', 'single')
  )
  config = multihost_config()
  atol = loss_atol(config.moco.temperature, config.model.projection_dim, terms=2)  # the instance and the NN loss
  np.testing.assert_allclose(pair_losses, single_losses, rtol=1e-5, atol=atol)

  pair, alone = (json.load(open(tmp_path / d / 'summary.json')) for d in ('pair', 'single'))
  for key in ('knn_raw_pixels', 'knn_before', 'knn_after'):  # evaluation saw every example exactly once
    assert abs(pair[key]['top1'] - alone[key]['top1']) <= 0.1, key

  _, restored, step = checkpointing.load_run(str(tmp_path / 'pair'))  # the pair's checkpoint, in one process
  assert step == 4
  restored = flat_state(restored)
  assert restored.keys() == first.keys()
  for name in first:
    np.testing.assert_array_equal(restored[name], first[name], err_msg=name)

  # The pair's fine-tuning: both processes got the same result, that of one process fine-tuning from the same
  # checkpoint (copied, so that it does not resume the pair's fine-tuning).
  first, second = (json.load(open(tmp_path / 'pair' / f'segmentation_process_{i}.json')) for i in range(2))
  assert first == second
  shutil.copytree(tmp_path / 'pair' / 'checkpoints', tmp_path / 'copy' / 'checkpoints')
  alone = evaluate.evaluate(str(tmp_path / 'copy'), 'segmentation', **finetune)
  # The same 4 global batches (17 images: each epoch leaves one out), the same programs; only the cross-process
  # reductions add in another order. After the first epoch the states agree to rounding (seen: parameters 7e-8, BN
  # statistics 4e-7); the next epoch's steps at lr 0.1 amplify it in the gradients: parameters to 1e-3 (seen:
  # 1.1e-4) and SGD's momentum to 1e-2 (seen: 1.1e-3). The BN running statistics, averages of what each batch
  # showed, stay at rounding (seen: 8e-7): an example missed or seen twice moves them by far more (seen: 0.11, and
  # parameters by 7e-2, when process 1 loaded process 0's share).
  pair_state, alone_state = (finetuned_state(str(tmp_path / d), 4) for d in ('pair', 'copy'))
  assert pair_state.keys() == alone_state.keys() and len(pair_state) > 20
  for name in pair_state:
    atol = {'step': 0, 'params': 1e-3, 'opt_state': 1e-2, 'batch_stats': 1e-5}[name.split("'")[1]]
    np.testing.assert_allclose(pair_state[name], alone_state[name], rtol=0, atol=atol, err_msg=name)
  # Scores: the trained model predicts background everywhere after 4 steps, so its IoUs (background: the share of
  # labelled pixels it holds) count whether each test example was scored exactly once, padding and blanks nowhere;
  # a pixel whose two best logits are within rounding could flip and change a class's IoU by 100 / its union (%).
  assert (first['step'], first['num_train'], first['num_test'], first['devices']) == (4, 17, 10, 8)
  pair_ious, alone_ious = (np.array([r['miou'], *r['iou_per_class']], float) for r in (first, alone))
  np.testing.assert_allclose(pair_ious, alone_ious, rtol=0, atol=0.1)
