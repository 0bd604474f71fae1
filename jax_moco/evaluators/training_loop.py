"""The training loop of the protocols that train something (linear_classification, the fine-tuned dense protocols):
a checkpoint every epoch under the protocol's directory (jax_moco.checkpointing), resumed from there, and a rerun
with other settings refused naming them. The state's `step` counts the steps done; the protocol's batches must follow
from the position alone (its seed, epoch and index), so that a resumed run sees the batches the uninterrupted one
would have. A run stopped between two saves (SIGTERM, a crash) repeats at most one epoch."""

import jax
from tqdm import tqdm

from jax_moco import checkpointing

KEEP = 2  # checkpoints kept: the newest, and the one before in case the newest was cut short


def train(directory, settings, state, step_fn, batches, steps_per_epoch, total_steps, description):
  """Runs `step_fn(state, batch) -> (state, loss)` from the newest checkpoint in `directory` (or `state`) to
  `total_steps`, saving every `steps_per_epoch` steps and at the end; `batches(start)` yields the batches from step
  `start` on. `settings` (a JSON-able dict) is saved with each checkpoint, and a checkpoint written with other
  values is refused, naming them. Returns the final state."""
  checkpointer = checkpointing.Checkpointer(directory, settings, steps_per_epoch, KEEP, tuple(settings))
  try:
    if checkpointer.latest_step() is not None:
      state = checkpointer.restore(state)
    start = int(state.step)
    data = batches(start)
    with tqdm(total=total_steps, initial=start, unit='step', desc=description, disable=jax.process_index() != 0) as bar:
      previous_loss = None
      for step in range(start + 1, total_steps + 1):
        state, loss = step_fn(state, next(data))
        # At most one step queued behind the running one. Unbounded, JAX's asynchronous dispatch queues steps (and
        # their batches) as fast as the data comes, so the bar counts dispatched steps and each save, which needs the
        # state, waits for the epoch's backlog: a pause at every epoch's end that is the epoch's own computation.
        jax.block_until_ready(previous_loss)
        previous_loss = loss
        bar.update(1)
        if checkpointer.save(step, state, force=step == total_steps):  # every epoch and at the end
          bar.set_postfix(epoch=-(-step // steps_per_epoch), loss=f'{float(loss):.3f}')
  finally:
    checkpointer.close()  # a save in flight completes even when training stops with an error
  return state
