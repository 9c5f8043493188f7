"""Several seeds of one config trained together in ONE program: the train step vmapped over seeds.

For small models one seed leaves the machine mostly idle and each run pays its own compilation; here the
S seeds share one compiled step whose every array has a leading seed axis:

  state_s   = init from jax.random.key(seed_s)                 (as rsam/training/train_step.build)
  batch_s   = data.make_train_iterator(..., seed=seed_s)       (each seed its own data order/augmentation)
  state_s, metrics_s = train_step(key(seed_s), state_s, batch_s)   for s = 1..S, as one jax.vmap

so seed s follows the computation of ``train_and_evaluate`` with ``config.seed = seed_s`` (its own init,
data order, augmentation, noise and dropout draws) up to float rounding from batching. Over a short run
that is agreement to ~1e-4 (tests/test_train.py); over hundreds of steps of a chaotic training the rounding
grows, and a seed's final accuracy can differ from its separate run's by as much as the seed-to-seed spread
(results/small_scale/README.md): treat vmapped seeds as fresh samples, paired only with each other. Every
seed is then evaluated on the config's eval sets and gets a workdir ``<workroot>/<seed name>`` with the
final checkpoint (readable by eval.py and scripts/gradient_stability.py) and a results.json like
train.py's, plus ``train_log``: the mean of every training metric over each window of
``config.log_every_steps`` steps (the updaters' diagnostics among them). Files go through
rsam/training/paths.py.

Limits: one process, the batch split over the local devices as in training; m-sharpness groups
(``updater.m``) are not supported (their shard_map does not take a seed axis); a non-finite step leaves
that seed's state unchanged (the step's own guard) and is listed in its ``skipped_steps``, whatever
``config.nan_policy`` says.
"""
import time
from typing import Callable, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import data
from rsam.errors import ConfigError
from rsam.training import checkpointing, config_check, evaluation, paths
from rsam.training.train_step import build, init_variables, make_mesh, make_seeded_train_step


def stack(trees: Sequence) -> object:
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def unstack(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


def _prefetched(make_batch: Callable[[], dict], count: int, depth: int = 8):
  """Yields ``make_batch()`` ``count`` times, made ahead in a background thread: the S input pipelines
  (one tf.data pipeline per seed) then run while the step computes instead of between steps. One
  producer, so the order is the order of the calls."""
  import queue
  import threading
  buffer: queue.Queue = queue.Queue(maxsize=depth)

  def produce():
    try:
      for _ in range(count):
        buffer.put((True, make_batch()))
    except BaseException as e:  # handed to the consumer, raised there
      buffer.put((False, e))

  threading.Thread(target=produce, daemon=True).start()
  for _ in range(count):
    ok, item = buffer.get()
    if not ok:
      raise item
    yield item


def train_seeds(config, seeds: Sequence[int], workdirs: Optional[Sequence[str]] = None,
                on_log: Optional[Callable[[int, dict], None]] = None) -> List[dict]:
  """Trains ``config`` once per seed in ``seeds``, all in one vmapped program; returns one results dict
  per seed (``config`` with that seed, ``eval``, ``train_log``, ``skipped_steps``, ...). With ``workdirs``
  (one per seed) each seed's final checkpoint and results.json are written there."""
  seeds = [int(s) for s in seeds]
  if len(set(seeds)) != len(seeds):
    raise ConfigError(f'seeds {seeds} repeat a seed')
  if workdirs is not None and len(workdirs) != len(seeds):
    raise ConfigError(f'{len(workdirs)} workdirs for {len(seeds)} seeds')
  if config.updater.get('m'):
    raise ConfigError('multi-seed training does not support m-sharpness groups (updater.m); set updater.m=None')
  start_time = time.time()
  config_check.validate(config)
  mesh = make_mesh()
  config_check.check_batch(config, num_devices=len(mesh.devices.ravel()), process_count=jax.process_count())
  run = build(config, mesh)
  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, 'data'))
  from data import sources
  image_shape = sources.image_shape(config.data)

  def init_one(key):
    params, model_state = init_variables(run.model, config, image_shape, key)
    return {'step': jnp.zeros((), jnp.int32), 'params': params, 'model_state': model_state,
            'opt_state': run.tx.init(params)}

  roots = jnp.stack([jax.random.key_data(jax.random.key(s)) for s in seeds])
  state = jax.jit(jax.vmap(lambda r: init_one(jax.random.wrap_key_data(r))), out_shardings=replicated)(roots)
  seeded = make_seeded_train_step(config, run.model, run.updater, run.tx, run.num_classes)
  step_fn = jax.jit(jax.vmap(lambda r, st, b: seeded(jax.random.wrap_key_data(r), st, b)),
                    in_shardings=(replicated, replicated, batch_sharding),
                    out_shardings=(replicated, replicated), donate_argnums=(1,))
  iterators = [data.make_train_iterator(config.data, global_batch_size=config.batch_size, seed=s)
               for s in seeds]
  batches = _prefetched(lambda: stack([next(it) for it in iterators]), run.total_steps)
  logs: List[List[dict]] = [[] for _ in seeds]
  skipped: List[List[int]] = [[] for _ in seeds]
  window, window_steps = None, 0
  for step in range(1, run.total_steps + 1):
    batch = jax.device_put(next(batches), batch_sharding)
    state, metrics = step_fn(roots, state, batch)
    window = metrics if window is None else jax.tree.map(jnp.add, window, metrics)
    window_steps += 1
    finite = np.asarray(metrics['finite'])
    for i in np.flatnonzero(finite < 1):
      skipped[i].append(step)
    if step % config.log_every_steps == 0 or step == run.total_steps:
      means = {k: np.asarray(v) / window_steps for k, v in jax.device_get(window).items()}
      for i in range(len(seeds)):
        logs[i].append({'step': step, **{k: float(v[i]) for k, v in means.items()}})
      if on_log is not None:
        on_log(step, {k: v.tolist() for k, v in means.items()})
      window, window_steps = None, 0

  eval_sets = data.make_eval_sets(config.data, tuple(config.eval_sets), global_batch_size=config.eval_batch_size)
  evaluator = evaluation.Evaluator(run.model, mesh, eval_sets)
  train_seconds = time.time() - start_time
  out = []
  for i, seed in enumerate(seeds):
    one = jax.device_put(unstack(state, i), replicated)
    seed_config = config.copy_and_resolve_references()
    seed_config.seed = seed
    results = {'config': seed_config.to_dict(), 'steps': run.total_steps, 'total_steps': run.total_steps,
               'eval': evaluator.run(one['params'], one['model_state']),
               'wall_time_s': train_seconds, 'multi_seed': {'seeds': seeds, 'index': i},
               'skipped_steps': skipped[i], 'train_log': logs[i]}
    if workdirs is not None:
      workdir = paths.normalize(workdirs[i])
      ckpt = checkpointing.Checkpointer(workdir, every_steps=run.total_steps, max_to_keep=1, asynchronous=False)
      ckpt.save(run.total_steps, one, force=True)
      ckpt.close()
      paths.write_json(paths.path(workdir) / 'results.json', results)
    out.append(results)
  return out

