"""`continuation` as one compiled program: jit/vmap against eager, the `args` form, an
`eqx.Module` (an MLP with a jitted activation) as args or params, and the RESULTS codes.

One small system throughout, ẋ = (μ − a)x − x³ (a pitchfork at μ = a), so compilations are
shared between tests."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import diffrax_sntk as ds

from .helpers import raises_check

MAX_STEPS = 64


def shifted_pitchfork(x, mu, a):
    return (mu - a) * x - x**3


def _run(x0, a):
    return ds.continuation(shifted_pitchfork, x0, -0.5, 1.0, args=a, max_steps=MAX_STEPS)


def _assert_branch_equal(batched, i, eager):
    member = jax.tree.map(lambda leaf: leaf[i], batched)
    assert member.num_steps == eager.num_steps and member.status == eager.status
    for name in ("parameters", "states", "eigenvalues"):
        np.testing.assert_allclose(getattr(member, name), getattr(eager, name), atol=1e-10)
    (got,), (want,) = member.bifurcations, eager.bifurcations
    assert got.kind == want.kind and got.index == want.index
    for x, y in ((got.parameter, want.parameter), (got.normal_form.b3, want.normal_form.b3)):
        assert abs(float(x) - float(y)) < 1e-10


def test_args_form_and_pitchfork_location():
    branch = _run(jnp.zeros(1), jnp.asarray(0.25))
    assert branch.status == "completed" and branch.successful
    assert bool(branch.result == ds.RESULTS.successful)
    (bif,) = branch.bifurcations
    assert bif.kind == "pitchfork" and bif.located
    assert bif.result == ds.RESULTS.successful
    assert abs(float(bif.parameter) - 0.25) < 1e-8
    assert float(bif.normal_form.b3) == pytest.approx(-6.0, abs=1e-8)
    # The padded buffers and the event mask line up with the valid part.
    assert branch.parameter_buffer.shape == (MAX_STEPS + 1,)
    assert branch.parameters.shape == (branch.num_steps,)
    assert int(np.sum(branch.event_mask)) == 1 and branch.num_spurious_events == 0
    assert branch.signatures.shape == (branch.num_steps, 4)


def test_jit_vmap_matches_eager():
    aa = jnp.array([0.1, 0.4])
    x0 = jnp.zeros(1)
    batched = jax.jit(jax.vmap(lambda a: _run(x0, a)))(aa)
    for i, a in enumerate(aa):
        _assert_branch_equal(batched, i, _run(x0, a))
    with pytest.raises(TypeError, match="events"):
        batched.bifurcations
    # vmap over the initial state.
    x0s = jnp.array([[0.0], [0.05]])
    batched = jax.jit(jax.vmap(lambda x: _run(x, jnp.asarray(0.1))))(x0s)
    for i, x in enumerate(x0s):
        _assert_branch_equal(batched, i, _run(x, jnp.asarray(0.1)))


def test_value_check_fires_under_jit():
    with raises_check("`p1`"):
        jax.jit(
            lambda p1: ds.continuation(
                shifted_pitchfork, jnp.zeros(1), -0.5, p1, args=0.1, max_steps=MAX_STEPS
            ).length
        )(jnp.nan)


def test_result_codes():
    branch = _run(jnp.zeros(1), jnp.asarray(0.25))
    short = ds.continuation(shifted_pitchfork, jnp.zeros(1), -0.5, 1.0, args=0.25, max_steps=3)
    assert short.result == ds.RESULTS.continuation_max_steps and short.status == "max_steps"
    assert short.num_steps <= 4 and branch.num_steps > short.num_steps
    # x² + 1 + μ² has no root: the initial point does not converge.
    none = ds.continuation(
        lambda x, mu, a: x**2 + a + mu**2, jnp.zeros(1), 0.0, 1.0, args=1.0, max_steps=MAX_STEPS
    )
    assert none.result == ds.RESULTS.no_fixed_point
    assert none.status == "initial_point_not_converged" and none.num_steps == 1


class _Field(eqx.Module):
    """ẋ = μx − x³ + ε(mlp(x) − mlp(0)): the trivial branch stays, the MLP shifts the branch
    point to μ = −ε·mlp'(0)."""

    mlp: eqx.nn.MLP
    mu: jax.Array

    def __call__(self, x):
        eps = 1e-2
        return self.mu * x - x**3 + eps * (self.mlp(x) - self.mlp(jnp.zeros_like(x)))


def _mlp():
    return eqx.nn.MLP(1, 1, 8, 1, activation=jax.jit(jnp.tanh), key=jr.PRNGKey(0))


def test_module_as_args_and_params():
    mlp = _mlp()
    field = lambda x, mu, m: _Field(m, mu)(x)
    mu_c = -1e-2 * float(jax.jacfwd(mlp)(jnp.zeros(1))[0, 0])
    branch = ds.continuation(field, jnp.zeros(1), -0.5, 0.5, args=mlp, max_steps=MAX_STEPS)
    assert branch.successful
    (bif,) = branch.bifurcations
    assert bif.kind in ("transcritical", "pitchfork")
    assert abs(float(bif.parameter) - mu_c) < 1e-8
    # The same under eqx.filter_jit.
    jitted = eqx.filter_jit(
        lambda m: ds.continuation(field, jnp.zeros(1), -0.5, 0.5, args=m, max_steps=MAX_STEPS)
    )(mlp)
    assert abs(float(jitted.events.parameter[0]) - float(bif.parameter)) < 1e-10
    # Tracking along checkpoints that are Modules holding the MLP.
    mus = np.linspace(-0.5, 0.5, 5) + 0.01
    seq = [_Field(mlp, jnp.asarray(m)) for m in mus]
    track = ds.track_bifurcations(lambda x, f: f(x), seq, jnp.zeros((1, 1)))
    assert track.status == "completed" and track.result == ds.RESULTS.successful
    (tb,) = track.bifurcations
    expected = np.interp(mu_c, mus, np.arange(5.0))
    assert abs(float(tb.parameter) - expected) < 1e-6


def test_float32_jit():
    branch = jax.jit(lambda a: _run(jnp.zeros(1, jnp.float32), a))(jnp.asarray(0.25, jnp.float32))
    assert branch.state_buffer.dtype == jnp.float32
    (bif,) = branch.bifurcations
    assert bif.kind == "pitchfork" and abs(float(bif.parameter) - 0.25) < 1e-4
