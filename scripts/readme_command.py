"""Prints a command from README.md: the line after the `<!-- command: NAME -->` marker's code fence.

.ci/run runs `test` this way, and tests/test_readme.py checks both commands, so README and CI cannot drift.
"""

import os
import sys

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'README.md')


def readme_command(name: str) -> str:
  lines = open(README, encoding='utf-8').read().splitlines()
  marker = f'<!-- command: {name} -->'
  if marker not in lines:
    raise SystemExit(f'README.md has no {marker} marker')
  start = lines.index(marker)
  fence_open = lines.index('```bash', start)
  fence_close = lines.index('```', fence_open + 1)
  return ' '.join(line.rstrip('\\').strip() for line in lines[fence_open + 1 : fence_close])


if __name__ == '__main__':
  print(readme_command(sys.argv[1]))
