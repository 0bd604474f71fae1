"""The `label_propagation` protocol: video instance segmentation on DAVIS-2017 by propagating the first frame's
masks through the frozen backbone's dense features, without finetuning (Van Gansbeke et al. 2021, "Revisiting
Contrastive Methods for Unsupervised Learning of Visual Representations", A.6, Table 5, Fig. S3). The protocol is
Jabri et al. 2020, "Space-Time Correspondence as a Contrastive Random Walk" (their label propagation test, whose
code Van Gansbeke et al. ran), scored as the DAVIS toolkit scores the semi-supervised task (`davis_metrics`).

Per video, every frame's dense features (`dense.DenseFeatures`, unit norm per location; by default the reference's
network, `stride8_no_stage4`: stage 3 at stride 1 without dilation, stage 4 dropped) are computed at the frames' own
size (DAVIS 480p; `--image_size` resizes the shorter side instead). The first frame's mask becomes one-hot labels
over its objects and the background (void counted as background), resized to the feature map bilinearly
(half-pixel centres, no antialiasing, as OpenCV's resize). Then frame by frame:

- the context is the first frame plus the previous `context` frames (20); before there are that many, the missing
  ones are copies of the first frame with its labels, as the reference pads a video with its first frame;
- every location of the current frame takes the cosine affinity to every location of the context; for the
  previous frames only locations closer than `radius` feature cells (12; Euclidean, strict; cells of the feature
  map, so 96 px at the reference's stride 8) are candidates, while the first frame is searched whole;
- the `topk` (10) largest affinities over the whole context, divided by `temperature` (0.07), are softmax-weighted,
  and the location's label distribution is the weighted sum of their labels;
- that soft label map joins the context as the frame's labels (soft, as in the reference; never re-normalised or
  made hard); upsampled bilinearly to the frame, its argmax is the predicted object id of every pixel.

J and F are computed per object on frames 1 .. T-2 (the toolkit leaves out the given first frame and the last),
averaged over the frames of an object, then over all objects of the split; J&F is their mean. Reported in %.
`save_masks` writes every predicted mask as a palette PNG (the first frame's palette) under
<eval dir>/label_propagation/<video>/<frame>.png, the first frame being its given mask: the results layout the
official toolkit reads.
"""

import dataclasses
import functools
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from jax_moco import evaluators
from jax_moco.evaluators import common
from jax_moco.evaluators import davis_metrics
from jax_moco.evaluators.dense import DenseFeatures
from jax_moco.readers import davis


@dataclasses.dataclass(frozen=True)
class Propagation:
  """The protocol's parameters, by default the reference's (as the protocol's options, evaluators.OPTIONS)."""

  context: int = 20  # previous frames in the context, besides the first frame
  topk: int = 10  # neighbours a location takes its labels from
  temperature: float = 0.07  # of the softmax over their affinities
  radius: float = 12.0  # in feature cells: how far from a location the previous frames are searched


# Affinities evaluated at once per frame (queries x context locations), bounding the memory of one step.
MAX_AFFINITIES = 1 << 24


def _taps(n_in, n_out):
  src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
  low = np.floor(src).astype(np.int32)
  return low, np.minimum(low + 1, n_in - 1), (src - low).astype(np.float32)


def bilinear_resize(x, height, width):
  """[h, w, ...] -> [height, width, ...] (NumPy or JAX): half-pixel centres, edges clamped, no antialiasing
  (OpenCV's INTER_LINEAR; PyTorch's bilinear with align_corners=False), in both directions."""
  (y0, y1, fy), (x0, x1, fx) = _taps(x.shape[0], height), _taps(x.shape[1], width)
  trailing = (1,) * (x.ndim - 2)
  fy, fx = fy.reshape(-1, 1, *trailing), fx.reshape(1, -1, *trailing)
  rows = x[y0] * (1 - fy) + x[y1] * fy
  return rows[:, x0] * (1 - fx) + rows[:, x1] * fx


def first_labels(mask, objects, height, width):
  """The first frame's soft labels [height, width, 1 + K]: one-hot of background (ids 0 and void) and `objects` at
  the mask's resolution, resized bilinearly to the feature map."""
  onehot = np.stack([~np.isin(mask, objects)] + [mask == obj for obj in objects], axis=-1).astype(np.float32)
  return bilinear_resize(onehot, height, width)


@functools.partial(jax.jit, static_argnames=('topk', 'batch'), donate_argnums=(0, 1))
def _step(ring_features, ring_labels, slot, query, grid, temperature, radius, topk, batch):
  """One frame: its soft labels [n, L] from the context ring (slot 0 the first frame, the others the previous
  frames), and the ring with the frame's features and labels written into `slot`."""
  m, n, _ = ring_features.shape
  keys, key_labels = ring_features.reshape(m * n, -1), ring_labels.reshape(m * n, -1)
  first_frame = (jnp.arange(m) == 0)[:, None]

  def one_location(args):
    feature, position = args
    affinity = jnp.dot(keys, feature, precision=jax.lax.Precision.HIGHEST).reshape(m, n)
    near = jnp.sum((grid - position) ** 2, axis=-1) < radius**2
    affinity = jnp.where(first_frame | near[None], affinity, -1e10)  # the reference's additive -1e10 mask
    top, index = jax.lax.top_k(affinity.reshape(-1) / temperature, topk)
    return jax.nn.softmax(top) @ key_labels[index]

  labels = jax.lax.map(one_location, (query, grid), batch_size=batch)
  if m > 1:
    ring_features = ring_features.at[slot].set(query)
    ring_labels = ring_labels.at[slot].set(labels)
  return ring_features, ring_labels, labels


def propagate(features, labels, settings=Propagation()):
  """Yields the soft labels [h, w, L] (a JAX array) of every frame after the first. `features`: an iterable of the
  frames' feature maps [h, w, C], unit norm, the first frame first; `labels`: the first frame's [h, w, L]."""
  context = settings.context
  frames = iter(features)
  first = jnp.asarray(next(frames), jnp.float32)
  h, w, c = first.shape
  n, m = h * w, 1 + context
  ring_features = jnp.tile(first.reshape(1, n, c), (m, 1, 1))
  ring_labels = jnp.tile(jnp.asarray(labels, jnp.float32).reshape(1, n, -1), (m, 1, 1))
  grid = jnp.stack(jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing='ij'), -1).reshape(n, 2).astype(jnp.float32)
  topk, batch = min(settings.topk, m * n), max(1, min(n, MAX_AFFINITIES // (m * n)))
  for t, frame in enumerate(frames, 1):
    slot = 1 + (t - 1) % context if context else 0
    query = jnp.asarray(frame, jnp.float32).reshape(n, c)
    ring_features, ring_labels, soft = _step(
      ring_features, ring_labels, slot, query, grid, settings.temperature, settings.radius, topk=topk, batch=batch
    )
    yield soft.reshape(h, w, -1)


@functools.partial(jax.jit, static_argnames=('height', 'width'))
def hard_labels(soft, height, width):
  """The label index [height, width] of soft labels [h, w, L] upsampled bilinearly to the frame."""
  return jnp.argmax(bilinear_resize(soft, height, width), axis=-1).astype(jnp.int32)


def resize_frames(frames, image_size):
  """Frames [T, H, W, 3] with the shorter side resized to `image_size` (bilinear); unchanged for None."""
  height, width = frames.shape[1:3]
  if not image_size or min(height, width) == image_size:
    return frames
  scale = image_size / min(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in frames])


def _frame_features(dense, frames, frames_per_call):
  for start in range(0, len(frames), frames_per_call):
    yield from np.asarray(dense(frames[start : start + frames_per_call]))


def segment_video(dense, frames, first_mask, objects, settings=Propagation(), image_size=None, frames_per_call=8):
  """Predicted object ids [T, H, W] uint8 of a video (frames [T, H, W, 3] uint8), the first frame's being its given
  mask; `dense(frames uint8 [n, H', W', 3]) -> [n, h, w, C]` are the dense features."""
  height, width = first_mask.shape
  features = _frame_features(dense, resize_frames(frames, image_size), frames_per_call)
  first = next(features)
  labels = first_labels(first_mask, objects, *first.shape[:2])
  ids = np.array((0,) + tuple(objects), np.uint8)
  predictions = [first_mask]
  for soft in propagate(itertools.chain([first], features), labels, settings):
    predictions.append(ids[np.asarray(hard_labels(soft, height, width))])
  return np.stack(predictions)


def _save(directory, video, predictions):
  """The masks as the first mask is stored: palette PNGs with its palette (padded to 256 colours, since PIL writes
  an image with a shorter palette in fewer bits a pixel, which would lose ids), or grayscale."""
  os.makedirs(os.path.join(directory, video.name), exist_ok=True)
  palette = video.palette()
  for name, ids in zip(video.frame_names, predictions):
    png = Image.fromarray(ids, 'P' if palette else 'L')
    if palette:
      png.putpalette(palette + [0] * (768 - len(palette)))
    png.save(os.path.join(directory, video.name, f'{name}.png'))


def _summary(per_object):
  """The split's scores (%) from {name: (J per frame, F per frame)}, objects without scored frames left out."""
  stats = {name: [davis_metrics.statistics(j), davis_metrics.statistics(f)] for name, (j, f) in per_object.items()}
  scored = [s for s in stats.values() if not np.isnan(s[0][0])]

  def mean(metric, which):
    return float(np.mean([s[metric][which] for s in scored]) * 100) if scored else float('nan')

  result = dict(j_mean=mean(0, 0), f_mean=mean(1, 0), j_recall=mean(0, 1), f_recall=mean(1, 1))
  result['jf_mean'] = (result['j_mean'] + result['f_mean']) / 2
  result['per_object'] = {
    name: None if np.isnan(j[0]) else {'j': j[0] * 100, 'f': f[0] * 100} for name, (j, f) in stats.items()
  }
  return result


def label_propagation(
  dense,
  dataset,
  settings=Propagation(),
  image_size=None,
  max_videos=None,
  save_dir=None,
  frames_per_call=8,
  progress=True,
):
  """J, F and J&F means (%) of label propagation over the videos of `dataset` (a davis.DavisSet; the first
  `max_videos`), with the per-object means, writing the predicted masks under `save_dir` when given."""
  videos = dataset.videos[:max_videos] if max_videos else dataset.videos
  per_object, num_frames = {}, 0
  for video in tqdm(videos, desc='label propagation', unit='video', leave=False, disable=not progress):
    frames, masks, objects = video.load()
    predictions = segment_video(dense, frames, masks[0], objects, settings, image_size, frames_per_call)
    if save_dir:
      _save(save_dir, video, predictions)
    for obj, scores in davis_metrics.video_scores(predictions, masks, objects).items():
      per_object[f'{video.name}_{obj}'] = scores
    num_frames += len(frames)
  result = _summary(per_object)
  result.update(num_videos=len(videos), num_objects=len(per_object), num_test=num_frames)
  return result


class Evaluator:
  """Options (evaluators.OPTIONS): the Propagation settings and `dense_output` (resnet.DENSE_OUTPUTS), by default the
  reference's; `propagation_save_masks` also writes the predicted masks."""

  default_image_size = common.AS_STORED  # DAVIS 480p frames as they are, unless --image_size is given

  def __init__(self, task, **options):
    o = evaluators.options('label_propagation', **options)
    settings = Propagation(o.propagation_context, o.propagation_topk, o.propagation_temperature, o.propagation_radius)
    if settings.context < 0 or settings.topk < 1 or settings.temperature <= 0 or settings.radius < 0:
      raise ValueError(
        'label_propagation: --propagation_context must be >= 0, --propagation_topk >= 1, '
        '--propagation_temperature > 0, --propagation_radius >= 0'
      )
    self.task, self.settings, self.save_masks = task, settings, o.propagation_save_masks
    f = task.features
    self.dense = DenseFeatures(f.mesh, f.module, o.dense_output, f.statistics, compiler_options=f.compiler_options)

  @staticmethod
  def open_datasets(config, dataset=None, test_dataset=None):
    """(train, test): no training set; the DAVIS videos from --dataset=davis:PATH[:SPLIT] (default split val)."""
    del config
    if test_dataset or not dataset:
      raise ValueError(
        'protocol=label_propagation reads one dataset, the DAVIS-2017 videos: --dataset=davis:PATH[:SPLIT] '
        '(SPLIT default val), no --test_dataset'
      )
    return None, davis.get(dataset)

  def run(self, variables):
    t = self.task
    process, processes = jax.process_index(), jax.process_count()

    def dense(frames):  # each process feeds its share; the features come back in order on every process
      return self.dense(variables, np.array_split(frames, processes)[process])

    save_dir = t.directory and self.save_masks and process == 0 and os.path.join(t.directory, 'label_propagation')
    result = label_propagation(
      dense,
      t.test,
      self.settings,
      image_size=t.features.image_size,
      max_videos=t.max_test,
      save_dir=save_dir or None,
      frames_per_call=self.dense.batch_size,
      progress=process == 0,
    )
    yield from result.items()
    yield from dataclasses.asdict(self.settings).items()
    yield 'image_size', t.features.image_size
    yield from dict(dense_output=self.dense.output, output_stride=self.dense.stride).items()
    if save_dir:
      yield 'masks_dir', save_dir

  @staticmethod
  def describe(result):
    size = f'{result["image_size"]} px shorter side' if result['image_size'] else 'frames at their own size'
    return (
      f'label propagation (context 1 + {result["context"]} frames, top-{result["topk"]}, T={result["temperature"]}, '
      f'radius {result["radius"]}; {size}; {result["dense_output"]}, output stride {result["output_stride"]})',
      f'J&F {result["jf_mean"]:.2f}, J {result["j_mean"]:.2f}, F {result["f_mean"]:.2f} '
      f'({result["num_objects"]} objects in {result["num_videos"]} videos)',
    )
