"""What the demo scripts (sweep_demo.py, ablation.py, scene_study.py) share: a config trained once in its own work
directory (read when finished, resumed from its checkpoint when half done), results cached as JSON next to it, and
the Markdown table they print and write."""

import json
import os
import statistics
import time

import jax

from configs import presets
from jax_moco import config_checks
from jax_moco import evaluate
from jax_moco import files


def config(method, overrides, steps=None):
  """The demo config of `method` (a key of presets.METHODS) with dotted `overrides`; `steps`, if given, sets
  num_train_steps. Locked first, so a misspelt field is refused instead of added."""
  c = presets.config(method)
  c.lock()
  presets.override(c, overrides)
  if steps:
    c.num_train_steps = steps
  return c


def train_once(config, workdir):
  """(summary, wall seconds) of `config` trained in `workdir`: a finished run is read, not rerun, and a half-done
  one resumes from its newest checkpoint. A work directory holding another config is refused, naming the fields."""
  _refuse_another_config(config, workdir)
  summary_path = os.path.join(workdir, 'summary.json')
  wall_path = os.path.join(workdir, 'wall_seconds.txt')
  if not _finished(summary_path):
    from jax_moco import train  # here: it imports TensorFlow, which the scripts' main quiets first

    started = time.time()
    train.train_and_evaluate(config, workdir)
    if not _finished(summary_path):  # SIGTERM / Ctrl-C: checkpointed, and the next row must not start
      raise SystemExit(f'{workdir}: stopped before its last step; run the same command again to resume')
    with open(wall_path, 'w') as f:
      f.write(f'{time.time() - started:.0f}\n')
  with open(summary_path) as f, open(wall_path) as w:
    return json.load(f), w.read().strip()


def _finished(summary_path):
  """A stopped run writes its summary too, with fewer steps than it planned."""
  if not os.path.exists(summary_path):
    return False
  with open(summary_path) as f:
    summary = json.load(f)
  return summary['steps'] == summary['total_steps']


def flat_fields(tree, prefix=''):
  """(dotted name, value) of every leaf of a nested dict."""
  for name, value in tree.items():
    if isinstance(value, dict):
      yield from flat_fields(value, f'{prefix}{name}.')
    else:
      yield prefix + name, value


def _refuse_another_config(config, workdir):
  """Compares with the config.json an earlier run wrote (as JSON reads it back: tuples are lists), field by field
  where both have the field: one added to the schema since does not orphan finished runs."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    recorded = dict(flat_fields(json.load(f)))
  resolved = config_checks.resolved(config, jax.device_count()).to_dict()
  expected = dict(flat_fields(json.loads(json.dumps(resolved))))
  differing = sorted(k for k in recorded.keys() & expected.keys() if recorded[k] != expected[k])
  if differing:
    raise SystemExit(
      f'{workdir} holds a run of another config ({", ".join(differing)} differ): choose another --out or remove it'
    )


def train_and_score(out, names, seeds, config_of, score, tabulate):
  """What the study scripts share: trains config_of(name, seed) for every row `name` and seed in
  OUT/<name>_seed<seed> and scores it, score(workdir, config); the untrained network, the same at a seed whatever the
  row, is scored once per seed in the first row's work directories, score(workdir, config, random_init=True). After
  each row the table tabulate(done, random_init) is shown (show_table); returns it. `done` is {row: [run, ...]}, a
  run a dict of seed, workdir, config, batch, summary and scores."""
  done, random_init = {}, []
  for name in names:
    done[name] = []
    for seed in seeds:
      config = config_of(name, seed)
      workdir = os.path.join(out, f'{name}_seed{seed}')
      summary, _ = train_once(config, workdir)
      scores = score(workdir, config)
      done[name].append(
        dict(seed=seed, workdir=workdir, config=config, batch=config.batch_size, summary=summary, scores=scores)
      )
    if not random_init:
      random_init = [score(run['workdir'], run['config'], random_init=True) for run in done[name]]
    text = tabulate(done, random_init)
    show_table(out, text)
  return text


def cached_json(path, compute):
  """compute()'s result dict, read from `path` when an earlier invocation wrote it there (whole or not at all)."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  result = compute()
  with files.atomic_write(path) as f:
    json.dump(result, f, indent=2)
  return result


def cached_evaluation(workdir, protocol, max_examples=None, random_init=False, **keywords):
  """jax_moco.evaluate.evaluate(workdir, protocol, ...)'s result, cached in the run's work directory as
  PROTOCOL[_random_init][_maxN].json; `keywords` are evaluate's (dataset, test_dataset, image_size, the protocol's
  options)."""
  name = protocol + ('_random_init' if random_init else '') + (f'_max{max_examples}' if max_examples else '')
  return cached_json(
    os.path.join(workdir, name + '.json'),
    lambda: evaluate.evaluate(workdir, protocol, max_examples=max_examples, random_init=random_init, **keywords),
  )


def mean_cell(values):
  """The mean over seeds, each seed's value in brackets; 'n/a' where nothing was measured."""
  if not values:
    return 'n/a'
  if len(values) == 1:
    return f'{values[0]:.2f}'
  return f'{statistics.mean(values):.2f} ({" / ".join(f"{v:.2f}" for v in values)})'


def markdown_table(header, rows):
  """A cell's own '|' (a subset's dataset string) is escaped, so it does not end the cell."""
  lines = [header, ['---'] * len(header), *rows]
  return '\n'.join('| ' + ' | '.join(str(cell).replace('|', '\\|') for cell in line) + ' |' for line in lines)


def show_table(out, text):
  """Prints the table and writes it to OUT/table.md (after every row: an interrupted script leaves what it has)."""
  print(text, flush=True)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'table.md'), 'w') as f:
    f.write(text + '\n')
