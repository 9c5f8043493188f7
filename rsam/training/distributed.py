"""Multi-host start: ``start(config, workdir)``, called by the training loop and eval.py before any JAX work.

Every host of a pod runs the same command. ``start`` joins the hosts into one JAX run, then checks that
they all run the same config on the same workdir. ``config.distributed`` (configs/common.py):

  enabled              None (the default): automatic. On a Cloud TPU VM, ``jax.distributed.initialize()``
                       with no arguments: jax reads the slice's hosts, this host's worker number and the
                       coordinator (worker 0) from the TPU VM metadata, so one command serves a v3-8 and a
                       v4-512 alike. Anywhere else (CPU, GPU, a machine without jax[tpu]): one process.
                       "A Cloud TPU VM" is the test jax itself makes when it is imported (libtpu installed
                       and TPU chips on the PCI bus; jax._src.cloud_tpu_init), the test that gates jax's
                       own Cloud TPU cluster detection.
                       True: always initialize. The three fields below, where set, are passed on; jax's
                       cluster detection fills those left unset (Cloud TPU, Slurm, Open MPI, Kubernetes),
                       so on Slurm ``--config.distributed.enabled=True`` is all it takes.
                       False: never (one process, also on a TPU VM).
  coordinator_address  'host:port' of process 0 (clusters that jax does not detect: set all three).
  num_processes        the number of processes of the run.
  process_id           this process's index, 0 .. num_processes - 1.

For example, two processes on one machine (tests/test_multihost.py) or two GPU servers:

  python train.py ... --config.distributed.enabled=True \
      --config.distributed.coordinator_address=10.0.0.1:1234 --config.distributed.num_processes=2 \
      --config.distributed.process_id=0          # and --config.distributed.process_id=1 on the other

A host that never starts makes the others abort after jax's initialization timeout (300 s).

Signals on a pod (``agree_on_signal``): a preemption's SIGTERM reaches the hosts at different moments, and a
Ctrl-C or a ``kill`` may reach one host only. A host that stopped alone to save would wait in the save for
hosts gone on to the next step, and they for it. So after every step the processes agree, through the
coordination service jax.distributed runs (host to host, no device work), on whether any of them got a
signal; all of them then save that step and stop together. Likewise the train step is compiled apart from
its first run and the processes meet at a ``barrier`` before it: a host that compiled later would find the
others already in the first step's collectives, whose setup gives up after 30 s (gloo on CPU).
"""
import json
from typing import List, Optional, Sequence, Tuple

import jax
import numpy as np

from rsam.errors import ConfigError

_ARGS = ('coordinator_address', 'num_processes', 'process_id')
# How long a process waits for the others at a barrier: longer than any compile, evaluation or save one host
# may still be in; a host that died makes the others fail here rather than hang.
_BARRIER_MS = 30 * 60 * 1000


def on_cloud_tpu_vm() -> bool:
  """Whether jax found a Cloud TPU VM when it was imported (libtpu installed, TPU chips on the PCI bus)."""
  from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  return bool(getattr(cloud_tpu_init, 'running_in_cloud_tpu_vm', False))


def wanted(config) -> bool:
  """Whether this process should call ``jax.distributed.initialize`` (see the module docstring)."""
  enabled = config.get('distributed', {}).get('enabled')
  return on_cloud_tpu_vm() if enabled is None else bool(enabled)


def start(config, workdir: str) -> None:
  """Joins the run's processes (when ``wanted``) and checks that they agree on the config and workdir."""
  if wanted(config) and not jax.distributed.is_initialized():
    fields = config.get('distributed', {})
    args = {k: fields.get(k) for k in _ARGS if fields.get(k) is not None}
    try:
      jax.distributed.initialize(**args)
    except (ValueError, TypeError) as e:  # jax checks the arguments before it connects
      given = ', '.join(f'config.distributed.{k}={v!r}' for k, v in args.items()) or 'no arguments'
      raise ConfigError(f'jax.distributed.initialize ({given}): {e} Set config.distributed.'
                        f'coordinator_address, num_processes and process_id, or run on a cluster jax '
                        f'detects (Cloud TPU, Slurm, Open MPI)') from None
  if jax.distributed.is_initialized() and jax.process_count() > 1:
    check_processes_agree(config, workdir)


def _description(config, workdir: str) -> dict:
  """What every process must agree on: the config, except ``distributed`` (process_id differs by design;
  jax.distributed checks the other fields when the processes connect), and the workdir."""
  fields = json.loads(config.to_json_best_effort())
  fields.pop('distributed', None)
  return {'config': fields, 'workdir': str(workdir)}


def check_processes_agree(config, workdir: str) -> None:
  """Every process gathers every process's config and workdir; on any difference all of them raise the same
  one-line ConfigError. Two small all-gathers, before anything compiles or writes."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  mine = np.frombuffer(json.dumps(_description(config, workdir), sort_keys=True).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.array([mine.size], np.int32)).reshape(-1)
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:mine.size] = mine
  gathered = multihost_utils.process_allgather(padded)
  message = disagreement([json.loads(bytes(row[:n])) for row, n in zip(gathered, lengths)])
  if message:
    raise ConfigError(message)


def disagreement(descriptions: Sequence[dict]) -> Optional[str]:
  """None when every process's description (``_description``) equals process 0's, else one line naming the
  processes that differ and in which fields."""
  from rsam.training.config_check import _diff  # pylint: disable=g-import-not-at-top
  by_fields = {}
  for index, description in enumerate(descriptions[1:], start=1):
    fields = tuple(_field_name(f) for f in _diff(descriptions[0], description))
    if fields:
      by_fields.setdefault(fields, []).append(index)
  if not by_fields:
    return None
  parts = [f'{_processes(indices)} from process 0 in {", ".join(fields[:5])}'
           f'{" (and more)" if len(fields) > 5 else ""}' for fields, indices in by_fields.items()]
  return (f'the {len(descriptions)} processes of this run were started differently: {"; ".join(parts)}; '
          f'start every host with the same command (config, overrides and --workdir)')


def _field_name(path: str) -> str:
  return '--workdir' if path == 'workdir' else path[len('config.'):]


def _processes(indices: List[int]) -> str:
  shown = ', '.join(str(i) for i in indices[:8])
  if len(indices) > 8:
    shown += f' and {len(indices) - 8} more'
  return f'process {shown} differs' if len(indices) == 1 else f'processes {shown} differ'


def agree_on_signal(step: int, local: int) -> Tuple[int, int]:
  """(signal number, process index) of the lowest-indexed process that has received a signal by step
  ``step`` (``local``: this process's signal number, 0 for none), or (0, -1); the same answer on every
  process. Each process writes its flag for the step to the coordination service's key-value store, waits
  at the step's barrier, then reads every flag: all were written before anyone passed the barrier."""
  client = _client()
  me = jax.process_index()
  client.key_value_set(f'rsam/signal/{step}/{me}', str(int(local)))
  client.wait_at_barrier(f'rsam_signal_{step}', _BARRIER_MS)
  flags = {int(key.rsplit('/', 1)[1]): int(value)
           for key, value in client.key_value_dir_get(f'rsam/signal/{step}/')}
  try:  # every process read the previous step's flags before it reached this barrier
    client.key_value_delete(f'rsam/signal/{step - 1}/{me}')
  except Exception:  # pylint: disable=broad-except  (none for the first step of a process)
    pass
  return next(((flags[p], p) for p in sorted(flags) if flags[p]), (0, -1))


def barrier(name: str) -> None:
  """Every process of a multi-process run waits here for all the others (host to host, no device work);
  one process: nothing. ``name``: used once per run."""
  if jax.process_count() > 1:
    _client().wait_at_barrier(f'rsam_{name}', _BARRIER_MS)


def _client():
  """jax.distributed's coordination service client (jax has no public API for its key-value store)."""
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  return jax_distributed.global_state.client
