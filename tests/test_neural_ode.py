"""The usual diffrax neural ODE — an `eqx.Module` holding an `eqx.nn.MLP` whose activation is a
jitted function — through the whole package: operators, fixed points (both call forms),
continuation with the model in `args`, tracking and the channel split.

By default only the fixed-point tests run here: the same pattern is covered per module by
default (test_fixed_points, test_continuation_jit, test_channels); this end-to-end file repeats it
on one model at a compile cost of its own and runs whole with `-m slow`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import diffrax_sntk as ds

N = 3


class Func(eqx.Module):
    mlp: eqx.nn.MLP

    def __init__(self, key):
        # softplus is a jitted function (a non-array leaf the package must pass through).
        self.mlp = eqx.nn.MLP(N, N, width_size=8, depth=1, activation=jax.nn.softplus, key=key)

    def __call__(self, t, y, args):
        return -y + 0.5 * self.mlp(y)


@pytest.fixture(scope="module")
def func():
    return Func(jr.PRNGKey(0))


@pytest.fixture(scope="module")
def problem():
    ts = jnp.linspace(0.5, 3.0, 6)
    y0 = jr.normal(jr.PRNGKey(2), (2, N))
    return ds.TrajectoryProblem(ts, y0, rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def dense_theta(func, problem):
    """The user's own Θ = J Jᵀ, from `jax.jacrev` of the solve (one compiled program)."""
    params, static = eqx.partition(func, eqx.is_inexact_array)

    @eqx.filter_jit
    def jac(p):
        f = lambda q: ds.simulate(eqx.combine(q, static), problem).reshape(-1)
        leaves = jax.tree_util.tree_leaves(jax.jacrev(f)(p))
        return jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in leaves], axis=1)

    J = np.asarray(jac(params))
    return J @ J.T


@pytest.mark.slow
def test_operator_matches_jacrev(func, problem, dense_theta):
    theta = ds.sntk_operator(func, problem).as_matrix()
    np.testing.assert_allclose(np.asarray(theta), dense_theta,
                               atol=1e-12 * np.abs(dense_theta).max())


def test_fixed_points_both_forms(func):
    x0s = jr.normal(jr.PRNGKey(3), (4, N))
    old = ds.find_fixed_points(lambda x, f: f(0.0, x, None), func, x0s)
    new = ds.find_fixed_points(func, x0s)
    assert bool(jnp.all(old.converged)) and bool(jnp.all(new.converged))
    np.testing.assert_allclose(np.asarray(old.states), np.asarray(new.states), atol=1e-10)
    assert bool(jnp.all(new.result == ds.RESULTS.successful))
    res = np.asarray(jax.vmap(lambda x: func(0.0, x, None))(new.states))
    assert np.max(np.abs(res)) < 1e-9


def test_fixed_points_under_jit(func):
    x0s = jr.normal(jr.PRNGKey(3), (4, N))
    fps = eqx.filter_jit(lambda m, x: ds.find_fixed_points(m, x))(func, x0s)
    assert bool(jnp.all(fps.converged))


@pytest.mark.slow
def test_continuation_with_module_args(func):
    def field(x, mu, f):
        return f(0.0, x, None) + mu * jnp.ones_like(x)

    x0 = ds.find_fixed_points(func, jnp.zeros((1, N))).states[0]
    branch = ds.continuation(field, x0, 0.0, 0.5, args=func)
    assert branch.successful
    p = np.asarray(branch.parameters)
    assert p[0] == pytest.approx(0.0) and p[-1] == pytest.approx(0.5)
    for mu, x in zip(p, np.asarray(branch.states), strict=True):
        assert np.max(np.abs(np.asarray(field(jnp.asarray(x), mu, func)))) < 1e-8


@pytest.mark.slow
def test_track_bifurcations_over_module_checkpoints(func):
    seq = [eqx.tree_at(lambda f: f.mlp.layers[-1].bias, func, func.mlp.layers[-1].bias + s)
           for s in (0.0, 0.1, 0.2)]
    track = ds.track_bifurcations(lambda x, f: f(0.0, x, None), seq, jnp.zeros((1, N)))
    assert bool(jnp.all(track.converged))


# The channel split of this very pattern (an eqx.nn.MLP with a jitted activation) runs by default
# in tests/test_channels.py (`test_neural_ode_module_from_fixed_point`); this exact-split check
# against the user's own jacrev Θ repeats it at a second compile cost.
@pytest.mark.slow
def test_channels_from_fixed_point(func, problem, dense_theta):
    fps = ds.find_fixed_points(func, jnp.zeros((1, N)))
    split = ds.bifurcation_channels(func, problem, fps, method="dense")
    theta = dense_theta
    assert split.result == ds.RESULTS.successful
    assert 0.0 <= float(split.energy_fraction) <= 1.0 + 1e-12
    # The split is exact: Θ_bif + Θ_res = Θ (the user's own jacrev Θ).
    total = np.asarray(split.bifurcation.as_matrix()) + np.asarray(split.residual.as_matrix())
    np.testing.assert_allclose(total, theta, atol=1e-10 * np.abs(theta).max())
