r"""Trains a model with any updater, data-parallel over every device of every host.

    python train.py --config configs/quickstart.py --workdir /tmp/rsam_quickstart
    python train.py --config configs/cifar.py:dataset=cifar100,model=wrn28_10,updater=rsam --workdir ...
    python train.py --config configs/vit_b16_rsam.py --workdir gs://... --config.data.data_dir=gs://...

One ``jax.jit`` step on the ``Mesh`` of ``config.mesh`` (rsam/training/sharding.py): the batch is split over
every device; the state is donated and replicated (the default, as the paper) or split along an 'fsdp'
axis. Each step: targets (one-hot, smoothing, mixup) -> the updater's gradient -> the
optax base optimizer. Every PRNG key is ``fold_in(key(seed), step)`` and the input pipeline is a function
of (seed, step), so a run resumed from a checkpoint continues bit for bit. The workdir holds
``config.json``, ``checkpoints/``, TensorBoard events, ``wandb/`` (when on) and, at the end,
``results.json``.
"""
import functools
import os
import signal
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF only feeds the input pipeline: keep it quiet

from absl import app, flags, logging
from ml_collections import config_flags

from rsam.training import cli  # bad flags: one `error:` line, exit code 2, before JAX is imported

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.DEFINE_bool('force_resume', False, 'Resume even if the workdir holds a run of a different config, or its '
                  'records are ahead of its checkpoints; take over a live run\'s workdir (it stops and hands '
                  'over first).')
flags.DEFINE_bool('start_over', False, 'Move everything the workdir holds (checkpoints, records, events) to '
                  '<workdir>/archive/<time>/ and train from step 0.')
config_flags.DEFINE_config_file('config', None, 'Training config (a Python file with get_config).',
                                lock_config=True)


def main(argv):
  del argv
  from rsam.training import progress
  progress.keep_output_alive()  # a closed pipe (a dropped ssh session's `| tee`) never stops the run
  if not flags.FLAGS['verbosity'].present:  # orbax and clu log every save at INFO; -v 0 brings it back
    logging.set_verbosity(logging.WARNING)
  from rsam.errors import ConfigError
  from data import DataError
  from rsam.training import config_check  # JAX and flax, no TensorFlow
  if not flags.FLAGS.workdir:
    print('error: --workdir is required (a directory for checkpoints and results)', file=sys.stderr)
    sys.exit(2)
  try:
    config_check.validate(flags.FLAGS.config)  # a bad field answers here, in seconds
  except (ConfigError, DataError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  login = cli.wandb_login_problem(flags.FLAGS.config)  # before anything is written to the workdir
  if login:
    print(f'error: {login}', file=sys.stderr)
    sys.exit(2)
  # The loop imports TensorFlow (clu, the input pipeline): only once the config is known to be sound.
  cli.import_tensorflow_quietly()
  from rsam.training.loop import Preempted, train_and_evaluate
  from rsam.training import writers
  try:
    naming = None  # the wandb run's names: the application knows the paper's table cells, the trainer not
    if writers.wandb_wanted(flags.FLAGS.config.get('wandb', {})):
      from configs import tables
      naming = tables.wandb_naming(flags.FLAGS.config, config_flags.get_config_filename(flags.FLAGS['config']))
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir, force_resume=flags.FLAGS.force_resume,
                       start_over=flags.FLAGS.start_over, wandb_naming=naming)
  except (ConfigError, DataError) as e:  # exit codes: docs/restarts.md, "Exit codes"
    _exit(f'error: {e}', getattr(e, 'exit_code', 2))
  except Preempted as e:  # SIGTERM, SIGINT or SIGHUP: its step is saved (or the line says it was not)
    _exit(str(e), e.exit_code)
  except KeyboardInterrupt:  # Ctrl-C before the training loop took over SIGINT: nothing to save yet
    _exit('interrupted (SIGINT) before training started; nothing was saved', 130)
  except _SignalBeforeTraining as e:
    _exit(f'{e.signal.name} before training started; nothing was saved', 128 + e.signal.value)


def _exit(line: str, code: int):
  print(line, file=sys.stderr, flush=True)
  from rsam.training import paths
  if paths.gave_up():
    # The storage did not answer: threads that still wait on it (orbax's save, tensorstore's retries) would
    # keep the interpreter from exiting for minutes. The line is out and the lease released (or stale).
    sys.stdout.flush()
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


class _SignalBeforeTraining(BaseException):
  """SIGTERM or SIGHUP before the training loop took the signals over (as KeyboardInterrupt for SIGINT): the
  run ends at once, its lease released on the way out; nothing was trained, so nothing is lost."""

  def __init__(self, signum):
    super().__init__(signum)
    self.signal = signal.Signals(signum)


def _raise_signal(signum, frame):
  del frame
  raise _SignalBeforeTraining(signum)


if __name__ == '__main__':
  for _signal in (signal.SIGTERM, signal.SIGHUP):  # a dropped ssh session sends SIGHUP: never a silent kill
    signal.signal(_signal, _raise_signal)
  # Unknown flags, --config and --workdir are checked on the raw argv, before the config file loads (and
  # JAX with it): < 1 s.
  app.run(main, flags_parser=functools.partial(
      cli.parse_flags, folders=('workdir',),
      required={'config': 'a config file, e.g. configs/quickstart.py',
                'workdir': 'a directory for checkpoints and results'}))
