"""Solves that the operators rest on: analytic linear cases, step-size control near fixed
points, float32 under jit with constant steps, vmapped models, input validation (value checks
that hold under jit), failed solves, and the replay's unrolled Runge–Kutta step against
diffrax's own. The generic operator checks (dense, transpose, tags, jit/vmap, float32, wrong
vectors, non-finite parameters) are the contract in test_operator_contract.py."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import diffrax_sntk as ds

from .helpers import B, N, T, raises_check, small_ctrnn, small_problem


def test_linear_model_analytic():
    # dx/dt = W x at W = λ I: Θ = ‖x0‖² g gᵀ ⊗ I_N, g_k = t_k e^{λ t_k}; PR exactly N.
    lam, n = -0.3, 3

    class Linear(eqx.Module):
        W: jax.Array

        def __call__(self, t, x, u):
            return self.W @ x

    model = Linear(lam * jnp.eye(n))
    ts = jnp.linspace(0.4, 4.0, 10)
    x0 = jnp.array([1.0, -2.0, 0.5])
    problem = ds.TrajectoryProblem(ts, x0)
    jmat = np.asarray(ds.jacobian_operator(model, problem).as_matrix())
    theta = jmat @ jmat.T
    g = np.asarray(ts * jnp.exp(lam * ts))
    expected = float(x0 @ x0) * np.kron(np.outer(g, g), np.eye(n))
    assert np.max(np.abs(theta - expected)) <= 1e-7 * np.max(np.abs(expected))
    eig = np.linalg.eigvalsh(theta)
    pr = eig.sum() ** 2 / (eig**2).sum()
    assert abs(pr - n) < 1e-6


def _pitchfork(t, y, args):
    return args["mu"] * y - y**3 + args["b"]


def test_fixed_point_hazard_defaults():
    # dx/dt = μx − x³ + b at b = 0, x0 = 0: x ≡ 0, so a primal-only controller takes huge
    # steps; the sensitivity to b is (1 − e^{μt})/|μ|. Wrapped from a plain diffrax field.
    mu = -1.0
    model = ds.VectorField(_pitchfork, {"mu": jnp.array(mu), "b": jnp.array(0.0)})
    ts = jnp.array([1.0, 5.0, 20.0])
    problem = ds.TrajectoryProblem(ts, jnp.zeros((1, 1)))
    # Columns of J (parameter order: b, mu) by vmapped tangent solves.
    jmat = np.asarray(ds.jacobian_operator(model, problem).as_matrix())
    sens = jmat[:, 0]
    exact = (1 - np.exp(mu * np.asarray(ts))) / abs(mu)
    np.testing.assert_allclose(sens, exact, rtol=1e-6)
    # Θ is exactly rank one (∂f/∂μ = x = 0 along the trajectory).
    np.testing.assert_allclose(jmat[:, 1], 0.0, atol=1e-12)
    theta = jmat @ jmat.T
    np.testing.assert_allclose(theta, np.outer(exact, exact), rtol=1e-6, atol=1e-12)
    assert np.linalg.matrix_rank(theta, tol=1e-8 * np.abs(theta).max()) == 1


def test_primal_only_controller_is_wrong_here():
    # Documents why the default watches a probe tangent: without it the answer is garbage.
    model = ds.VectorField(_pitchfork, {"mu": jnp.array(-1.0), "b": jnp.array(0.0)})
    problem = ds.TrajectoryProblem(jnp.array([20.0]), jnp.zeros((1, 1)), tangent_control=False)
    sens = ds.jacobian_operator(model, problem).mv(
        ds.VectorField(_pitchfork, {"mu": jnp.array(0.0), "b": jnp.array(1.0)})
    )
    assert abs(float(sens.reshape(())) - 1.0) > 1e-2


def test_float32_jit_constant_steps_matches_float64():
    # The measured hazard: float32 VJP under jit, constant steps, saves on the step grid.
    def build(dtype):
        model = ds.CTRNN(4, key=jr.PRNGKey(0), gain=0.8)  # float64 draw, cast below
        model = jax.tree_util.tree_map(
            lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, model
        )
        ts = (0.2 * jnp.arange(1, 101)).astype(dtype)
        problem = ds.TrajectoryProblem(
            ts, jnp.ones((1, 4), dtype), solver=dfx.Euler(),
            stepsize_controller=dfx.ConstantStepSize(), dt0=0.2, max_steps=200,
        )
        return model, problem

    v = jr.normal(jr.PRNGKey(1), (1, 100, 4))
    m32, p32 = build(jnp.float32)
    m64, p64 = build(jnp.float64)
    f = eqx.filter_jit(lambda m, p, vec: ds.sntk_operator(m, p).mv(vec))
    out32 = np.asarray(f(m32, p32, v.astype(jnp.float32)), np.float64)
    out64 = np.asarray(f(m64, p64, v))
    assert out32.dtype == np.float64 and np.all(np.isfinite(out32))
    assert np.max(np.abs(out32 - out64)) <= 1e-4 * np.max(np.abs(out64))


def test_simulate_vmaps_over_models():
    model, problem = small_ctrnn(), small_problem()
    models = eqx.filter_vmap(lambda s: eqx.tree_at(lambda m: m.b, model, model.b * s))(
        jnp.array([1.0, 0.5])
    )
    ys = eqx.filter_jit(eqx.filter_vmap(lambda m: ds.simulate(m, problem)))(models)
    assert ys.shape == (2, B, T, N)
    np.testing.assert_allclose(ys[0], ds.simulate(model, problem), rtol=1e-10)


# --- bad input


def test_bad_problem_structure():
    y0 = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="`y0`"):
        ds.TrajectoryProblem(jnp.array([1.0]), jnp.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match="`ts`"):
        ds.TrajectoryProblem(jnp.zeros((2, 2)), y0)
    with pytest.raises(ValueError, match="`inputs`"):
        ds.TrajectoryProblem(
            jnp.array([1.0]), y0, jnp.zeros((3, 4, 2)), input_ts=jnp.linspace(0, 1, 4)
        )
    with pytest.raises(ValueError, match="`input_ts`"):
        ds.TrajectoryProblem(jnp.array([1.0]), y0, jnp.zeros((2, 4, 2)))
    with pytest.raises(ValueError, match="`ConstantStepSize` needs concrete"):
        jax.jit(
            lambda ts: ds.TrajectoryProblem(
                ts, y0, stepsize_controller=dfx.ConstantStepSize(), dt0=0.1
            ).y0
        )(jnp.array([1.0]))


def test_bad_problem_values():
    # Value checks are `eqx.error_if`: they raise at construction when the values are known.
    y0 = jnp.zeros((2, 3))
    with raises_check("strictly increasing"):
        ds.TrajectoryProblem(jnp.array([1.0, 0.5]), y0)
    with raises_check("`ts\\[0\\]`"):
        ds.TrajectoryProblem(jnp.array([1.0]), y0, t0=2.0)
    with raises_check("`ts` contains non-finite"):
        ds.TrajectoryProblem(jnp.array([1.0, jnp.inf]), y0)
    with raises_check("`y0` contains non-finite"):
        ds.TrajectoryProblem(jnp.array([1.0]), y0.at[1, 2].set(jnp.nan))
    with raises_check("`input_ts` must cover"):
        ds.TrajectoryProblem(
            jnp.array([2.0]), y0, jnp.zeros((2, 4, 2)), input_ts=jnp.linspace(0, 1, 4)
        )
    with raises_check("`inputs` contains non-finite"):
        ds.TrajectoryProblem(
            jnp.array([1.0]), y0, jnp.full((2, 4, 2), jnp.nan), input_ts=jnp.linspace(0, 1, 4)
        )


def test_value_checks_fire_under_jit():
    # Under jit the same checks fire at run time (they used to be skipped there): a NaN in the
    # initial states, the inputs, or the parameters, each reaching `simulate` as a traced value.
    model, problem = small_ctrnn(), small_problem()

    @eqx.filter_jit
    def run(model, y0, inputs):
        p = ds.TrajectoryProblem(problem.ts, y0, inputs, input_ts=problem.input_ts)
        return ds.simulate(model, p)

    y0, inputs = problem.y0, problem.inputs
    with raises_check("`y0` contains non-finite"):
        jax.block_until_ready(run(model, y0.at[0, 0].set(jnp.nan), inputs))
    with raises_check("`inputs` contains non-finite"):
        jax.block_until_ready(run(model, y0, inputs.at[1, 2, 0].set(jnp.inf)))
    bad = eqx.tree_at(lambda m: m.W, model, model.W.at[0, 0].set(jnp.nan))
    with raises_check("`model` contains non-finite"):
        jax.block_until_ready(run(bad, y0, inputs))
    # Eagerly too, with the same message (the check is on the parameters, not a host copy).
    with raises_check("`model` contains non-finite"):
        ds.simulate(bad, problem)


def test_bad_model():
    wrong_state = ds.TrajectoryProblem(jnp.array([1.0]), jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="state"):
        ds.sntk_operator(ds.CTRNN(3, key=jr.PRNGKey(0)), wrong_state)
    model, problem = small_ctrnn(), small_problem()
    with pytest.raises(ValueError, match="space"):
        ds.sntk_operator(model, problem, space="params")
    with pytest.raises(TypeError, match="`problem`"):
        ds.sntk_operator(model, "not a problem")


def test_failed_solve_raises_in_every_direction():
    # A solve that hits `max_steps` must not return a derivative: under jit, J v (a tangent)
    # and Jᵀ w (a cotangent) used to come back as zeros, since a check on the primal trajectory
    # does not guard its derivatives and was pruned. (The KPFlow factors check the same way.)
    model = ds.CTRNN(2, key=jr.PRNGKey(0))
    problem = ds.TrajectoryProblem(
        jnp.array([50.0]), jnp.ones((1, 2)), max_steps=3, tangent_control=False
    )
    with pytest.raises(Exception, match="max_steps"):
        jax.block_until_ready(ds.simulate(model, problem))
    params = eqx.filter(model, eqx.is_inexact_array)
    jv = eqx.filter_jit(lambda m, u: ds.jacobian_operator(m, problem, method="solve").mv(u))
    with pytest.raises(Exception, match="max_steps"):
        jax.block_until_ready(jv(model, params))
    jtw = eqx.filter_jit(
        lambda m, w: ds.jacobian_operator(m, problem, method="solve").transpose().mv(w)
    )
    with pytest.raises(Exception, match="max_steps"):
        jax.block_until_ready(jtw(model, jnp.ones((1, 1, 2))))
    # A continuous adjoint whose backward solve fails (here: its own step budget) used to hand
    # back the unfinished cotangent; diffrax's check on the backward solve now raises.
    backsolve = ds.TrajectoryProblem(
        jnp.array([5.0]), jnp.ones((1, 2)), adjoint=dfx.BacksolveAdjoint(max_steps=2),
        tangent_control=False,
    )
    jtw = eqx.filter_jit(
        lambda m, w: ds.jacobian_operator(m, backsolve, method="solve").transpose().mv(w)
    )
    with pytest.raises(Exception, match="max_steps"):
        jax.block_until_ready(jtw(model, jnp.ones((1, 1, 2))))


# --- replay (the stored-linearisation fast path)


@pytest.mark.parametrize(
    "solver", [dfx.Tsit5(), dfx.Dopri5(), dfx.Dopri8(), dfx.Heun(), dfx.Bosh3(), dfx.Ralston()]
)
def test_unrolled_erk_step_is_diffrax_step(solver):
    # The replay unrolls explicit Runge–Kutta stages itself; it must be diffrax's step.
    from diffrax_sntk._replay import _erk_step, _unrolled_tableau

    A = jr.normal(jr.PRNGKey(0), (3, 3))
    field = lambda t, y: jnp.tanh(A @ y) + jnp.sin(t)
    y0, t0, t1 = jnp.array([0.3, -0.2, 0.5]), 0.4, 0.65
    term = dfx.ODETerm(lambda t, y, args: field(t, y))
    state = solver.init(term, t0, t1, y0, None)
    y1, _, dense, _, _ = solver.step(term, t0, t1, y0, None, state, False)
    tab = _unrolled_tableau(solver)
    ours, our_dense, _ = _erk_step(tab, field, t0, t1, y0, field(t0, y0))
    np.testing.assert_allclose(ours, y1, rtol=1e-14, atol=1e-15)
    for t in (t0, 0.5, t1):
        a = solver.interpolation_cls(t0=t0, t1=t1, **dense).evaluate(t)
        b = solver.interpolation_cls(t0=t0, t1=t1, **our_dense).evaluate(t)
        np.testing.assert_allclose(b, a, rtol=1e-14, atol=1e-15)
