"""The paper's studies in miniature (Van Gansbeke et al. 2021), each row trained at one equal budget (the same steps
and batch) with every seed in its own work directory, then scored by kNN top-1 (the training's monitor, before and
after) and by jax_moco.evaluate's linear probe, both on the run's labelled bank (knn_bank_dataset, else its
dataset); the random-init network is the baseline row, and the instance loss at the end of training is shown (the
IoU cap's Fig. 3). `--study`:
- methods (Sec. 4): MoCo-v2, + constrained multi-crop, + A+, + the NN loss (the full method);
- class_balance (Sec. 3.2): MoCo-v2 on a uniform and on a long-tailed (Pareto alpha = 6) subset of equal size;
- iou_cap (Sec. 3.1, Figs. 2-3): MoCo-v2 with the anchor-positive IoU uncapped, at most 0.5, at most 0.3.

  python scripts/ablation.py --out=runs/ablation [--study=methods] [--steps=N] [--seeds=0,1] [--rows=mocov2,knn]
      [--override=FIELD=VALUE ...] [--probe_max_examples=N]

Resumable (scripts/runs.py): a finished run is read, not rerun, a half-done one resumes from its checkpoint, and
each linear probe is cached in its run's work directory. The table (Markdown) is printed and written to
OUT/table.md.
"""

import ast
import os
import statistics
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jax_moco import console  # noqa: E402
from jax_moco import curves  # noqa: E402
from scripts import runs  # noqa: E402

# A study's rows: {name: (label, configs/<method>.py, dotted overrides of its demo)}.
STUDIES = {
  # Each row adds one thing to the one above.
  'methods': {
    'mocov2': ('MoCo-v2', 'mocov2', {}),
    'multicrop': ('+ constrained multi-crop', 'multicrop', {}),
    'aplus': ('+ A+', 'multicrop', {'crops.aplus': True}),
    'knn': ('+ NN loss (kNN-MoCo)', 'knn', {}),
  },
  # IN-118K vs IN-118K-LT at the embedded set's scale: 1800 images either way, so that the largest Pareto class
  # (995 images) fits in the 1000 a class has. The subsets are drawn with seed 0 whatever the training seed (the
  # spread is training's); the kNN bank and the probe use the whole balanced set, as the paper's evaluations do.
  'class_balance': {
    'uniform': (
      'uniform (180 a class)',
      'mocov2',
      {'dataset': 'embedded|uniform=1800', 'knn_bank_dataset': 'embedded'},
    ),
    'pareto': (
      'long-tailed (Pareto alpha = 6, 995 to 4 a class)',
      'mocov2',
      {'dataset': 'embedded|pareto=6,total=1800', 'knn_bank_dataset': 'embedded'},
    ),
  },
  # The positive redrawn while its IoU with the anchor exceeds the cap (crops.max_iou).
  'iou_cap': {
    'iou_none': ('no IoU cap', 'mocov2', {}),
    'iou_0.5': ('IoU <= 0.5', 'mocov2', {'crops.max_iou': 0.5}),
    'iou_0.3': ('IoU <= 0.3', 'mocov2', {'crops.max_iou': 0.3}),
  },
}
ROWS = STUDIES['methods']
# The rows' instance loss is averaged over the logged steps of the last LATE_FRACTION of training.
LATE_FRACTION = 0.1

HEADER = ['method', 'config', 'kNN top-1 %', 'linear probe %', 'final loss_inst', 'steps', 'batch', 'train s']


def parse_override(text):
  """'FIELD=VALUE' -> (FIELD, VALUE): a Python literal where VALUE is one (0.125, 32, True, (0.1, 0.35)), else the
  string itself (resnet10, embedded_subset:test)."""
  name, sep, value = text.partition('=')
  if not sep or not name:
    raise ValueError(f'--override={text}: use FIELD=VALUE, e.g. model.arch=resnet10')
  try:
    return name, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return name, value


def parse_seeds(values):
  """--seeds (a list of strings) as integers, at least one."""
  try:
    seeds = [int(s) for s in values]
  except ValueError:
    raise ValueError(f'--seeds={",".join(values)}: give integers separated by commas, e.g. 0,1') from None
  if not seeds:
    raise ValueError('--seeds: give at least one')
  return seeds


def linear_probe(workdir, max_examples, dataset=None, random_init=False):
  """The linear_probe protocol as `python -m jax_moco.evaluate --protocol=linear_probe [--dataset=DATASET]` runs it,
  cached in the run's work directory."""
  return runs.cached_evaluation(workdir, 'linear_probe', max_examples, random_init, dataset=dataset)


def final_instance_loss(workdir):
  """The mean loss_inst over the logged steps of the run's last LATE_FRACTION (metrics.jsonl)."""
  steps, values = curves.read_metrics(os.path.join(workdir, 'metrics.jsonl'))['loss_inst']
  late = [v for s, v in zip(steps, values) if s >= (1 - LATE_FRACTION) * steps[-1]]
  return statistics.mean(late)


def _probe_score(result):
  return result[result['metric']]  # top-1, or mAP on multi-label data


def row_config(name, seed, steps=None, overrides=None, study='methods'):
  """The config of row `name` of `study` trained with `seed`: its method's demo, the row's and then the common
  overrides."""
  _, method, row_overrides = STUDIES[study][name]
  return runs.config(method, {**row_overrides, **(overrides or {}), 'seed': seed}, steps)


def run_ablation(out, rows, seeds, steps=None, overrides=None, probe_max_examples=None, study='methods'):
  """Trains and scores every row of `study` with every seed in OUT/<row>_seed<seed>; shows the table after each
  row and returns it."""

  def probe(workdir, config, random_init=False):  # on the run's labelled bank
    return linear_probe(workdir, probe_max_examples, config.knn_bank_dataset or None, random_init)

  return runs.train_and_score(
    out,
    rows,
    seeds,
    lambda name, seed: row_config(name, seed, steps, overrides, study),
    probe,
    lambda done, random_probes: table(done, seeds, random_probes, study),
  )


def table(done, seeds, random_probes, study='methods'):
  """The random-init baseline, then one row per method of `done` ({row: [run, ...]}, a run a dict)."""
  knn_before = {}  # any run's of the seed: a resumed run has none
  for run in (run for row in done.values() for run in row):
    if 'knn_before' in run['summary']:
      knn_before.setdefault(run['seed'], run['summary']['knn_before']['top1'])
  before = runs.mean_cell([knn_before[s] for s in seeds if s in knn_before])
  body = [['random init', '-', before, runs.mean_cell([_probe_score(p) for p in random_probes]), '-', 0, '-', '-']]
  for name, row in done.items():
    label, method, row_overrides = STUDIES[study][name]
    shown = f'configs/{method}.py' + ''.join(f' {k}={v}' for k, v in row_overrides.items())
    after = runs.mean_cell([run['summary']['knn_after']['top1'] for run in row if 'knn_after' in run['summary']])
    probe = runs.mean_cell([_probe_score(run['scores']) for run in row])
    loss = runs.mean_cell([final_instance_loss(run['workdir']) for run in row])
    seconds = statistics.mean(run['summary']['train_seconds'] for run in row)
    body.append([label, shown, after, probe, loss, row[0]['summary']['steps'], row[0]['batch'], f'{seconds:.0f}'])
  summary, probe = next(iter(done.values()))[0]['summary'], random_probes[0]
  which = f'Mean over seeds {", ".join(map(str, seeds))} (each seed in brackets)' if seeds[1:] else f'Seed {seeds[0]}'
  note = (
    f'{which}. kNN: k = {summary["knn_k"]}, T = {summary["knn_temperature"]} (the training monitor); linear probe: '
    f'jax_moco.evaluate --protocol=linear_probe ({probe["num_train"]} train / {probe["num_test"]} test images, '
    f'{probe["metric"]}).'
  )
  return runs.markdown_table(HEADER, body) + '\n\n' + note


def define_flags():
  """Command-line flags, defined only when run as a program (so the module imports cleanly anywhere)."""
  flags.DEFINE_string('out', 'runs/ablation', 'One work directory per row and seed under here.')
  flags.DEFINE_enum('study', 'methods', list(STUDIES), 'Which study: its rows (see the module docstring).')
  flags.DEFINE_integer(
    'steps', None, "Training steps of every run (default: the demo's num_train_steps).", lower_bound=1
  )
  flags.DEFINE_list('seeds', ['0', '1'], 'Seeds; every row trains once with each.')
  flags.DEFINE_list(
    'rows', [], "Rows of the study to run, in order (default: all; methods' are " + ', '.join(ROWS) + ').'
  )
  flags.DEFINE_multi_string(
    'override', [], 'FIELD=VALUE, a dotted config override applied to every row (repeat the flag for several).'
  )
  flags.DEFINE_integer(
    'probe_max_examples',
    None,
    "Linear probe: at most this many images of each set (evaluate's --max_examples; default: all).",
    lower_bound=1,
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  study = STUDIES[f.study]
  rows = f.rows or list(study)
  unknown = [r for r in rows if r not in study]
  if unknown:
    raise app.UsageError(f'unknown rows {unknown} of --study={f.study}; choose from {list(study)}')
  with console.bad_input(ValueError, KeyError, AttributeError, TypeError):
    overrides = dict(parse_override(o) for o in f.override)
    seeds = parse_seeds(f.seeds)
    # A misspelt field or a value of the wrong type, before anything trains.
    row_config(rows[0], seeds[0], f.steps, overrides, f.study)
  console.import_tensorflow(f.verbosity)  # the parameter tables and Orbax's lines only with -v 1
  run_ablation(f.out, rows, seeds, f.steps, overrides, f.probe_max_examples, f.study)


if __name__ == '__main__':
  define_flags()
  app.run(main)
