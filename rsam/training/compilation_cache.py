"""JAX's persistent compilation cache, on by default: a restarted run (a preempted TPU VM, a resume) loads
its compiled programs instead of compiling them again.

``config.compilation_cache_dir`` picks the folder:

  ''         (default) $JAX_COMPILATION_CACHE_DIR if set, else ``<cache_dir>/jax_compilation_cache`` where
             <cache_dir> is rsam/training/paths.py:cache_dir() ($RSAM_CACHE_DIR, else
             $XDG_CACHE_HOME/rsam, else ~/.cache/rsam): a folder of this machine, whatever the workdir
             (a gs:// workdir keeps its cache local: it is read at every compile);
  'off'      no persistent cache;
  any path   that folder.

A folder that cannot be created or written (a read-only disk, RSAM_CACHE_DIR under a regular file) is a
warning line, and the run goes on without the cache: the cache only saves time.

JAX caches a program only when compiling it took at least ``jax_persistent_cache_min_compile_time_secs``
(1 s by default; the train step and the eval step, not the many tiny programs); set
JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS to change that.
"""
import os
import sys
import uuid

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
  if folder and not paths.is_remote(folder) and not _writable(folder):
    folder = ''
  if folder != (jax.config.jax_compilation_cache_dir or ''):
    jax.config.update('jax_compilation_cache_dir', folder or None)
    compilation_cache.reset_cache()  # an earlier compile may have decided "no cache" for the process
  return folder


def _writable(folder: str) -> bool:
  """Creates ``folder`` and writes a file in it; False (and a warning line) if that fails."""
  probe = os.path.join(folder, f'.rsam_probe_{uuid.uuid4().hex}')
  try:
    os.makedirs(folder, exist_ok=True)
    with open(probe, 'w'):
      pass
    os.remove(probe)
    return True
  except OSError as e:
    paths.say(f'warning: the compilation cache {folder} is not writable ({paths.brief(e)}); running without '
              f'it (every program compiles; set config.compilation_cache_dir or RSAM_CACHE_DIR to a writable '
              f'folder)', stream=sys.stderr)
    return False
