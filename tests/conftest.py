import jax
import jax.random as jr
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def getkey():
    """Returns a function that produces a fresh PRNG key on each call (seeded, deterministic)."""
    keys = iter(jr.split(jr.PRNGKey(5678), 1000))
    return lambda: next(keys)
