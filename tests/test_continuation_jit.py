"""`continuation` as one compiled program: jit/vmap against eager, the `args` form, an
`eqx.Module` (an MLP with a jitted activation) as args or params, and the RESULTS codes.

One small system throughout, ẋ = (μ − a₀)x − x³ + a₁ (a pitchfork at μ = a₀ when a₁ = 0), with
every setting that varies traced, so the tests share a few compilations."""

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
    return (mu - a[0]) * x - x**3 + a[1]


def _run(x0, a, p1=1.0, step=None):
    a = jnp.stack([jnp.asarray(a, x0.dtype), jnp.zeros((), x0.dtype)])
    return ds.continuation(
        shifted_pitchfork,
        x0,
        -0.5,
        p1,
        args=a,
        max_steps=MAX_STEPS,
        step_size=step,
        max_step_size=step,
    )


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
    # One batch over both the initial state and the args (one compilation).
    x0s = jnp.array([[0.0], [0.05]])
    aa = jnp.array([0.1, 0.4])
    run = jax.jit(jax.vmap(_run, in_axes=(0, 0, None)))
    batched = run(x0s, aa, 1.0)
    for i in range(2):
        _assert_branch_equal(batched, i, _run(x0s[i], aa[i]))
    with pytest.raises(TypeError, match="events"):
        _ = batched.bifurcations
    # A value check fires under jit.
    with raises_check("`p1`"):
        jax.block_until_ready(run(x0s, aa, jnp.nan))


def test_result_codes():
    # Steps too short to reach p1 within max_steps.
    short = _run(jnp.zeros(1), 0.25, step=1e-3)
    assert short.result == ds.RESULTS.continuation_max_steps and short.status == "max_steps"
    assert short.num_steps == MAX_STEPS + 1 and not short.successful
    # Newton from far away does not converge within its 20 steps.
    far = _run(jnp.array([1e8]), 0.25)
    assert far.result == ds.RESULTS.no_fixed_point
    assert far.status == "initial_point_not_converged" and far.num_steps == 1
    assert far.bifurcations == ()


def test_spurious_event_is_recorded():
    # Two real eigenvalues cross zero together (a double, non-generic crossing): the number of
    # unstable eigenvalues changes with det f_x unchanged, which flags a Hopf test, but there is
    # no complex pair. The event is recorded as `not_a_bifurcation`, not listed, not dropped.
    branch = _run(jnp.zeros(2), 0.25)
    assert branch.successful and branch.bifurcations == ()
    assert int(branch.events.num_detected) == 1 and branch.num_spurious_events == 1
    first = jax.tree.map(lambda leaf: leaf[0], branch.events.result)
    assert first == ds.RESULTS.not_a_bifurcation


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
    # Tracking along checkpoints that are Modules holding the MLP.
    mus = np.linspace(-0.5, 0.5, 5) + 0.01
    seq = [_Field(mlp, jnp.asarray(m)) for m in mus]
    track = ds.track_bifurcations(lambda x, f: f(x), seq, jnp.zeros((1, 1)))
    assert track.status == "completed" and track.result == ds.RESULTS.successful
    (tb,) = track.bifurcations
    expected = np.interp(mu_c, mus, np.arange(5.0))
    assert abs(float(tb.parameter) - expected) < 1e-6
