"""The training loop behind ``train.py``: ``train_and_evaluate(config, workdir)``."""
import dataclasses
import json
import os
import platform
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import periodic_actions
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import data
import models
import rsam
from data import augment
from rsam.training import checkpointing, config_check, evaluation, losses, optim, writers


class Preempted(Exception):
  """SIGTERM arrived (TPU preemption); a checkpoint of the current step was written."""


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ('data',))


def build_model(config, num_classes: int):
  dtype = jnp.bfloat16 if config.compute_dtype == 'bfloat16' else jnp.float32
  return models.get_model(config.model.name, num_classes=num_classes, dtype=dtype,
                          **dict(config.model.get('overrides', {})))


def init_variables(model, config, image_shape):
  """Float32 parameters and the model's other collections (e.g. batch_stats), as one dict each."""
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  variables = model.init({'params': jax.random.key(config.seed), 'dropout': jax.random.key(0)}, dummy,
                         train=False)
  params = variables.pop('params')
  return params, dict(variables)


def make_train_step(config, model, updater, tx, num_classes: int):
  loss_fn = losses.make_loss_fn(model, config.loss)
  root = jax.random.key(config.seed)

  def train_step(state, batch):
    step = state['step']
    mix_key, update_key = jax.random.split(jax.random.fold_in(root, step))
    targets = losses.make_targets(batch['label'], num_classes, config.loss, config.label_smoothing)
    images = batch['image']
    if config.mixup_alpha > 0:
      images, targets = augment.mixup(mix_key, images, targets, alpha=config.mixup_alpha)
    result = updater(loss_fn, state['params'], state['model_state'], {'image': images, 'target': targets},
                     update_key, step)
    updates, opt_state = tx.update(result.grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    # A non-finite loss or gradient leaves the state as it was (the loop then stops or skips).
    finite = jnp.isfinite(result.loss) & jnp.isfinite(optax.global_norm(result.grads))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = {'step': step + 1,
                 'params': keep(params, state['params']),
                 'model_state': keep(result.model_state, state['model_state']),
                 'opt_state': keep(opt_state, state['opt_state'])}
    metrics = {'loss': result.loss, **result.aux, 'finite': finite.astype(jnp.float32)}
    return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

  return train_step


@dataclasses.dataclass(frozen=True)
class Run:
  """What a config builds: the model, base optimizer, lr schedule, updater and the initial state."""
  model: Any
  tx: Any
  schedule: Any
  updater: Any
  total_steps: int
  num_classes: int
  init_state: Any  # () -> replicated state {'step', 'params', 'model_state', 'opt_state'}


def build(config, mesh: Mesh) -> Run:
  num_devices = mesh.devices.size
  num_classes = data.num_classes(config.data)
  total_steps = config_check.total_steps(config)
  schedule, lr_max, lr_min = optim.make_lr_schedule(config.schedule, config.optimizer.lr, total_steps)
  tx = optim.make_optimizer(config.optimizer, schedule)
  updater = rsam.make_updater(config.updater, total_steps=total_steps, lr_schedule=schedule,
                              lr_max=lr_max, lr_min=lr_min, mesh=mesh,
                              accum_steps=config.grad_accum_steps,
                              per_device_batch=config.batch_size // num_devices)
  model = build_model(config, num_classes)

  def init_state():
    params, model_state = init_variables(model, config, data.image_shape(config.data))
    return {'step': jnp.zeros((), jnp.int32), 'params': params, 'model_state': model_state,
            'opt_state': tx.init(params)}

  init = jax.jit(init_state, out_shardings=NamedSharding(mesh, P()))
  return Run(model, tx, schedule, updater, total_steps, num_classes, init)


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
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint) and returns the results dict."""
  start_time = time.time()
  config_check.validate(config)  # one-line errors before any device, data or compilation work
  if config.get('distributed', {}).get('enabled'):
    jax.distributed.initialize(**{k: v for k, v in config.distributed.items() if k != 'enabled'})
  mesh = make_mesh()
  num_devices = len(mesh.devices.ravel())
  config_check.check_batch(config, num_devices=num_devices, process_count=jax.process_count())
  run = build(config, mesh)  # its ConfigErrors (e.g. an lr-tied rho on a constant lr) before any writing
  config_check.check_workdir(config, workdir, force=force_resume)
  # Before anything compiles: a dataset that is not prepared fails here, in seconds, as a DataError.
  eval_sets = data.make_eval_sets(config.data, tuple(config.eval_sets),
                                  global_batch_size=config.eval_batch_size)

  model, tx, schedule, total_steps = run.model, run.tx, run.schedule, run.total_steps
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))
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
                       in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated),
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
        f'{total_steps} steps, global batch {config.batch_size}, {num_devices} devices', flush=True)
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
  if jax.process_index() == 0:  # written whole or not at all: a kill here must not leave half a file
    with open(os.path.join(workdir, 'results.json.tmp'), 'w') as f:
      json.dump(results, f, indent=2, default=str)
    os.replace(os.path.join(workdir, 'results.json.tmp'), os.path.join(workdir, 'results.json'))
  writer.close()
  print(f'done: {json.dumps(eval_results)}; results in {os.path.join(workdir, "results.json")}',
        flush=True)
  return results


def _non_finite_what(metrics) -> str:
  loss = float(metrics['loss'])
  return f'loss (loss={loss})' if not np.isfinite(loss) else f'gradient (its norm; loss={loss:.4g} is finite)'


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
