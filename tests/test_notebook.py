"""The Colab notebook runs top to bottom on CPU (nbclient, a real kernel) with its parameters switched to the
embedded dataset and two training steps: train, live plot, views, linear probe, export and the torchvision check."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'notebooks', 'knn_moco_colab.ipynb')


@pytest.mark.heavy(85)  # seconds on 2 cores, for the order of tests/conftest.py
def test_colab_notebook_runs_on_cpu(tmp_path, monkeypatch):
  pytest.importorskip('torchvision')  # the notebook ends by checking its export against torchvision
  nbclient, nbformat = pytest.importorskip('nbclient'), pytest.importorskip('nbformat')
  nb = nbformat.read(NOTEBOOK, as_version=4)
  parameters = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(parameters) == 1 and 'DATASET' in parameters[0].source
  workdir = str(tmp_path / 'run')
  parameters[0].source += (
    f"\nDATASET, EPOCHS, BATCH_SIZE, MAX_STEPS = 'embedded_subset', 1, 32, 2"
    f'\nKNN_BANK, KNN_QUERIES, PROBE_EXAMPLES, INSTALL, WORKDIR = 100, 100, 100, False, {workdir!r}'
  )
  monkeypatch.delenv('XLA_FLAGS', raising=False)  # one CPU device, as a single-GPU runtime
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': ROOT}}).execute()
  outputs = '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
  assert 'MoCo v2, MoCo CIFAR-10 demo' in outputs and 'linear probe' in outputs
  assert 'torchvision vs JAX features' in outputs
  difference = float(outputs.split('max abs difference ')[1].split()[0])
  assert difference < 1e-3
  assert (tmp_path / 'run' / 'resnet18_torchvision.pth').exists()
