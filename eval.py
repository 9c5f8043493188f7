r"""Evaluates a checkpoint of a train.py run on the config's eval sets (or those given).

    python eval.py --workdir /tmp/rsam_quickstart [--step N] [--eval_sets val,test]

The run's config is its workdir's ``config.json`` (train.py writes it). ``--config`` may still be given
(e.g. for a workdir without config.json); one that differs from config.json in anything but bookkeeping
fields (eval sets, batch size of evaluation, data_dir, ...) is refused with one ``error:`` line.
Writes ``<workdir>/eval_step<N>.json`` beside the checkpoints and prints the metrics.
"""
import json
import functools
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging
from ml_collections import config_flags

from rsam.training import cli  # bad flags: one `error:` line, exit code 2, before JAX is imported

flags.DEFINE_string('workdir', None, 'The train.py workdir holding checkpoints/.')
flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate (default: the newest intact one).')
flags.DEFINE_list('eval_sets', None, 'Eval sets to use instead of config.eval_sets.')
config_flags.DEFINE_config_file('config', None, 'The training config of the run (default: the workdir\'s '
                                'config.json).', lock_config=True)


def evaluate_checkpoint(config, workdir: str, *, step=None, eval_sets=None) -> dict:
  """``config`` None: the workdir's config.json."""
  import jax
  import data
  from rsam.training import checkpointing, config_check, distributed, evaluation, loop, paths, train_step
  workdir = paths.normalize(workdir)
  config = config_check.run_config(workdir, config)  # config.json, or --config checked against it
  distributed.start(config, workdir)  # every host of a pod runs eval.py together, as it ran train.py
  if eval_sets:
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.eval_sets = tuple(eval_sets)
  config_check.validate(config)
  mesh = train_step.make_mesh(config)
  config_check.check_batch(config, num_devices=mesh.devices.size, process_count=jax.process_count())
  run = train_step.build(config, mesh)
  ckpt = checkpointing.Checkpointer(workdir, every_steps=1, max_to_keep=None, asynchronous=False)
  step, state = ckpt.restore(step, checkpointing.abstract_state(jax.eval_shape(run.init_state),
                                                                 run.state_sharding))
  sets = data.make_eval_sets(config.data, tuple(config.eval_sets), global_batch_size=config.eval_batch_size)
  results = evaluation.Evaluator(run.model, mesh, sets).run(state['params'], state['model_state'])
  out = {'step': step, 'eval': results, 'hardware': loop.hardware()}
  out['path'] = str(paths.path(workdir) / f'eval_step{step}.json')
  if jax.process_index() == 0:
    paths.write_json(out['path'], {k: v for k, v in out.items() if k != 'path'})
  ckpt.close()
  return out


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from data import DataError
  from rsam.errors import ConfigError
  if flags.FLAGS.workdir is None:
    print('error: --workdir is required (the train.py workdir holding checkpoints/)', file=sys.stderr)
    sys.exit(2)
  cli.import_tensorflow_quietly()  # the eval sets' input pipelines
  try:
    out = evaluate_checkpoint(flags.FLAGS.config, flags.FLAGS.workdir, step=flags.FLAGS.step,
                              eval_sets=flags.FLAGS.eval_sets)
  except (ConfigError, DataError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps(out['eval']))
  print(f"written: {out['path']}")


if __name__ == '__main__':
  # Unknown flags and --workdir are checked on the raw argv, before the config file loads (and JAX with
  # it): < 1 s.
  app.run(main, flags_parser=functools.partial(
      cli.parse_flags, folders=('workdir',), required={'workdir': 'the train.py workdir holding checkpoints/'}))
