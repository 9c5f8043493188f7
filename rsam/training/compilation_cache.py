"""JAX's persistent compilation cache, on by default: a restarted run (a preempted TPU VM, a resume) loads
its compiled programs instead of compiling them again.

``config.compilation_cache_dir`` picks the folder:

  ''         (default) $JAX_COMPILATION_CACHE_DIR if set, else ``<cache_dir>/jax_compilation_cache`` where
             <cache_dir> is rsam/training/paths.py:cache_dir() ($RSAM_CACHE_DIR, else
             $XDG_CACHE_HOME/rsam, else ~/.cache/rsam): a folder of this machine, whatever the workdir
             (a gs:// workdir keeps its cache local: it is read at every compile);
  'off'      no persistent cache;
  any path   that folder.

JAX caches a program only when compiling it took at least ``jax_persistent_cache_min_compile_time_secs``
(1 s by default; the train step and the eval step, not the many tiny programs); set
JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS to change that.
"""
import os

import jax

from rsam.training import paths

OFF = ('off', 'none', 'false', '0')


def default_dir() -> str:
  return os.path.join(paths.cache_dir(), 'jax_compilation_cache')


def enable(setting: str = '') -> str:
  """Turns the cache on in ``setting``'s folder (see the module doc); returns the folder ('' when off).
  Call before the first compilation; changing it later resets JAX's cache object."""
  from jax.experimental.compilation_cache import compilation_cache
  setting = (setting or '').strip()
  if setting.lower() in OFF:
    folder = ''
  elif setting:
    folder = setting
  else:
    folder = jax.config.jax_compilation_cache_dir or os.environ.get('JAX_COMPILATION_CACHE_DIR') or default_dir()
  if folder != (jax.config.jax_compilation_cache_dir or ''):
    if folder and not paths.is_remote(folder):
      os.makedirs(folder, exist_ok=True)
    jax.config.update('jax_compilation_cache_dir', folder or None)
    compilation_cache.reset_cache()  # an earlier compile may have decided "no cache" for the process
  return folder
