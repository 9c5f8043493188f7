"""The training loop behind ``train.py``: ``train_and_evaluate(config, workdir)``."""
import contextlib
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import data
from rsam.training import (checkpointing, compilation_cache, config_check, distributed, evaluation,
                           interrupts, paths, run_folder, sharding, writers)
from rsam.training import progress as progress_lib
from rsam.training.train_step import build, make_mesh, make_train_step


Preempted = interrupts.Preempted  # SIGTERM, SIGINT or SIGHUP stopped the run (after saving its step)


def hardware() -> dict:
  devices = jax.devices()
  return {'platform': devices[0].platform, 'device_kind': devices[0].device_kind,
          'num_devices': len(devices), 'num_processes': jax.process_count(),
          'host': platform.machine(), 'cpu_count': os.cpu_count(), 'jax': jax.__version__}


def train_and_evaluate(config, workdir: str, *, force_resume: bool = False, start_over: bool = False,
                       wandb_naming=None) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint) and returns the results dict.

  ``workdir`` is a local folder or a ``gs://`` path. The run's folder (rsam/training/run_folder.py) owns its
  files: it checks them, holds the lease from before the first write to the end however the run ends, and
  keeps the records. ``force_resume``: continue a run of another config, or take over a live run's workdir
  (it hands over first); ``start_over``: archive what the folder holds and train from step 0. A write that
  fails for lack of space or permission is one ``paths.WriteFailed`` line (exit code 74), a bucket
  unreachable past ``config.storage_retry_s`` one ``paths.StorageUnreachable`` line (69).
  ``wandb_naming``: the wandb run's group, name, tags and summary, from the application (writers.identity).
  """
  paths.quiet_write_failures()  # orbax's save threads would log pages of traceback for such a failure
  opened = []
  try:
    with contextlib.ExitStack() as cleanup:  # the folder (checkpointer, lease), however the run ends
      return _train_and_evaluate(config, workdir, force_resume, start_over, cleanup, opened,
                                  wandb_naming)
  except interrupts.Preempted:  # its line says what was saved
    raise
  except Exception as e:  # pylint: disable=broad-except
    failed = run_folder.failure(e, workdir, opened[0] if opened else None)
    if failed is None:
      raise
    # The failed save's tensorstore callbacks report "Event loop is closed" later, as a restore's do.
    checkpointing._quiet_failed_restore_leftovers()  # pylint: disable=protected-access
    raise failed from None


def _train_and_evaluate(config, workdir: str, force_resume: bool, start_over: bool,
                        cleanup: contextlib.ExitStack, opened: list, wandb_naming=None) -> dict:
  start_time = time.time()
  workdir = paths.normalize(workdir)
  distributed.start(config, workdir)  # joins a pod's hosts; hosts started differently stop here, all of them
  config_check.validate(config)  # one-line errors before any device, data or compilation work
  paths.set_storage_retry(config.get('storage_retry_s') or paths.DEFAULT_STORAGE_RETRY_S)
  compilation_cache.enable(config.get('compilation_cache_dir', ''))  # before anything compiles
  mesh = make_mesh(config)  # config.mesh: replicated state unless it has an fsdp axis > 1
  num_devices = len(mesh.devices.ravel())
  config_check.check_batch(config, num_devices=num_devices, process_count=jax.process_count())
  run = build(config, mesh)  # its ConfigErrors (e.g. an lr-tied rho on a constant lr) before any writing
  # Checked before anything is written (a refused run changes nothing), then held: the lease, config.json.
  folder = run_folder.open(config, workdir, force_resume=force_resume, start_over=start_over)
  opened.append(folder)
  cleanup.callback(folder.release)  # the checkpointer closed, then the lease given back
  # Before anything compiles: a dataset that is not prepared fails here, in seconds, as a DataError.
  eval_every = evaluation.intervals(config)  # each set's own interval (rsam/training/evaluation.py)
  eval_sets = data.make_eval_sets(config.data, tuple(eval_every), global_batch_size=config.eval_batch_size)

  model, tx, schedule, total_steps = run.model, run.tx, run.schedule, run.total_steps
  replicated, batch_sharding = sharding.replicated(mesh), run.batch_sharding
  # Restored into the state's shapes and shardings (traced, not compiled): a resume never computes the
  # initial state only to overwrite it.
  restored = folder.restore(checkpointing.abstract_state(jax.eval_shape(run.init_state), run.state_sharding))
  state = restored[1] if restored is not None else run.init_state()
  start_step = int(jax.device_get(state['step']))

  train_step = jax.jit(make_train_step(config, model, run.updater, tx, run.num_classes),
                       in_shardings=(run.state_sharding, batch_sharding),
                       out_shardings=(run.state_sharding, replicated),
                       donate_argnums=(0,))
  evaluator = evaluation.Evaluator(model, mesh, eval_sets)
  batches = data.make_train_iterator(config.data, global_batch_size=config.batch_size,
                                     seed=config.seed, start_step=start_step)

  # This process's segment of the run; its writer drops the metrics of steps the workdir already holds.
  folder.begin(start_step, hardware())
  writer = folder.writer(writers.make_writer(config, workdir, resume_id=folder.wandb_id(),
                                             naming=wandb_naming))
  if start_step == 0:
    writer.write_hparams({k: str(v) for k, v in config.to_dict().items()})
  signals = interrupts.Interrupts(agree=distributed.agree_on_signal if jax.process_count() > 1 else None)

  window, window_steps = None, 0
  meter, trace = progress_lib.Meter(), progress_lib.Trace(config, workdir)  # rsam/training/progress.py
  pending = None
  skipped = []
  in_a_row = []  # the non-finite steps since the last finite one

  def check_finite(step_metrics):  # (step, metrics) of a step already dispatched, or None
    if step_metrics is None or bool(step_metrics[1]['finite']):
      if step_metrics is not None:
        in_a_row.clear()
      return
    if config.nan_policy == 'stop':
      folder.close_checkpoints()  # saves already started complete: the last good checkpoint is whole
      _stop_non_finite(*step_metrics)
    skipped.append(step_metrics[0])
    in_a_row.append(step_metrics[0])
    print(f'warning: skipped step {step_metrics[0]}: non-finite {_non_finite_what(step_metrics[1])}; '
          f'its update was dropped (config.nan_policy=skip)', flush=True)
    limit = config.get('max_consecutive_skipped_steps', 10)
    if len(in_a_row) >= limit:  # the state no longer changes: stop as 'stop' does
      folder.close_checkpoints()
      raise config_check.NonFiniteError(
          f'{len(in_a_row)} non-finite steps in a row (steps {in_a_row[0]}-{in_a_row[-1]}; '
          f'config.max_consecutive_skipped_steps={limit}): stopped; the last checkpoint is intact; lower the '
          f'learning rate')

  eval_results = {}
  step = start_step
  print(f'training {config.model.name} with {config.updater.name} on {config.data.name}: '
        f'{total_steps} steps, global batch {config.batch_size}, {num_devices} devices '
        f'(mesh {" x ".join(f"{k}={v}" for k, v in mesh.shape.items())})', flush=True)
  try:
    while step < total_steps:
      local = next(batches)
      batch = data.to_global_batch(local, batch_sharding)
      folder.check()  # lease lost or asked for, storage past its deadline, the folder emptied: stop here
      trace.before(step + 1)
      if step == start_step:
        meter.compiling()
        # Compiled apart from its first run, then the processes of a pod wait for each other: a host that
        # compiles later would find the others already in the first step's collectives, whose setup times
        # out (gloo, CPU: 30 s).
        train_step.lower(state, batch).compile()
        distributed.barrier('train_step_compiled')
      state, metrics = train_step(state, batch)
      if step == start_step:
        meter.compiled(metrics, step + 1)  # compile + the first step, timed apart from the rest
      else:
        meter.step()
      step += 1
      trace.after(step, metrics)
      window = metrics if window is None else jax.tree.map(jnp.add, window, metrics)
      window_steps += 1
      # Checked one step late so the host never waits on the step just dispatched; a non-finite step
      # left the state untouched, so nothing bad can be saved meanwhile. With 'stop', a step about to be
      # checkpointed is checked first: a resumed run must not silently skip it.
      check_finite(pending)
      pending = (step, metrics)
      saving = folder.due(step)
      if saving and config.nan_policy == 'stop':
        check_finite(pending)
      logging = step % config.log_every_steps == 0 or step == total_steps
      if logging:
        _log(writer, step, total_steps, window, window_steps, meter.window(), schedule, config, num_devices,
             start_time)
        window, window_steps = None, 0
      if saving:
        folder.persist(writer)  # the metrics so far reach the workdir before the checkpoint can
      if logging or saving:
        folder.record(step, logged=logging)
      folder.save(step, state)
      due = evaluation.due(eval_every, step, total_steps)
      if due:
        with meter.paused():
          evaluation.write(writer, step, evaluator.run(state['params'], state['model_state'], due))
      if signals.check(step):
        check_finite(pending)
        raise signals.stop(folder.stop(step, state, writer, signals.received.name))
    check_finite(pending)

    # After the last step the handlers stay: the final checkpoint completes whatever comes; then a signal
    # stops the run before (or during) the final evaluation, which a rerun does from that checkpoint.
    folder.check()
    folder.persist(writer)
    folder.record(step)
    folder.save(step, state, force=True)
    folder.close_checkpoints()
    evaluate_later = (f'after the last step ({step}): the final checkpoint is in {folder.checkpoints.directory}; '
                      f'rerun the same command to evaluate it')
    if signals.check(step + 1):  # after the last step (its own key on a pod: total_steps + 1)
      raise signals.stop(evaluate_later)
    with signals.raising(evaluate_later):
      eval_results = evaluator.run(state['params'], state['model_state'])
    evaluation.write(writer, step, eval_results)
    writers.summarize(writer, eval_results)  # wandb's summary: final/<set>/accuracy beside the paper's
    writers.persist(writer)
    folder.record(step, ended='finished')
    # wall_time_s and hardware: this process; segments and total_wall_time_s: every process of the run.
    results = {'config': config.to_dict(), 'steps': step, 'total_steps': total_steps,
               'eval': eval_results, 'wall_time_s': time.time() - start_time,
               'hardware': hardware(), 'skipped_steps': skipped, **folder.segments.summary()}
    results_path = folder.write_results(results)
    writer.close()
    print(f'done: {json.dumps(eval_results)}; results in {results_path}', flush=True)
    return results
  except interrupts.Preempted:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # A signal came while the storage was down: the wait ended within its grace; stop as the signal says.
    if signals.received is not None and paths.storage_failure(e) is not None:
      raise signals.stop(folder.unsaved(step, paths.storage_failure(e))) from None
    raise
  finally:
    signals.restore()
    trace.stop()


def _non_finite_what(metrics) -> str:
  loss = float(metrics['loss'])
  return f'loss (loss={loss})' if not np.isfinite(loss) else f'update (its norm; loss={loss:.4g} is finite)'


def _stop_non_finite(step, metrics):
  raise config_check.NonFiniteError(
      f'non-finite {_non_finite_what(metrics)} at step {step}; the state was not updated and the last '
      f"checkpoint is intact; lower the learning rate or set config.nan_policy='skip'")


def _log(writer, step, total_steps, window, window_steps, timed, schedule, config, num_devices, start_time):
  """``timed``: (steps, seconds) of the training steps in the window, compile and evaluations left out."""
  means = {f'train/{k}': float(v) / window_steps for k, v in jax.device_get(window).items()}
  means['train/lr'] = float(schedule(step - 1))
  img_per_s, rate = progress_lib.rate_text(*timed, batch_size=config.batch_size, remaining=total_steps - step)
  if img_per_s is not None:  # the timed steps only (clu's ReportProgress would count compile and evaluations)
    means['train/steps_per_sec'] = img_per_s / config.batch_size
    means['train/img_per_s_per_device'] = img_per_s / num_devices
  writer.write_scalars(step, means)
  writer.flush()  # a remote workdir's events are copied to it here (at most every COPY_EVERY_SECS)
  print(f'step {step}/{total_steps} | loss {means["train/loss"]:.4f} | '
        f'acc {means.get("train/accuracy", float("nan")):.3f} | {rate} | '
        f'elapsed {time.time() - start_time:.0f}s', flush=True)
