"""Every command in README.md and docs/*.md can run as written, checked without running anything.

The commands are the fenced `bash` blocks and the inline `python ...` spans. For a program of this repository
(`python -m jax_moco.evaluate`, `python scripts/ablation.py`, ...) the module or script must exist, every flag it is
given must be one the program defines (read from its source: the `flags.DEFINE_*` and `add_argument` calls, also
those of a module whose `define_flags()` it calls, plus absl's own), an enum flag's value must be one it accepts,
`--config=FILE[:PRESET]` must load, and `--config.FIELD=...` must name a field of that config. Anywhere in the pages,
a path under one of the repository's folders must exist and a link must reach its file and heading. Other paths
(DIR, runs/..., data/..., a user's images) are the user's and are not checked.
"""

import ast
import functools
import importlib.util
import os
import re
import shlex

from absl import app
from absl import flags
from absl import logging  # noqa: F401 (defines absl's logging flags, --verbosity / -v)
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md'] + sorted(
  os.path.join('docs', n) for n in os.listdir(os.path.join(ROOT, 'docs')) if n.endswith('.md')
)
# The repository's own folders: a path that starts with one of them names a file that must exist.
REPO_FOLDERS = ('.ci', 'bench', 'configs', 'docs', 'input_pipeline', 'jax_moco', 'notebooks', 'scripts', 'tests')
REPO_PATH = re.compile(r'(?<![\w./-])((?:%s)/[\w./{},-]*(?::\w+)?)' % '|'.join(re.escape(f) for f in REPO_FOLDERS))
FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.S | re.M)
INLINE = re.compile(r'`([^`\n]+)`')
LINK = re.compile(r'\]\(([^)\s]+)\)')
OPERATORS = {'&&', '||', ';', '|', '&'}
# A name in capitals stands for the reader's own (DIR, PATH, FILE[:PRESET], FIELD): not checked.
PLACEHOLDER = re.compile(r'[A-Z][A-Z_\[\]:.]*')


@functools.lru_cache(maxsize=None)
def absl_own_flags():
  """The flags absl itself defines for every program (absl.logging's --verbosity / -v, absl.app's --help ...)."""
  app.define_help_flags()  # what app.run defines before it parses a program's flags
  by_module = flags.FLAGS.flags_by_module_dict()
  defined = [f for module, fs in by_module.items() if module.startswith('absl.') for f in fs]
  return frozenset(name for f in defined for name in (f.name, f.short_name) if name)


class Program:
  """The flags a program of this repository defines, read from its source: the `DEFINE_*` and `add_argument` calls
  with a literal name, also in the modules whose define_flags() it calls, so no TensorFlow or JAX is imported to
  check them. A module that defines flags otherwise (from a table, through a variable) is imported and its
  define_flags() run, the flags it adds to absl's registry read and removed again."""

  def __init__(self, path):
    self.path = path
    self.flags, self.bools, self.enums, self.config_flags = set(), set(), {}, set()
    self.uses_absl = False
    self._read(path)
    if self.uses_absl:
      self.flags |= absl_own_flags()

  def _read(self, path):
    tree = ast.parse(open(path, encoding='utf-8').read(), path)
    called = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr.startswith('DEFINE_') or node.func.attr == 'add_argument':
          called.add(node.func)
          self._define(path, tree, node)
        elif node.func.attr == 'define_flags' and isinstance(node.func.value, ast.Name):
          other = imported_file(tree, node.func.value.id, path)
          assert other, f'{os.path.relpath(path, ROOT)}: cannot find the module {node.func.value.id} of define_flags()'
          self._read(other)
    definers = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith('DEFINE_')]
    if any(n not in called for n in definers):
      self._import_definitions(path)

  def _import_definitions(self, path):
    before = set(flags.FLAGS)
    try:
      module = importlib.import_module(os.path.relpath(path, ROOT)[: -len('.py')].replace(os.sep, '.'))
      getattr(module, 'define_flags', lambda: None)()
      for name in set(flags.FLAGS) - before:
        flag = flags.FLAGS[name]
        self.uses_absl = True
        self.flags.add(name)
        if flag.boolean:
          self.bools.add(name)
        if isinstance(flag.parser, flags.EnumParser):
          self.enums[name] = tuple(flag.parser.enum_values)
    finally:
      for name in set(flags.FLAGS) - before:
        delattr(flags.FLAGS, name)

  def _define(self, path, tree, call):
    names = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if not names:  # a name computed at run time: _import_definitions reads it
      return
    kind = call.func.attr
    if kind == 'add_argument':  # argparse: every option string, '-f' and '--files'
      self.flags |= {n.lstrip('-') for n in names if n.startswith('-')}
      return
    self.uses_absl = True
    self.flags.add(names[0])
    self.flags |= {k.value.value for k in call.keywords if k.arg == 'short_name' and isinstance(k.value, ast.Constant)}
    if kind in ('DEFINE_bool', 'DEFINE_boolean'):
      self.bools.add(names[0])
    elif kind == 'DEFINE_config_file':
      self.config_flags.add(names[0])
    elif kind == 'DEFINE_enum' and len(call.args) > 2:
      values = literal(call.args[2], tree, path)
      if values is not None:
        self.enums[names[0]] = tuple(values)


def imported_file(tree, name, path):
  """The file of the module bound to `name` by an import in `tree`: of this repository, or beside `path` (the bench
  tools import each other by their own folder); None for a module from elsewhere."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      modules = [a.name for a in node.names if (a.asname or a.name) == name]
    elif isinstance(node, ast.ImportFrom) and node.module:
      modules = [f'{node.module}.{a.name}' for a in node.names if (a.asname or a.name) == name]
    else:
      continue
    for module in modules:
      found = module_file(module, (ROOT, os.path.dirname(path)), '__init__.py')
      if found:
        return found
  return None


def module_file(module, folders, package_file):
  """The file of `module` (dotted) under one of `folders`: MODULE.py, or the package's `package_file`."""
  stem = module.replace('.', os.sep)
  for folder in folders:
    for candidate in (stem + '.py', os.path.join(stem, package_file)):
      if os.path.exists(os.path.join(folder, candidate)):
        return os.path.join(folder, candidate)
  return None


def literal(node, tree, path):
  """The value of a literal, or of a module-level constant it names (here or in an imported module); None if
  it is computed."""
  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
    other = imported_file(tree, node.value.id, path)
    return literal(ast.Name(node.attr), ast.parse(open(other, encoding='utf-8').read()), other) if other else None
  if isinstance(node, ast.Name):
    for statement in tree.body:
      if isinstance(statement, ast.Assign) and any(getattr(t, 'id', None) == node.id for t in statement.targets):
        return literal(statement.value, tree, path)
    return None
  try:
    return ast.literal_eval(node)
  except (ValueError, TypeError):
    return None


@functools.lru_cache(maxsize=None)
def program(path):
  return Program(path)


@functools.lru_cache(maxsize=None)
def load_config(spec):
  """`configs/knn.py:coco` loaded as ml_collections' config flag loads it; raises what a user would see."""
  file, _, preset = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_docs_config_' + re.sub(r'\W', '_', spec), file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(preset) if preset else module.get_config()


def config_problems(token, config_flag, config_spec):
  """Problems of `--config=FILE[:PRESET]` or `--config.FIELD=VALUE` (the field of `config_spec`'s config, or of the
  schema when the command names none)."""
  name, _, value = token[2:].partition('=')
  if PLACEHOLDER.fullmatch(value if name == config_flag else name.split('.', 1)[-1]):
    return []
  if name == config_flag:
    if not os.path.exists(os.path.join(ROOT, value.partition(':')[0])):
      return [f'{token}: no such config file']
    try:
      load_config(os.path.join(ROOT, value))
    except Exception as e:  # what --config would raise: an unknown preset, a broken file
      return [f'{token}: the config does not load: {e}']
    return []
  config = load_config(os.path.join(ROOT, config_spec or 'configs/base.py'))
  node = config
  for part in name.split('.')[1:]:
    if not hasattr(node, 'keys') or part not in node:
      return [f'{token}: {name[len(config_flag) + 1 :]} is not a field of the config']
    node = node[part]
  return []


def python_problems(tokens):
  """Problems of `python -m MODULE ...` or `python FILE.py ...` (the tokens after `python`) when it runs a program
  of this repository; none for another (pytest)."""
  if tokens[:1] == ['-m'] and len(tokens) > 1:
    module, args = tokens[1], tokens[2:]
    if module.split('.')[0] not in REPO_FOLDERS:
      return []
    path = module_file(module, (ROOT,), '__main__.py')
    return argument_problems(path, args) if path else [f'python -m {module}: no such module']
  if tokens and tokens[0].endswith('.py'):
    if not os.path.exists(os.path.join(ROOT, tokens[0])):
      return [f'python {tokens[0]}: no such script']
    return argument_problems(os.path.join(ROOT, tokens[0]), tokens[1:])
  return []


def argument_problems(path, args):
  prog = program(path)
  config_spec = next((a.partition('=')[2] for a in args for c in prog.config_flags if a.startswith(f'--{c}=')), None)
  problems = []
  for token in args:
    if token == '--':
      break
    if not token.startswith('-') or re.fullmatch(r'-[\d.]+', token):  # a value, or a negative number
      continue
    name, has_value, value = token.lstrip('-').partition('=')
    config_flag = next((c for c in prog.config_flags if name == c or name.startswith(c + '.')), None)
    if config_flag:
      problems += config_problems(token, config_flag, config_spec)
    elif name not in prog.flags and not (name.startswith('no') and name[2:] in prog.bools):
      problems.append(f'{token}: {os.path.relpath(path, ROOT)} defines no flag {name!r}')
    elif has_value and name in prog.enums and value not in prog.enums[name]:
      problems.append(f'{token}: {value!r} is not one of {", ".join(prog.enums[name])}')
  return problems


def command_problems(command):
  """Every simple command of a shell line (also one quoted inside it, as `--command="..."`) checked."""
  lexer = shlex.shlex(command, posix=True, punctuation_chars=';&|')
  lexer.whitespace_split = True
  try:
    tokens = list(lexer)
  except ValueError as e:  # an unclosed quote
    return [f'not a shell command line: {e}']
  problems, simple = [], []
  for token in tokens + [';']:
    if token not in OPERATORS:
      simple.append(token)
      continue
    for i, word in enumerate(simple):
      if ' ' in word:  # a quoted command line
        problems += command_problems(word.partition('=')[2] if word.startswith('-') else word)
      elif os.path.basename(word) in ('python', 'python3'):
        problems += python_problems(simple[i + 1 :])
        break
      elif word == '-r' and simple[:2] == ['pip', 'install'] and i + 1 < len(simple):
        if not os.path.exists(os.path.join(ROOT, simple[i + 1])):
          problems.append(f'pip install -r {simple[i + 1]}: no such file')
    simple = []
  return problems


def commands(markdown):
  """The page's shell commands: each logical line of its fenced bash blocks, and each inline `python ...` span."""
  found = []
  for language, body in FENCE.findall(markdown):
    if language == 'bash':
      found += [line for line in body.replace('\\\n', ' ').splitlines() if line.strip()]
  prose = FENCE.sub('', markdown)
  found += [span for span in INLINE.findall(prose) if re.match(r'python3? ', span)]
  return found


def prose_config_problems(markdown):
  """`--config...=` in inline spans that are not whole commands, e.g. `--config.batch_size=64`."""
  problems = []
  for span in INLINE.findall(FENCE.sub('', markdown)):
    if re.match(r'python3? ', span):
      continue
    tokens = re.findall(r'--config[\w.]*=\S+', span)
    spec = next((t.partition('=')[2] for t in tokens if t.startswith('--config=')), None)
    for token in tokens:
      problems += config_problems(token.rstrip('.,;)'), 'config', spec)
  return problems


def path_problems(markdown):
  """Paths of the repository named anywhere on the page (`configs/{mocov2,knn}.py` expanded; `FILE.py:PRESET`
  loaded as a config)."""
  problems = []
  for path in set(REPO_PATH.findall(markdown)):
    path = path.rstrip('.,')
    if re.fullmatch(r'configs/\w+\.py:\w+', path):
      problems += config_problems(f'--config={path}', 'config', None)
      continue
    missing = [p for p in expand_braces(path.partition(':')[0]) if not os.path.exists(os.path.join(ROOT, p))]
    problems += [f'{p}: no such file or folder' for p in missing]
  return problems


def expand_braces(path):
  """'configs/{mocov2,knn}.py' -> ['configs/mocov2.py', 'configs/knn.py'] (one pair of braces, as the pages write)."""
  braces = re.search(r'\{([^{}]*)\}', path)
  if not braces:
    return [path]
  return [path[: braces.start()] + part + path[braces.end() :] for part in braces.group(1).split(',')]


def heading_anchors(markdown):
  """GitHub's anchors of the page's headings: lower case, punctuation dropped, spaces to hyphens."""
  headings = re.findall(r'^#+ (.+)$', FENCE.sub('', markdown), re.M)
  return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in headings}


def link_problems(markdown, folder):
  problems = []
  for target in LINK.findall(markdown):
    if re.match(r'\w+://|mailto:', target):
      continue
    file, _, anchor = target.partition('#')
    path = os.path.normpath(os.path.join(ROOT, folder, file)) if file else None
    if path and not os.path.exists(path):
      problems.append(f'link {target}: no such file')
    elif anchor and (path is None or path.endswith('.md')):
      text = open(path, encoding='utf-8').read() if path else markdown
      if anchor not in heading_anchors(text):
        problems.append(f'link {target}: no such heading')
  return problems


def page_problems(markdown, folder=''):
  problems = [f'`{c}`: {p}' for c in commands(markdown) for p in command_problems(c)]
  return problems + prose_config_problems(markdown) + path_problems(markdown) + link_problems(markdown, folder)


def test_every_command_and_path_in_the_pages_exists():
  problems = []
  for page in PAGES:
    text = open(os.path.join(ROOT, page), encoding='utf-8').read()
    problems += [f'{page}: {p}' for p in page_problems(text, os.path.dirname(page))]
  assert not problems, '\n'.join(problems)


def test_the_pages_commands_are_found():
  """The reader sees the commands a newcomer types: the README's, every program's in the docs."""
  every = [c for page in PAGES for c in commands(open(os.path.join(ROOT, page), encoding='utf-8').read())]
  readme = commands(open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read())
  assert any('python -m jax_moco.main --config=configs/knn.py' in c for c in readme)
  for prog in ('jax_moco.evaluate', 'jax_moco.export', 'jax_moco.import_torch', 'input_pipeline.show'):
    assert any(f'python -m {prog} ' in c for c in every), prog
  for script in ('scripts/ablation.py', 'scripts/sweep_demo.py', 'bench/step.py'):
    assert any(f'python {script}' in c for c in every), script


def bash(command):
  return f'```bash\n{command}\n```\n'


@pytest.mark.parametrize(
  'markdown, wrong, message',
  [
    (bash('python -m jax_moco.evaluate --workdir=DIR --knn_tempreature=0.1'), 'knn_tempreature', 'defines no flag'),
    (bash('python -m jax_moco.evaluate --workdir=DIR --protocol=linear_prob'), 'linear_prob', 'is not one of'),
    (bash('python -m jax_moco.export --workdir=DIR --format=onnx --output=x'), 'onnx', 'is not one of'),
    (bash('python -m jax_moco.main --config=configs/knn.py:coko'), 'coko', 'does not load'),
    (bash('python -m jax_moco.main --config=configs/knnn.py'), 'configs/knnn.py', 'no such config file'),
    (bash('python -m jax_moco.main --config=configs/knn.py --config.moco.nn_topK=5'), 'nn_topK', 'is not a field'),
    (bash('python -m jax_moco.mian --config=configs/knn.py'), 'jax_moco.mian', 'no such module'),
    (bash('python scripts/ablaton.py --out=runs/x'), 'scripts/ablaton.py', 'no such script'),
    (bash('python bench/device_augment.py --qeue=16'), 'qeue', 'defines no flag'),  # its flags are bench/step.py's
    (bash('python bench/folder_scan.py --file=10'), 'file', 'defines no flag'),  # argparse
    (bash('srun -n 2 python -m jax_moco.main --config=configs/knn.py --distribute'), 'distribute', 'defines no flag'),
    (bash('ssh h --command="cd x && python -m jax_moco.main --config=configs/knn.py --workdri=w"'), 'workdri', 'flag'),
    ('Any field: `--config.batch_sise=64`.', 'batch_sise', 'is not a field'),
    ('See `jax_moco/augment.py`.', 'jax_moco/augment.py', 'no such file'),
    ('As in `configs/knn.py:cocoo`.', 'cocoo', 'does not load'),
    ('[the page](docs/trainning.md)', 'docs/trainning.md', 'no such file'),
    ('[the page](docs/training.md#no-such-part)', 'no-such-part', 'no such heading'),
  ],
)
def test_a_broken_name_is_named(markdown, wrong, message):
  problems = page_problems(markdown)
  assert problems and all(wrong in p for p in problems) and any(message in p for p in problems), problems


def test_the_usual_forms_pass():
  ok = (
    bash('python -m jax_moco.evaluate --workdir=DIR --knn_temperature=0.1 --protocol=linear_probe')
    + bash('python -m jax_moco.export --workdir=DIR --format=moco --output=x')
    + bash(
      'for i in 0 1; do XLA_FLAGS=--x=4 python -m jax_moco.main --config=configs/knn.py:coco '
      '--config.moco.nn_topk=5 --process_id=$i --nodistributed -v 1 & done; wait'
    )
    + '`python -m jax_moco.evaluate --workdir=DIR --protocol=cam --cam_images=16 --verbosity=1`, '
    '`configs/{mocov2,knn}.py`, [a](docs/training.md#several-hosts), [b](#c)\n\n## C\n'
  )
  assert not page_problems(ok)
