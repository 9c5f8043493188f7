"""rsam/training/distributed.py: when a process joins a multi-host run, and the message when the hosts of a
run were started differently. The two-process runs are in tests/test_multihost.py.

Where a Cloud TPU VM is needed, the test sets the flag jax itself sets at import on one
(jax._src.cloud_tpu_init.running_in_cloud_tpu_vm) and records the calls to jax.distributed.initialize
instead of making them (this process's backend is already up, and there is no pod to join).
"""
import jax
import pytest
from jax._src import cloud_tpu_init

from configs import tiny
from rsam.training import distributed


@pytest.fixture
def calls(monkeypatch):
  """The jax.distributed.initialize calls start() makes (keyword arguments of each)."""
  made = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kwargs: made.append(kwargs))
  return made


def _config(**distributed_fields):
  c = tiny.get_config('sam')
  for key, value in distributed_fields.items():
    c.distributed[key] = value
  return c


def test_automatic_on_a_cloud_tpu_vm_lets_jax_find_the_pod(monkeypatch, calls):
  monkeypatch.setattr(cloud_tpu_init, 'running_in_cloud_tpu_vm', True)
  assert _config().distributed.enabled is None  # the default is automatic
  distributed.start(_config(), 'gs://bucket/run')
  assert calls == [{}]  # no arguments: jax reads the hosts and the coordinator from the TPU VM metadata


def test_automatic_elsewhere_is_one_process(monkeypatch, calls):
  monkeypatch.setattr(cloud_tpu_init, 'running_in_cloud_tpu_vm', False)
  distributed.start(_config(), '/tmp/run')
  assert calls == []


def test_explicit_switch(monkeypatch, calls):
  monkeypatch.setattr(cloud_tpu_init, 'running_in_cloud_tpu_vm', True)
  distributed.start(_config(enabled=False), 'gs://bucket/run')
  assert calls == []  # off, even on a TPU VM
  monkeypatch.setattr(cloud_tpu_init, 'running_in_cloud_tpu_vm', False)
  distributed.start(_config(enabled=True, coordinator_address='10.0.0.1:1234', num_processes=2,
                            process_id=1), '/tmp/run')
  distributed.start(_config(enabled=True), '/tmp/run')  # a cluster jax detects (Slurm, Open MPI)
  assert calls == [{'coordinator_address': '10.0.0.1:1234', 'num_processes': 2, 'process_id': 1}, {}]


def _description(workdir='gs://bucket/run', **updater):
  c = _config()
  for key, value in updater.items():
    c.updater[key] = value
  return distributed._description(c, workdir)  # pylint: disable=protected-access


def test_processes_that_agree_pass_and_process_id_may_differ():
  same = [_description() for _ in range(3)]
  assert distributed.disagreement(same) is None
  ids = []
  for i in range(2):
    c = _config(enabled=True, coordinator_address='10.0.0.1:1234', num_processes=2, process_id=i)
    ids.append(distributed._description(c, 'gs://bucket/run'))  # pylint: disable=protected-access
  assert distributed.disagreement(ids) is None


def test_processes_started_differently_are_named_with_the_fields():
  message = distributed.disagreement([
      _description(), _description(workdir='gs://bucket/run2'), _description(rho=0.1), _description(),
      _description(rho=0.1)])
  assert message == ('the 5 processes of this run were started differently: process 1 differs from process 0 '
                     'in --workdir; processes 2, 4 differ from process 0 in updater.rho; start every host '
                     'with the same command (config, overrides and --workdir)')
