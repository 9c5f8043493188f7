"""The training loop behind ``train.py``: ``train_and_evaluate(config, workdir)``."""
import json
import os
import platform
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from clu import periodic_actions

import data
from rsam.training import checkpointing, config_check, distributed, evaluation, paths, sharding, writers
from rsam.training.train_step import build, make_mesh, make_train_step


class Preempted(Exception):
  """SIGTERM arrived (TPU preemption); a checkpoint of the current step was written."""


def _install_sigterm_flag():
  received = {'sigterm': False}

  def handler(signum, frame):
    del signum, frame
    received['sigterm'] = True
  previous = signal.signal(signal.SIGTERM, handler)
  return received, previous


def hardware() -> dict:
  devices = jax.devices()
  return {'platform': devices[0].platform, 'device_kind': devices[0].device_kind,
          'num_devices': len(devices), 'num_processes': jax.process_count(),
          'host': platform.machine(), 'cpu_count': os.cpu_count(), 'jax': jax.__version__}


def train_and_evaluate(config, workdir: str, *, force_resume: bool = False) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint) and returns the results dict.

  ``workdir`` is a local folder or a ``gs://`` path; every file goes through rsam/training/paths.py.
  """
  start_time = time.time()
  workdir = paths.normalize(workdir)
  distributed.start(config, workdir)  # joins a pod's hosts; hosts started differently stop here, all of them
  config_check.validate(config)  # one-line errors before any device, data or compilation work
  mesh = make_mesh(config)  # config.mesh: replicated state unless it has an fsdp axis > 1
  num_devices = len(mesh.devices.ravel())
  config_check.check_batch(config, num_devices=num_devices, process_count=jax.process_count())
  run = build(config, mesh)  # its ConfigErrors (e.g. an lr-tied rho on a constant lr) before any writing
  config_check.check_workdir(config, workdir, force=force_resume)
  # Before anything compiles: a dataset that is not prepared fails here, in seconds, as a DataError.
  eval_sets = data.make_eval_sets(config.data, tuple(config.eval_sets),
                                  global_batch_size=config.eval_batch_size)

  model, tx, schedule, total_steps = run.model, run.tx, run.schedule, run.total_steps
  replicated, batch_sharding = sharding.replicated(mesh), run.batch_sharding
  state = run.init_state()
  ckpt = checkpointing.Checkpointer(workdir, every_steps=config.checkpoint_every_steps,
                                    max_to_keep=config.keep_checkpoints, cleanup_tmp=True)
  restored = ckpt.restore_latest(state)
  if restored is not None:
    _, state = restored
  start_step = int(jax.device_get(state['step']))
  if restored is not None:
    print(f'resumed from step {start_step} in {workdir}', flush=True)

  train_step = jax.jit(make_train_step(config, model, run.updater, tx, run.num_classes),
                       in_shardings=(run.state_sharding, batch_sharding),
                       out_shardings=(run.state_sharding, replicated),
                       donate_argnums=(0,))
  evaluator = evaluation.Evaluator(model, mesh, eval_sets)
  batches = data.make_train_iterator(config.data, global_batch_size=config.batch_size,
                                     seed=config.seed, start_step=start_step)

  writer = writers.make_writer(config, workdir, resume_id=config_check.run_id(config, workdir))
  if start_step == 0:
    writer.write_hparams({k: str(v) for k, v in config.to_dict().items()})
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_steps=config.log_every_steps, every_secs=None)
  sigterm, previous_handler = _install_sigterm_flag()

  window, window_steps, window_start = None, 0, time.time()
  pending = None
  skipped = []

  def check_finite(step_metrics):  # (step, metrics) of a step already dispatched, or None
    if step_metrics is None or bool(step_metrics[1]['finite']):
      return
    if config.nan_policy == 'stop':
      ckpt.close()  # saves already started complete: the last good checkpoint is whole
      _stop_non_finite(*step_metrics)
    skipped.append(step_metrics[0])
    print(f'warning: skipped step {step_metrics[0]}: non-finite {_non_finite_what(step_metrics[1])}; '
          f'its update was dropped (config.nan_policy=skip)', flush=True)

  eval_results = {}
  step = start_step
  print(f'training {config.model.name} with {config.updater.name} on {config.data.name}: '
        f'{total_steps} steps, global batch {config.batch_size}, {num_devices} devices '
        f'(mesh {" x ".join(f"{k}={v}" for k, v in mesh.shape.items())})', flush=True)
  try:
    while step < total_steps:
      local = next(batches)
      batch = data.to_global_batch(local, batch_sharding)
      state, metrics = train_step(state, batch)
      step += 1
      window = metrics if window is None else jax.tree.map(jnp.add, window, metrics)
      window_steps += 1
      progress(step)
      # Checked one step late so the host never waits on the step just dispatched; a non-finite step
      # left the state untouched, so nothing bad can be saved meanwhile. With 'stop', a step about to be
      # checkpointed is checked first: a resumed run must not silently skip it.
      check_finite(pending)
      pending = (step, metrics)
      if config.nan_policy == 'stop' and ckpt.due(step):
        check_finite(pending)
      ckpt.save(step, state)
      if step % config.log_every_steps == 0 or step == total_steps:
        _log(writer, step, total_steps, window, window_steps, time.time() - window_start, schedule,
             config, num_devices, start_time)
        window, window_steps, window_start = None, 0, time.time()
      if config.eval_every_steps and (step % config.eval_every_steps == 0) and step < total_steps:
        eval_results = evaluator.run(state['params'], state['model_state'])
        _write_eval(writer, step, eval_results)
      if sigterm['sigterm']:
        check_finite(pending)
        ckpt.save(step, state, force=True)
        ckpt.close()
        raise Preempted(f'SIGTERM at step {step}: checkpoint written to {ckpt.directory}; rerun the '
                        f'same command to resume')
    check_finite(pending)
  finally:
    signal.signal(signal.SIGTERM, previous_handler)

  ckpt.save(step, state, force=True)
  ckpt.close()
  eval_results = evaluator.run(state['params'], state['model_state'])
  _write_eval(writer, step, eval_results)
  writer.flush()
  results = {'config': config.to_dict(), 'steps': step, 'total_steps': total_steps,
             'eval': eval_results, 'wall_time_s': time.time() - start_time,
             'hardware': hardware(), 'skipped_steps': skipped}
  results_path = paths.path(workdir) / 'results.json'
  if jax.process_index() == 0:  # written whole or not at all: a kill here must not leave half a file
    paths.write_json(results_path, results)
  writer.close()
  print(f'done: {json.dumps(eval_results)}; results in {results_path}', flush=True)
  return results


def _non_finite_what(metrics) -> str:
  loss = float(metrics['loss'])
  return f'loss (loss={loss})' if not np.isfinite(loss) else f'update (its norm; loss={loss:.4g} is finite)'


def _stop_non_finite(step, metrics):
  raise config_check.NonFiniteError(
      f'non-finite {_non_finite_what(metrics)} at step {step}; the state was not updated and the last '
      f"checkpoint is intact; lower the learning rate or set config.nan_policy='skip'")


def _log(writer, step, total_steps, window, window_steps, seconds, schedule, config, num_devices,
         start_time):
  means = {f'train/{k}': float(v) / window_steps for k, v in jax.device_get(window).items()}
  means['train/lr'] = float(schedule(step - 1))
  img_per_s = config.batch_size * window_steps / max(seconds, 1e-9)
  means['train/img_per_s_per_device'] = img_per_s / num_devices
  writer.write_scalars(step, means)
  writer.flush()  # a remote workdir's events are copied to it here (at most every COPY_EVERY_SECS)
  eta = (total_steps - step) * seconds / max(window_steps, 1)
  print(f'step {step}/{total_steps} | loss {means["train/loss"]:.4f} | '
        f'acc {means.get("train/accuracy", float("nan")):.3f} | {img_per_s:.0f} img/s | '
        f'elapsed {time.time() - start_time:.0f}s | ETA {eta:.0f}s', flush=True)


def _write_eval(writer, step, eval_results: dict):
  flat = {}
  for name, result in eval_results.items():
    for k, v in result.items():
      if isinstance(v, (int, float)):
        flat[f'eval/{name}/{k}'] = v
  writer.write_scalars(step, flat)
  print(f'eval at step {step}: ' + ', '.join(f'{k}={v:.4f}' for k, v in flat.items()), flush=True)
