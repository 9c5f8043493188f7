"""Exclusive ownership of a workdir: a lease in ``<workdir>/lease.json`` that only one run holds.

Two runs on one workdir would overwrite each other's checkpoints and results. A run takes the lease before
it writes anything to the workdir and gives it back when it ends (finished, stopped by an error or by a
signal): the file then stays, marked ``released``, a record of the last run. The lease records the owner
(``user@host:pid``), host, pid, a random token and a heartbeat (unix time) that a background thread renews
every ``timeout_s / 10`` seconds.

A lease is stale, and the next run takes it over, when its heartbeat is older than ``timeout_s``
(``config.lease_timeout_s``, default 300 s) or, at once, when it was taken on this host by a process that
no longer exists (a ``kill -9`` or a crash). ``--force_resume`` takes over a live lease too; the run that
held it finds out at its next heartbeat and stops without writing anything more (exit 75). Otherwise a
second run is refused with one ``error:`` line naming the owner (exit 75, "try again later").

Every write is create-only or compare-and-swap, so of two runs racing for one workdir exactly one wins:

  local     create: the record is written to a temporary file and hard-linked to lease.json (``link``
            fails if the name exists); takeover, heartbeat and release: read, compare, replace while
            holding ``flock`` on the workdir folder.
  gs://     (GCS has no locks) create: an upload with ``ifGenerationMatch=0``; takeover, heartbeat and
            release: an upload with ``ifGenerationMatch=<the generation read>``. A lost race is HTTP 412,
            which gcsfs raises as FileExistsError. Through gcsfs's own client (the path layer's,
            rsam/training/paths.py), so STORAGE_EMULATOR_HOST reaches it as it reaches every file.

Heartbeats compare wall clocks of different hosts: they must agree to well within ``timeout_s`` (NTP does).
"""
import contextlib
import getpass
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Optional, Tuple

from rsam.errors import ConfigError
from rsam.training import paths

NAME = 'lease.json'
EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL: the workdir is busy; try again later


class LeaseHeld(ConfigError):
  """Another run holds the workdir's lease."""
  exit_code = EXIT_CODE


class LeaseLost(ConfigError):
  """This run's lease was taken over (``--force_resume`` elsewhere); it stops without writing."""
  exit_code = EXIT_CODE


# ---------------------------------------------------------------------------------------------------------
# Storage: create-only and compare-and-swap writes of one small file. ``version`` identifies what was read:
# the GCS generation, or the bytes of the local file.


class _Local:
  def __init__(self, path: str):
    self.path = path
    self.folder = os.path.dirname(path)

  @contextlib.contextmanager
  def _locked(self):
    import fcntl
    fd = os.open(self.folder, os.O_RDONLY)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
      yield
    finally:
      os.close(fd)  # releases the lock

  def create(self, text: str) -> bytes:
    os.makedirs(self.folder, exist_ok=True)
    tmp = f'{self.path}.{uuid.uuid4().hex}.tmp'
    with open(tmp, 'w') as f:
      f.write(text)
    try:
      os.link(tmp, self.path)  # FileExistsError if the name exists: create-only, and never half-written
    finally:
      os.unlink(tmp)
    return text.encode()

  def read(self) -> Tuple[Optional[str], object]:
    try:
      with open(self.path, 'rb') as f:
        data = f.read()
    except FileNotFoundError:
      return None, None
    return data.decode(errors='replace'), data

  def replace(self, text: str, version) -> bytes:
    with self._locked():
      if self.read()[1] != version:
        raise FileExistsError(self.path)
      paths.write_text(self.path, text)
    return text.encode()


class _Gcs:
  def __init__(self, path: str):
    self.path = path
    self.fs = paths._fs(path)  # pylint: disable=protected-access
    self.bucket, self.key = path.split('://', 1)[1].split('/', 1)

  def _upload(self, text: str, generation) -> int:
    """Uploads ``text`` if the object's generation is ``generation`` (0: if there is no object). A multipart
    upload: the emulator ignores the precondition on a plain media upload (GCS honours it on both)."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n'
            f'{json.dumps({"name": self.key})}\r\n--{boundary}\r\nContent-Type: application/json\r\n\r\n'
            f'{text}\r\n--{boundary}--').encode()
    reply = self.fs.call('POST', f'{self.fs._location}/upload/storage/v1/b/{self.bucket}/o',  # pylint: disable=protected-access
                         uploadType='multipart', ifGenerationMatch=str(generation), data=body,
                         headers={'Content-Type': f'multipart/related; boundary={boundary}'}, json_out=True)
    return int(reply['generation'])

  def create(self, text: str) -> int:
    return self._upload(text, 0)

  def read(self) -> Tuple[Optional[str], object]:
    try:
      meta = self.fs.call('GET', 'b/{}/o/{}', self.bucket, self.key, json_out=True)
      generation = int(meta['generation'])
      _, data = self.fs.call('GET', 'b/{}/o/{}', self.bucket, self.key, alt='media',
                             ifGenerationMatch=str(generation))
    except (FileNotFoundError, FileExistsError):  # absent, or replaced between the two requests
      return None, None
    return data.decode(errors='replace'), generation

  def replace(self, text: str, version) -> int:
    return self._upload(text, version)


def _store(workdir: str):
  path = f'{workdir}/{NAME}'
  return _Gcs(path) if paths.is_remote(workdir) else _Local(path)


# ---------------------------------------------------------------------------------------------------------


def _record(token: str, timeout_s: float, started: float) -> dict:
  host, pid = socket.gethostname(), os.getpid()
  try:
    user = getpass.getuser()
  except Exception:  # no user name in a bare container
    user = str(os.getuid())
  return {'owner': f'{user}@{host}:{pid}', 'host': host, 'pid': pid, 'user': user, 'token': token,
          'started': started, 'heartbeat': time.time(), 'timeout_s': timeout_s}


def _pid_gone(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return True
  except (PermissionError, ValueError, TypeError, OverflowError):  # alive (another user's) or no pid
    return False
  return False


def stale(record: Optional[dict], timeout_s: float, now: Optional[float] = None) -> Optional[str]:
  """Why a lease ``record`` may be taken over (None: it is live)."""
  if not isinstance(record, dict):
    return 'the lease file does not read'
  if record.get('released'):
    return 'released'
  now = time.time() if now is None else now
  heartbeat = record.get('heartbeat')
  if not isinstance(heartbeat, (int, float)):
    return 'the lease has no heartbeat'
  if record.get('host') == socket.gethostname() and _pid_gone(record.get('pid')):
    return f'process {record.get("pid")} on this host is gone'
  age = now - heartbeat
  if age > timeout_s:
    return f'its heartbeat is {age:.0f} s old, over the {timeout_s:g} s timeout'
  return None


def _parse(text: Optional[str]) -> Optional[dict]:
  try:
    record = json.loads(text)
  except (TypeError, ValueError):
    return None
  return record if isinstance(record, dict) else None


class Lease:
  """A held lease; ``check()`` raises LeaseLost once another run took it over; ``release()`` gives it back."""

  def __init__(self, workdir: str, store, record: dict, version, timeout_s: float):
    self.workdir, self._store, self.record, self._version = workdir, store, record, version
    self.timeout_s = timeout_s
    self.lost: Optional[str] = None
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, name='rsam-lease-heartbeat', daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    interval = max(self.timeout_s / 10, 0.05)
    while not self._stop.wait(interval):
      record = dict(self.record, heartbeat=time.time())
      try:
        self._version = self._store.replace(json.dumps(record), self._version)
        self.record = record
      except (FileExistsError, FileNotFoundError):
        now = _parse(self._store.read()[0]) or {}
        self.lost = (f'the lease of --workdir {self.workdir} was taken over by '
                     f'{now.get("owner", "another run")}; this run stopped without writing more')
        return
      except Exception as e:  # a network error: try again at the next beat; stale only after timeout_s
        print(f'warning: lease heartbeat in {self.workdir} failed ({paths.brief(e)}); retrying',
              file=sys.stderr, flush=True)

  def check(self) -> None:
    if self.lost:
      raise LeaseLost(self.lost)

  def release(self) -> None:
    self._stop.set()
    self._thread.join()
    if self.lost:
      return
    try:  # a compare-and-swap write, not a delete (the emulator ignores a delete's precondition)
      self._store.replace(json.dumps(dict(self.record, released=time.time())), self._version)
    except Exception as e:  # taken over meanwhile, or the storage failed: never hide the run's own outcome
      if paths.write_failure_cause(e) is not None:
        return  # disk full or read-only: the run's error line says so; the next run takes it over (pid gone)
      print(f'warning: could not release the lease {self._store.path} ({paths.brief(e)})', file=sys.stderr,
            flush=True)


def acquire(workdir: str, *, timeout_s: float, force: bool = False) -> Lease:
  """Takes the lease of ``workdir`` (created if needed) or raises LeaseHeld (or StorageError)."""
  workdir = paths.normalize(workdir)
  store = _store(workdir)
  token, started = uuid.uuid4().hex, time.time()
  for _ in range(5):  # each pass ends unless the lease vanished or changed between two requests
    record = _record(token, timeout_s, started)
    text = json.dumps(record)
    try:
      return Lease(workdir, store, record, store.create(text), timeout_s)
    except FileExistsError:
      pass
    current_text, version = store.read()
    if version is None:
      continue  # released meanwhile: create again
    current = _parse(current_text)
    if current is not None and current.get('token') == token:  # our create went through, its reply did not
      return Lease(workdir, store, current, version, timeout_s)
    why = stale(current, timeout_s)
    owner = (current or {}).get('owner', '?')
    if why is None and not force:
      age = time.time() - current['heartbeat']
      raise LeaseHeld(f'--workdir {workdir} is in use by run {owner} (started '
                      f'{time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(current.get("started", 0)))}, '
                      f'heartbeat {age:.0f} s ago); wait for it to end, use another --workdir, or pass '
                      f'--force_resume to take it over (that run then stops)')
    try:
      version = store.replace(text, version)
    except (FileExistsError, FileNotFoundError):
      continue  # another run took it over first: look again
    if why != 'released':
      print(f'took over the lease of --workdir {workdir} from {owner} ({why or "--force_resume"})', flush=True)
    return Lease(workdir, store, record, version, timeout_s)
  raise LeaseHeld(f'--workdir {workdir}: the lease kept changing while this run tried to take it (other runs '
                  f'are starting on it); start one run per workdir')


def check(lease: Optional[Lease]) -> None:
  """Raises LeaseLost if ``lease`` (None on the processes of a pod but the first) was taken over."""
  if lease is not None:
    lease.check()


def release(lease: Optional[Lease]) -> None:
  if lease is not None:
    lease.release()


def acquire_for_run(config, workdir: str, *, force: bool) -> Optional[Lease]:
  """The lease for a training run: process 0 takes it; on a pod every process stops if it could not."""
  import jax
  from jax.experimental import multihost_utils
  import numpy as np
  timeout_s = float(config.get('lease_timeout_s') or 300)
  lease, error = None, None
  if jax.process_index() == 0:
    paths.check_writable(workdir)
    try:
      lease = acquire(workdir, timeout_s=timeout_s, force=force)
    except OSError as e:
      error = paths.StorageError(f'cannot write the lease {workdir}/{NAME} ({paths.brief(e)}); choose a '
                                 f'writable --workdir')
    except ConfigError as e:
      error = e
  if jax.process_count() > 1:
    failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if failed and error is None:
      raise LeaseHeld(f'process 0 could not take the lease of --workdir {workdir} (its error line says why)')
  if error is not None:
    raise error
  return lease
