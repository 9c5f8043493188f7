"""SIGTERM (a TPU preemption), SIGINT (Ctrl-C) and SIGHUP (the ssh session that started the run dropped)
during training: finish the step, save it, one line, exit.

While the loop runs, a signal only sets a flag: the loop saves the step it is at and stops
(``Preempted``; train.py exits 143 for SIGTERM, 130 for SIGINT, 129 for SIGHUP, the shell's 128 + signal
number). The flag also tells the path layer to stop waiting out a storage outage within its grace
(rsam/training/paths.py: ``stop_waiting``), so a signal during an outage still stops the run in time, saying
the step was not saved. After the
last step the handlers stay: a signal during the final checkpoint lets it complete (never half-written)
and then stops; one during the final evaluation, which writes nothing, stops it at once
(``raising``). Rerunning the same command resumes from the checkpoint; after the last step it only
evaluates. On a pod the processes agree after every step whether any of them got a signal (``check``), so
all save the same step and stop; a signal during the final evaluation stops only the process it reaches
(a preemption reaches all of them).
"""
import contextlib
import signal

from rsam.training import paths

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGHUP: 129}


class Preempted(Exception):
  """A signal stopped the run after its checkpoint was written; ``exit_code`` is 128 + the signal number."""

  def __init__(self, message: str, exit_code: int = 143):
    super().__init__(message)
    self.exit_code = exit_code


class Interrupts:
  """Handlers for SIGTERM, SIGINT and SIGHUP until ``restore()``; ``received`` is the first signal that came (to this
  process, or on a pod to the process ``source`` names, once ``check`` agreed on it)."""

  def __init__(self, agree=None):
    """``agree(step, signal number or 0) -> (signal number or 0, process)``: the answer every process of a
    multi-process run shares (rsam/training/distributed.py: agree_on_signal); None for one process."""
    self.received = None
    self.source = None  # the process whose signal stops this one, when it is another
    self._agree = agree
    self._raise_with = None
    self._previous = {s: signal.signal(s, self._handler) for s in EXIT_CODES}

  def check(self, step: int) -> bool:
    """Whether the run stops after step ``step``: a signal came (on a pod: to any of its processes; every
    process gets the same answer for the same step)."""
    if self._agree is None:
      return self.received is not None
    number, process = self._agree(step, int(self.received or 0))
    if number and self.received is None:  # another process's: this one stops with it
      self.received, self.source = signal.Signals(number), process
      paths.stop_waiting()
    return bool(number)

  def _handler(self, signum, frame):
    del frame
    if self.received is None:
      self.received = signal.Signals(signum)
      paths.stop_waiting()
    if self._raise_with is not None:
      what, self._raise_with = self._raise_with, None
      raise self.stop(what)

  def stop(self, what: str) -> Preempted:
    """The exception that ends the run: '<SIGNAL> <what>'."""
    source = '' if self.source is None else f' to process {self.source}'
    return Preempted(f'{self.received.name}{source} {what}', EXIT_CODES[self.received])

  @contextlib.contextmanager
  def raising(self, what: str):
    """Inside: a signal (or one that already came) raises ``stop(what)`` at once; for work that writes nothing."""
    if self.received is not None:
      raise self.stop(what)
    self._raise_with = what
    try:
      yield
    finally:
      self._raise_with = None

  def restore(self) -> None:
    for s, previous in self._previous.items():
      signal.signal(s, previous)
