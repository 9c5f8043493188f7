"""The multi-host path (issue #3): two processes on localhost train configs/tiny.py:sam as one run.

    python -m pytest tests/test_multihost.py -q      # about a minute on 2 CPU cores

Each process is ``python train.py`` with ``--config.distributed.*`` (jax.distributed over a coordinator on
127.0.0.1; cross-process collectives on CPU go through gloo, jax's default CPU implementation) and 2 fake CPU
devices: 4 global devices, one workdir shared by both (orbax writes the checkpoints together, process 0 the
metadata, config.json, TensorBoard events and results.json).

The reference is computed in this process on a 4-device mesh (4 of conftest's 8 fake devices), with the same
global batches: a 2-process run's global batch is process 0's local batch followed by process 1's (each
process reads its own slice of the training set, data/input_pipeline.py), so the reference feeds
``make_train_iterator(process_index=0, process_count=2)`` and ``(1, 2)`` concatenated through the loop's
own train step (``train_step.build`` + ``train_step.make_train_step``).

Not bit-identical, so compared with a tolerance: the cross-process all-reduces (gradients, BatchNorm
statistics, the ascent direction's norm) run through gloo, which sums the per-device partial results in another
order than XLA's in-process CPU all-reduce, so float32 results differ in the last bits after the first step
and SAM's ascent step amplifies that a little. Measured here after 4 steps: 2.3e-7 (params), 2.5e-6
(momentum), 2.4e-7 (batch stats) max abs difference (R-SAM: about the same after 4 steps, 6e-4 in params
after 12, hence 4 steps). The test also shows that the tolerance separates: a reference whose two halves
both come from process 0 (a pipeline that ignored the process index) differs by 0.29 in params.

A second test starts the two processes with different configs and workdirs: both stop with the same one
`error:` line (rsam/training/distributed.py) before anything is written or compiled.
"""
import functools
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4
UPDATER = 'sam'  # R-SAM's step compiles in 3x the time of SAM's and adds nothing multi-host specific
ATOL, RTOL = 2e-5, 1e-4


def _config():
  from configs import tiny
  c = tiny.get_config(UPDATER)
  c.total_steps = STEPS
  c.checkpoint_every_steps = 2
  return c


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(tmp_path, args_of):
  """Starts the two processes of one run: ``train.py`` on configs/tiny.py with ``args_of(i)`` added for
  process i; each writes tmp_path/process<i>.log. Returns [(Popen, log file)]."""
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', WANDB_MODE='disabled',
             TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')
  procs = []
  for i in range(2):
    log = open(tmp_path / f'process{i}.log', 'w')
    procs.append((subprocess.Popen(
        [sys.executable, 'train.py', '--config', f'configs/tiny.py:{UPDATER}', f'--config.total_steps={STEPS}',
         '--config.checkpoint_every_steps=2', '--config.distributed.enabled=True',
         f'--config.distributed.coordinator_address=127.0.0.1:{port}', '--config.distributed.num_processes=2',
         f'--config.distributed.process_id={i}'] + list(args_of(i)),
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log))
  return procs


def _wait(procs, seconds, *, until_all_exit=False):
  deadline = time.time() + seconds
  while time.time() < deadline and any(proc.poll() is None for proc, _ in procs):
    if not until_all_exit and any(proc.poll() not in (None, 0) for proc, _ in procs):
      break  # one failed: the other would wait for it at the next collective; _stop kills it
    time.sleep(0.2)


def _stop(procs):
  for proc, log in procs:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
    log.close()


def _reference(config, mesh):
  """(run, train(halves)): train(halves) gives the final state (numpy) and per-step losses of the loop's
  train step on ``mesh`` with global batches made of the local batches of the processes ``halves``
  (indices into a 2-process split). One compilation for every call."""
  import data
  from jax.sharding import NamedSharding, PartitionSpec as P
  from rsam.training import train_step
  run = train_step.build(config, mesh)
  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  step = jax.jit(train_step.make_train_step(config, run.model, run.updater, run.tx, run.num_classes),
                 in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated),
                 donate_argnums=(0,))

  def train(halves):
    iterators = [data.make_train_iterator(config.data, global_batch_size=config.batch_size,
                                          seed=config.seed, process_index=i, process_count=2) for i in halves]
    state, losses = run.init_state(), []
    for _ in range(STEPS):
      parts = [next(it) for it in iterators]
      batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
      state, metrics = step(state, jax.device_put(batch, batch_sharding))
      losses.append(float(metrics['loss']))
    return jax.tree.map(np.asarray, jax.device_get(state)), losses
  return run, train


def _max_abs_diff(a, b):
  return max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)) if np.size(x))


@functools.lru_cache(maxsize=None)
def _references():
  """(run, the reference's final state, its losses, the wrong-data reference's final state), computed in this
  process on 4 of the 8 fake devices, once per session."""
  from jax.sharding import Mesh
  mesh = Mesh(np.asarray(jax.devices()[:4]), ('data',))
  run, train = _reference(_config(), mesh)
  expected, losses = train((0, 1))
  wrong, _ = train((0, 0))
  return run, expected, losses, wrong


def _final_state(run, workdir):
  from rsam.training import checkpointing
  ckpt = checkpointing.Checkpointer(str(workdir), every_steps=1, max_to_keep=None, asynchronous=False)
  try:
    _, restored = ckpt.restore(STEPS, run.init_state())
  finally:
    ckpt.close()
  return jax.tree.map(np.asarray, jax.device_get(restored))


def _assert_close(got, expected):
  for part in ('params', 'opt_state', 'model_state'):
    ours, theirs = (jax.tree_util.tree_flatten_with_path(t[part])[0] for t in (got, expected))
    assert [p for p, _ in ours] == [p for p, _ in theirs]
    for (path, x), (_, y) in zip(ours, theirs):
      np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL, err_msg=f'{part}{jax.tree_util.keystr(path)}')


@pytest.mark.slow
def test_two_processes_train_as_one_run_and_match_a_single_process(tmp_path):
  workdir = tmp_path / 'work'
  procs = _start(tmp_path, lambda i: ['--workdir', str(workdir)])
  try:
    run, expected, losses, wrong = _references()  # meanwhile, in this process
    _wait(procs, 600)
  finally:
    _stop(procs)
  outputs = [(tmp_path / f'process{i}.log').read_text() for i in range(2)]
  for (proc, _), out in zip(procs, outputs):
    assert proc.returncode == 0, out[-4000:]
    assert 'global batch 32, 4 devices' in out, out[-4000:]

  # One run on disk: checkpoints written together, one events file, results.json from process 0.
  steps = sorted(int(n) for n in os.listdir(workdir / 'checkpoints') if n.isdigit())
  assert steps[-2:] == [2, STEPS], steps
  assert not glob.glob(str(workdir / 'checkpoints' / '*tmp*'))
  assert len(glob.glob(str(workdir / 'events.out.tfevents.*'))) == 1
  with open(workdir / 'results.json') as f:
    results = json.load(f)
  assert results['hardware']['num_processes'] == 2 and results['hardware']['num_devices'] == 4
  assert results['steps'] == STEPS
  assert results['eval']['test']['count'] == 360  # each test example counted once over both processes
  done = [line for out in outputs for line in out.splitlines() if line.startswith('done: ')]
  assert len(done) == 2 and done[0].split(';')[0] == done[1].split(';')[0]  # both saw the same metrics

  # The state matches the single-process reference within the tolerance; the wrong-data one does not.
  got = _final_state(run, workdir)
  assert int(got['step']) == STEPS
  _assert_close(got, expected)
  assert _max_abs_diff(got['params'], wrong['params']) > 100 * ATOL
  logged = float(next(line for line in outputs[0].splitlines() if line.startswith(f'step {STEPS}/'))
                 .split('| loss ')[1].split()[0])
  assert logged == pytest.approx(np.mean(losses), abs=1e-3)


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_and_the_rerun_waits_for_a_late_compile(tmp_path):
  """SIGTERM to process 1 alone (a kill or Ctrl-C on one host; a preemption reaches hosts at different
  moments): both processes save the same step and exit 143, process 0 naming process 1 (before, process 1
  waited in its save for process 0, gone on to the next step). The same two commands then resume from that
  step, process 1 compiling 40 s late, and end where the single-process reference does."""
  workdir = tmp_path / 'work'
  args = lambda i: ['--workdir', str(workdir), '--config.log_every_steps=1']
  procs = _start(tmp_path, args)
  try:
    log = tmp_path / 'process1.log'
    deadline = time.time() + 600
    while time.time() < deadline and procs[1][0].poll() is None and 'step ' not in log.read_text():
      time.sleep(0.02)
    procs[1][0].send_signal(signal.SIGTERM)
    _wait(procs, 120, until_all_exit=True)  # seconds when they agree; before, they hung
  finally:
    _stop(procs)
  outputs = [(tmp_path / f'process{i}.log').read_text() for i in range(2)]
  stops = []
  for i, ((proc, _), out) in enumerate(zip(procs, outputs)):
    assert proc.returncode == 143, out[-4000:]
    lines = [line for line in out.splitlines() if line.startswith(('SIGTERM', 'error'))]
    who = 'SIGTERM to process 1 at step ' if i == 0 else 'SIGTERM at step '
    assert len(lines) == 1 and lines[0].startswith(who) and 'Traceback' not in out, out[-4000:]
    stops.append(int(lines[0][len(who):].split(':')[0]))
  assert stops[0] == stops[1] < STEPS, stops
  assert max(int(n) for n in os.listdir(workdir / 'checkpoints') if n.isdigit()) == stops[0]

  # The same two commands again; process 1 is frozen for 40 s as it starts compiling (a host that compiles
  # late): process 0 waits for it before the first step, whose gloo setup would give up after 30 s.
  procs = _start(tmp_path, args)
  try:
    deadline = time.time() + 600
    while (time.time() < deadline and procs[1][0].poll() is None
           and 'compiling the train step' not in log.read_text()):
      time.sleep(0.02)
    procs[1][0].send_signal(signal.SIGSTOP)
    frozen = time.time()
    run, expected, _, _ = _references()  # meanwhile, in this process
    time.sleep(max(0.0, 40 - (time.time() - frozen)))
    procs[1][0].send_signal(signal.SIGCONT)
    _wait(procs, 600)
  finally:
    _stop(procs)
  for i, (proc, _) in enumerate(procs):
    out = (tmp_path / f'process{i}.log').read_text()
    assert proc.returncode == 0 and f'resumed from step {stops[0]} in ' in out, out[-4000:]
  _assert_close(_final_state(run, workdir), expected)


@pytest.mark.slow
def test_processes_started_differently_stop_with_one_error_line_on_each(tmp_path):
  """Process 1 gets another rho and another workdir: both processes stop before anything compiles or is
  written, each with the same one `error:` line naming process 1 and both differences."""
  procs = _start(tmp_path, lambda i: ['--workdir', str(tmp_path / f'work{i}')] +
                 (['--config.updater.rho=0.1'] if i else []))
  try:
    _wait(procs, 300, until_all_exit=True)  # both must stop by themselves
  finally:
    _stop(procs)
  outputs = [(tmp_path / f'process{i}.log').read_text() for i in range(2)]
  errors = []
  for (proc, _), out in zip(procs, outputs):
    assert proc.returncode == 2, out[-4000:]
    assert 'Traceback' not in out, out[-4000:]
    lines = [line for line in out.splitlines() if line.startswith('error:')]
    assert len(lines) == 1, out[-4000:]
    errors.append(lines[0])
  assert errors[0] == errors[1]
  assert errors[0].startswith('error: the 2 processes of this run were started differently: process 1 differs '
                              'from process 0 in updater.rho, --workdir;'), errors[0]
  assert not any((tmp_path / f'work{i}').exists() for i in range(2))  # stopped before the workdir check,
  # which comes before anything compiles
