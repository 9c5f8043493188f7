"""Restart cost, measured (issue #15, point 8): resume-to-first-step against a cold start, in one run.

    python scripts/benchmark.py --restart --out results/restart     # its command line

Both are ``python train.py ARGS --workdir W`` processes with the same ARGS, started one after the other:

  cold    a new workdir and an empty compilation-cache folder (RSAM_CACHE_DIR=<base>/cache, fresh): what the
          first start of a run pays (imports, data, tracing, compiling the initial state and the step);
  resume  the same command on that workdir after the cold start was stopped by SIGTERM at its first step
          (the loop writes a checkpoint of that step and exits 143): a preempted run's restart, with the
          compilation cache the cold start filled in its default folder (rsam/training/compilation_cache.py).

Each time is the wall time from spawning the process to its first ``step k/`` line, which the loop prints
after the step's metrics reached the host (``log_every_steps=1`` is forced, and a checkpoint cadence that
does not fall on the first step, so neither first step waits on a save). ratio = resume / cold; the target
is ≤ 0.4. The measuring process reads both children's stdout and does nothing else meanwhile.

Also here: the throughput of the checksum hashing that every save and every restore does
(rsam/training/checkpointing.py), measured on a file of a given size.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET_RATIO = 0.4


def first_step(command: List[str], env: Dict[str, str], *, timeout: float = 900) -> dict:
  """Starts ``command``; the seconds until its first ``step k/`` line, k; then SIGTERM and its exit code
  (the loop writes a checkpoint of the step it is at when it notices the signal: k or a later one)."""
  start = time.perf_counter()
  proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, bufsize=1)
  out = {'seconds': None, 'step': None, 'resumed_from': 0}
  lines = []
  try:
    deadline = start + timeout
    for line in proc.stdout:
      lines.append(line.rstrip())
      if line.startswith('resumed from step '):
        out['resumed_from'] = int(line.split()[3])
      if line.startswith('step ') and '/' in line.split()[1]:
        out['seconds'] = time.perf_counter() - start
        out['step'] = int(line.split()[1].split('/')[0])
        proc.send_signal(signal.SIGTERM)
        break
      if time.perf_counter() > deadline:
        break
    _, err = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  out['rc'] = proc.returncode
  if out['seconds'] is None:
    raise RuntimeError(f'{" ".join(command)} printed no step line (exit code {proc.returncode}): '
                       + '\n'.join(lines[-20:]) + '\n' + (err or '')[-3000:])
  return out


def measure(train_args: List[str], base: Optional[str] = None, *, env: Optional[Dict[str, str]] = None,
            timeout: float = 900, script: str = 'train.py') -> dict:
  """One cold start and one resume of ``train.py train_args`` (see the module doc); their seconds to the
  first step and the ratio."""
  owned = base is None
  base = base or tempfile.mkdtemp(prefix='rsam_restart_')
  try:
    env = dict(os.environ if env is None else env)
    for name in ('JAX_COMPILATION_CACHE_DIR', 'XDG_CACHE_HOME'):  # the default cache folder, fresh
      env.pop(name, None)
    env.update(RSAM_CACHE_DIR=os.path.join(base, 'cache'), PYTHONPATH=ROOT, WANDB_MODE='disabled',
               TF_CPP_MIN_LOG_LEVEL='3')
    command = [sys.executable, script, *train_args, '--config.log_every_steps=1',
               '--config.checkpoint_every_steps=1000000', '--workdir', os.path.join(base, 'workdir')]
    cold = first_step(command, env, timeout=timeout)
    if cold['rc'] != 143:
      raise RuntimeError(f'the cold start did not stop on SIGTERM with a checkpoint (exit code {cold["rc"]})')
    cache = os.path.join(base, 'cache', 'jax_compilation_cache')
    cached = sorted(os.listdir(cache)) if os.path.isdir(cache) else []
    resume = first_step(command, env, timeout=timeout)
    if resume['resumed_from'] < cold['step']:  # SIGTERM is handled at the end of a step: k or later
      raise RuntimeError(f'the second start did not resume from step {cold["step"]} or later: {resume}')
    return {'train_args': list(train_args), 'cold': cold, 'resume': resume,
            'cache_entries_after_cold_start': len(cached),
            'ratio': resume['seconds'] / cold['seconds'], 'target': TARGET_RATIO}
  finally:
    if owned:
      shutil.rmtree(base, ignore_errors=True)


def hash_throughput(size_bytes: int, folder: Optional[str] = None) -> dict:
  """Bytes per second of rsam/training/paths.py:sha256 on one file of ``size_bytes`` random bytes (written
  first, so it is likely in the page cache: the hashing cost alone, not the disk's)."""
  from rsam.training import paths
  handle, name = tempfile.mkstemp(prefix='rsam_hash_', dir=folder)
  try:
    with os.fdopen(handle, 'wb') as f:
      left = size_bytes
      while left:
        block = os.urandom(min(left, 64 << 20))
        f.write(block)
        left -= len(block)
    start = time.perf_counter()
    paths.sha256(name)
    seconds = time.perf_counter() - start
  finally:
    os.remove(name)
  return {'bytes': size_bytes, 'seconds': seconds, 'bytes_per_s': size_bytes / seconds}


def state_bytes(config) -> int:
  """Bytes of ``config``'s train state (parameters, model state, optimizer state), from its shapes alone."""
  import jax
  import numpy as np
  from rsam.training import train_step
  run = train_step.build(config, train_step.make_mesh())
  return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(run.init_state))))


def markdown(report: dict) -> str:
  r, h = report['restart'], report['hashing']
  flat = lambda d: ', '.join(f'{k} {v}' for k, v in d.items()) if isinstance(d, dict) else str(d)
  lines = [
      '# Restart cost: resume-to-first-step against a cold start',
      '',
      f"Command: `{report['command']}`  ",
      f"Date: {report['date']} · git {flat(report['git'])}  ",
      f"Hardware: {flat(report['hardware'])}  ",
      f"Size: `train.py {' '.join(r['train_args'])}`, one cold start and one resume (no repeats), each "
      f"stopped by SIGTERM at its first step",
      '',
      '| start | seconds to the first step | first step | resumed from | exit code |',
      '|---|---|---|---|---|',
      f"| cold (new workdir, empty compilation cache) | {r['cold']['seconds']:.1f} | {r['cold']['step']} | — | "
      f"{r['cold']['rc']} |",
      f"| resume (its checkpoint, the cache it filled: {r['cache_entries_after_cold_start']} entries) | "
      f"{r['resume']['seconds']:.1f} | {r['resume']['step']} | {r['resume']['resumed_from']} | "
      f"{r['resume']['rc']} |",
      '',
      f"**resume / cold = {r['ratio']:.2f}** (target ≤ {r['target']}: "
      f"{'met' if r['ratio'] <= r['target'] else 'missed'}).",
      '',
      f"Checksums (sha256 of every file of a checkpoint, at each save in orbax's save thread and at each "
      f"restore): {h['bytes_per_s'] / 1e9:.2f} GB/s measured on a {h['bytes'] / 1e9:.2f} GB file here. "
      f"ViT-B/16's train state ({report['vit_b16']['config']}) is {report['vit_b16']['bytes'] / 1e9:.2f} GB: "
      f"{report['vit_b16']['bytes'] / h['bytes_per_s']:.1f} s of hashing per save and per restore at that "
      f"rate (extrapolated from the measured throughput; up to 8 files are hashed at once, so a host with "
      f"more free cores is faster).",
      '',
      f"Machine load: {report.get('load', '?')} (load average at the start; the times include what other "
      f"jobs took).",
  ]
  return '\n'.join(lines) + '\n'
