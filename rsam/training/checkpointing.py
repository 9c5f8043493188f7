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
one before restored). A checkpoint without one while another checkpoint of the folder has one was damaged
(the file was lost): set aside too. Only when none has one (saved by an earlier version) does it restore
unverified, with a warning line.

The run's identity: the manifest also holds the config's identity (rsam/training/config_check.py:
``identity``, the config less its bookkeeping fields) and its sha256, so a checkpoint says which run it
belongs to even without ``config.json``. A Checkpointer given ``identity`` refuses (``IdentityMismatch``,
one line, never "damage") a checkpoint of another config.

Outages: orbax writes arrays through tensorstore, whose retries of a gs:// request are set here to last as
long as the path layer's deadline (rsam/training/paths.py: ``config.storage_retry_s``).

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


class IdentityMismatch(ConfigError):
  """A checkpoint of another config (its manifest's identity differs): refused, never set aside."""


def _identity_digest(identity) -> str:
  import hashlib  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _tensorstore_retries(deadline_s: float) -> None:
  """tensorstore's gs:// retries (1 s doubling to 32 s) for as long as ``deadline_s``, in every context
  orbax builds (its module-level defaults: orbax has no public option for them)."""
  from orbax.checkpoint._src.serialization import tensorstore_utils  # pylint: disable=g-import-not-at-top
  retries, total, delay = 0, 0.0, 1.0
  while total < deadline_s:
    total, delay, retries = total + delay, min(delay * 2, 32.0), retries + 1
  setting = {'max_retries': max(retries, 1), 'initial_delay': '1s', 'max_delay': '32s'}
  for context in (getattr(tensorstore_utils, '_BASE_TS_CONTEXT', None),
                  getattr(tensorstore_utils, '_DEFAULT_OCDBT_TS_CONTEXT', None)):
    if isinstance(context, dict):
      context['gcs_request_retries'] = setting


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
               cleanup_tmp: bool = False, identity: Optional[dict] = None, check_identity: bool = True):
    """``cleanup_tmp``: delete saves interrupted by a kill (they would pile up, a full checkpoint each) when
    opening; only for the trainer, never for a reader such as eval.py that may run beside it.
    ``identity``: the config identity written into each save's manifest and, with ``check_identity``,
    required of each restore (None: none written, none checked)."""
    self.directory = paths.path(paths.normalize(workdir)) / 'checkpoints'
    self.identity, self.check_identity = identity, check_identity
    self.confirmed: Optional[int] = None  # the newest step this process saved and knows to be complete
    _write_one_replica_per_array()
    _tensorstore_retries(paths.storage_retry_s())
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
    previous = self._in_flight
    saved = self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    if previous is not None:  # orbax finished the previous save before it started this one
      self.confirmed, self._in_flight = previous, None
    if not saved:
      self._saving.remove(step)
    elif not self._asynchronous:  # already committed: the manifest follows (a kill between: damaged)
      self._saving.remove(step)
      self._write_manifest(self.directory / str(step))
      self.confirmed = step
    else:
      self._in_flight = step
    return saved

  _in_flight: Optional[int] = None  # the step of the asynchronous save under way

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
    manifest = {'algorithm': 'sha256', 'files': _hash_files(folder, names)}
    if self.identity is not None:
      manifest.update(config=self.identity, config_sha256=_identity_digest(self.identity))
    paths.write_json(folder / MANIFEST, manifest)

  def verify(self, step: int) -> bool:
    """Checks checkpoint ``step`` against its manifest: ChecksumError naming the first file that differs or
    is missing, or when the manifest itself is missing while a sibling checkpoint has one; False (and a
    warning line) when no checkpoint of the folder has one (saved by an older version); IdentityMismatch
    for a checkpoint of another config."""
    folder = self.directory / str(step)
    ok, message, mismatch = True, '', None
    if jax.process_index() == 0:
      try:
        manifest = paths.read_json(folder / MANIFEST)
      except FileNotFoundError:
        siblings = [s for s in self.with_manifest() if s != step]
        ok = None if not siblings else False
        message = (f'its {MANIFEST} is missing, while checkpoint(s) {siblings[:3]} of the same folder have '
                   f'one: lost with other files' if siblings else '')
      except ValueError as e:  # half a manifest: damage like any other
        ok, message = False, f'{MANIFEST} does not parse ({paths.brief(e)})'
      else:
        try:
          self._check_identity(step, manifest)
        except IdentityMismatch as e:
          mismatch = e
        except ChecksumError as e:
          ok, message = False, str(e)
        if ok:
          try:
            got = _hash_files(folder, list(manifest['files']))
          except FileNotFoundError as e:
            ok, message = False, f'{paths.brief(e)}'
          else:
            bad = [n for n, h in manifest['files'].items() if got[n] != h]
            ok, message = not bad, f'{len(bad)} file(s) differ from {MANIFEST}, e.g. {bad[:1]}'
    if jax.process_count() > 1:  # one verdict for all hosts (process 0 read the files)
      verdict = 3 if mismatch is not None else {True: 1, False: 0, None: 2}[ok]
      code = int(multihost_utils.broadcast_one_to_all(np.int32(verdict)))
      if code == 3 and mismatch is None:
        mismatch = IdentityMismatch(f'checkpoint {step} in {self.directory} was saved by a run of a different '
                                    f'config (process 0 names the fields)')
      ok = {1: True, 0: False, 2: None, 3: True}[code]
    if mismatch is not None:
      raise mismatch
    if ok is False:
      raise ChecksumError(message or 'checksum mismatch')
    if ok is None:
      print(f'warning: checkpoint {step} in {self.directory} has no {MANIFEST} (nor has any other checkpoint '
            f'of the folder: saved before checksums were written); restoring it unverified', flush=True)
    return bool(ok)

  def with_manifest(self) -> list:
    """The finished checkpoints (steps) of the folder that hold a manifest."""
    out = []
    for name in paths.listdir(self.directory):
      if name.isdigit() and paths.exists(self.directory / name / MANIFEST):
        out.append(int(name))
    return sorted(out)

  def _check_identity(self, step: int, manifest: dict) -> None:
    saved = manifest.get('config')
    if saved is None:
      return  # saved before identities were written
    if manifest.get('config_sha256') != _identity_digest(saved):
      raise ChecksumError(f'the config identity in {MANIFEST} differs from its checksum')
    if self.identity is None or not self.check_identity:
      return  # a reader (eval.py) or --force_resume: not checked
    from rsam.training import config_check  # pylint: disable=g-import-not-at-top
    differ = config_check.identity_diff(saved, self.identity)
    if differ:
      raise IdentityMismatch(
          f'checkpoint {step} in {self.directory} was saved by a run of a different config '
          f'({", ".join(differ[:5])} differ); use a new --workdir, or pass --force_resume to continue it '
          f'with this config anyway')

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
      except IdentityMismatch:
        self.close()
        raise
      except Exception as e:  # orbax raises many types for damaged files; any failure means "not intact"
        if paths.storage_failure(e) is not None:  # an outage is not damage: nothing is set aside
          self.close()
          raise
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
      except IdentityMismatch:
        self.close()
        raise
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
    self._confirm()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self._confirm()
    self.manager.close()

  def _confirm(self) -> None:
    if self._in_flight is not None:
      self.confirmed, self._in_flight = self._in_flight, None


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
