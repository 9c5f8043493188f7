"""The one path layer: every file the project reads or writes, local or ``gs://``, goes through here.

Paths are ``etils.epath.Path`` (the layer orbax already uses). For ``gs://`` epath would pick TensorFlow's
GCS client whenever TensorFlow is installed; that client ignores ``STORAGE_EMULATOR_HOST`` and cannot be
pointed anywhere but Google. So this module makes epath use gcsfs (fsspec) instead, before any gs:// path
is touched: ``EPATH_USE_TF=false``. Then one variable routes everything to an emulator:

  STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT   read by gcsfs and Google's client libraries; copied here
                                                into TENSORSTORE_GCS_HTTP_URL, the variable tensorstore
                                                (orbax's array I/O) reads instead.

Reading tfds data from ``gs://`` stays TensorFlow's job (tfds itself). TensorBoard's event writer is
TensorFlow's too: for a remote workdir it writes into ``staging_dir(workdir, ...)`` and
rsam/training/writers.py copies the files to the workdir through this layer.

Writes are whole or absent: a local file is written beside its target and renamed over it; a GCS object
appears only once its upload completes.

Storage outages: every request to the bucket (gcsfs's, so every gs:// read and write of the run, orbax's
metadata and commit files included) is retried with backoff (1 s doubling to 16 s) until it succeeds or
``set_storage_retry(seconds)`` (``config.storage_retry_s``, 900 s by default) has passed since its first
failure. A request that waited 5 s prints one line, ``waiting for gs://BUCKET: unreachable for 5 s ...``,
once per outage (and one when it is reachable again); past the deadline it raises ``StorageUnreachable``
(exit code 69, which a launcher reruns). Once a signal asks the run to stop (``stop_waiting``), every wait
ends within ``STOP_GRACE_S`` of it, so a preempted run still stops inside the preemption's notice. What
retries: connection refused or reset, timeouts, 5xx, 408 and 429 (gcsfs's ``is_retriable``); not 404 or
412, which mean something. gcsfs's own six tries (about 30 s, each failure logged with a traceback) are
replaced by this loop. orbax's array data goes through tensorstore, whose retries
rsam/training/checkpointing.py sets to the same deadline.
"""
import asyncio
import errno
import hashlib
import json
import os
import logging
import re
import socket
import sys
import threading
import time
import warnings
from typing import Any, Iterable, List, Union

os.environ['EPATH_USE_TF'] = 'false'  # before etils decides (it caches the choice at the first gs:// use)
if os.environ.get('STORAGE_EMULATOR_HOST'):
  _host = os.environ['STORAGE_EMULATOR_HOST']
  os.environ.setdefault('TENSORSTORE_GCS_HTTP_URL', _host if '://' in _host else f'http://{_host}')
  # An emulator takes no credentials: without a token tensorstore looks for gcloud's and logs an alarming
  # "Could not find the credentials file ... gcloud auth application-default login" line.
  os.environ.setdefault('GOOGLE_AUTH_TOKEN_FOR_TESTING', 'emulator')
  # Without credentials gcsfs logs a warning per bucket while it probes the bucket type; an emulator has none.
  logging.getLogger('gcsfs').setLevel(logging.ERROR)

from etils import epath  # pylint: disable=g-import-not-at-top,wrong-import-position

# If an epath call came first (it caches whether to use TensorFlow at its first call), decide again.
if hasattr(epath.gpath, '_is_tf_installed'):
  epath.gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access

from rsam.errors import ConfigError  # pylint: disable=wrong-import-position

PathLike = Union[str, os.PathLike]


class StorageError(ConfigError):
  """A workdir or output location that cannot be read or written (missing bucket, permissions, ...)."""


def path(p: PathLike) -> epath.Path:
  return p if isinstance(p, epath.Path) else epath.Path(os.fspath(p))


def is_remote(p: PathLike) -> bool:
  return '://' in os.fspath(p)


def normalize(p: PathLike) -> str:
  """A local path made absolute (orbax wants that), a remote one kept as it is (no trailing slash)."""
  text = os.fspath(p)
  return text.rstrip('/') if is_remote(text) else os.path.abspath(text)


def bucket(p: PathLike) -> str:
  """'gs://BUCKET' of a remote path ('' for a local one)."""
  text = os.fspath(p)
  if not is_remote(text):
    return ''
  scheme, rest = text.split('://', 1)
  return f'{scheme}://{rest.split("/", 1)[0]}'


def _fs(p: PathLike):
  """The fsspec filesystem behind a remote path."""
  return epath.backend.fsspec_backend.fs(os.fspath(p))


def refresh(p: PathLike) -> None:
  """Forgets cached listings of ``p`` (gcsfs caches them): the next read sees other processes' writes."""
  if is_remote(p):
    _fs(p).invalidate_cache(os.fspath(p))


def exists(p: PathLike) -> bool:
  refresh(p)
  return path(p).exists()


def read_text(p: PathLike) -> str:
  refresh(p)
  return path(p).read_text()


def read_json(p: PathLike) -> Any:
  """The parsed file; FileNotFoundError if absent, ValueError if it does not parse."""
  return json.loads(read_text(p))


def write_text(p: PathLike, text: str) -> None:
  """Writes ``text`` whole or not at all (a kill never leaves half a file)."""
  target = path(p)
  if is_remote(target):
    _upload(target, text.encode())
    return
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.parent / f'.{target.name}.tmp{os.getpid()}'
  tmp.write_text(text)
  os.replace(tmp, target)


def read_bytes(p: PathLike) -> bytes:
  refresh(p)
  return path(p).read_bytes()


def write_bytes(p: PathLike, data: bytes) -> None:
  """Writes ``data`` whole or not at all (a PNG, an .npz), as ``write_text``."""
  target = path(p)
  if is_remote(target):
    _upload(target, data)
    return
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.parent / f'.{target.name}.tmp{os.getpid()}'
  tmp.write_bytes(data)
  os.replace(tmp, target)


def _upload(target, data: bytes) -> None:
  """One request (a multipart upload): the object appears complete or not at all, and a retry after a lost
  reply writes the same bytes again (a resumable upload's session would be finished by then)."""
  _fs(target).pipe_file(os.fspath(target), data)
  refresh(target.parent)


def write_json(p: PathLike, obj: Any) -> None:
  write_text(p, json.dumps(obj, indent=2, default=str))


def makedirs(p: PathLike) -> None:
  """Creates a local folder (and its parents); a no-op for object stores, which have no folders."""
  if not is_remote(p):
    path(p).mkdir(parents=True, exist_ok=True)


def listdir(p: PathLike) -> List[str]:
  """Names in folder ``p`` ([] if it does not exist)."""
  refresh(p)
  folder = path(p)
  if not folder.exists():
    return []
  return sorted(child.name for child in folder.iterdir())


# Folders that never hold runs: version control, environments, and the tests' own fixture runs.
_SKIP_DIRS = ('.git', '.venv', '__pycache__', 'node_modules', '.pytest_cache')


def find(root: PathLike, filename: str) -> List[str]:
  """Every file called ``filename`` under ``root`` (any depth), sorted; skips .git, .venv and the like,
  and a repository's tests/fixtures. One listing call on GCS (recursive ``**`` globs are not allowed
  there)."""
  root_text = normalize(root)
  if is_remote(root_text):
    refresh(root_text)
    scheme = root_text.split('://', 1)[0]
    try:
      found = _fs(root_text).find(root_text)
    except FileNotFoundError:
      return []
    out = [f'{scheme}://{f}' for f in found if f.rsplit('/', 1)[-1] == filename]
    return sorted(f for f in out if not _skipped(f[len(root_text):].split('/')))
  out = []
  for folder, dirs, files in os.walk(root_text):
    rel = os.path.relpath(folder, root_text).split(os.sep)
    dirs[:] = [d for d in dirs if not _skipped(rel + [d])]
    out += [os.path.join(folder, f) for f in files if f == filename]
  return sorted(out)


def files_under(folder: PathLike) -> List[str]:
  """Relative names ('a/b.bin', '/'-separated) of every file under ``folder``, any depth, sorted."""
  text = normalize(folder)
  if is_remote(text):
    refresh(text)
    prefix = text.split('://', 1)[1].rstrip('/') + '/'
    return sorted(f[len(prefix):] for f in _fs(text).find(text) if f.startswith(prefix))
  out = []
  for base, _, files in os.walk(text):
    rel = os.path.relpath(base, text)
    out += [name if rel == '.' else f'{rel}/{name}'.replace(os.sep, '/') for name in files]
  return sorted(out)


def sha256(p: PathLike, chunk: int = 16 << 20) -> str:
  """Hex sha256 of a file's bytes, read in ``chunk``-byte pieces (hashlib releases the GIL on each, so
  threads hash several files at once)."""
  digest = hashlib.sha256()
  with path(p).open('rb') as f:
    while True:
      block = f.read(chunk)
      if not block:
        return digest.hexdigest()
      digest.update(block)


def _skipped(parts: Iterable[str]) -> bool:
  parts = [p for p in parts if p not in ('', '.')]
  if any(p in _SKIP_DIRS for p in parts):
    return True
  return any(a == 'tests' and b == 'fixtures' for a, b in zip(parts, parts[1:]))


def cache_dir() -> str:
  """This machine's cache folder for rsam: $RSAM_CACHE_DIR, else $XDG_CACHE_HOME/rsam, else ~/.cache/rsam."""
  explicit = os.environ.get('RSAM_CACHE_DIR')
  if explicit:
    return explicit
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'rsam')


def staging_dir(workdir: PathLike) -> str:
  """The local folder where libraries that can only write locally write for ``workdir`` (wandb's files;
  TensorBoard events before they are copied): the workdir itself when it is local; for a remote one a
  folder in the cache named after the workdir's hash, never a folder named after the bucket. A cache that
  cannot be created (RSAM_CACHE_DIR under a regular file, no permission) is one StorageError line."""
  text = normalize(workdir)
  if not is_remote(text):
    return text
  folder = _staging_path(text)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise StorageError(f'cannot create the local staging folder {folder} of --workdir {text} ({brief(e)}); '
                       f'point RSAM_CACHE_DIR (or XDG_CACHE_HOME) at a writable folder') from None
  return folder


def _staging_path(remote: str) -> str:
  return os.path.join(cache_dir(), 'staging', hashlib.sha1(remote.encode()).hexdigest()[:12])


def check_writable(workdir: PathLike, *, what: str = '--workdir') -> None:
  """Creates a local ``workdir`` if needed and proves it writable with a small probe file; for a bucket,
  checks that it exists (its first write, the lease, proves it writable: no probe object is left in a
  bucket by an outage). A StorageError names the folder (or bucket) and the cause otherwise."""
  text = normalize(workdir)
  if is_remote(text):
    try:
      found = _fs(text).exists(bucket(text).split('://', 1)[1])
    except OSError:  # reading the bucket's metadata may be forbidden while writing is allowed: the lease tells
      found = True
    if not found:
      raise StorageError(f'{what} {text}: {bucket(text)} does not exist; create it (gcloud storage buckets '
                         f'create {bucket(text)}) or fix the path')
    return
  try:
    makedirs(text)
    probe = path(text) / f'.rsam_write_probe_{os.getpid()}'
    probe.write_text('')
    probe.unlink()
  except FileNotFoundError as e:
    raise StorageError(f'{what} {text} cannot be created ({brief(e)}); choose a writable folder') from None
  except (PermissionError, OSError) as e:
    raise StorageError(f'{what} {text} is not writable ({brief(e)}); choose a writable folder') from None


def brief(e: BaseException) -> str:
  text = (getattr(e, 'strerror', None) or str(e) or type(e).__name__).strip().splitlines()
  return text[0][:160] if text else type(e).__name__


class WriteFailed(StorageError):
  """A write failed during the run (disk full, read-only file system, permissions): exit code 74."""
  exit_code = 74  # sysexits.h EX_IOERR


# The causes, as errno and as the text that tensorstore (orbax's array writer) and gcsfs put in messages.
_CAUSES = {errno.ENOSPC: 'no space left on the device', errno.EDQUOT: 'disk quota exceeded',
           errno.EROFS: 'read-only file system', errno.EACCES: 'permission denied',
           errno.EPERM: 'operation not permitted'}
_CAUSE_TEXTS = [(f"[os_error_code='{code}']", cause) for code, cause in _CAUSES.items()] + [
    (os.strerror(code), cause) for code, cause in _CAUSES.items()] + [
    ('PERMISSION_DENIED', 'permission denied'), ('403 Forbidden', 'permission denied')]


def _chain(e: BaseException):
  """``e`` and the exceptions it came from, as a traceback shows them (``raise ... from None`` ends it)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ if e.__cause__ is not None or e.__suppress_context__ else e.__context__


def write_failure_cause(e: BaseException):
  """(cause, path or None) if ``e`` (or an exception it came from) is a failed write for lack of space or
  permission; None for anything else (an out-of-memory RESOURCE_EXHAUSTED is not one)."""
  for link in _chain(e):
    if isinstance(link, OSError) and link.errno in _CAUSES:
      return _CAUSES[link.errno], link.filename
    text = str(link)
    for needle, cause in _CAUSE_TEXTS:
      if needle in text:
        quoted = re.findall(r'"((?:/|gs://)[^"]+)"', text)
        return cause, (quoted[-1] if quoted else None)
  return None


def write_failure(e: BaseException, workdir: PathLike):
  """The one-line WriteFailed for ``e`` if it is a failed write (see write_failure_cause), else None. It
  names the file or checkpoint that could not be written, the cause and the newest checkpoint, which a
  failed write never touches (orbax writes a checkpoint into a temporary folder and renames it when whole)."""
  found = write_failure_cause(e)
  if found is None:
    return None
  _FAILED_WRITE.append(True)
  # The coroutines of the failed save that orbax never awaited: Python warns about each at exit.
  warnings.filterwarnings('ignore', message='coroutine .* was never awaited', category=RuntimeWarning)
  cause, where = found
  remote = is_remote(normalize(workdir))
  local_disk = remote and (cause in (_CAUSES[errno.ENOSPC], _CAUSES[errno.EDQUOT]) or (
      where is not None and not is_remote(where)))
  if local_disk:  # a bucket is never "full": this machine's disk is, under the run's staging folder
    where = (f'{where or _staging_path(normalize(workdir))} (this machine\'s disk, where the gs:// run stages '
             f'its TensorBoard events: RSAM_CACHE_DIR; the bucket is fine)')
  where = where or normalize(workdir)
  checkpoint = re.match(r'(.*/checkpoints/[^/]+)', where)  # the checkpoint's folder, not a file deep inside it
  where = checkpoint.group(1) if checkpoint else where
  directory = path(normalize(workdir)) / 'checkpoints'
  try:
    steps = [int(n) for n in listdir(directory) if n.isdigit()]
  except Exception:  # the folder cannot be listed either: say nothing about it
    steps = None
  kept = (f'the newest checkpoint, step {max(steps)} in {directory}, is intact' if steps else
          'no checkpoint was written yet' if steps is not None else f'nothing in {directory} was changed')
  fix = ('free space on this machine\'s disk or point RSAM_CACHE_DIR at a larger one' if local_disk else
         'free space or make it writable')
  return WriteFailed(f'cannot write {where}: {cause}; {kept}; {fix}, then rerun the same command to resume')


def probe_writable(folder: PathLike) -> None:
  """Writes and deletes a small file in local ``folder``; an OSError naming the folder if that fails. Run
  before a checkpoint save: a folder that became read-only fails here, not inside orbax's save threads
  (which then wait minutes for a folder that was never created before they give up). A bucket is not
  probed: its writes fail (or wait out an outage) on their own, and a probe object would outlive an outage."""
  if is_remote(folder):
    return
  probe = path(folder) / f'.rsam_write_probe_{socket.gethostname()}_{os.getpid()}'  # one per process of a pod
  try:
    makedirs(folder)
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    raise OSError(e.errno, e.strerror or str(e), os.fspath(folder)) from None


_FAILED_WRITE = []  # set once a failed write was reported: what orbax's save threads log after it is noise


class _QuietWriteFailures(logging.Filter):
  """Drops the tracebacks that orbax's save threads log for a failed write, and, once one was reported,
  whatever those threads log while they give up (timeouts waiting for the folder that was never created):
  the run reports the failure in one line."""

  def filter(self, record):
    if record.exc_info and record.exc_info[1] is not None and (
        write_failure_cause(record.exc_info[1]) or storage_failure(record.exc_info[1])):
      return False
    return not ((_FAILED_WRITE or _RETRY.gave_up) and record.levelno >= logging.ERROR and
                ('_SignalingThread' in str(record.msg) or 'background save thread' in str(record.msg)))


def quiet_write_failures() -> None:
  """Installs the filter on absl's logger (orbax logs through absl), once."""
  logger = logging.getLogger('absl')
  if not any(isinstance(f, _QuietWriteFailures) for f in logger.filters):
    logger.addFilter(_QuietWriteFailures())


# ---------------------------------------------------------------------------------------------------------
# Storage outages: every gcsfs request retried up to a deadline (the module docstring).

DEFAULT_STORAGE_RETRY_S = 900.0
STOP_GRACE_S = 15.0  # after a stop signal: a TPU preemption leaves about 30 s
REPORT_AFTER_S = 5.0  # a wait this long is an outage worth a line; shorter ones (a lone 503) stay quiet
_MAX_DELAY_S = 16.0


class StorageUnreachable(StorageError):
  """The bucket did not answer within ``config.storage_retry_s`` (or within STOP_GRACE_S of a stop signal):
  exit code 69 (sysexits.h EX_UNAVAILABLE), rerun once the bucket is reachable."""
  exit_code = 69


class _Retry:
  """The process's retry policy and the state of the current outage (shared by every thread)."""

  def __init__(self):
    self.deadline_s = DEFAULT_STORAGE_RETRY_S
    self.stop_at = None  # monotonic time by which every wait ends, once a stop signal came
    self.lock = threading.Lock()
    self.gave_up = False  # a request ran past its deadline: threads may still wait on the storage
    self.outage_since = None  # monotonic time of the first failure of the current outage
    self.reported = False
    self.where = ''

  def limit(self, started: float) -> float:
    """The monotonic time at which a request first failed at ``started`` stops waiting."""
    end = started + self.deadline_s
    return end if self.stop_at is None else min(end, self.stop_at)

  def failed(self, where: str, e: BaseException, first_failure: float) -> None:
    now = time.monotonic()
    with self.lock:
      if self.outage_since is None:
        self.outage_since, self.reported, self.where = first_failure, False, where
      waited = now - self.outage_since
      if self.reported or waited < REPORT_AFTER_S:
        return
      self.reported = True
    say(f'waiting for {where}: unreachable for {waited:.0f} s ({brief(e)}); retrying until '
        f'{self.deadline_s:g} s (config.storage_retry_s)', stream=sys.stderr)

  def succeeded(self) -> None:
    if self.outage_since is None:
      return
    with self.lock:
      since, reported, where = self.outage_since, self.reported, self.where
      self.outage_since, self.reported = None, False
    if since is not None and reported:
      say(f'{where} is reachable again after {time.monotonic() - since:.0f} s', stream=sys.stderr)


_RETRY = _Retry()


def set_storage_retry(seconds: float) -> None:
  """How long a storage request is retried from its first failure (``config.storage_retry_s``)."""
  _RETRY.deadline_s = float(seconds)
  _RETRY.stop_at = None


def storage_retry_s() -> float:
  return _RETRY.deadline_s


def stop_waiting() -> None:
  """A signal asked the run to stop: storage waits end within STOP_GRACE_S from now (safe in a signal
  handler: it sets one number)."""
  if _RETRY.stop_at is None:
    _RETRY.stop_at = time.monotonic() + STOP_GRACE_S


def stopping() -> bool:
  return _RETRY.stop_at is not None


def gave_up() -> bool:
  """Whether a storage request of this process gave up (other threads may still wait on the storage)."""
  return _RETRY.gave_up


def say(text: str, stream=None) -> None:
  """Prints a progress line; a closed output (a dropped ssh session's pipe) never stops the run."""
  try:
    print(text, file=stream or sys.stdout, flush=True)
  except (BrokenPipeError, OSError, ValueError):
    pass


def _transient(e: BaseException) -> bool:
  if isinstance(e, (FileNotFoundError, FileExistsError, PermissionError, StorageUnreachable)):
    return False
  try:
    from gcsfs import retry as gcsfs_retry  # pylint: disable=g-import-not-at-top
    if gcsfs_retry.is_retriable(e):
      return True
  except ImportError:
    pass
  import aiohttp  # pylint: disable=g-import-not-at-top
  return isinstance(e, (asyncio.TimeoutError, TimeoutError, ConnectionError, aiohttp.ClientError))


def _bucket_of_request(args) -> str:
  """'gs://BUCKET' of a gcsfs request (method, path, *args): 'b/{}/o/{}' with its arguments, or a URL."""
  path = str(args[1]) if len(args) > 1 else ''
  if path.startswith('b/{}') and len(args) > 2:
    return f'gs://{args[2]}'
  found = re.search(r'/b/([^/?{]+)', path)
  return f'gs://{found.group(1)}' if found else 'the bucket'


def _with_deadline(request):
  """gcsfs's ``_request`` (undecorated) retried until the deadline (the module docstring)."""

  async def retried(self, *args, **kwargs):
    first_failure, delay = None, 1.0
    while True:
      attempt = time.monotonic()
      try:
        result = await request(self, *args, **kwargs)
      except Exception as e:  # pylint: disable=broad-except
        if not _transient(e):
          raise
        first_failure = attempt if first_failure is None else first_failure
        where = _bucket_of_request(args)
        limit = _RETRY.limit(first_failure)
        if attempt >= limit:  # the last try began at the deadline (a late wake-up still tries once more)
          _RETRY.gave_up = True
          why = ('a signal asked the run to stop' if _RETRY.stop_at is not None and attempt >= _RETRY.stop_at
                 else f'over config.storage_retry_s={_RETRY.deadline_s:g}')
          raise StorageUnreachable(f'{where} unreachable for {time.monotonic() - first_failure:.0f} s '
                                   f'({brief(e)}); gave up: {why}') from e
        _RETRY.failed(where, e, first_failure)
        wake = min(time.monotonic() + delay, limit)
        # At least ~8 tries per deadline: after an outage ends, one unlucky try (a lone 503) must not be the
        # last before a short deadline; a 900 s deadline keeps the 16 s cap.
        delay = min(delay * 2, _MAX_DELAY_S, max(_RETRY.deadline_s / 8, 0.25))
        while time.monotonic() < wake and (_RETRY.stop_at is None or time.monotonic() < _RETRY.stop_at):
          await asyncio.sleep(min(0.25, max(wake - time.monotonic(), 0.0)))
        continue
      _RETRY.succeeded()
      return result
  retried.rsam_deadline = True
  return retried


def _install_retries() -> None:
  # gcsfs logs each failed try with a traceback (this module reports instead), and a line at import.
  logging.getLogger('gcsfs').setLevel(logging.CRITICAL)
  try:
    import gcsfs  # pylint: disable=g-import-not-at-top
  except ImportError:  # no gcsfs: no gs:// paths either
    return
  current = gcsfs.GCSFileSystem._request  # pylint: disable=protected-access
  if getattr(current, 'rsam_deadline', False):
    return
  raw = getattr(current, '__wrapped__', current)  # gcsfs's retry_request decorator keeps the original
  gcsfs.GCSFileSystem._request = _with_deadline(raw)  # pylint: disable=protected-access


_install_retries()


def storage_failure(e: BaseException):
  """The StorageUnreachable behind ``e`` (it, or an exception it came from; tensorstore's and orbax's
  errors for an unreachable bucket too), else None."""
  for link in _chain(e):
    if isinstance(link, StorageUnreachable):
      return link
  for link in _chain(e):
    text = str(link)
    if 'gs://' in text or 'storage.googleapis' in text or 'gcs' in text.lower():
      if any(sign in text for sign in ('UNAVAILABLE', 'DEADLINE_EXCEEDED', 'Connection refused',
                                       'Couldn\'t connect', 'Failed to connect', 'Connection reset')):
        return StorageUnreachable(f'the bucket was unreachable ({brief(link)})')
  return None
