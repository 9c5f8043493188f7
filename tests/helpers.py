"""Helpers shared by the test modules that train: the persistent compilation cache and subprocess env."""
import contextlib
import os

import jax


@contextlib.contextmanager
def persistent_compile_cache(path: str):
  """JAX's persistent compilation cache in ``path`` for this process while the context lasts (every
  program cached, however small), so programs compiled once are loaded by later runs and subprocesses."""
  from jax.experimental.compilation_cache import compilation_cache
  settings = {'jax_compilation_cache_dir': path, 'jax_persistent_cache_min_compile_time_secs': 0,
              'jax_persistent_cache_min_entry_size_bytes': -1}
  before = {name: getattr(jax.config, name) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()  # an earlier compile may have decided "no cache" for the process
  try:
    yield path
  finally:
    for name, value in before.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()


def subprocess_env(cache_dir: str, **extra) -> dict:
  """The environment of a train.py / eval.py subprocess: the same compilation cache, quiet logs, no wandb,
  8 fake CPU devices (unless the test's environment says otherwise)."""
  env = dict(os.environ)
  env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1', WANDB_MODE='disabled', TF_CPP_MIN_LOG_LEVEL='3',
             XLA_FLAGS=os.environ.get('XLA_FLAGS', '--xla_force_host_platform_device_count=8'), **extra)
  return env


def restored_state(config, workdir, step: int):
  """The train state of checkpoint ``step`` in a local ``workdir`` as numpy leaves, restored onto the
  state ``config`` builds on all devices."""
  import numpy as np
  from rsam.training import checkpointing, train_step
  run = train_step.build(config, train_step.make_mesh())
  ckpt = checkpointing.Checkpointer(str(workdir), every_steps=1, max_to_keep=None, asynchronous=False)
  try:
    got, state = ckpt.restore(step, run.init_state())
  finally:
    ckpt.close()
  assert got == step
  return jax.tree.map(np.asarray, jax.device_get(state))
