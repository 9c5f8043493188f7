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
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF only feeds the input pipeline: keep it quiet

from absl import app, flags, logging
from ml_collections import config_flags

from rsam.training import cli  # bad flags: one `error:` line, exit code 2, before JAX is imported

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.DEFINE_bool('force_resume', False, 'Resume even if the workdir holds a run of a different config.')
config_flags.DEFINE_config_file('config', None, 'Training config (a Python file with get_config).',
                                lock_config=True)


def main(argv):
  del argv
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
                       wandb_naming=naming)
  except (ConfigError, DataError) as e:  # exit codes: README, "Exit codes"
    print(f'error: {e}', file=sys.stderr)
    sys.exit(getattr(e, 'exit_code', 2))
  except Preempted as e:  # SIGTERM or SIGINT: its step is saved
    print(str(e), file=sys.stderr)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:  # Ctrl-C before the training loop took over SIGINT: nothing to save yet
    print('interrupted (SIGINT) before training started; nothing was saved', file=sys.stderr)
    sys.exit(130)


if __name__ == '__main__':
  # Unknown flags, --config and --workdir are checked on the raw argv, before the config file loads (and
  # JAX with it): < 1 s.
  app.run(main, flags_parser=functools.partial(
      cli.parse_flags, folders=('workdir',),
      required={'config': 'a config file, e.g. configs/quickstart.py',
                'workdir': 'a directory for checkpoints and results'}))
