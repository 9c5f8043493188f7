"""Metric writers: clu (TensorBoard event files + log lines) and wandb behind clu's one interface.

The loop writes once to a ``MultiWriter``. wandb is off unless ``config.wandb.enabled`` or the environment
(``WANDB_MODE`` set to online/offline) turns it on; offline runs land under ``<workdir>/wandb``.
config.wandb: enabled, project, entity, group, name, tags, mode ('online' | 'offline' | None = env).
"""
import os
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface


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


def wandb_wanted(wandb_cfg) -> bool:
  mode = wandb_cfg.get('mode') or os.environ.get('WANDB_MODE')
  return bool(wandb_cfg.get('enabled')) or mode in ('online', 'offline')


def make_writer(config, workdir: str, *, resume_id: str) -> interface.MetricWriter:
  """clu's default writer (TensorBoard + logging) on process 0, plus wandb when asked."""
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0,
                                                asynchronous=False)
  wandb_cfg = config.get('wandb', {})
  if jax.process_index() > 0 or not wandb_wanted(wandb_cfg):
    return writer
  import wandb
  mode = wandb_cfg.get('mode') or os.environ.get('WANDB_MODE') or 'online'
  run = wandb.init(project=wandb_cfg.get('project') or 'rsam', entity=wandb_cfg.get('entity'),
                   group=wandb_cfg.get('group'), name=wandb_cfg.get('name'),
                   tags=list(wandb_cfg.get('tags') or ()), mode=mode, dir=workdir,
                   config=config.to_dict(), id=resume_id, resume='allow')
  return metric_writers.MultiWriter([writer, WandbWriter(run)])
