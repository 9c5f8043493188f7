"""A fault-injecting HTTP proxy for the GCS emulator: the real faults a run meets on the way to a bucket.

    proxy = FaultProxy(emulator.url)          # a process of its own on 127.0.0.1, in front of the emulator
    env = proxy.env(emulator.env())           # STORAGE_EMULATOR_HOST points at the proxy
    proxy.add('drop_reply', match='name=run/lease.json', times=1)   # forward, then cut the reply
    proxy.outage(10)                          # refuse every connection for 10 s (the port is closed)
    proxy.events()                            # what the proxy did, one dict per fault

What each fault does, at the TCP level (the client sees the real thing, not a mock):

  drop_reply  the request reaches the emulator (it is applied there), the reply never reaches the client:
              the connection is reset after the emulator answered. A retried write then finds its own
              first attempt already applied (a 412 on a conditional write).
  reset       the connection is reset before the request is forwarded (nothing reaches the emulator).
  503         the proxy answers 503 Service Unavailable itself (nothing reaches the emulator).
  outage      for N seconds the listening port is closed (connection refused) and every open connection
              is reset; then it listens again on the same port.

One rule of GCS the proxy keeps where fake-gcs-server does not: a request to a resumable upload session that
already completed is answered as the completing request was (GCS answers 200 with the object; the emulator
404), so a lost reply to the last chunk of a resumable upload is the fault GCS shows, not an emulator's.

Rules (``add``) match a substring of the request line ('POST /upload/storage/v1/b/B/o?...name=...'); each
applies to the next ``times`` matching requests (-1: all) with probability ``p``. Requests are forwarded
whole (the body read to its end, ``Expect: 100-continue`` answered here), so a rule can see the object's
name of an upload. The proxy runs in a subprocess, controlled through its stdin (one JSON command a line),
so a test process busy with training (holding the GIL) never slows it.
"""
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time

_HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------------------------------
# The client side, used by the tests.


class FaultProxy:
  def __init__(self, upstream: str, seed: int = 0):
    self.upstream = upstream
    self._process = subprocess.Popen([sys.executable, os.path.abspath(__file__), upstream, str(seed)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    ready = json.loads(self._process.stdout.readline())
    self.port = ready['port']
    self.url = f'http://127.0.0.1:{self.port}'
    self._lock = threading.Lock()

  def _command(self, **command):
    with self._lock:
      self._process.stdin.write(json.dumps(command) + '\n')
      self._process.stdin.flush()
      return json.loads(self._process.stdout.readline())

  def add(self, action: str, match: str = '', times: int = 1, p: float = 1.0) -> None:
    """A rule: ``action`` ('drop_reply', 'reset', '503') on the next ``times`` requests whose request line
    contains ``match`` (-1: every one), each with probability ``p``."""
    self._command(op='add', action=action, match=match, times=times, p=p)

  def clear(self) -> None:
    self._command(op='clear')

  def outage(self, seconds: float) -> None:
    """Connections refused (and open ones reset) for ``seconds``, starting now; returns at once."""
    self._command(op='outage', seconds=seconds)

  def end_outage(self) -> None:
    """Listens again now (an outage's remaining seconds dropped)."""
    self._command(op='end_outage')

  def events(self) -> list:
    """[{'action', 'request', 'status' (the emulator's answer, for drop_reply), 'time'}] so far."""
    return self._command(op='events')['events']

  def requests(self) -> list:
    """Every request line forwarded so far; a multipart upload's with ' (object NAME)' after it."""
    return self._command(op='requests')['requests']

  def env(self, base: dict) -> dict:
    """``base`` (an emulator's env) with every gs:// path sent through this proxy."""
    return dict(base, STORAGE_EMULATOR_HOST=self.url)

  def stop(self) -> None:
    if self._process.poll() is None:
      self._process.stdin.close()
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()


# ---------------------------------------------------------------------------------------------------------
# The proxy process.


def _read_until(sock, buffer: bytearray, marker: bytes) -> bytes:
  while marker not in buffer:
    chunk = sock.recv(65536)
    if not chunk:
      raise ConnectionError('closed')
    buffer += chunk
  end = buffer.index(marker) + len(marker)
  out = bytes(buffer[:end])
  del buffer[:end]
  return out


def _read_exact(sock, buffer: bytearray, n: int) -> bytes:
  while len(buffer) < n:
    chunk = sock.recv(65536)
    if not chunk:
      raise ConnectionError('closed')
    buffer += chunk
  out = bytes(buffer[:n])
  del buffer[:n]
  return out


def _headers(head: bytes):
  lines = head.decode('latin-1').split('\r\n')
  fields = {}
  for line in lines[1:]:
    if ':' in line:
      name, value = line.split(':', 1)
      fields[name.strip().lower()] = value.strip()
  return lines[0], fields


def _read_body(sock, buffer: bytearray, fields: dict, *, until_close: bool) -> bytes:
  if 'chunked' in fields.get('transfer-encoding', '').lower():
    out = bytearray()
    while True:
      size_line = _read_until(sock, buffer, b'\r\n')
      out += size_line
      size = int(size_line.split(b';')[0].strip(), 16)
      if size == 0:
        while True:  # trailers, then an empty line
          line = _read_until(sock, buffer, b'\r\n')
          out += line
          if line == b'\r\n':
            return bytes(out)
      out += _read_exact(sock, buffer, size + 2)
  if 'content-length' in fields:
    return _read_exact(sock, buffer, int(fields['content-length']))
  if not until_close:
    return b''
  while True:
    chunk = sock.recv(65536)
    if not chunk:
      out = bytes(buffer)
      buffer.clear()
      return out
    buffer += chunk


def _reset(sock) -> None:
  """Closes with a TCP reset (SO_LINGER 0): the client sees 'connection reset by peer'."""
  try:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\x00\x00\x00\x00\x00\x00\x00')
  except OSError:
    pass
  try:
    sock.close()
  except OSError:
    pass


class _Server:
  def __init__(self, upstream: str, seed: int):
    host_port = upstream.split('://', 1)[-1].rstrip('/')
    host, port = host_port.rsplit(':', 1)
    self.upstream = (host, int(port))
    self.rules, self.events, self.forwarded = [], [], []
    self.completed_uploads = {}  # upload_id -> the reply that completed it (module docstring)
    self.random = random.Random(seed)
    self.lock = threading.Lock()
    self.down_until = 0.0
    self.clients = set()
    self.listener = self._listen(0)
    self.port = self.listener.getsockname()[1]
    threading.Thread(target=self._accept, daemon=True).start()

  def _listen(self, port: int):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', port))
    s.listen(128)
    return s

  def _accept(self):
    while True:
      listener = self.listener
      if listener is None:  # an outage: wait until it listens again
        time.sleep(0.01)
        continue
      try:
        client, _ = listener.accept()
      except OSError:  # closed for an outage
        continue
      with self.lock:
        self.clients.add(client)
      threading.Thread(target=self._serve, args=(client,), daemon=True).start()

  def outage(self, seconds: float) -> None:
    if self.listener is None:  # already down: longer
      self.down_until = max(self.down_until, time.time() + seconds)
      return
    with self.lock:
      self.down_until = time.time() + seconds
      self.events.append({'action': 'outage', 'seconds': seconds, 'time': time.time()})
      clients, self.clients = list(self.clients), set()
    listener = self.listener
    self.listener = None
    try:
      listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; the port stops listening
    except OSError:
      pass
    listener.close()
    for c in clients:
      _reset(c)

    def back():
      while time.time() < self.down_until:
        time.sleep(0.05)
      while True:
        try:
          self.listener = self._listen(self.port)
          return
        except OSError:  # the port in TIME_WAIT for a moment
          time.sleep(0.05)
    threading.Thread(target=back, daemon=True).start()

  def _rule_for(self, request_line: str):
    with self.lock:
      for rule in self.rules:
        if rule['times'] != 0 and rule['match'] in request_line and self.random.random() < rule['p']:
          if rule['times'] > 0:
            rule['times'] -= 1
          return rule['action']
    return None

  def _serve(self, client):
    upstream, up_buffer, buffer = None, bytearray(), bytearray()
    try:
      while True:
        head = _read_until(client, buffer, b'\r\n\r\n')
        request_line, fields = _headers(head)
        if fields.get('expect', '').lower() == '100-continue':
          client.sendall(b'HTTP/1.1 100 Continue\r\n\r\n')
          head = b'\r\n'.join(line for line in head.split(b'\r\n')
                              if not line.lower().startswith(b'expect:'))
        body = _read_body(client, buffer, fields, until_close=False)
        action = self._rule_for(request_line)
        event = {'action': action, 'request': request_line, 'time': time.time()}
        if action == 'reset':
          self._record(event)
          _reset(client)
          return
        if action == '503':
          self._record(event)
          text = b'{"error": {"code": 503, "message": "injected by the fault proxy"}}'
          client.sendall(b'HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n'
                         b'Content-Length: %d\r\n\r\n%s' % (len(text), text))
          continue
        upload_id = re.search(r'[?&]upload_id=([^& ]+)', request_line)
        if upload_id and upload_id.group(1) in self.completed_uploads:
          client.sendall(self.completed_uploads[upload_id.group(1)])
          continue
        if upstream is None:
          upstream = socket.create_connection(self.upstream)
          up_buffer = bytearray()
        upstream.sendall(head + body)
        reply_head = _read_until(upstream, up_buffer, b'\r\n\r\n')
        status_line, reply_fields = _headers(reply_head)
        no_body = request_line.startswith('HEAD ') or status_line.split(' ')[1] in ('204', '304')
        close = reply_fields.get('connection', '').lower() == 'close' or (
            'content-length' not in reply_fields and 'chunked' not in reply_fields.get('transfer-encoding', ''))
        reply_body = b'' if no_body else _read_body(upstream, up_buffer, reply_fields, until_close=close)
        with self.lock:  # a multipart upload names its object in the body: recorded beside the line
          named = re.search(rb'"name": "([^"]+)"', body[:4096]) if 'uploadType=multipart' in request_line else None
          self.forwarded.append(request_line + (f' (object {named.group(1).decode()})' if named else ''))
        if upload_id and status_line.split(' ')[1] in ('200', '201') and not close:
          self.completed_uploads[upload_id.group(1)] = reply_head + reply_body
        if action == 'drop_reply':
          event['status'] = status_line.split(' ')[1]
          self._record(event)
          _reset(client)
          upstream.close()
          return
        client.sendall(reply_head + reply_body)
        if close:
          upstream.close()
          upstream = None
          client.close()
          return
    except (ConnectionError, OSError, ValueError, IndexError):
      try:
        client.close()
      except OSError:
        pass
    finally:
      with self.lock:
        self.clients.discard(client)
      if upstream is not None:
        upstream.close()

  def _record(self, event):
    with self.lock:
      self.events.append(event)


def _main():
  server = _Server(sys.argv[1], int(sys.argv[2]))
  print(json.dumps({'port': server.port}), flush=True)
  for line in sys.stdin:
    command = json.loads(line)
    op = command.pop('op')
    reply = {'ok': True}
    if op == 'add':
      with server.lock:
        server.rules.append(command)
    elif op == 'clear':
      with server.lock:
        server.rules.clear()
    elif op == 'outage':
      server.outage(command['seconds'])
    elif op == 'end_outage':
      server.down_until = 0.0
    elif op == 'events':
      with server.lock:
        reply['events'] = list(server.events)
    elif op == 'requests':
      with server.lock:
        reply['requests'] = list(server.forwarded)
    print(json.dumps(reply), flush=True)


if __name__ == '__main__':
  _main()
