"""Learning curves of a run as one picture: `curves.png` in the work directory, drawn from its metrics.jsonl (so a
resumed run's picture covers the whole run): losses, instance accuracy, learning rate and, where they were logged,
the mined neighbours' precision (a labelled source with the NN loss) and kNN top-1."""

import json
import os

PANELS = (
  ('loss', ('loss', 'loss_inst', 'loss_nn')),
  ('instance accuracy', ('acc_inst',)),
  ('learning rate', ('lr',)),
  ('NN precision (same label)', ('nn_precision',)),
  ('kNN top-1 (%)', ('knn/top1',)),
)


def read_metrics(path):
  """{name: ([steps], [values])} from a metrics.jsonl (one JSON object with a 'step' per line)."""
  series = {}
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      for name, value in record.items():
        if name != 'step':
          steps, values = series.setdefault(name, ([], []))
          steps.append(record['step'])
          values.append(value)
  return series


def plot(metrics_path, out_path, title=''):
  """Writes the curves to out_path (PNG); returns the panels drawn."""
  import matplotlib

  matplotlib.use('Agg')  # files only: no display on a training machine
  import matplotlib.pyplot as plt

  series = read_metrics(metrics_path) if os.path.exists(metrics_path) else {}
  panels = [(label, [n for n in names if n in series]) for label, names in PANELS]
  panels = [(label, names) for label, names in panels if names]
  fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4 * max(len(panels), 1), 3.2), squeeze=False)
  for ax, (label, names) in zip(axes[0], panels):
    for name in names:
      steps, values = series[name]
      ax.plot(steps, values, marker='o' if len(steps) < 20 else None, markersize=3, label=name)
    ax.set_xlabel('step')
    ax.set_title(label)
    if len(names) > 1:
      ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
  return [label for label, _ in panels]
