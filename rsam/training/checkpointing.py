"""The one checkpoint path: orbax CheckpointManager in ``<workdir>/checkpoints``.

Saves are asynchronous; ``max_to_keep`` bounds the disk. Resume takes the newest checkpoint that restores.
orbax skips an interrupted save (locally a ``<step>.orbax-checkpoint-tmp`` folder, on gs:// a step folder
without ``commit_success.txt``; the trainer removes both when it opens the directory) but still lists a
damaged finished one, so restore walks back from the newest, with a fresh manager after each failure (a
failed restore can leave orbax's manager unable to restore intact ones). Once one restores, the newer ones
that failed are renamed ``<step>.damaged`` (never deleted). If none restores, nothing is renamed (the
cause may be a changed model or code, not damage) and a one-line error names the directory.

Checksums: orbax keeps none, and a flipped byte inside an array's data file restored silently with wrong
values. Every save writes ``<step>/rsam_checksums.json`` (sha256 of every file of the state), in orbax's
save thread once the arrays are written and before the save is committed, so a committed checkpoint
always has it; every restore verifies it first, and a mismatch is damage like any other (set aside, the
one before restored). A checkpoint without one (saved by an earlier version) restores unverified, with a
warning line.

Restore targets are abstract (``abstract_state``: shapes, dtypes, shardings), so a resume never computes
an initial state only to overwrite it, and a caller chooses the shardings the state lands on. The train
state holds the step; the data position and every PRNG key are functions of (seed, step), so a resumed
run continues exactly.
"""
import collections
import concurrent.futures
import logging
import os
import sys
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from rsam.errors import ConfigError
from rsam.training import paths

# The names orbax gives a save in progress and the marker of a finished one on object stores.
TMP_SUFFIX = ocp.path.atomicity_types.TMP_DIR_SUFFIX  # '.orbax-checkpoint-tmp'
COMMIT_FILE = ocp.path.atomicity_types.COMMIT_SUCCESS_FILE  # 'commit_success.txt'
ITEM = 'default'  # the folder of the state inside a step's folder (orbax's name for a single item)
MANIFEST = 'rsam_checksums.json'  # {'algorithm': 'sha256', 'files': {'default/...': hex digest}}


class CheckpointError(ConfigError):
  pass


class ChecksumError(Exception):
  """A checkpoint's files differ from the checksums written when it was saved: it counts as damaged."""


def _write_one_replica_per_array() -> None:
  """orbax (on TPU and CPU) splits the saving of a replicated array across its replicas: each device
  copies a slice of it, through a jitted slice program per array shape and device, compiled on the main
  thread at the first save (128 programs for the tiny ResNet's train state on 8 devices, 384 lines of
  JAX_LOG_COMPILES, 12 s under load; more for a larger model). The train state here is replicated, so one replica's copy is written whole
  instead: no program at all (orbax's choice on GPU already)."""
  if _ONE_REPLICA:
    return
  absl_logger = logging.getLogger('absl')  # orbax logs a warning for any override
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
  finally:
    absl_logger.setLevel(level)
  _ONE_REPLICA.append(True)


_ONE_REPLICA = []


class Checkpointer:
  def __init__(self, workdir: str, *, every_steps: int, max_to_keep: int, asynchronous: bool = True,
               cleanup_tmp: bool = False):
    """``cleanup_tmp``: delete saves interrupted by a kill (they would pile up, a full checkpoint each) when
    opening; only for the trainer, never for a reader such as eval.py that may run beside it."""
    self.directory = paths.path(paths.normalize(workdir)) / 'checkpoints'
    _write_one_replica_per_array()
    if cleanup_tmp:  # ourselves, synchronously: orbax's option leaves a thread that can outlive the process
      self._remove_interrupted_saves()
    self._asynchronous = asynchronous
    self._saving = collections.deque()  # steps whose async save is under way, oldest first
    self._options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(every_steps), 1), max_to_keep=max_to_keep,
        enable_async_checkpointing=asynchronous,
        # Called in orbax's save thread once the arrays are written and before the save is committed
        # (renamed / commit_success.txt): a committed checkpoint always holds its manifest.
        async_options=ocp.AsyncOptions(post_finalization_callback=self._on_written) if asynchronous else None)
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)

  def _remove_interrupted_saves(self) -> None:
    """Deletes the saves a kill interrupted, never a finished one. What orbax (0.12) leaves: locally a save
    is written into ``<step>.orbax-checkpoint-tmp`` (older versions: ``...-tmp-<timestamp>``) and renamed
    to ``<step>`` once finished; on gs:// (no atomic rename) it is written into ``<step>`` itself and marked
    finished by a ``commit_success.txt`` written last."""
    if jax.process_index() == 0:
      for path in self._interrupted_saves():
        path.rmtree()
        paths.refresh(self.directory)
        print(f'removed {path}, a checkpoint save that was interrupted', flush=True)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('removed interrupted checkpoint saves')

  def _interrupted_saves(self) -> list:
    remote = paths.is_remote(self.directory)
    out = []
    for name in paths.listdir(self.directory):
      if TMP_SUFFIX in name:
        out.append(self.directory / name)
      elif remote and name.isdigit() and not paths.exists(self.directory / name / COMMIT_FILE):
        out.append(self.directory / name)
    return out

  def _reopen(self) -> None:
    self.manager.close()
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves if the cadence says so (or ``force``); a step already on disk is left as it is."""
    if force and self.manager.latest_step() == step:
      return False
    if not (force or self.manager.should_save(step)):
      return False
    self._saving.append(step)  # before orbax starts: its callback for this save may run before save returns
    saved = self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    if not saved:
      self._saving.remove(step)
    elif not self._asynchronous:  # already committed: the manifest follows (a kill between: unverified)
      self._saving.remove(step)
      self._write_manifest(self.directory / str(step))
    return saved

  def _on_written(self) -> None:
    """orbax's post-finalization callback: the oldest save under way has written its arrays."""
    if jax.process_index() != 0:
      self._saving.clear()
      return
    while self._saving:  # a save that failed inside orbax never calls back: skip its step
      step = self._saving.popleft()
      tmp = self.directory / f'{step}{TMP_SUFFIX}'  # locally; on gs:// orbax writes into the step's folder
      if paths.exists(tmp):
        self._write_manifest(tmp)
        return
      final = self.directory / str(step)
      if paths.is_remote(final) and not paths.exists(final / COMMIT_FILE):
        self._write_manifest(final)
        return

  def _write_manifest(self, folder) -> None:
    """``MANIFEST`` in ``folder``: the sha256 of every file of the saved item (``default/...``)."""
    if jax.process_index() != 0:
      return
    names = [n for n in paths.files_under(folder) if n.startswith(ITEM + '/')]
    paths.write_json(folder / MANIFEST, {'algorithm': 'sha256', 'files': _hash_files(folder, names)})

  def verify(self, step: int) -> bool:
    """Checks checkpoint ``step`` against its manifest: ChecksumError naming the first file that differs or
    is missing; False (and a warning line) for a checkpoint without one (saved by an older version)."""
    folder = self.directory / str(step)
    ok, message = True, ''
    if jax.process_index() == 0:
      try:
        manifest = paths.read_json(folder / MANIFEST)
      except FileNotFoundError:
        ok = None
      else:
        try:
          got = _hash_files(folder, list(manifest['files']))
        except FileNotFoundError as e:
          ok, message = False, f'{paths.brief(e)}'
        else:
          bad = [n for n, h in manifest['files'].items() if got[n] != h]
          ok, message = not bad, f'{len(bad)} file(s) differ from {MANIFEST}, e.g. {bad[:1]}'
    if jax.process_count() > 1:  # one verdict for all hosts (process 0 read the files)
      code = multihost_utils.broadcast_one_to_all(np.int32({True: 1, False: 0, None: 2}[ok]))
      ok = {1: True, 0: False, 2: None}[int(code)]
    if ok is False:
      raise ChecksumError(message or 'checksum mismatch')
    if ok is None:
      print(f'warning: checkpoint {step} in {self.directory} has no {MANIFEST} (saved before checksums '
            f'were written); restoring it unverified', flush=True)
    return bool(ok)

  def _restore(self, step: int, target: Any) -> Any:
    self.verify(step)
    return self.manager.restore(step, args=ocp.args.StandardRestore(target))

  def due(self, step: int) -> bool:
    """Whether ``save(step, ...)`` saves (the cadence; False for a step already on disk)."""
    return self.manager.should_save(step)

  def restore_latest(self, target: Any) -> Optional[tuple[int, Any]]:
    """(step, state) of the newest intact checkpoint, None for an empty directory."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    failed = []
    for step in steps:
      try:
        state = self._restore(step, target)
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
        return candidate, self._restore(candidate, target)
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


def _hash_files(folder, names) -> dict:
  """{name: sha256 of folder/name}, several files at once (hashing releases the GIL)."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, max(len(names), 1))) as pool:
    return dict(zip(names, pool.map(lambda n: paths.sha256(folder / n), names)))


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


def abstract_state(shapes: Any, sharding: Any = None) -> Any:
  """The restore target without computing a state: ``shapes`` (arrays or ``jax.ShapeDtypeStruct``, e.g. from
  ``jax.eval_shape(init)``) as ShapeDtypeStructs placed on ``sharding``: one Sharding for every leaf, a tree
  of them matching ``shapes``, or None (each leaf's own sharding, else replicated over all devices)."""
  if sharding is None:
    replicated = jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices(), ('d',)),
                                            jax.sharding.PartitionSpec())
    shardings = jax.tree.map(lambda x: getattr(x, 'sharding', None) or replicated, shapes)
  elif isinstance(sharding, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: sharding, shapes)
  else:
    shardings = sharding
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
