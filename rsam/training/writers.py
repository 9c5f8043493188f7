"""Metric writers: clu (TensorBoard event files + log lines) and wandb behind clu's one interface.

The loop writes once to a ``MultiWriter``. wandb is off unless ``config.wandb.enabled`` or the environment
(``WANDB_MODE`` set to online/offline) turns it on; offline runs land under ``<workdir>/wandb``.
config.wandb: enabled, project, entity, cell, group, name, tags, job_type, mode ('online' | 'offline' |
None = env).

A wandb run's identity (``identity``):
- id: drawn once and stored in ``<workdir>/wandb_id`` (run_folder.wandb_id); a resumed run reuses it, a new
  workdir at the same path (``rm -rf`` and rerun, another machine) starts a new wandb run.
- group, name, the leading tags and the summary's paper numbers come from the application, which knows the
  paper's tables (train.py hands down configs/tables.py's ``wandb_naming``: the table cell of
  ``config.wandb.cell`` or of the config's content, ``table3/vit_b16-none-rsam/seed0``; a config in no
  cell is named after its file, ``quickstart/seed0``). The trainer never imports configs/.
  ``config.wandb.group`` / ``name`` set explicitly win; ``config.wandb.tags`` add to the rest.
- tags always hold model, updater (the base optimizer for 'plain'), dataset and seed; job_type is 'train',
  or 'runlocal' for runs on tfds mock data (``data.mock_examples``) or smoke runs the application names so.
- At the end, the summary holds ``final/<set>/accuracy`` of every eval set (``summarize``).
- A missing login is one ConfigError naming ``wandb login``, a login without a reachable server one naming
  the network (after wandb's retries, ``WANDB_INIT_TIMEOUT``); both name ``WANDB_MODE=offline``.

A remote (gs://) workdir: TensorFlow's event writer would talk to GCS through TensorFlow's own client,
which ignores STORAGE_EMULATOR_HOST, so the events are written into a local staging folder
(rsam/training/paths.py: staging_dir) and copied to the workdir through the path layer at most every
``COPY_EVERY_SECS`` when the loop flushes, with every checkpoint and before the run stops (``persist``), so
what a resumed run finds in the workdir reaches at least its checkpoint. wandb's local files stay in the
staging folder (wandb uploads them itself).
"""
import os
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface

from rsam.errors import ConfigError
from rsam.training import paths


class WandbWriter(interface.MetricWriter):
  """A clu MetricWriter that logs to a wandb run (scalars, texts, hparams, images)."""

  def __init__(self, run):
    self.run = run

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self.run.log({k: float(np.asarray(v)) for k, v in scalars.items()}, step=step)

  def write_texts(self, step: int, texts: Mapping[str, str]):
    self.run.log(dict(texts), step=step)

  def write_images(self, step: int, images: Mapping[str, Any]):
    import wandb
    self.run.log({k: [wandb.Image(np.asarray(im)) for im in np.asarray(v)] for k, v in images.items()},
                 step=step)

  def write_hparams(self, hparams: Mapping[str, Any]):
    # wandb.init already got the structured config; the loop's hparams are str() of its fields (for
    # TensorBoard) and would overwrite e.g. config.model.name with a YAML string: add only new keys.
    self.run.config.update({k: v for k, v in hparams.items() if k not in self.run.config},
                           allow_val_change=True)

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def flush(self):
    pass

  def close(self):
    self.run.finish()


class Forwarding(interface.MetricWriter):
  """A writer that hands every call to ``inner``; subclasses change what they need."""

  def __init__(self, inner: interface.MetricWriter):
    self.inner = inner

  def write_scalars(self, step, scalars):
    self.inner.write_scalars(step, scalars)

  def write_texts(self, step, texts):
    self.inner.write_texts(step, texts)

  def write_images(self, step, images):
    self.inner.write_images(step, images)

  def write_hparams(self, hparams):
    self.inner.write_hparams(hparams)

  def write_summaries(self, step, values, metadata=None):
    self.inner.write_summaries(step, values, metadata)

  def write_videos(self, step, videos):
    self.inner.write_videos(step, videos)

  def write_audios(self, step, audios, *, sample_rate):
    self.inner.write_audios(step, audios, sample_rate=sample_rate)

  def write_histograms(self, step, arrays, num_buckets=None):
    self.inner.write_histograms(step, arrays, num_buckets)

  def flush(self):
    self.inner.flush()

  def close(self):
    self.inner.close()


class CopiedToWorkdir(Forwarding):
  """Forwards to ``inner`` (writing into local folder ``local``) and copies that folder's new or grown
  files to ``remote`` on flush (at most every ``every_secs``), on ``copy_now`` and on close. ``copied_to``: the
  last step whose scalars are in ``remote`` (None before the first copy). Files named in ``earlier`` (an
  earlier process's on this machine) are not copied: what they held up to its last copy is in ``remote``,
  and the steps after it are redone and written again by this process."""

  def __init__(self, inner: interface.MetricWriter, local: str, remote: str, every_secs: float, *,
               earlier: frozenset = frozenset()):
    super().__init__(inner)
    self.local, self.remote, self.every_secs, self.earlier = local, remote, every_secs, earlier
    self._copied, self._last = {}, time.time()
    self._written_to = self.copied_to = None

  def write_scalars(self, step, scalars):
    super().write_scalars(step, scalars)
    self._written_to = step if self._written_to is None else max(self._written_to, step)

  def copy_now(self) -> None:
    written_to = self._written_to  # the inner writer has flushed (or closed) what it got so far
    for name in sorted(os.listdir(self.local)):
      source = os.path.join(self.local, name)
      size = os.path.getsize(source) if os.path.isfile(source) else None
      if size is None or name in self.earlier or self._copied.get(name) == size:
        continue
      with open(source, 'rb') as f:
        paths.write_bytes(paths.path(self.remote) / name, f.read())  # event files are small: whole-file copies
      self._copied[name] = size
    self._last = time.time()
    self.copied_to = written_to

  def flush(self):
    self.inner.flush()
    if time.time() - self._last >= self.every_secs:
      self.copy_now()

  def close(self):
    self.inner.close()
    self.copy_now()


COPY_EVERY_SECS = 60.0
# What wandb's errors say when the login is there but the server is not (a TPU VM without internet access).
_NETWORK_FAILURES = ('connection refused', 'deadline exceeded', 'timed out', 'network is unreachable',
                     'name or service not known', 'temporary failure in name resolution', 'no route to host')


def wandb_wanted(wandb_cfg) -> bool:
  mode = wandb_cfg.get('mode') or os.environ.get('WANDB_MODE')
  return bool(wandb_cfg.get('enabled')) or mode in ('online', 'offline')


def identity(config, naming: Optional[Mapping[str, Any]] = None) -> dict:
  """{'name', 'group', 'tags', 'job_type', 'summary'} of the wandb run of ``config`` (module docstring).

  ``naming``: what the application calls the run (train.py hands down configs/tables.py: wandb_naming):
  ``group``, ``name``, leading ``tags``, ``summary`` and ``job_type``, each optional. The config's own
  ``config.wandb.group`` / ``name`` / ``job_type`` win; ``config.wandb.tags`` add to the tags.
  """
  naming = naming or {}
  wandb_cfg = config.get('wandb', {})
  seed = config.get('seed', 0)
  updater = config.updater.name
  if updater == 'plain':
    updater = {'momentum': 'sgd_momentum'}.get(config.optimizer.name, config.optimizer.name)
  tags = list(naming.get('tags') or ()) + [config.model.name, updater, config.data.name, f'seed{seed}']
  tags += [t for t in (wandb_cfg.get('tags') or ()) if t not in tags]
  mock = (config.data.get('mock_examples') or 0) if 'data' in config else 0
  job_type = wandb_cfg.get('job_type') or naming.get('job_type') or ('runlocal' if mock else 'train')
  return {'group': wandb_cfg.get('group') or naming.get('group'),
          'name': wandb_cfg.get('name') or naming.get('name'), 'tags': tags, 'job_type': job_type,
          'summary': dict(naming.get('summary') or {})}


def summarize(writer: interface.MetricWriter, eval_results: dict) -> None:
  """The final accuracy of every eval set into the wandb run's summary (``final/<set>/accuracy``)."""
  for w in _chain(writer):
    if isinstance(w, WandbWriter):
      w.run.summary.update({f'final/{name}/accuracy': result['accuracy']
                            for name, result in eval_results.items() if 'accuracy' in result})


def _chain(writer):
  """``writer`` and every writer inside it: clu's MultiWriter (``_writers``) and wrappers (``inner``)."""
  yield writer
  if hasattr(writer, 'inner'):
    yield from _chain(writer.inner)
  for w in getattr(writer, '_writers', ()):  # pylint: disable=protected-access
    yield from _chain(w)


def copier(writer) -> Optional[CopiedToWorkdir]:
  """The writer inside ``writer`` that copies a gs:// workdir's events to it; None for a local workdir."""
  return next((w for w in _chain(writer) if isinstance(w, CopiedToWorkdir)), None)


def persist(writer) -> None:
  """What ``writer`` got so far, in the workdir now: flushed, and on a gs:// workdir copied to it (otherwise
  done at most every COPY_EVERY_SECS). The loop calls it with every checkpoint and before it stops."""
  writer.flush()  # the copier's inner writer too
  copies = copier(writer)
  if copies is not None:
    copies.copy_now()


def make_writer(config, workdir: str, *, resume_id: Optional[str],
                naming: Optional[Mapping[str, Any]] = None) -> interface.MetricWriter:
  """clu's default writer (TensorBoard + logging) on process 0, plus wandb when asked (named by ``naming``:
  ``identity``)."""
  staging = paths.staging_dir(workdir)
  if jax.process_index() > 0:
    writer = metric_writers.create_default_writer(None, just_logging=True, asynchronous=False)
  elif paths.is_remote(workdir):
    events = os.path.join(staging, 'tensorboard')
    os.makedirs(events, exist_ok=True)
    earlier = frozenset(os.listdir(events))  # before this process's writer creates its file
    writer = CopiedToWorkdir(metric_writers.create_default_writer(events, asynchronous=False), events,
                             workdir, COPY_EVERY_SECS, earlier=earlier)
  else:
    writer = metric_writers.create_default_writer(workdir, asynchronous=False)
  wandb_cfg = config.get('wandb', {})
  if jax.process_index() > 0 or not wandb_wanted(wandb_cfg):
    return writer
  import wandb
  mode = wandb_cfg.get('mode') or os.environ.get('WANDB_MODE') or 'online'
  who = identity(config, naming)
  try:
    run = wandb.init(project=wandb_cfg.get('project') or 'rsam', entity=wandb_cfg.get('entity'),
                     group=who['group'], name=who['name'], tags=who['tags'], job_type=who['job_type'],
                     mode=mode, dir=staging, config=config.to_dict(), id=resume_id, resume='allow')
  except (wandb.errors.Error, OSError, TimeoutError) as e:
    writer.close()
    reason = ' '.join(str(e).split())[:200]
    unreachable = isinstance(e, TimeoutError) or any(sign in reason.lower() for sign in _NETWORK_FAILURES)
    first = ('check that this machine reaches the wandb server' if unreachable
             else 'log in once with `wandb login`')
    raise ConfigError(f'wandb could not start its run (mode {mode}; {type(e).__name__}: {reason}); {first}, '
                      f'or set WANDB_MODE=offline to log locally (`wandb sync` uploads later), or turn wandb '
                      f'off (config.wandb.enabled=False, WANDB_MODE unset)') from None
  run.summary.update(who['summary'])
  return metric_writers.MultiWriter([writer, WandbWriter(run)])
