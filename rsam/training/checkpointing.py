"""The one checkpoint path: orbax CheckpointManager in ``<workdir>/checkpoints``.

Saves are asynchronous; ``max_to_keep`` bounds the disk. Resume takes the newest checkpoint that restores.
orbax skips an interrupted save (a ``*.orbax-checkpoint-tmp-*`` folder) but still lists a damaged finished
one, so restore walks back from the newest: a checkpoint that fails is renamed ``<step>.damaged`` (never
deleted) and the one before it is tried. The train state holds the step; the data position and every
PRNG key are functions of (seed, step), so a resumed run continues exactly.
"""
import logging
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from etils import epath

from rsam.errors import ConfigError


class CheckpointError(ConfigError):
  pass


class Checkpointer:
  def __init__(self, workdir: str, *, every_steps: int, max_to_keep: int, asynchronous: bool = True):
    self.directory = epath.Path(workdir) / 'checkpoints'
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=max(int(every_steps), 1), max_to_keep=max_to_keep,
            enable_async_checkpointing=asynchronous))

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves if the cadence says so (or ``force``); a step already on disk is left as it is."""
    if force and self.manager.latest_step() == step:
      return False
    return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def restore_latest(self, target: Any) -> Optional[tuple[int, Any]]:
    """(step, state) of the newest intact checkpoint, None for an empty directory."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    for step in steps:
      try:
        return step, self.manager.restore(step, args=ocp.args.StandardRestore(target))
      except Exception as e:  # orbax raises many types for damaged files; any failure means "not intact"
        damaged = self._set_aside(step)
        logging.warning('checkpoint at step %d does not restore (%s: %s); moved it to %s and fell back '
                        'to the one before it', step, type(e).__name__, str(e).splitlines()[0][:200],
                        damaged)
        print(f'warning: checkpoint {step} in {self.directory} is damaged; moved it to {damaged}, '
              f'falling back to the previous one', flush=True)
    if steps:
      raise CheckpointError(f'no intact checkpoint in {self.directory} (tried steps {steps}); move that '
                            f'folder away to start from scratch')
    return None

  def restore(self, step: Optional[int], target: Any) -> tuple[int, Any]:
    """(step, state) of checkpoint ``step`` (None: the newest intact one); never renames anything."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f'no checkpoint in {self.directory}; train first or point --workdir at a run')
    if step is not None and step not in steps:
      raise CheckpointError(f'no checkpoint of step {step} in {self.directory}; available: {sorted(steps)}')
    for candidate in [step] if step is not None else steps:
      try:
        return candidate, self.manager.restore(candidate, args=ocp.args.StandardRestore(target))
      except Exception as e:  # a damaged checkpoint: try the one before when no step was asked for
        error = e
    raise CheckpointError(f'checkpoint {candidate} in {self.directory} does not restore '
                          f'({type(error).__name__}); choose another --step')

  def _set_aside(self, step: int) -> str:
    src = os.fspath(self.directory / str(step))
    dst = src + '.damaged'
    suffix = 0
    while os.path.exists(dst):
      suffix += 1
      dst = f'{src}.damaged{suffix}'
    if jax.process_index() == 0:
      os.rename(src, dst)
    multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
    self.manager.reload()
    return dst

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
