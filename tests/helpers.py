"""Small shared factories of models and problems, so that JIT compiles are shared across test
files. Keep shapes here fixed: every new shape recompiles diffrax's solves (~20 s each on 2
cores)."""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import diffrax_sntk as ds

# The standard small CTRNN case: N = 3 states, M = 2 inputs, 2 outputs, B = 2 trials, T = 6.
N, M, OUT, B, T = 3, 2, 2, 2, 6


@ft.cache
def small_ctrnn(dtype=jnp.float64, with_inputs=True):
    model = ds.CTRNN(N, input_size=M if with_inputs else 0, output_size=OUT, key=jr.PRNGKey(0),
                     gain=1.2, dtype=dtype)
    model = eqx.tree_at(lambda m: m.b, model, 0.1 * jr.normal(jr.PRNGKey(7), (N,), dtype))
    return model


@ft.cache
def small_problem(dtype=jnp.float64, with_inputs=True, **kwargs):
    kwargs.setdefault("rtol", 1e-10 if dtype == jnp.float64 else 1e-5)
    kwargs.setdefault("atol", 1e-12 if dtype == jnp.float64 else 1e-7)
    ts = jnp.linspace(0.5, 3.0, T, dtype=dtype)
    y0 = jr.normal(jr.PRNGKey(2), (B, N), dtype)
    if with_inputs:
        # Input kinks on t0 and the observation times keep G(t) smooth inside each observation
        # interval, which the KPFlow factors' Gauss–Legendre quadrature relies on.
        its = jnp.linspace(0.0, 3.0, 7, dtype=dtype)
        inputs = jr.normal(jr.PRNGKey(1), (B, 7, M), dtype)
        return ds.TrajectoryProblem(ts, y0, inputs, input_ts=its, **kwargs)
    return ds.TrajectoryProblem(ts, y0, **kwargs)


def flat_params(model):
    return eqx.filter(model, eqx.is_inexact_array)


def dense_jacobian(model, problem, space="state"):
    """Dense J (rows: flattened (B, T, N), columns: flattened parameters) via `jax.jacrev`."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    f = lambda p: ds.simulate(eqx.combine(p, static), problem, space=space)
    jac = eqx.filter_jit(jax.jacrev(f))(params)
    rows = int(np.prod(f(params).shape))
    return np.concatenate(
        [np.asarray(leaf).reshape(rows, -1) for leaf in jax.tree_util.tree_leaves(jac)], axis=1
    )


# Value checks use `eqx.error_if`: eagerly they raise `EquinoxTracetimeError`, under `jit` a
# `JaxRuntimeError` wrapping `EquinoxRuntimeError`. Both carry the message.
CHECK_ERRORS = (ValueError, eqx.EquinoxTracetimeError, eqx.EquinoxRuntimeError,
                jax.errors.JaxRuntimeError)


def raises_check(match):
    """`pytest.raises` for a failed value check, eager or under `jit`."""
    import pytest

    return pytest.raises(CHECK_ERRORS, match=match)
