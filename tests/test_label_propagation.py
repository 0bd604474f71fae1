"""Video label propagation (Van Gansbeke et al. 2021, "Revisiting Contrastive Methods...", A.6; Jabri et al.'s
protocol) on DAVIS-2017: J and F against a NumPy transcription of the DAVIS toolkit's definitions and on squares
whose boundaries are counted by hand, the bilinear resize against PyTorch's, the propagation against a
transcription of the reference's padded-video loop, moving coloured shapes tracked by an "encoder" that reads
colour (J > 0.9; constant features score 0), the DAVIS folder reader's errors on generated folders (each names the
file), and `jax_moco.evaluate` end to end on a saved tiny run."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from jax_moco import checkpointing
from jax_moco import evaluate
from jax_moco import state as state_lib
from jax_moco.evaluators import davis_metrics
from jax_moco.evaluators import label_propagation as lp
from jax_moco.readers import davis

# Object k of a generated video is painted in COLOURS[k] (0: the background).
COLOURS = np.array([[128, 128, 128], [230, 30, 30], [30, 30, 230]], np.uint8)
CELL = 4  # the colour encoder's stride
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (768 - 9)  # DAVIS's first colours; 255 stays black


# --- J and F ---------------------------------------------------------------------------------------------------


def reference_boundary(mask):
  """The toolkit's boundary, pixel by pixel: a pixel differs from its east, south or south-east neighbour."""
  h, w = mask.shape
  out = np.zeros((h, w), bool)
  for y in range(h):
    for x in range(w):
      out[y, x] = any(
        y + dy < h and x + dx < w and mask[y + dy, x + dx] != mask[y, x] for dy, dx in ((0, 1), (1, 0), (1, 1))
      )
  return out


def reference_f(prediction, truth):
  """(precision, recall, F): the boundaries dilated by a disk of ceil(0.008 * diagonal) pixels, offset by offset."""
  h, w = truth.shape
  r = math.ceil(0.008 * math.sqrt(h * h + w * w))
  pred_b, true_b = reference_boundary(prediction), reference_boundary(truth)

  def dilate(b):
    out = np.zeros_like(b)
    for dy in range(-r, r + 1):
      for dx in range(-r, r + 1):
        if dy * dy + dx * dx <= r * r:
          shifted = np.zeros_like(b)
          shifted[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = b[
            max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
          ]
          out |= shifted
    return out

  n_pred, n_true = pred_b.sum(), true_b.sum()
  if n_pred == 0 or n_true == 0:
    precision, recall = float(n_pred == 0), float(n_true == 0)
  else:
    precision, recall = (pred_b & dilate(true_b)).sum() / n_pred, (true_b & dilate(pred_b)).sum() / n_true
  return precision, recall, 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def blobs(rng, shape, fill=0.4):
  """A random binary mask of a few blobs: smoothed noise thresholded."""
  noise = rng.random((shape[0] // 4 + 2, shape[1] // 4 + 2))
  smooth = np.asarray(Image.fromarray((noise * 255).astype(np.uint8)).resize(shape[::-1], Image.BICUBIC))
  return smooth > np.quantile(smooth, 1 - fill)


def test_j_and_f_match_a_numpy_transcription_of_their_definitions():
  rng = np.random.default_rng(0)
  for shape in ((40, 56), (90, 130), (61, 47)):  # matching radii 1, 2 and 1 pixels
    for _ in range(3):
      truth = blobs(rng, shape)
      prediction = np.roll(truth, rng.integers(-3, 4, 2), axis=(0, 1)) ^ (rng.random(shape) < 0.01)
      expected_j = (prediction & truth).sum() / (prediction | truth).sum()
      assert davis_metrics.region_similarity(prediction, truth) == pytest.approx(expected_j)
      np.testing.assert_array_equal(davis_metrics.boundary(truth), reference_boundary(truth))
      precision, recall, f = reference_f(prediction, truth)
      assert 0 < f < 1
      assert davis_metrics.boundary_precision_recall(prediction, truth) == pytest.approx((precision, recall))
      assert davis_metrics.contour_accuracy(prediction, truth) == pytest.approx(f)
  empty, full = np.zeros((20, 20), bool), np.ones((20, 20), bool)
  some = blobs(rng, (20, 20))
  assert davis_metrics.region_similarity(empty, empty) == 1.0 and davis_metrics.contour_accuracy(empty, empty) == 1.0
  assert davis_metrics.region_similarity(empty, some) == 0.0 and davis_metrics.contour_accuracy(empty, some) == 0.0
  assert davis_metrics.contour_accuracy(some, empty) == 0.0
  assert not davis_metrics.boundary(full).any()  # the image's border is no boundary
  assert davis_metrics.tolerance((480, 854)) == 8 and davis_metrics.tolerance((40, 40)) == 1


def test_f_on_squares_whose_boundaries_are_counted_by_hand():
  # A 10 x 10 square at rows and columns 10..19 of a 40 x 40 image (matching radius ceil(0.008 * 56.6) = 1 px).
  # Its boundary: the outside L above and left of it (row 9, columns 9..19; column 9, rows 10..19: 21 pixels) and
  # the inside L of its bottom row and right column (19 pixels): 4 x 10 = 40.
  truth = np.zeros((40, 40), bool)
  truth[10:20, 10:20] = True
  assert davis_metrics.boundary(truth).sum() == 40
  assert davis_metrics.boundary(truth)[9, 9:20].all() and davis_metrics.boundary(truth)[10:20, 9].all()
  # Shifted right by 1 px, every boundary pixel of either square is within 1 px of the other's: P = R = F = 1.
  assert davis_metrics.boundary_precision_recall(np.roll(truth, 1, axis=1), truth) == (1.0, 1.0)
  # Shifted right by 3 px (columns 13..22), the prediction's 40 boundary pixels within 1 px of the truth's are:
  # top row columns 12..20 (9), left column rows 10, 18, 19 (3), bottom row columns 13..20 (8), right column none:
  # P = 20 / 40. The truth's: top row columns 11..19 (9), left column none, bottom row columns 11..19 (9), right
  # column rows 10 and 18 (2): R = 20 / 40. J = 10 x 7 / (10 x 13).
  shifted = np.roll(truth, 3, axis=1)
  assert davis_metrics.boundary_precision_recall(shifted, truth) == (0.5, 0.5)
  assert davis_metrics.contour_accuracy(shifted, truth) == 0.5
  assert davis_metrics.region_similarity(shifted, truth) == pytest.approx(70 / 130)
  # Per object, the first and last frames are not scored; the recall counts frames over 0.5 (strictly).
  j, f = davis_metrics.video_scores(np.stack([truth, shifted, truth, truth]), np.stack([truth] * 4), [1])[1]
  assert j == pytest.approx([70 / 130, 1.0]) and f == [0.5, 1.0]
  assert davis_metrics.statistics(f) == (0.75, 0.5) and np.isnan(davis_metrics.statistics([])).all()


# --- resizing and propagation ------------------------------------------------------------------------------------


def test_bilinear_resize_matches_pytorch_in_both_directions():
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(1).random((7, 11, 3)).astype(np.float32)
  for height, width in ((30, 45), (3, 4), (7, 5), (16, 11)):
    expected = torch.nn.functional.interpolate(
      torch.from_numpy(x).permute(2, 0, 1)[None], (height, width), mode='bilinear', align_corners=False
    )[0].permute(1, 2, 0)
    np.testing.assert_allclose(lp.bilinear_resize(x, height, width), expected.numpy(), rtol=1e-5, atol=1e-6)
  # The same code on JAX arrays (as the predictions are upsampled).
  np.testing.assert_allclose(lp.bilinear_resize(jnp.asarray(x), height, width), expected.numpy(), atol=1e-6)


def reference_propagation(features, labels, context, topk, temperature, radius):
  """The reference's loop, transcribed: the video is padded in front with `context` copies of its first frame (with
  its labels); frame t's context is padded frame 0 (searched whole) and padded frames t .. t + context - 1 (only
  within `radius`), all the frames' labels after the first replaced by the predictions as they come."""
  t_frames, h, w, _ = features.shape
  padded = np.concatenate([np.repeat(features[:1], context, 0), features]).reshape(t_frames + context, h * w, -1)
  padded_labels = [labels.reshape(h * w, -1)] * (context + 1) + [None] * (t_frames - 1)
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  distance = np.sqrt((yy.reshape(-1, 1) - yy.reshape(1, -1)) ** 2 + (xx.reshape(-1, 1) - xx.reshape(1, -1)) ** 2)
  outside = np.where(distance < radius, 0.0, -1e10)  # [key, query]
  predictions = []
  for t in range(1, t_frames):
    frames = [0] + list(range(t, t + context))
    query = padded[t + context]
    affinity = np.stack([padded[f] @ query.T + (outside if i > 0 else 0) for i, f in enumerate(frames)])
    affinity = affinity.reshape(-1, h * w) / temperature  # [context locations, queries]
    index = np.argsort(-affinity, axis=0)[:topk]
    top = np.take_along_axis(affinity, index, axis=0)
    weights = np.exp(top - top.max(axis=0)) / np.exp(top - top.max(axis=0)).sum(axis=0)
    context_labels = np.concatenate([padded_labels[f] for f in frames])
    predicted = np.einsum('kq,kql->ql', weights, context_labels[index])
    padded_labels[t + context] = predicted
    predictions.append(predicted.reshape(h, w, -1))
  return predictions


def test_propagation_matches_a_transcription_of_the_reference_loop(monkeypatch):
  rng = np.random.default_rng(2)
  features = rng.normal(size=(7, 5, 6, 8)).astype(np.float32)  # 6 frames to propagate: more than the context
  features /= np.linalg.norm(features, axis=-1, keepdims=True)
  labels = rng.dirichlet(np.ones(3), size=(5, 6)).astype(np.float32)
  monkeypatch.setattr(lp, 'MAX_AFFINITIES', 4 * 30 * 7)  # context 3: the 30 locations in chunks of 7 (and 2)
  for context, topk, radius in ((3, 4, 2.5), (0, 10, 12.0)):
    got = [np.asarray(s) for s in lp.propagate(features, labels, lp.Propagation(context, topk, 0.07, radius))]
    expected = reference_propagation(features, labels, context, topk, 0.07, radius)
    assert len(got) == 6
    np.testing.assert_allclose(np.stack(got), np.stack(expected), rtol=1e-4, atol=1e-5)


# --- moving shapes through a DAVIS-layout folder -----------------------------------------------------------------


def moving_shapes(num_frames=8):
  """48 x 64 frames and masks of a red rectangle moving right by a colour cell a frame and a blue one moving left
  as fast and up every other frame, the two never touching."""
  masks = np.zeros((num_frames, 48, 64), np.uint8)
  for t in range(num_frames):
    masks[t, 8:20, 4 + 4 * t : 20 + 4 * t] = 1
    masks[t, 32 - 4 * (t // 2) : 48 - 4 * (t // 2), 44 - 4 * t : 56 - 4 * t] = 2
  masks[0, 44:, :8] = davis.VOID  # void in the first frame: background
  return COLOURS[masks % davis.VOID], masks


def save_mask(path, mask, palette=True):
  """A palette PNG of object ids (the whole palette: PIL stores a short one in fewer bits, losing ids) or a
  grayscale one."""
  png = Image.fromarray(mask, 'P' if palette else 'L')
  if palette:
    png.putpalette(PALETTE)
  png.save(path)


def write_davis(root, videos, splits=None, palette=True):
  """A DAVIS-layout folder: {name: (frames, masks)}, and split lists {split: [names]} (default val: every video)."""
  for name, (frames, masks) in videos.items():
    for folder in ('JPEGImages', 'Annotations'):
      os.makedirs(root / folder / '480p' / name, exist_ok=True)
    for i, (frame, mask) in enumerate(zip(frames, masks)):
      Image.fromarray(frame).save(root / 'JPEGImages' / '480p' / name / f'{i:05d}.jpg', quality=100, subsampling=0)
      save_mask(root / 'Annotations' / '480p' / name / f'{i:05d}.png', mask, palette)
  os.makedirs(root / 'ImageSets' / '2017', exist_ok=True)
  for split, names in (splits or {'val': list(videos)}).items():
    (root / 'ImageSets' / '2017' / f'{split}.txt').write_text(''.join(f'{n}\n' for n in names))


def colour_encoder(images):
  """Dense features that read colour: each CELL x CELL cell's mean colour, one-hot over the nearest of COLOURS."""
  n, h, w, _ = images.shape
  cells = images.reshape(n, h // CELL, CELL, w // CELL, CELL, 3).mean(axis=(2, 4))
  nearest = np.argmin(((cells[..., None, :] - COLOURS.astype(np.float64)) ** 2).sum(-1), axis=-1)
  return np.eye(len(COLOURS), dtype=np.float32)[nearest]


def test_moving_coloured_shapes_are_tracked_and_constant_features_are_not(tmp_path):
  frames, masks = moving_shapes()
  still = (frames[:1].repeat(2, 0), np.ones_like(masks[:2]))  # two frames: none scored
  write_davis(tmp_path / 'davis', {'shapes': (frames, masks), 'still': still})
  dataset = davis.get(f'davis:{tmp_path / "davis"}')
  assert dataset.name.endswith(':val') and dataset.num_examples == 2
  result = lp.label_propagation(colour_encoder, dataset, max_videos=1, save_dir=str(tmp_path / 'out'))
  assert result['num_videos'] == 1 and result['num_objects'] == 2 and result['num_test'] == 8
  assert result['j_mean'] > 90 and result['f_mean'] > 90 and result['j_recall'] == 100
  assert result['jf_mean'] == pytest.approx((result['j_mean'] + result['f_mean']) / 2)
  assert set(result['per_object']) == {'shapes_1', 'shapes_2'}
  # The masks are written as the toolkit reads them: palette PNGs of object ids, the first frame the given one.
  written = [Image.open(tmp_path / 'out' / 'shapes' / f'{i:05d}.png') for i in range(8)]
  assert all(png.mode == 'P' and png.getpalette()[:9] == PALETTE[:9] for png in written)
  np.testing.assert_array_equal(np.asarray(written[0]), masks[0])
  assert set(np.unique(np.asarray(written[5]))) == {0, 1, 2}
  # Frames resized (shorter side 96: twice the feature cells), predictions upsampled to the masks' own size.
  assert lp.resize_frames(frames, 96).shape == (8, 96, 128, 3) and lp.resize_frames(frames, 48) is frames
  assert lp.label_propagation(colour_encoder, dataset, image_size=96, max_videos=1)['j_mean'] > 90
  # Features that say nothing: every location ties, and the objects are lost.
  constant_features = lambda x: np.full(x.shape[:1] + (12, 16, 3), 3**-0.5, np.float32)
  constant = lp.label_propagation(constant_features, dataset)
  assert constant['per_object']['shapes_1']['j'] < 10 and constant['per_object']['still_1'] is None


def test_davis_reader_names_the_file_it_refuses(tmp_path):
  frames, masks = moving_shapes(num_frames=4)
  root = tmp_path / 'davis'
  names = ('good', 'no_first', 'gap', 'extra', 'unknown', 'rgb', 'resized')
  write_davis(root, {n: (frames, masks) for n in names}, {n: [n] for n in names} | {'ghost': ['ghost']})
  os.remove(root / 'Annotations' / '480p' / 'no_first' / '00000.png')
  os.remove(root / 'Annotations' / '480p' / 'gap' / '00002.png')
  annotations = root / 'Annotations' / '480p'
  save_mask(annotations / 'extra' / '00009.png', masks[0])
  save_mask(annotations / 'unknown' / '00003.png', np.full((48, 64), 7, np.uint8))
  Image.fromarray(COLOURS[masks[1]]).save(annotations / 'rgb' / '00001.png')
  save_mask(annotations / 'resized' / '00002.png', masks[2][:8])

  good = davis.get(f'davis:{root}:good').videos[0]
  loaded_frames, loaded_masks, objects = good.load()
  assert loaded_frames.shape == (4, 48, 64, 3) and objects == (1, 2)
  np.testing.assert_array_equal(loaded_masks, masks)
  assert good.frame_names == ('00000', '00001', '00002', '00003') and good.palette()[:9] == PALETTE[:9]
  with pytest.raises(FileNotFoundError, match=r'no_first/00000\.png is missing: the first frame'):
    davis.get(f'davis:{root}:no_first')
  with pytest.raises(ValueError, match=r"'gap': 4 frames in .* but 3 masks in .*: .*gap/00002\.jpg has no mask"):
    davis.get(f'davis:{root}:gap')
  with pytest.raises(ValueError, match=r'5 masks .*extra/00009\.png has no frame'):
    davis.get(f'davis:{root}:extra')
  with pytest.raises(ValueError, match=r'unknown/00003\.png: unknown object ids \[7\] .*has objects \[1, 2\]'):
    davis.get(f'davis:{root}:unknown').videos[0].load()
  with pytest.raises(ValueError, match=r'rgb/00001\.png: a RGB image; DAVIS masks are palette PNGs'):
    davis.get(f'davis:{root}:rgb').videos[0].load()
  with pytest.raises(ValueError, match=r'resized/00002\.png: mask \(8, 64\) and its frame \(48, 64\) differ'):
    davis.get(f'davis:{root}:resized').videos[0].load()
  with pytest.raises(FileNotFoundError, match=r"video 'ghost': the folder .*JPEGImages/480p/ghost is missing"):
    davis.get(f'davis:{root}:ghost')
  with pytest.raises(FileNotFoundError, match=r'ImageSets/2017/test-dev\.txt is missing'):
    davis.get(f'davis:{root}:test-dev')
  with pytest.raises(ValueError, match='expected davis:PATH'):
    davis.get('davis:')


# --- end to end --------------------------------------------------------------------------------------------------


def test_evaluate_a_saved_run_on_generated_videos(make_config, tmp_path):
  config = make_config()
  checkpointer = checkpointing.Checkpointer(str(tmp_path / 'run' / 'checkpoints'), config.to_dict(), 100, 3)
  checkpointer.save(0, state_lib.initial_state(config, 1), force=True)
  checkpointer.close()
  frames, masks = moving_shapes(num_frames=4)
  write_davis(tmp_path / 'davis', {'a': (frames, masks), 'b': (frames[::-1], masks[::-1])})
  run = str(tmp_path / 'run')
  result = evaluate.evaluate(
    run, 'label_propagation', dataset=f'davis:{tmp_path / "davis"}', propagation_context=2, propagation_save_masks=True
  )
  saved = json.load(open(tmp_path / 'run' / 'eval' / 'step_0_online' / 'label_propagation.json'))
  assert saved['jf_mean'] == result['jf_mean'] and 0 <= result['j_mean'] <= 100 and 0 <= result['f_mean'] <= 100
  assert result['num_videos'] == 2 and result['num_objects'] == 4 and result['train_dataset'] is None
  assert (result['context'], result['topk'], result['temperature'], result['radius']) == (2, 10, 0.07, 12.0)
  assert len(os.listdir(os.path.join(result['masks_dir'], 'b'))) == 4
  table = evaluate.format_table(result)
  assert 'label propagation (context 1 + 2 frames, top-10, T=0.07' in table and 'train' not in table
  # The reference's network by default: stage 3 unstrided, stage 4 dropped (stride 8; 2 with the CIFAR stem).
  assert 'stride8_no_stage4, output stride 2)' in table
  other = evaluate.evaluate(
    run, 'label_propagation', dataset=f'davis:{tmp_path / "davis"}', max_examples=1, dense_output='stride16_dilated'
  )
  assert (other['dense_output'], other['output_stride'], other['num_videos']) == ('stride16_dilated', 4, 1)
  with pytest.raises(ValueError, match='label_propagation reads one dataset.*--dataset=davis:PATH'):
    evaluate.evaluate(run, 'label_propagation')
  with pytest.raises(ValueError, match='propagation_topk: not an option of protocol=knn'):
    evaluate.evaluate(run, 'knn', propagation_topk=3)
