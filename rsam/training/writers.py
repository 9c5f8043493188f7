"""Metric writers: clu (TensorBoard event files + log lines) and wandb behind clu's one interface.

The loop writes once to a ``MultiWriter``. wandb is off unless ``config.wandb.enabled`` or the environment
(``WANDB_MODE`` set to online/offline) turns it on; offline runs land under ``<workdir>/wandb``.
config.wandb: enabled, project, entity, group, name, tags, mode ('online' | 'offline' | None = env).

A remote (gs://) workdir: TensorFlow's event writer would talk to GCS through TensorFlow's own client,
which ignores STORAGE_EMULATOR_HOST, so the events are written into a local staging folder
(rsam/training/paths.py: staging_dir) and copied to the workdir through the path layer at most every
``COPY_EVERY_SECS`` when the loop flushes, and at close. wandb's local files stay in the staging folder
(wandb uploads them itself).
"""
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface

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


class CopiedToWorkdir(interface.MetricWriter):
  """Forwards to ``inner`` (writing into local folder ``local``) and copies that folder's new or grown
  files to ``remote`` on flush (at most every ``every_secs``) and on close."""

  def __init__(self, inner: interface.MetricWriter, local: str, remote: str, every_secs: float):
    self.inner, self.local, self.remote, self.every_secs = inner, local, remote, every_secs
    self._copied, self._last = {}, time.time()

  def copy_now(self) -> None:
    for name in sorted(os.listdir(self.local)):
      source = os.path.join(self.local, name)
      size = os.path.getsize(source) if os.path.isfile(source) else None
      if size is None or self._copied.get(name) == size:
        continue
      with open(source, 'rb') as f:
        (paths.path(self.remote) / name).write_bytes(f.read())  # event files are small: whole-file copies
      self._copied[name] = size
    self._last = time.time()

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
    if time.time() - self._last >= self.every_secs:
      self.copy_now()

  def close(self):
    self.inner.close()
    self.copy_now()


COPY_EVERY_SECS = 60.0


def wandb_wanted(wandb_cfg) -> bool:
  mode = wandb_cfg.get('mode') or os.environ.get('WANDB_MODE')
  return bool(wandb_cfg.get('enabled')) or mode in ('online', 'offline')


def make_writer(config, workdir: str, *, resume_id: str) -> interface.MetricWriter:
  """clu's default writer (TensorBoard + logging) on process 0, plus wandb when asked."""
  staging = paths.staging_dir(workdir)
  if jax.process_index() > 0:
    writer = metric_writers.create_default_writer(None, just_logging=True, asynchronous=False)
  elif paths.is_remote(workdir):
    events = os.path.join(staging, 'tensorboard')
    os.makedirs(events, exist_ok=True)
    writer = CopiedToWorkdir(metric_writers.create_default_writer(events, asynchronous=False), events,
                             workdir, COPY_EVERY_SECS)
  else:
    writer = metric_writers.create_default_writer(workdir, asynchronous=False)
  wandb_cfg = config.get('wandb', {})
  if jax.process_index() > 0 or not wandb_wanted(wandb_cfg):
    return writer
  import wandb
  mode = wandb_cfg.get('mode') or os.environ.get('WANDB_MODE') or 'online'
  run = wandb.init(project=wandb_cfg.get('project') or 'rsam', entity=wandb_cfg.get('entity'),
                   group=wandb_cfg.get('group'), name=wandb_cfg.get('name'),
                   tags=list(wandb_cfg.get('tags') or ()), mode=mode, dir=staging,
                   config=config.to_dict(), id=resume_id, resume='allow')
  return metric_writers.MultiWriter([writer, WandbWriter(run)])
