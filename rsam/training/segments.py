"""The segments of a run: one per process that trained in the workdir (a run resumed after preemptions or
kills has several), kept in ``<workdir>/segments.json`` and copied into results.json with their total.

Each segment: ``from_step`` (where the process started: 0 or the checkpoint it resumed from), ``to_step``
(the last step it is known to have reached), ``wall_time_s``, ``start_time`` (unix), ``hardware`` (platform,
device kind, device and process counts), ``ended`` ('finished', 'SIGTERM', 'SIGINT', or 'running' for a
process that was killed or failed) and ``logged_to`` (the last step whose metrics it wrote). The file is
rewritten at every logged step, so a killed process leaves its segment up to its last log line.

Redone steps: a process killed after logging step k but before its checkpoint of k is resumed from an
earlier checkpoint c, and steps c+1..k run again (bit for bit the same). Their metrics are not written
again: the resumed process's metric writer drops scalars at steps <= the largest ``logged_to`` of the
segments before it, so TensorBoard and wandb show each step once. ``logged_to`` counts only metrics that
reached the workdir: a local workdir's on every flush; a gs:// workdir's TensorBoard events when they are
copied to it (rsam/training/writers.py: at most every minute, with every checkpoint and before the run
stops), so steps whose events never left a killed machine are written again rather than lost.
"""
import time
from typing import Any, Mapping

from clu.metric_writers import interface

from rsam.training import paths, writers

NAME = 'segments.json'


class Segments:
  def __init__(self, workdir: str, start_step: int, hardware: dict, *, write: bool = True):
    """``write``: False on the processes of a pod but the first (they only keep count)."""
    self.path = paths.path(workdir) / NAME
    self.write = write
    self._copier = None  # a gs:// workdir's events copier (``wrap``): what it copied is what was logged
    self.earlier = self._read()
    # Only a resumed run skips steps: a fresh start (step 0) may follow a different config's failed start.
    self.skip_to = max((s.get('logged_to') or 0 for s in self.earlier), default=0) if start_step else 0
    self.start = time.time()
    self.current = {'from_step': start_step, 'to_step': start_step, 'wall_time_s': 0.0,
                    'start_time': self.start, 'hardware': hardware, 'ended': 'running', 'logged_to': None}
    self._save()

  def _read(self) -> list:
    try:
      earlier = paths.read_json(self.path)
    except (OSError, ValueError):  # none yet (or unreadable: start a new list rather than fail the run)
      return []
    return [s for s in earlier if isinstance(s, dict)] if isinstance(earlier, list) else []

  def _save(self) -> None:
    if self.write:
      paths.write_json(self.path, self.earlier + [self.current])

  def update(self, step: int, *, logged: bool = False, ended: str = None) -> None:
    """Records that this process reached ``step`` (and wrote its metrics when ``logged``), or ended."""
    self.current['to_step'] = step
    self.current['wall_time_s'] = round(time.time() - self.start, 3)
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

  def wrap(self, writer: interface.MetricWriter) -> interface.MetricWriter:
    """``writer`` without the scalars of redone steps (none on a fresh start)."""
    self._copier = writers.copier(writer)
    return _SkipRedone(writer, self.skip_to) if self.skip_to else writer


class _SkipRedone(writers.Forwarding):
  """Forwards to ``inner``, dropping scalars at steps <= ``skip_to`` (already written by an earlier segment)."""

  def __init__(self, inner: interface.MetricWriter, skip_to: int):
    super().__init__(inner)
    self.skip_to = skip_to

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    if step > self.skip_to:
      self.inner.write_scalars(step, scalars)
