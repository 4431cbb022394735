"""Test setup: fast compiles, a persistent compilation cache, 8 simulated CPU devices."""

import os

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def mnist_data():
  """Real MNIST, loaded once per session, for smoke runs (prepared by `make data`)."""
  from experiments.configs import dgr
  from gmcl import loop
  return loop.load_data(dgr.get_config("smoke"))
