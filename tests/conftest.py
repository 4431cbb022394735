"""Test setup: fast compiles, 8 simulated CPU devices."""

import os

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)
# No persistent compilation cache: reading back its multi-device CPU executables has crashed
# the process (a segmentation fault inside jax's compilation_cache, JAX 0.10.2).


@pytest.fixture(scope="session")
def mnist_data():
  """Real MNIST, loaded once per session, for smoke runs (prepared by `make data`)."""
  from experiments.configs import dgr
  from gmcl.data.build import load_data
  return load_data(dgr.get_config("smoke"))


@pytest.fixture(autouse=True)
def _release_compiled_programs():
  """Every compiled program holds memory mappings, and Linux caps them per process (65530 by
  default); tests/test_parallel.py's 8-device programs reached 57000 in one process. Past a third
  of the cap, the programs of finished tests are released (test_parallel.py then peaks near 21000)."""
  yield
  from gmcl import loop  # pylint: disable=import-outside-toplevel
  mappings = loop.memory_mappings()
  if mappings is not None and mappings > 20000:
    loop.release_compiled()
