"""Evaluation protocols on a frozen backbone, in big_vision's evaluators pattern: one module per protocol, named as
the protocol, each holding an `Evaluator(task, **options)` (task: `common.Task`) whose `run(variables)` yields
(name, value) pairs and whose `describe(result)` gives the protocol and its scores in words; the class also says
how its datasets are opened (`open_datasets`) and at what size (`default_image_size`), see `common`.
`get(protocol)` is the one table from a protocol's name to its Evaluator."""

import importlib

PROTOCOLS = (
  'knn',
  'linear_probe',
  'linear_classification',
  'segment_retrieval',
  'cam',
  'label_propagation',
)


def get(protocol):
  """The Evaluator class of `protocol`; its module is imported only when asked for."""
  if protocol not in PROTOCOLS:
    raise ValueError(f'protocol={protocol!r}: choose one of {", ".join(PROTOCOLS)}')
  return importlib.import_module(f'{__name__}.{protocol}').Evaluator
