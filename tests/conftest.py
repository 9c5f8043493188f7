"""Test-wide setup: eight fake CPU devices, so sharded code paths run here (and faster than one)."""
import os

# Must be set before JAX initialises its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("WANDB_MODE", "disabled")


import pytest  # noqa: E402


@pytest.fixture(scope='session')
def gcs():
  """A fake-gcs-server on 127.0.0.1 for the whole session (tests/gcs_emulator.py); each test makes its own
  bucket. Stopped when the session ends."""
  from tests import gcs_emulator
  emulator = gcs_emulator.Emulator()
  yield emulator
  emulator.stop()


@pytest.fixture(scope='module')
def compile_cache(tmp_path_factory):
  """JAX's persistent compilation cache, in-process and for the subprocesses (tests/helpers.py:
  subprocess_env), for one module: what compiles once loads everywhere else."""
  from tests import helpers
  with helpers.persistent_compile_cache(str(tmp_path_factory.mktemp('jax_cache'))) as path:
    yield path
