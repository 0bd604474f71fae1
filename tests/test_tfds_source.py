"""The tfds: source on a real (tiny) TFDS dataset prepared in a temporary data dir: nothing is downloaded."""

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import pipeline
from input_pipeline import sources
from input_pipeline import views


class JaxMocoTinyImages(tfds.core.GeneratorBasedBuilder):
  """12 train / 5 test grayscale 20 x 24 images, label = index mod 3, and 4 unlabelled ones (label -1, as STL-10's
  unlabelled split)."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {'image': tfds.features.Image(shape=(20, 24, 1)), 'label': tfds.features.ClassLabel(num_classes=3)}
      )
    )

  def _split_generators(self, dl_manager):
    return {
      'train': self._generate_examples(12),
      'test': self._generate_examples(5),
      'unlabelled': self._generate_examples(4, labelled=False),
    }

  def _generate_examples(self, n, labelled=True):
    for i in range(n):
      yield i, {'image': np.full((20, 24, 1), 10 * i, np.uint8), 'label': i % 3 if labelled else -1}


def test_tfds_source_reads_a_prepared_dataset(tmp_path):
  JaxMocoTinyImages(data_dir=str(tmp_path)).download_and_prepare()
  source = sources.get_source('tfds:jax_moco_tiny_images', data_dir=str(tmp_path))
  assert (source.num_examples, source.num_classes) == (12, 3)
  assert source.class_names == ('0', '1', '2')  # a ClassLabel given only its size names its ids
  unlabelled = sources.get_source('tfds:jax_moco_tiny_images:unlabelled', data_dir=str(tmp_path))
  assert (unlabelled.num_examples, unlabelled.num_classes, unlabelled.class_names) == (4, None, ())
  # eval_dataset='auto' reads the test split from the prepared metadata.
  for split in ('', ':train', ':unlabelled'):
    held_out = sources.held_out_split(f'tfds:jax_moco_tiny_images{split}', str(tmp_path))
    assert held_out == ('tfds:jax_moco_tiny_images:test', '')
  assert sources.held_out_split('tfds:jax_moco_tiny_images:test', str(tmp_path))[0] is None
  spec, why = sources.held_out_split('tfds:mnist', str(tmp_path))  # nothing downloaded
  assert spec is None and why.startswith(f"tfds:mnist is not prepared in '{tmp_path}")
  test = sources.get_source('tfds:jax_moco_tiny_images:test', data_dir=str(tmp_path))
  batches = list(pipeline.eval_dataset(test, 16, 4).as_numpy_iterator())
  images = np.concatenate([b['image'] for b in batches])[np.concatenate([b['mask'] for b in batches])]
  assert images.shape == (5, 16, 16, 3)  # grayscale -> RGB, resized to the eval size
  assert sorted(images[:, 0, 0, 0].tolist()) == [0, 10, 20, 30, 40]
  spec = views.ViewSpec(large_size=16, small_size=8, num_small=1)
  batch = next(pipeline.train_dataset(source, spec, 4, seed=0).as_numpy_iterator())
  assert batch['anchor'].shape == (4, 16, 16, 3) and batch['small'].shape == (4, 1, 8, 8, 3)


class JaxMocoTinyMultiLabel(tfds.core.GeneratorBasedBuilder):
  """VOC-like: variable-size RGB images, a `labels` sequence and `labels_no_difficult` (4 classes)."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    classes = tfds.features.ClassLabel(num_classes=4)
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(None, None, 3)),
          'labels': tfds.features.Sequence(classes),
          'labels_no_difficult': tfds.features.Sequence(classes),
        }
      )
    )

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i in range(6):
      image = np.full((10 + i, 30 - 2 * i, 3), 40 * i, np.uint8)
      yield i, {'image': image, 'labels': [i % 4, (i + 1) % 4], 'labels_no_difficult': [i % 4]}


def test_tfds_multi_label_source_with_variable_sizes(tmp_path):
  JaxMocoTinyMultiLabel(data_dir=str(tmp_path)).download_and_prepare()
  source = sources.get_source('tfds:jax_moco_tiny_multi_label', data_dir=str(tmp_path))
  assert (source.num_examples, source.num_classes, source.multi_label) == (6, 4, True)
  assert sources.held_out_split('tfds:jax_moco_tiny_multi_label', str(tmp_path)) == (
    None,
    'tfds:jax_moco_tiny_multi_label has no test split (it has train)',
  )
  assert len(source.class_names) == 4
  loaded = {int(source.load(i)['image'][0, 0, 0]): source.load(i) for i in range(6)}
  for i in range(6):  # examples may come in any order: identify them by their pixel value
    example = loaded[40 * i]
    assert example['image'].shape == (10 + i, 30 - 2 * i, 3)
    expected = np.zeros(4, np.int32)
    expected[(i + 1) % 4], expected[i % 4] = -1, 1  # present only as difficult: -1 (ignored); present: 1
    np.testing.assert_array_equal(example['label'], expected)
  batches = list(pipeline.eval_dataset(source, 8, 4).as_numpy_iterator())
  labels = np.concatenate([b['label'] for b in batches])[np.concatenate([b['mask'] for b in batches])]
  assert labels.shape == (6, 4) and sorted(labels.sum(1).tolist()) == [0] * 6
