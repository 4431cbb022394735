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
  from gmcl import loop
  return loop.load_data(dgr.get_config("smoke"))
