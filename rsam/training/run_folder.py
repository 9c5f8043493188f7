"""The run's folder: one owner for the files of a training run's workdir and for what must hold between them.

The training loop opens the folder once and holds one ``RunFolder``; nothing else writes the run's records.

  lease.json        one run at a time (rsam/training/lease.py): taken before any write, released at the end
  config.json       the config; its identity (config_check.identity) is also in every checkpoint's manifest
  checkpoints/      orbax (rsam/training/checkpointing.py), each with rsam_checksums.json: sha256 + identity
  segments.json     the record of progress: one segment per process (``Segments`` below)
  events.out.tfevents.*   TensorBoard; a gs:// run's are copied from its local staging folder (writers.py)
  results.json      at the end;  wandb_id: the run's wandb id (``wandb_id``)

The invariants, each checked here and only here:

  1. One run at a time. ``--force_resume`` on a live run asks it to hand over and waits until it stopped
     and released the lease (lease.py); it never deletes a live run's save in progress.
  2. The config is the run's. A start whose config differs (in anything but bookkeeping fields) from
     ``config.json`` or from the newest checkpoint's manifest is refused (exit 2) before anything is
     written, unless ``--force_resume``; so a deleted ``config.json`` does not switch the check off.
  3. The records are never ahead of the checkpoints. ``segments.json`` records ``saved_to``, the newest
     checkpoint a process knows complete, and ``results.json`` the step a finished run reached. A start
     whose records say step N was saved but whose checkpoints/ holds nothing as new (the checkpoints were
     deleted, moved, or the bucket emptied) is refused in one line (exit 2) naming N and the folder, never
     silently restarted from an older step; ``--start_over`` moves every record and checkpoint into
     ``archive/<time>/`` and trains from step 0, so nothing of the two runs is mixed. The same holds under
     a running run: a checkpoint it saved that is gone at its next save, or a lease.json deleted under it
     with its checkpoints, stops it (exit 2) without writing more.
  4. Every logged step is on the dashboard once. A resumed run skips the metrics of the steps the workdir's
     events already hold (read from the event files themselves, so a kill between their copy and
     segments.json no longer duplicates a point).
  5. What went wrong is said in one line, with what was saved: a write that failed (exit 74), the bucket
     unreachable past ``config.storage_retry_s`` (exit 69), a signal during an outage (143: the step was
     not saved; the newest checkpoint that was).
"""
import json
import os
import struct
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np

from rsam.errors import ConfigError
from rsam.training import checkpointing, config_check, lease as lease_lib, paths, writers

CONFIG = 'config.json'
SEGMENTS = 'segments.json'
RESULTS = 'results.json'
WANDB_ID = 'wandb_id'
ARCHIVE = 'archive'
EVENTS_PREFIX = 'events.out.tfevents.'
_ENDED_SAVED = ('finished', 'SIGTERM', 'SIGINT', 'SIGHUP')  # a segment that ended so saved its last step


class FolderChanged(ConfigError):
  """The folder lost files this run wrote (emptied, or its checkpoints deleted) while the run held it."""


class RunFolder:
  """The workdir of one training run, held by this process (see the module docstring). Make one with
  ``open``; every method is safe on each process of a pod (only process 0 writes the shared records)."""

  def __init__(self, config, workdir: str):
    self.config = config
    self.workdir = paths.normalize(workdir)
    self.root = paths.path(self.workdir)
    self.primary = jax.process_index() == 0
    self.identity = config_check.identity(config)
    self.lease: Optional[lease_lib.Lease] = None
    self.checkpoints: Optional[checkpointing.Checkpointer] = None
    self.segments: Optional[Segments] = None

  # --- open: check, hold ---------------------------------------------------------------------------------

  def check_files(self, force: bool = False) -> None:
    """Invariants 2 and 3 on what the folder holds now (reads only; ConfigError, exit 2, if one fails)."""
    steps = self.checkpoint_steps()
    if steps and not force:
      self._check_config_json()
      self._check_newest_manifest(steps)
    recorded, where = self.recorded_progress()
    newest = max(steps) if steps else None
    if recorded and (newest is None or recorded > newest):
      if newest is not None and force:
        paths.say(f'warning: {where} says a checkpoint of step {recorded} was saved, but the newest in '
                  f'{self.root / "checkpoints"} is {newest}; resuming from it (--force_resume): steps '
                  f'{newest + 1}-{recorded} are trained again')
        return
      older = (f'the newest that remains is step {newest}: pass --force_resume to resume from it, or '
               if newest is not None else '')
      raise ConfigError(
          f'--workdir {self.workdir}: {where} says this run reached step {recorded} and saved a checkpoint of '
          f'it, but {self.root / "checkpoints"} holds {"no checkpoint" if newest is None else "none that new"} '
          f'(deleted, moved, or the bucket was emptied); put the checkpoints back to resume, or '
          f'{older}pass --start_over to archive this run\'s records and train from step 0')

  def _check_config_json(self) -> None:
    path = self.root / CONFIG
    if not paths.exists(path):
      return  # the checkpoints' manifests still carry the identity
    try:
      saved = paths.read_json(path)
    except (OSError, ValueError) as e:  # (an unreachable bucket is a StorageUnreachable: not caught here)
      raise ConfigError(f'{path} does not read ({type(e).__name__}); pass --force_resume to rewrite it from '
                        f'this config and continue the run') from None
    try:
      differ = config_check.identity_diff(saved, self.identity)
    except (TypeError, AttributeError, KeyError, ValueError) as e:  # parses, but is not a config's shape
      raise ConfigError(f'{path} is not a config ({type(e).__name__}: {str(e)[:80]}); pass --force_resume to '
                        f'rewrite it from this config and continue the run') from None
    if differ:
      raise ConfigError(f'--workdir {self.workdir} holds a run of a different config ({", ".join(differ[:5])} '
                        f'differ); use a new --workdir, or pass --force_resume to continue it anyway')

  def _check_newest_manifest(self, steps) -> None:
    finished = sorted(s for s in steps if s in self._finished_steps())
    if not finished:
      return
    step = finished[-1]
    try:
      manifest = paths.read_json(self.root / 'checkpoints' / str(step) / checkpointing.MANIFEST)
    except (OSError, ValueError):
      return  # none (an older version's) or damaged: the restore decides
    saved = manifest.get('config') if isinstance(manifest, dict) else None
    if saved is None:
      return
    try:
      differ = config_check.identity_diff(saved, self.identity)
    except (TypeError, AttributeError, KeyError, ValueError):
      return  # a damaged manifest: the restore sets the checkpoint aside
    if differ:
      raise ConfigError(f'--workdir {self.workdir}: its checkpoint {step} was saved by a run of a different '
                        f'config ({", ".join(differ[:5])} differ); use a new --workdir, or pass '
                        f'--force_resume to continue it anyway')

  def checkpoint_steps(self) -> list:
    """Steps of every checkpoint folder present: finished, interrupted or set aside as damaged."""
    out = set()
    for name in paths.listdir(self.root / 'checkpoints'):
      head = name.split('.')[0]
      if head.isdigit():
        out.add(int(head))
    return sorted(out)

  def _finished_steps(self) -> set:
    return {int(n) for n in paths.listdir(self.root / 'checkpoints') if n.isdigit()}

  def recorded_progress(self):
    """(step, 'where it says so') of the newest checkpoint the records say was saved, or (0, '')."""
    best, where = 0, ''
    for segment in Segments.read(self.root / SEGMENTS):
      saved = segment.get('saved_to')
      if saved is None and segment.get('ended') in _ENDED_SAVED:  # records of an earlier version
        saved = segment.get('to_step')
      if isinstance(saved, int) and saved > best:
        best, where = saved, f'{self.root / SEGMENTS}'
    try:
      results = paths.read_json(self.root / RESULTS)
    except (OSError, ValueError):
      results = None
    steps = results.get('steps') if isinstance(results, dict) else None
    if isinstance(steps, int) and steps > best:
      best, where = steps, f'{self.root / RESULTS} (a finished run)'
    return best, where

  def _hold(self, force: bool) -> None:
    """Takes the lease (process 0); on a pod every process stops if it could not."""
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    timeout_s = float(self.config.get('lease_timeout_s') or 300)
    error = None
    if self.primary:
      try:
        paths.check_writable(self.workdir)
        self.lease = lease_lib.acquire(self.workdir, timeout_s=timeout_s, force=force)
      except paths.StorageUnreachable as e:
        error = e
      except OSError as e:
        error = paths.StorageError(f'cannot write the lease {self.workdir}/{lease_lib.NAME} ({paths.brief(e)}); '
                                   f'choose a writable --workdir')
      except ConfigError as e:
        error = e
    if jax.process_count() > 1:
      failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
      if failed and error is None:
        raise lease_lib.LeaseHeld(f'process 0 could not take the lease of --workdir {self.workdir} (its error '
                                  f'line says why)')
    if error is not None:
      raise error

  def _archive(self) -> None:
    """--start_over: every file but the lease (and earlier archives) into archive/<UTC time>/."""
    if self.primary:
      names = [n for n in paths.listdir(self.root) if n not in (lease_lib.NAME, ARCHIVE)]
      if names:
        target = self.root / ARCHIVE / time.strftime('%Y%m%d-%H%M%S', time.gmtime())
        paths.makedirs(target)
        for name in names:
          (self.root / name).rename(target / name)
        paths.refresh(self.root)
        paths.say(f'--start_over: moved {", ".join(names[:6])}{" ..." if len(names) > 6 else ""} of '
                  f'{self.workdir} to {target}; training from step 0')
    _sync('archived the run folder')

  def _write_config(self) -> None:
    if not self.primary:
      return
    path = self.root / CONFIG
    try:
      paths.write_text(path, self.config.to_json_best_effort(indent=2))
    except OSError as e:
      raise paths.StorageError(f'cannot write {path} ({paths.brief(e)}); choose a writable --workdir') from None

  # --- the run: restore, record, save --------------------------------------------------------------------

  def restore(self, target: Any):
    """(step, state) of the newest intact checkpoint (its identity checked), or None; prints the resume."""
    restored = self.checkpoints.restore_latest(target)
    if restored is not None:
      paths.say(f'resumed from step {restored[0]} in {self.workdir}')
    return restored

  def begin(self, start_step: int, hardware: dict) -> None:
    """This process's segment, from ``start_step``."""
    self.segments = Segments(self.workdir, start_step, hardware, write=self.primary)

  def writer(self, inner):
    """``inner`` (writers.make_writer) without the scalars of steps the workdir's events already hold."""
    return self.segments.wrap(inner)

  def wandb_id(self) -> Optional[str]:
    return wandb_id(self.config, self.workdir)

  def check(self) -> None:
    """Between steps: raises if the lease was lost or asked for (exit 75), its heartbeat could not reach
    the storage (69), or the folder was emptied under the run (2)."""
    if self.lease is None:
      return
    if self.lease.deleted:
      self.lease.deleted = False
      self._check_not_emptied('lease.json was deleted under it')
    self.lease.check()

  def _check_not_emptied(self, sign: str) -> None:
    confirmed = self.checkpoints.confirmed if self.checkpoints is not None else None
    if confirmed is None or paths.exists(self.root / 'checkpoints' / str(confirmed)):
      return
    raise FolderChanged(
        f'{self.root / "checkpoints" / str(confirmed)}, saved by this run, is gone ({sign}): '
        f'the folder was emptied or its checkpoints deleted while the run wrote it; stopped without writing '
        f'more; rerun with --start_over to train from step 0, or put the checkpoints back')

  def due(self, step: int) -> bool:
    return self.checkpoints.due(step)

  def persist(self, writer) -> None:
    """Before a checkpoint: the folder still writable (local), the metrics so far in the workdir (gs://:
    copied, not only every minute), so a run resumed from it finds every step up to it on the dashboard."""
    paths.probe_writable(self.checkpoints.directory)
    writers.persist(writer)

  def record(self, step: int, *, logged: bool = False, ended: Optional[str] = None) -> None:
    self.segments.update(step, logged=logged, ended=ended, saved_to=self.checkpoints.confirmed)

  def save(self, step: int, state, *, force: bool = False) -> bool:
    if force or self.checkpoints.due(step):
      self.checkpoints.wait()  # orbax would wait for the save before anyway; now its step is confirmed
      self._check_not_emptied('noticed at the next save')
    return self.checkpoints.save(step, state, force=force)

  def close_checkpoints(self) -> None:
    self.checkpoints.close()

  def stop(self, step: int, state, writer, signal_name: str) -> str:
    """A signal asked the run to stop after ``step``: saves it and records the segment's end. Returns what
    the stop line says after the signal's name: where the checkpoint is, or, when the storage did not
    answer within the signal's grace, that it was not saved and which one was."""
    try:
      self.persist(writer)
      self.record(step)
      self.save(step, state, force=True)
      self.checkpoints.close()
      self.record(step, ended=signal_name)
    except Exception as e:  # pylint: disable=broad-except
      failure = paths.storage_failure(e)
      if failure is None:
        raise
      return self.unsaved(step, failure)
    return (f'at step {step}: checkpoint written to {self.checkpoints.directory}; rerun the same command to '
            f'resume')

  def unsaved(self, step: int, failure: BaseException) -> str:
    confirmed = self.checkpoints.confirmed if self.checkpoints is not None else None
    kept = (f'the newest checkpoint saved is step {confirmed} in {self.root / "checkpoints"}'
            if confirmed is not None else f'no checkpoint of this process was confirmed saved in '
            f'{self.root / "checkpoints"}')
    return (f'at step {step}, during a storage outage ({failure}): the checkpoint of step {step} was NOT saved; '
            f'{kept}; rerun the same command to resume from the newest checkpoint')

  def write_results(self, results: dict) -> str:
    path = self.root / RESULTS
    if self.primary:  # written whole or not at all: a kill here must not leave half a file
      paths.write_json(path, results)
    return str(path)

  def release(self) -> None:
    """At the end however the run ended: the checkpointer closed (a save under way completes), then the
    lease given back (a --force_resume waiting for it goes on only now)."""
    if paths.gave_up():
      # The storage did not answer within its deadline: a save under way may wait on it for as long again
      # (tensorstore's retries), so it is not waited for, and the lease's release gets the stop grace only.
      paths.stop_waiting()
    elif self.checkpoints is not None:
      checkpointing.close_quietly(self.checkpoints)
    if self.lease is not None:
      self.lease.release()


def open(config, workdir: str, *, force_resume: bool = False, start_over: bool = False) -> RunFolder:  # pylint: disable=redefined-builtin
  """Opens the run folder: checks it (before anything is written, so a refused run changes nothing), takes
  its lease, checks again under the lease, archives it for ``start_over``, writes config.json and opens the
  checkpoints (removing saves a kill interrupted: the lease says no live run is writing them)."""
  folder = RunFolder(config, workdir)
  if not start_over:
    folder.check_files(force_resume)
  try:
    folder._hold(force_resume)  # pylint: disable=protected-access
    if start_over:
      folder._archive()  # pylint: disable=protected-access
    else:
      folder.check_files(force_resume)  # another run may have written meanwhile
    folder._write_config()  # pylint: disable=protected-access
    folder.checkpoints = checkpointing.Checkpointer(
        folder.workdir, every_steps=config.checkpoint_every_steps, max_to_keep=config.keep_checkpoints,
        cleanup_tmp=True, identity=folder.identity, check_identity=not (force_resume or start_over))
  except BaseException:
    folder.release()
    raise
  return folder


def failure(e: BaseException, workdir: str, folder: Optional[RunFolder] = None):
  """The one-line error for ``e`` if it is a failed write (exit 74) or the storage unreachable past its
  deadline (69), saying what was saved; None for anything else."""
  unreachable = paths.storage_failure(e)
  if unreachable is not None:
    confirmed = folder.checkpoints.confirmed if folder is not None and folder.checkpoints is not None else None
    kept = (f'the newest checkpoint saved is step {confirmed} in {folder.root / "checkpoints"}'
            if confirmed is not None else 'this process confirmed no checkpoint saved')
    return paths.StorageUnreachable(f'{unreachable}; {kept}; rerun the same command once the bucket is '
                                    f'reachable (exit code 69)')
  return paths.write_failure(e, workdir)


def check(config, workdir: str, *, force: bool = False) -> None:
  """What ``open`` checks before it writes anything (invariants 2 and 3), and nothing else."""
  RunFolder(config, workdir).check_files(force)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def wandb_id(config, workdir: str) -> Optional[str]:
  """The run's wandb id: drawn on the first start and stored in ``<workdir>/wandb_id``, so a resumed run
  appends to its wandb run while a new run at the same path (the workdir deleted, or another machine) gets
  its own. Not a hash of the path: that resumed an old, unrelated wandb run. None (and no file) when the
  run does not log to wandb."""
  import secrets  # pylint: disable=g-import-not-at-top
  if config is not None and not writers.wandb_wanted(config.get('wandb', {})):
    return None
  path = paths.path(workdir) / WANDB_ID
  if paths.exists(path):
    stored = paths.read_text(path).strip()
    if stored:
      return stored
  new = secrets.token_hex(6)  # wandb ids: letters and digits, <= 64 characters
  if jax.process_index() == 0:
    paths.write_text(path, new + '\n')
  return new


# ---------------------------------------------------------------------------------------------------------
# The record of progress


class Segments:
  """The segments of a run: one per process that trained in the workdir (a run resumed after preemptions or
  kills has several), kept in ``<workdir>/segments.json`` and copied into results.json with their total.

  Each segment: ``from_step`` (where the process started: 0 or the checkpoint it resumed from), ``to_step``
  (the last step it is known to have reached), ``saved_to`` (the newest checkpoint it knows complete),
  ``wall_time_s``, ``start_time`` (unix), ``hardware``, ``ended`` ('finished', 'SIGTERM', 'SIGINT',
  'SIGHUP', or 'running' for a process that was killed or failed) and ``logged_to`` (the last step whose
  metrics reached the workdir). The file is rewritten at every logged step and every checkpoint.

  Redone steps: a process killed after logging step k but before its checkpoint of k is resumed from an
  earlier checkpoint c, and steps c+1..k run again (bit for bit the same). Their metrics are not written
  again: the resumed process's writer drops scalars at steps <= ``skip_to``, the newest step whose
  metrics the workdir's event files hold (read from the files: what reached the workdir, however the
  process before ended). A gs:// run's events count once copied to the bucket (writers.py), so steps
  whose events never left a killed machine are written again rather than lost.
  """

  def __init__(self, workdir: str, start_step: int, hardware: dict, *, write: bool = True):
    """``write``: False on the processes of a pod but the first (they only keep count)."""
    self.workdir = paths.normalize(workdir)
    self.path = paths.path(self.workdir) / SEGMENTS
    self.write = write
    self._copier = None  # a gs:// workdir's events copier (``wrap``): what it copied is what was logged
    self.earlier = self.read(self.path)
    # Only a resumed run skips steps: a fresh start (step 0) may follow a different config's failed start.
    self.skip_to = logged_steps(self.workdir) if start_step and write else 0  # process 0 writes the metrics
    self.start = time.time()
    self.current = {'from_step': start_step, 'to_step': start_step, 'saved_to': None, 'wall_time_s': 0.0,
                    'start_time': self.start, 'hardware': hardware, 'ended': 'running', 'logged_to': None}
    self._save()

  @staticmethod
  def read(path) -> list:
    try:
      earlier = paths.read_json(path)
    except (OSError, ValueError):  # none yet (or unreadable: start a new list rather than fail the run)
      return []
    return [s for s in earlier if isinstance(s, dict)] if isinstance(earlier, list) else []

  def _save(self) -> None:
    if self.write:
      paths.write_json(self.path, self.earlier + [self.current])

  def update(self, step: int, *, logged: bool = False, ended: str = None, saved_to: int = None) -> None:
    """Records that this process reached ``step`` (and wrote its metrics when ``logged``), saved the
    checkpoint of ``saved_to``, or ended."""
    self.current['to_step'] = step
    self.current['wall_time_s'] = round(time.time() - self.start, 3)
    if saved_to is not None:
      self.current['saved_to'] = saved_to
    if self._copier is not None:
      self.current['logged_to'] = self._copier.copied_to
    elif logged or ended:  # the writer is flushed (or closed) by then
      self.current['logged_to'] = step
    if ended:
      self.current['ended'] = ended
    self._save()

  def summary(self) -> dict:
    """For results.json: every segment and the total wall time."""
    segments = self.earlier + [self.current]
    return {'segments': segments, 'num_segments': len(segments),
            'total_wall_time_s': round(sum(s.get('wall_time_s') or 0 for s in segments), 3)}

  def wrap(self, writer):
    """``writer`` without the scalars of redone steps (none on a fresh start)."""
    self._copier = writers.copier(writer)
    return _SkipRedone(writer, self.skip_to) if self.skip_to else writer


class _SkipRedone(writers.Forwarding):
  """Forwards to ``inner``, dropping scalars at steps <= ``skip_to`` (already in the workdir's events)."""

  def __init__(self, inner, skip_to: int):
    super().__init__(inner)
    self.skip_to = skip_to

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    if step > self.skip_to:
      self.inner.write_scalars(step, scalars)


def logged_steps(workdir: str) -> int:
  """The newest step with a summary (a scalar: training metrics, or an evaluation, which is written after
  the same step's training metrics) in the event files at the top of ``workdir`` (0: none). Reads the files' TFRecords through the path layer (a bucket too); a record cut short by a
  kill ends a file."""
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  newest = 0
  root = paths.path(workdir)
  for name in paths.listdir(root):
    if not name.startswith(EVENTS_PREFIX):
      continue
    try:
      data = paths.read_bytes(root / name)
    except FileNotFoundError:
      continue
    for record in _records(data):
      try:
        event = event_pb2.Event.FromString(record)
      except Exception:  # pylint: disable=broad-except  (a damaged record: skip it)
        continue
      if event.step > newest and event.summary.value:
        newest = event.step
  return newest


def _records(data: bytes):
  """The payloads of a TFRecord file: [length u64][crc u32][payload][crc u32] each."""
  offset = 0
  while offset + 12 <= len(data):
    (length,) = struct.unpack_from('<Q', data, offset)
    start = offset + 12
    if start + length + 4 > len(data):
      return  # cut short by a kill
    yield data[start:start + length]
    offset = start + length + 4
