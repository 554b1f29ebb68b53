import os

import jax
import jax.random as jr
import pytest

jax.config.update("jax_enable_x64", True)
# Compiles dominate this suite (diffrax reverse mode: ~20 s each on 2 cores). A persistent cache
# lets identical programs in different test files and xdist workers, and reruns, share them.
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("JAX_COMPILATION_CACHE_DIR",
                   os.path.join(os.path.dirname(__file__), "..", ".jax_cache")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def getkey():
    """Returns a function that produces a fresh PRNG key on each call (seeded, deterministic)."""
    keys = iter(jr.split(jr.PRNGKey(5678), 1000))
    return lambda: next(keys)
