"""Test setup: fast compiles, 8 simulated CPU devices."""

import os

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)
# The persistent compilation cache (gmcl.compile_cache) stays off in the suite unless
# GMCL_TEST_COMPILATION_CACHE names a folder: the tests must not depend on what earlier processes
# left there, and reading back multi-device CPU executables once crashed a test process (a
# segmentation fault inside jax's compilation_cache, JAX 0.10.2). The cache's own tests run
# their own processes (tests/test_compile_cache.py).
# The environment carries the choice to the processes tests start (experiments.main, sweeps).
if os.environ.get("GMCL_TEST_COMPILATION_CACHE"):
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["GMCL_TEST_COMPILATION_CACHE"]
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  jax.config.update("jax_compilation_cache_dir", os.environ["GMCL_TEST_COMPILATION_CACHE"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
else:
  os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  jax.config.update("jax_enable_compilation_cache", False)


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
