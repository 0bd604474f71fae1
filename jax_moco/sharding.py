"""Where arrays live: the 1-D device mesh with its one axis name, batches sharded over it, replicated state, and
global values brought back to every process. Training and evaluation both place data through this module only."""

import jax
from jax.experimental import multihost_utils
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

AXIS = 'data'


def create_mesh(devices=None) -> jax.sharding.Mesh:
  """All devices (or `devices`) on one data-parallel axis. Explicit axis types: a sharding is part of an array's
  type, so a batch that is not split over 'data' is an error rather than a silent reshard."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (AXIS,), axis_types=(AxisType.Explicit,), devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  """Leading (batch) axis split over the devices, the rest whole."""
  return NamedSharding(mesh, P(AXIS))


# Where an argument or a result of a data-parallel function lives (data_parallel_jit).
REPLICATED, BATCH = 'replicated', 'batch'


def data_parallel_jit(fn, mesh, in_placements, out_placements, **jit_options):
  """jax.jit of `fn` with each argument (in_placements, one a positional argument) and each result (out_placements:
  one, or a tuple for a tuple of results) REPLICATED, every device holding it whole, or BATCH, split over the
  devices on its leading axis. `jit_options` (donate_argnums, compiler_options) go to jax.jit."""
  by_placement = {REPLICATED: replicated(mesh), BATCH: batch_sharded(mesh)}

  def shardings(placements):
    if isinstance(placements, str):
      return by_placement[placements]
    return tuple(by_placement[p] for p in placements)

  return jax.jit(fn, in_shardings=shardings(in_placements), out_shardings=shardings(out_placements), **jit_options)


def multiple_of_devices(n, mesh) -> int:
  """The least multiple of the mesh's device count that is >= n: a global batch every device gets a share of."""
  return -(-n // mesh.size) * mesh.size


def shard_batch(mesh, batch):
  """Host-local NumPy arrays (a nested dict) -> global arrays sharded over 'data' on the leading axis."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, v), batch)


def all_processes(x):
  """The global value on every process: a sharded array's every row, or host-local arrays of all processes
  concatenated in process order (the order their rows take in a global batch)."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
