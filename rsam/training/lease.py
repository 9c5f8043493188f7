"""Exclusive ownership of a workdir: a lease in ``<workdir>/lease.json`` that only one run holds.

Two runs on one workdir would overwrite each other's checkpoints and results. A run takes the lease before
it writes anything to the workdir and gives it back when it ends (finished, stopped by an error or by a
signal): the file then stays, marked ``released``, a record of the last run. The lease records the owner
(``user@host:pid``), host, pid, the run's identity across machines (``owner_id``: the environment variable
``RSAM_LEASE_OWNER``, which a launcher sets per run, e.g. the run's name; absent: none), a random token and
a heartbeat (unix time) that a background thread renews every ``timeout_s / 10`` seconds.

A lease is stale, and the next run takes it over, when its heartbeat is older than ``timeout_s``
(``config.lease_timeout_s``, default 300 s) or, at once, when it was taken on this host by a process that
no longer exists (a ``kill -9`` or a crash), or by the same ``owner_id`` (the same run, restarted on a VM
recreated under another hostname). Otherwise a second run is refused with one ``error:`` line naming the
owner (exit 75). A heartbeat from the future (the other host's clock is ahead) counts as live and says so.

``--force_resume`` on a live lease asks its holder to hand over: it marks the record (``handover_to``) and
waits. The holder sees the mark at its next heartbeat, stops at the next step without writing more
(``LeaseLost``, exit 75), lets its checkpoint save in flight complete and releases the lease; only then
does the new run take it (or once the holder's heartbeat goes stale: it died). So the new run never
deletes a live run's save in progress.

Lost replies: a write that reached the bucket but whose reply was lost is retried, and the retry fails its
precondition (412). ``acquire`` and the heartbeat both read the record back and recognise their own write
(their token and heartbeat). A ``lease.json`` deleted under a live run (by hand, or the bucket emptied) is
written again with a warning line, not reported as "taken over"; the training loop then checks whether
the rest of the folder went with it (rsam/training/run_folder.py).

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


OWNER_ENV = 'RSAM_LEASE_OWNER'


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
  return {'owner': f'{user}@{host}:{pid}', 'host': host, 'pid': pid, 'user': user,
          'owner_id': os.environ.get(OWNER_ENV) or None, 'token': token, 'started': started,
          'heartbeat': time.time(), 'timeout_s': timeout_s}


def _who(record: dict) -> str:
  """'user@host:pid' and, when the launcher named the run, its RSAM_LEASE_OWNER."""
  owner = record.get('owner', 'another run')
  return f'{owner} ({OWNER_ENV}={record["owner_id"]})' if record.get('owner_id') else owner


def age_text(record: dict, now: Optional[float] = None) -> str:
  """'heartbeat 12 s ago', or for a heartbeat ahead of this host's clock, 'heartbeat 90 s in the future
  (the clocks of the two hosts differ)'."""
  now = time.time() if now is None else now
  age = now - record['heartbeat']
  if age < 0:
    return (f'heartbeat {-age:.0f} s in the future by this host\'s clock (the two hosts\' clocks differ; '
            f'fix the clock, e.g. with NTP)')
  return f'heartbeat {age:.0f} s ago'


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
  mine = os.environ.get(OWNER_ENV)
  if mine and record.get('owner_id') == mine and (record.get('host'), record.get('pid')) != (
      socket.gethostname(), os.getpid()):
    return f'the same run ({OWNER_ENV}={mine}) started again, here'
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
  """A held lease. ``check()`` raises LeaseLost once another run took it over or asked for it
  (``--force_resume``), and StorageUnreachable once its heartbeat could not reach the storage within the
  deadline; ``release()`` gives it back. ``deleted``: lease.json vanished under it (written again)."""

  def __init__(self, workdir: str, store, record: dict, version, timeout_s: float):
    self.workdir, self._store, self.record, self._version = workdir, store, record, version
    self.timeout_s = timeout_s
    self.lost: Optional[str] = None
    self.handover: Optional[str] = None  # who asked for the workdir (--force_resume): stop, then release
    self.failed: Optional[BaseException] = None
    self.deleted = False
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, name='rsam-lease-heartbeat', daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    interval = max(self.timeout_s / 10, 0.05)
    while not self._stop.wait(interval):
      try:
        self._renew()
      except paths.StorageUnreachable as e:  # past config.storage_retry_s: the loop stops with exit 69
        self.failed = e
        return
      except Exception as e:  # pylint: disable=broad-except  (anything else: try again at the next beat)
        paths.say(f'warning: lease heartbeat in {self.workdir} failed ({paths.brief(e)}); retrying',
                  stream=sys.stderr)
      if self.lost:
        return

  def _renew(self) -> None:
    record = dict(self.record, heartbeat=time.time())
    try:
      self._version = self._store.replace(json.dumps(record), self._version)
      self.record = record
      return
    except (FileExistsError, FileNotFoundError):
      pass
    text, version = self._store.read()
    now = _parse(text)
    if version is None:  # deleted (by hand, or the bucket emptied): not "taken over"; written again
      self.deleted = True
      try:
        self._version = self._store.create(json.dumps(record))
        self.record = record
        paths.say(f'warning: the lease file {self._store.path} was deleted while this run held it; '
                  f'written again', stream=sys.stderr)
        return
      except FileExistsError:  # another run created it meanwhile
        text, version = self._store.read()
        now = _parse(text)
    now = now or {}
    if now.get('token') == self.record['token']:  # our own write whose reply was lost (or a handover mark)
      self._version, self.record = version, now
      if now.get('handover_to') and not self.handover:
        self.handover = now['handover_to']
      return
    self.lost = (f'the lease of --workdir {self.workdir} was taken over by {_who(now)}; this run stopped '
                 f'without writing more')

  def check(self) -> None:
    if self.failed is not None:
      raise self.failed
    if self.lost:
      raise LeaseLost(self.lost)
    if self.handover:
      raise LeaseLost(f'--force_resume from {self.handover} asked for --workdir {self.workdir}: this run '
                      f'stopped without writing more; its last checkpoint completes and the lease is handed '
                      f'over')

  def release(self) -> None:
    self._stop.set()
    self._thread.join()
    if self.lost:
      return
    for _ in range(3):  # a compare-and-swap write, not a delete (the emulator ignores a delete's precondition)
      try:
        self._store.replace(json.dumps(dict(self.record, released=time.time())), self._version)
        return
      except (FileExistsError, FileNotFoundError):  # a lost reply, a handover mark, or deleted: look again
        text, version = self._store.read()
        now = _parse(text) or {}
        if version is None or now.get('token') != self.record['token']:
          return  # deleted, or another run's now
        if now.get('released'):
          return  # our own release whose reply was lost
        self._version, self.record = version, now
      except Exception as e:  # pylint: disable=broad-except  (the storage failed: never hide the run's outcome)
        if paths.write_failure_cause(e) is None:
          paths.say(f'warning: could not release the lease {self._store.path} ({paths.brief(e)}); the next '
                    f'run takes it over after {self.timeout_s:g} s', stream=sys.stderr)
        return  # disk full or read-only: the run's error line says so; the next run takes it over (pid gone)


def acquire(workdir: str, *, timeout_s: float, force: bool = False) -> Lease:
  """Takes the lease of ``workdir`` (created if needed) or raises LeaseHeld (or StorageError). With ``force``
  a live holder is asked to hand over, and this waits until it did (or died)."""
  workdir = paths.normalize(workdir)
  store = _store(workdir)
  token, started = uuid.uuid4().hex, time.time()
  asked = None  # the token of the holder asked to hand over
  changes = 0
  while changes < 5 or asked is not None:  # a pass ends unless the lease changed between two requests
    changes += 1
    record = _record(token, timeout_s, started)
    text = json.dumps(record)
    try:
      return Lease(workdir, store, record, store.create(text), timeout_s)
    except FileExistsError:
      pass
    current_text, version = store.read()
    if version is None:
      continue  # released and deleted meanwhile: create again
    current = _parse(current_text)
    if current is not None and current.get('token') == token:  # our create went through, its reply did not
      return Lease(workdir, store, current, version, timeout_s)
    why = stale(current, timeout_s)
    if why is None and not force:
      raise LeaseHeld(f'--workdir {workdir} is in use by run {_who(current)} (started '
                      f'{time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(current.get("started", 0)))}, '
                      f'{age_text(current)}); wait for it to end, use another --workdir, or pass '
                      f'--force_resume to take it over (that run then stops)')
    if why is None:  # --force_resume on a live run: ask it to hand over, then wait until it did
      if current.get('token') != asked:
        try:
          store.replace(json.dumps(dict(current, handover_to=_who(record))), version)
        except (FileExistsError, FileNotFoundError):
          continue  # it heartbeat meanwhile (or our mark's reply was lost): look again
        asked = current.get('token')
        paths.say(f'--force_resume: asked run {_who(current)} to stop and hand over --workdir {workdir}; '
                  f'waiting for it (it stops at its next heartbeat, within {timeout_s / 10:.0f} s, and its '
                  f'checkpoint in flight completes)')
      time.sleep(min(max(timeout_s / 20, 0.05), 2.0))
      continue
    try:
      version = store.replace(text, version)
    except (FileExistsError, FileNotFoundError):
      continue  # another run took it over first: look again
    if why != 'released':
      paths.say(f'took over the lease of --workdir {workdir} from {_who(current or {})} ({why})')
    elif asked is not None:
      paths.say(f'run {_who(current)} handed over --workdir {workdir}')
    return Lease(workdir, store, record, version, timeout_s)
  raise LeaseHeld(f'--workdir {workdir}: the lease kept changing while this run tried to take it (other runs '
                  f'are starting on it); start one run per workdir')
