"""The one checkpoint path: orbax CheckpointManager in ``<workdir>/checkpoints``.

Saves are asynchronous; ``max_to_keep`` bounds the disk. Resume takes the newest checkpoint that restores.
orbax skips an interrupted save (a ``*.orbax-checkpoint-tmp-*`` folder, which the trainer removes when
it opens the directory) but still lists a damaged finished one, so restore walks back from the newest, with
a fresh manager after each failure (a failed restore can leave orbax's manager unable to restore intact
ones). Once one restores, the newer ones that failed are renamed ``<step>.damaged`` (never deleted). If
none restores, nothing is renamed (the cause may be a changed model or code, not damage) and a one-line
error names the directory. Not detected: a flipped bit inside an array's data file (orbax keeps no
checksums). The train state holds the step; the data position and every PRNG key are functions of
(seed, step), so a resumed run continues exactly.
"""
import logging
import os
import sys
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from rsam.errors import ConfigError
from rsam.training import paths


class CheckpointError(ConfigError):
  pass


class Checkpointer:
  def __init__(self, workdir: str, *, every_steps: int, max_to_keep: int, asynchronous: bool = True,
               cleanup_tmp: bool = False):
    """``cleanup_tmp``: delete saves interrupted by a kill (they would pile up, a full checkpoint each) when
    opening; only for the trainer, never for a reader such as eval.py that may run beside it."""
    self.directory = paths.path(paths.normalize(workdir)) / 'checkpoints'
    if cleanup_tmp:  # ourselves, synchronously: orbax's option leaves a thread that can outlive the process
      self._remove_interrupted_saves()
    self._options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(every_steps), 1), max_to_keep=max_to_keep,
        enable_async_checkpointing=asynchronous)
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)

  def _remove_interrupted_saves(self) -> None:
    """Deletes the saves a kill interrupted (``<step>.orbax-checkpoint-tmp-*``), never a finished one."""
    if jax.process_index() == 0 and self.directory.exists():
      for path in sorted(self.directory.glob('*.orbax-checkpoint-tmp-*')):
        path.rmtree()
        print(f'removed {path}, a checkpoint save that was interrupted', flush=True)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('removed interrupted checkpoint saves')

  def _reopen(self) -> None:
    self.manager.close()
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves if the cadence says so (or ``force``); a step already on disk is left as it is."""
    if force and self.manager.latest_step() == step:
      return False
    return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def due(self, step: int) -> bool:
    """Whether ``save(step, ...)`` saves (the cadence; False for a step already on disk)."""
    return self.manager.should_save(step)

  def restore_latest(self, target: Any) -> Optional[tuple[int, Any]]:
    """(step, state) of the newest intact checkpoint, None for an empty directory."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    failed = []
    for step in steps:
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(target))
      except Exception as e:  # orbax raises many types for damaged files; any failure means "not intact"
        failed.append((step, e))
        _quiet_failed_restore_leftovers()
        self._reopen()
        continue
      for bad, e in failed:  # only now that an older one restored: set the newer ones aside
        damaged = self._set_aside(bad)
        logging.warning('checkpoint at step %d does not restore (%s); moved it to %s', bad, _brief(e),
                        damaged)
        print(f'warning: checkpoint {bad} in {self.directory} is damaged ({_brief(e)}); moved it to '
              f'{damaged}; resuming from step {step}', flush=True)
      return step, state
    if steps:
      self.close()  # an open manager's threads print a traceback when the interpreter exits
      raise CheckpointError(f'no checkpoint in {self.directory} restores (tried steps {steps}; newest: '
                            f'{_brief(failed[0][1])}); nothing was moved: if the model or code changed, '
                            f'restore them, else move that folder away to start from scratch')
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
        _quiet_failed_restore_leftovers()
        self._reopen()
    self.close()
    raise CheckpointError(f'checkpoint {candidate} in {self.directory} does not restore '
                          f'({type(error).__name__}); choose another --step')

  def _set_aside(self, step: int) -> str:
    src = self.directory / str(step)
    names = paths.listdir(self.directory)
    dst, suffix = f'{step}.damaged', 0
    while dst in names:
      suffix += 1
      dst = f'{step}.damaged{suffix}'
    dst = self.directory / dst
    if jax.process_index() == 0:
      src.rename(dst)
      paths.refresh(self.directory)
    multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
    self.manager.reload()
    return dst

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def close_quietly(ckpt: Checkpointer) -> None:
  """Closes ``ckpt`` on the way out of a run that failed (a second close is harmless): a failed save raises
  again here, and the run's own error is the one to report."""
  try:
    ckpt.close()
  except Exception:  # pylint: disable=broad-except
    pass


def _brief(e: Exception) -> str:
  """`Type: first line` of an exception, at most 160 characters (tensorstore errors are pages long)."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else ''
  return f'{type(e).__name__}: {text[:160]}' if text else type(e).__name__


# What a restore that failed inside orbax leaves behind: tensorstore reads that complete after orbax closed
# their event loop, and coroutines never awaited. They report later, as pages of tracebacks on stderr (as
# unraisable exceptions or asyncio's "... exception was never retrieved"), after the failure was handled.
_LEFTOVERS = ('Event loop is closed', 'Encountered error while reading array index')


def _is_leftover(exc) -> bool:
  return exc is not None and str(exc).startswith(_LEFTOVERS)


class _LeftoverFilter(logging.Filter):
  def filter(self, record):
    return not (str(record.msg).startswith(('Future exception was never retrieved',
                                            'Task exception was never retrieved')) and
                record.exc_info and _is_leftover(record.exc_info[1]))


def _quiet_failed_restore_leftovers() -> None:
  """Drops exactly those reports (installed once, at the first failed restore); anything else still shows."""
  asyncio_logger = logging.getLogger('asyncio')
  if not any(isinstance(f, _LeftoverFilter) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_LeftoverFilter())
  if getattr(sys.unraisablehook, 'rsam_quiet', False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_leftover(unraisable.exc_value):
      previous(unraisable)
  hook.rsam_quiet = True
  sys.unraisablehook = hook
