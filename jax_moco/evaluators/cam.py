"""The `cam` protocol: class activation maps (Zhou et al. 2016, "Learning Deep Features for Discriminative
Localization") of the linear probe's classifier on the frozen backbone, the pictures of Fig. 6 and Fig. S2 of Van
Gansbeke et al. 2021 (there: linear classifiers on ImageNet over two-crop and multi-crop MoCo; the multi-crop model's
maps cover the whole object).

The probe is logistic regression on the globally average-pooled last-stage features, so its logit of class c is
sum_k w_ck mean_xy f_k(x, y) + b_c = mean_xy CAM_c(x, y) + b_c, with CAM_c(x, y) = sum_k w_ck f_k(x, y) on the
last stage's feature maps f [h, w, C] before pooling (the network the probe was fitted on, dilated only where the
run's model is). The classifier is the one the `linear_probe` protocol saved for this train set and size (fitted
here, and saved, when there is none). Each map is upsampled bilinearly to the image, scaled to [0, 1] from its own
minimum to its maximum (as Zhou et al. show them) and laid over the image as a heat map.

The first `cam_images` test images (un-augmented: shorter side resized, centre crop, at the probe's size) go into one
PNG, `cam.png` in the task's directory: columns of images and, for each image, three rows: the image with its true
class, the CAM of the top predicted class, the CAM of the true class (for multi-label data the present class the
classifier scores highest).
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from input_pipeline import pipeline
from jax_moco import evaluators
from jax_moco import sharding
from jax_moco.evaluators import common
from jax_moco.evaluators import features as features_lib
from jax_moco.evaluators import linear_probe
from jax_moco.normalization import normalize

COLUMNS = 8  # images a row of the grid; more images wrap into further groups of three rows
CELL_INCHES, DPI = 1.6, 100  # one picture of the grid: 160 x 160 px
ROWS = ('image', 'top class CAM', 'true class CAM')


def class_activation_maps(feature_maps, weight):
  """CAM_c(x, y) = sum_k weight[c, k] f_k(x, y): feature maps [n, h, w, C] and weight [classes, C] ->
  [n, h, w, classes]."""
  return jnp.einsum('nhwk,ck->nhwc', feature_maps, weight)


def make_cam_fn(mesh, backbone, statistics='imagenet', compiler_options=None):
  """jit'd (variables, weight, bias, uint8 images sharded over the mesh) -> (CAMs [n, h, w, classes], logits
  [n, classes]); the logits are the maps' spatial means plus the bias, the classifier's logits on pooled features."""
  module = backbone.clone(pool=False)

  def cams(variables, weight, bias, images):
    maps = class_activation_maps(module.apply(variables, normalize(images, statistics), train=False), weight)
    return maps, maps.mean(axis=(1, 2)) + bias

  replicated, batch = sharding.REPLICATED, sharding.BATCH
  return sharding.data_parallel_jit(
    cams, mesh, (replicated, replicated, replicated, batch), (batch, batch), compiler_options=compiler_options
  )


def upsample_bilinear(cam, height, width):
  """[h, w] -> [height, width] float32, bilinear (PIL's, pixel centres aligned)."""
  return np.asarray(Image.fromarray(np.asarray(cam, np.float32), mode='F').resize((width, height), Image.BILINEAR))


def unit_range(x):
  """x scaled to [0, 1] from its minimum to its maximum (zeros for a constant map)."""
  low, span = x.min(), x.max() - x.min()
  return (x - low) / span if span > 0 else np.zeros_like(x)


def heat_map(cam, height, width):
  return unit_range(upsample_bilinear(cam, height, width))


def draw_grid(path, images, top_maps, true_maps, titles, columns=COLUMNS):
  """Writes the PNG: images [n, H, W, 3] uint8, the heat maps [n, H, W] in [0, 1] of the top and the true class,
  titles[r][i] the title of row r (ROWS) for image i; returns the path."""
  from matplotlib.figure import Figure  # no pyplot: no global state, no display

  n = len(images)
  cols, groups = min(n, columns), math.ceil(n / columns)
  fig = Figure(figsize=(cols * CELL_INCHES, len(ROWS) * groups * CELL_INCHES), dpi=DPI)
  axes = fig.subplots(len(ROWS) * groups, cols, squeeze=False)
  for ax in axes.flat:
    ax.set_axis_off()
  for i in range(n):
    group, col = divmod(i, columns)
    for r, overlay in enumerate((None, top_maps[i], true_maps[i])):
      ax = axes[len(ROWS) * group + r, col]
      ax.imshow(images[i])
      if overlay is not None:
        ax.imshow(overlay, cmap='jet', alpha=0.5, vmin=0.0, vmax=1.0)
      ax.set_title(titles[r][i], fontsize=7)
  fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.95, wspace=0.05, hspace=0.25)
  fig.savefig(path, dpi=DPI)
  return path


def class_name(names, c):
  if c < 0:
    return 'none'
  return f'{names[c]} ({c})' if c < len(names) else str(c)


def true_classes(labels, logits):
  """The true class per image: the label, or for multi-label targets [n, classes] the present class (target 1)
  scored highest; -1 where none is present."""
  labels = np.asarray(labels)
  if labels.ndim == 1:
    return labels.astype(int)
  present = np.where(labels == 1, logits, -np.inf)
  return np.where(np.isfinite(present).any(axis=1), present.argmax(axis=1), -1)


class Evaluator:
  """Options (evaluators.OPTIONS): `cam_images` test images in the picture; `validation_dataset` and `n_jobs` as for
  linear_probe, whose classifier for the same train set, size and validation set is used."""

  open_datasets = staticmethod(common.labelled_datasets)
  default_image_size = None  # the run's crops.large_size, as the probe

  def __init__(self, task: common.Task, **options):
    o = evaluators.options('cam', **options)
    if task.directory is None:
      raise ValueError('cam writes a picture: the task needs a directory')
    if o.cam_images < 1:
      raise ValueError(f'cam_images={o.cam_images}: show at least one image')
    self.task, self.num_images, self.n_jobs = task, min(o.cam_images, task.test.num_examples), o.n_jobs
    self.validation = linear_probe.open_validation(task, o.validation_dataset)
    f = task.features
    self.cam_fn = make_cam_fn(f.mesh, f.module, f.statistics, f.compiler_options)

  def maps(self, variables, weight, bias):
    """(images [n, S, S, 3], labels, CAMs [n, h, w, classes], logits [n, classes]) of the first test images, on
    every process, in the eval batches' order."""
    f, n = self.task.features, self.num_images
    batch = sharding.multiple_of_devices(min(n, 64), f.mesh)
    ds = pipeline.eval_dataset(self.task.test, f.image_size, batch, jax.process_index(), jax.process_count(), n)
    weight, bias = jax.device_put((jnp.asarray(weight), jnp.asarray(bias)), sharding.replicated(f.mesh))

    def batch_maps(images):
      cams, logits = self.cam_fn(variables, weight, bias, sharding.shard_batch(f.mesh, images))
      return tuple(sharding.all_processes(x) for x in (images, cams, logits))

    (images, cams, logits), labels = features_lib.unmasked(ds.as_numpy_iterator(), batch_maps)
    return images, labels, cams, logits

  def run(self, variables):
    t = self.task
    classifier = linear_probe.classifier(t, variables, self.validation, self.n_jobs)
    images, labels, cams, logits = self.maps(variables, classifier['weight'], classifier['bias'])
    top, true = logits.argmax(axis=1), true_classes(labels, logits)
    size = images.shape[1:3]
    pick = lambda classes: [  # noqa: E731
      heat_map(cams[i, ..., c], *size) if c >= 0 else np.zeros(size) for i, c in enumerate(classes)
    ]
    names = t.test.class_names or t.train.class_names
    titles = [
      [f'true: {class_name(names, c)}' for c in true],
      [f'top: {class_name(names, c)}' for c in top],
      [f'CAM of {class_name(names, c)}' for c in true],
    ]
    path = os.path.join(t.directory, 'cam.png')
    if jax.process_index() == 0:
      os.makedirs(t.directory, exist_ok=True)
      draw_grid(path, images, pick(top), pick(true), titles)
    yield 'picture', path
    yield 'top1_shown', float(np.mean(top == true) * 100)
    yield from dict(predicted=top.tolist(), true=true.tolist(), map_size=list(cams.shape[1:3])).items()
    yield from dict(l2=classifier['l2'], num_train=classifier['num_train'], num_test=len(images)).items()

  @staticmethod
  def describe(result):
    h, w = result['map_size']
    return (
      f"class activation maps (the linear probe's classifier, L2 = {result['l2']:.3g}, on {h} x {w} last-stage maps)",
      f'{result["num_test"]} images, top-1 on them {result["top1_shown"]:.0f} %: {result["picture"]}',
    )
