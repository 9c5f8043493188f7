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

import orbax.checkpoint as ocp
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

  def _set_aside(self, step: int) -> str:
    src = os.fspath(self.directory / str(step))
    dst = src + '.damaged'
    suffix = 0
    while os.path.exists(dst):
      suffix += 1
      dst = f'{src}.damaged{suffix}'
    os.rename(src, dst)
    self.manager.reload()
    return dst

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
