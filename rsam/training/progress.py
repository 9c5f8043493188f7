"""Progress that tells the truth: the compile of the train step, throughput and ETA, an optional trace.

- The first step of a process compiles the train step (seconds to minutes, silent otherwise): a line says so
  before it and how long it took after (``Meter.compiling`` / ``Meter.compiled``, which waits for the step).
- Throughput and ETA count the timed training steps only: the compiling step and the time spent in
  evaluations (``Meter.paused``) are left out, so ETA = remaining steps x seconds per step of the last window.
- ``config.profile.first_step`` .. ``last_step`` (1-based, inclusive; 0 = off): a ``jax.profiler`` trace of
  those steps, written to ``<workdir>/plugins/profile/<time>/`` where TensorBoard's profile plugin finds it
  (``tensorboard --logdir <workdir>``, tab PROFILE). A gs:// workdir: traced into the local staging folder
  (rsam/training/paths.py) and copied to the workdir when the trace stops.
- A closed output never stops the run (``keep_output_alive``): the launcher runs ``train.py ... | tee`` over
  ssh, and a dropped session closes the pipe; the lines then go to stderr, or nowhere.
"""
import contextlib
import os
import sys
import time
from typing import Optional, Tuple

import jax

from rsam.errors import ConfigError
from rsam.training import paths


class Meter:
  """Seconds and steps of the training steps since the last window, without compile and evaluation time."""

  def __init__(self, clock=time.perf_counter, print_fn=print):
    self._clock, self._print = clock, print_fn
    self._start: Optional[float] = None  # None until the compiling step is done
    self._paused = 0.0
    self._steps = 0
    self.compile_seconds: Optional[float] = None

  def compiling(self, what: str = 'the train step') -> None:
    self._print(f'compiling {what} (the first step waits for XLA)...', flush=True)
    self._compile_start = self._clock()

  def compiled(self, outputs, step: int) -> None:
    """Waits for ``outputs`` of the compiling step ``step``; the timed window starts after it."""
    jax.block_until_ready(outputs)
    self.compile_seconds = self._clock() - self._compile_start
    self._print(f'compiled and ran step {step} in {self.compile_seconds:.1f}s; throughput and ETA leave it '
                f'out', flush=True)
    self._start, self._paused, self._steps = self._clock(), 0.0, 0

  def step(self) -> None:
    """One more training step inside the timed window (not the compiling one)."""
    if self._start is not None:
      self._steps += 1

  @contextlib.contextmanager
  def paused(self):
    """Time spent inside (evaluation) is not training time."""
    t = self._clock()
    try:
      yield
    finally:
      self._paused += self._clock() - t

  def window(self) -> Tuple[int, float]:
    """(timed steps, their seconds) since the last call, and a new window."""
    if self._start is None:
      return 0, 0.0
    now = self._clock()
    out = (self._steps, max(now - self._start - self._paused, 0.0))
    self._start, self._paused, self._steps = now, 0.0, 0
    return out


def rate_text(steps: int, seconds: float, *, batch_size: int, remaining: int) -> Tuple[Optional[float], str]:
  """(images per second or None, 'N img/s | ETA Ts') of a window; before any timed step there is no rate."""
  if steps <= 0 or seconds <= 0:
    return None, 'img/s after the first timed step | ETA after the first timed step'
  per_step = seconds / steps
  img_per_s = batch_size / per_step
  return img_per_s, f'{img_per_s:.0f} img/s | ETA {_duration(remaining * per_step)}'


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 120:
    return f'{seconds}s'
  if seconds < 7200:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'


def trace_steps(config) -> Optional[Tuple[int, int]]:
  """(first, last) training steps to trace from config.profile, or None. One-line ConfigError if bad."""
  profile = config.get('profile') or {}
  first, last = profile.get('first_step') or 0, profile.get('last_step') or 0
  if not first:
    return None
  for name, value in (('first_step', first), ('last_step', last)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ConfigError(f'config.profile.{name}={value!r} must be an int >= 0 (first_step 0: no trace)')
  if last < first:
    raise ConfigError(f'config.profile.last_step={last} is before first_step={first}; trace steps '
                      f'first_step..last_step, e.g. --config.profile.last_step={first + 4}')
  return first, last


class Trace:
  """A jax.profiler trace of training steps first..last (see the module docstring)."""

  def __init__(self, config, workdir: str):
    self.steps = trace_steps(config) if jax.process_index() == 0 else None
    self.workdir = workdir
    self.local = (os.path.join(paths.staging_dir(workdir), 'profile') if paths.is_remote(workdir)
                  else paths.normalize(workdir))
    self.running = False

  def before(self, step: int) -> None:
    """Called before training step ``step`` (1-based) runs."""
    if self.steps and not self.running and self.steps[0] <= step <= self.steps[1]:
      jax.profiler.start_trace(self.local)
      self.running = True

  def after(self, step: int, outputs) -> None:
    """Called after step ``step`` was dispatched; stops (after waiting for it) at the last one."""
    if self.running and step >= self.steps[1]:
      self.stop(outputs)

  def stop(self, outputs=None) -> None:
    if not self.running:
      return
    if outputs is not None:
      jax.block_until_ready(outputs)
    jax.profiler.stop_trace()
    self.running = False
    if paths.is_remote(self.workdir):
      for folder, _, files in os.walk(self.local):
        for name in files:
          source = os.path.join(folder, name)
          with open(source, 'rb') as f:
            paths.write_bytes(paths.path(self.workdir) / os.path.relpath(source, self.local), f.read())
    print(f'profile of steps {self.steps[0]}..{self.steps[1]} written to '
          f'{paths.path(self.workdir) / "plugins" / "profile"} (tensorboard --logdir <workdir>, tab PROFILE)',
          flush=True)


class _Unbreakable:
  """A text stream that writes to ``stream`` until its reader goes away (a closed pipe: EPIPE), then to
  ``fallback`` (or nowhere). The broken file descriptor is pointed at /dev/null, so a later write by
  anything else (a logging handler holding the old stream, C++ logs, the interpreter's flush at exit) no
  longer fails either."""

  def __init__(self, stream, fallback=None):
    self._stream, self._fallback, self.broken = stream, fallback, False

  def _broke(self) -> None:
    self.broken = True
    try:
      devnull = os.open(os.devnull, os.O_WRONLY)
      os.dup2(devnull, self._stream.fileno())
      os.close(devnull)
    except (OSError, ValueError, AttributeError):
      pass

  def write(self, text):
    if not self.broken:
      try:
        return self._stream.write(text)
      except (BrokenPipeError, ValueError, OSError):
        self._broke()
    if self._fallback is not None:
      try:
        self._fallback.write(text)
      except (BrokenPipeError, ValueError, OSError):
        pass
    return len(text)

  def flush(self):
    if not self.broken:
      try:
        self._stream.flush()
      except (BrokenPipeError, ValueError, OSError):
        self._broke()
    if self._fallback is not None:
      try:
        self._fallback.flush()
      except (BrokenPipeError, ValueError, OSError):
        pass

  def __getattr__(self, name):  # fileno, isatty, encoding, ... of the stream
    return getattr(self._stream, name)


def keep_output_alive() -> None:
  """A closed stdout or stderr (``train.py ... | tee log`` over an ssh session that dropped) never stops
  training: progress lines go on to stderr while it is open, else nowhere; never a BrokenPipeError."""
  if isinstance(sys.stderr, _Unbreakable):
    return
  sys.stderr = _Unbreakable(sys.stderr)
  sys.stdout = _Unbreakable(sys.stdout, fallback=sys.stderr)
