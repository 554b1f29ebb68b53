"""Operators J, Jᵀ, Θ and the KPFlow factors against dense Jacobians and analytic cases."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import pytest

import diffrax_sntk as ds

from .helpers import OUT, B, N, T, dense_jacobian, flat_params, small_ctrnn, small_problem


@pytest.fixture(scope="module")
def case():
    model, problem = small_ctrnn(), small_problem()
    theta = ds.sntk_operator(model, problem)
    # Built and materialised inside jit (vmapped matvecs).
    theta_mat = np.asarray(
        eqx.filter_jit(lambda m: ds.sntk_operator(m, problem).as_matrix())(model)
    )
    jac = dense_jacobian(model, problem)
    return model, problem, theta, theta_mat, jac


def test_theta_matches_dense(case):
    _, _, theta, theta_mat, jac = case
    dense = jac @ jac.T
    assert theta_mat.shape == (B * T * N, B * T * N)
    assert np.max(np.abs(theta_mat - dense)) <= 1e-8 * np.max(np.abs(dense))
    assert lx.is_symmetric(theta) and lx.is_positive_semidefinite(theta)
    assert theta.transpose() is theta


def test_dot_product_and_jacobian_matrix(case, getkey):
    model, problem, _, _, jac = case
    J = ds.jacobian_operator(model, problem)
    params = flat_params(model)
    u = jax.tree_util.tree_map(lambda x: jr.normal(getkey(), x.shape), params)
    v = jr.normal(getkey(), (B, T, N))
    ju = eqx.filter_jit(lambda op, x: op.mv(x))(J, u)
    jtv = eqx.filter_jit(lambda op, x: op.transpose().mv(x))(J, v)
    lhs = jnp.vdot(ju, v)
    rhs = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(u),
                                             jax.tree_util.tree_leaves(jtv), strict=True))
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
    # J.as_matrix (vmapped tangent solves) equals jax.jacrev of simulate.
    jmat = np.asarray(eqx.filter_jit(lambda op: op.as_matrix())(J))
    assert np.max(np.abs(jmat - jac)) <= 1e-8 * np.max(np.abs(jac))


def test_output_space_kernel(case):
    # Θ_out = C Θ Cᵀ + (x_aᵀ x_b + 1) I_O: the readout parameters C, d add the second term.
    model, problem, _, theta_mat, _ = case
    # Built inside jit, from the output-space Jacobian (tangent solves only).
    j_out = eqx.filter_jit(
        lambda m: ds.jacobian_operator(m, problem, space="output").as_matrix()
    )(model)
    theta_out = np.asarray(j_out @ j_out.T)
    assert ds.sntk_operator(model, problem, space="output").in_structure().shape == (B, T, OUT)
    xs = np.asarray(ds.simulate(model, problem)).reshape(B * T, N)
    C = np.asarray(model.C)
    big_c = np.kron(np.eye(B * T), C)
    expected = big_c @ theta_mat @ big_c.T + np.kron(xs @ xs.T + 1.0, np.eye(OUT))
    assert np.max(np.abs(theta_out - expected)) <= 1e-8 * np.max(np.abs(expected))
    # Built outside jit, the output-space Θ replays the recorded steps: the same kernel.
    v = np.asarray(jr.normal(jr.PRNGKey(11), (B, T, OUT)))
    eager = np.asarray(ds.sntk_operator(model, problem, space="output").mv(v))
    ref = (theta_out @ v.reshape(-1)).reshape(B, T, OUT)
    assert np.max(np.abs(eager - ref)) <= 1e-8 * np.max(np.abs(ref))


def test_kpflow_factors_compose_to_theta(case):
    model, problem, _, theta_mat, _ = case
    order = 6
    P = ds.propagator(model, problem, order=order)
    K = ds.parameter_operator(model, problem, order=order)
    Ps = ds.adjoint_propagator(model, problem, order=order)
    mats = eqx.filter_jit(lambda a, b, c: (a.as_matrix(), b.as_matrix(), c.as_matrix()))(P, K, Ps)
    composed = mats[0] @ mats[1] @ mats[2]
    assert np.max(np.abs(composed - theta_mat)) <= 1e-8 * np.max(np.abs(theta_mat))
    # P* is the adjoint of P in the quadrature inner product: Pᵀ = W P*.
    _, w = ds.quadrature_grid(problem, order)
    wdiag = np.tile(np.repeat(np.asarray(w), N), B)
    np.testing.assert_allclose(mats[0].T, wdiag[:, None] * mats[2], rtol=1e-9, atol=1e-12)


def test_replay_is_the_reference_discrete_map(case, getkey):
    # Built outside jit, `method="auto"` replays the recorded steps: J and Θ equal the
    # reference path (jax.jacrev through diffeqsolve) to rounding, not just to tolerance.
    model, problem, _, _, jac = case
    J = ds.jacobian_operator(model, problem, method="replay")
    theta = ds.sntk_operator(model, problem)
    assert theta.fn.func.__name__ == "_lin_theta_mv"  # auto chose replay
    jmat = np.asarray(eqx.filter_jit(lambda op: op.as_matrix())(J))
    assert np.max(np.abs(jmat - jac)) <= 1e-10 * np.max(np.abs(jac))
    v = jr.normal(getkey(), (B, T, N))
    mv = eqx.filter_jit(lambda op, x: op.mv(x))
    expected = (jac @ (jac.T @ np.asarray(v).reshape(-1))).reshape(B, T, N)
    err = np.max(np.abs(np.asarray(mv(theta, v)) - expected))
    assert err <= 1e-10 * np.max(np.abs(expected))
    # A vmapped block shares the stored linearisation and equals column-by-column matvecs.
    vs = jr.normal(getkey(), (3, B, T, N))
    block = eqx.filter_jit(lambda op, x: jax.vmap(op.mv)(x))(theta, vs)
    np.testing.assert_allclose(block[1], mv(theta, vs[1]), rtol=1e-12, atol=0)


def test_replay_inside_jit(case, getkey):
    # Inside jit `auto` uses the solve path; `replay` works too, with a static step budget.
    model, problem, _, theta_mat, _ = case
    v = jr.normal(getkey(), (B, T, N))
    replay = eqx.filter_jit(
        lambda m, x: ds.sntk_operator(m, problem, method="replay", num_steps=512).mv(x)
    )(model, v)
    expected = (theta_mat @ np.asarray(v).reshape(-1)).reshape(B, T, N)
    assert np.max(np.abs(np.asarray(replay) - expected)) <= 1e-10 * np.max(np.abs(expected))


def test_replay_bad_arguments(case):
    model, problem, _, _, _ = case
    with pytest.raises(ValueError, match="`method`"):
        ds.sntk_operator(model, problem, method="fast")
    with pytest.raises(ValueError, match="`num_steps=3` is too small"):
        ds.jacobian_operator(model, problem, method="replay", num_steps=3)
    with pytest.raises(ValueError, match="`num_steps`"):
        ds.sntk_operator(model, problem, method="replay", num_steps=0)
    implicit = ds.TrajectoryProblem(problem.ts, problem.y0, solver=dfx.Kvaerno5())
    with pytest.raises(ValueError, match="explicit solver"):
        ds.sntk_operator(ds.CTRNN(N, key=jr.PRNGKey(0)), implicit, method="replay")


def test_replay_selection_rules(case):
    from diffrax_sntk._operators import _use_replay

    model, problem, _, _, _ = case
    params = flat_params(model)
    assert _use_replay("auto", params, problem)
    # Inside jit with the model and problem closed over (concrete leaves): solve, not a replay
    # padded to `max_steps`.
    seen = []
    jax.make_jaxpr(lambda: seen.append(_use_replay("auto", params, problem)) or 0.0)()
    assert seen == [False]
    jumpy = ds.TrajectoryProblem(
        problem.ts, problem.y0,
        stepsize_controller=dfx.ClipStepSizeController(dfx.PIDController(rtol=1e-6, atol=1e-8),
                                                       jump_ts=jnp.array([1.0])),
    )
    assert not _use_replay("auto", params, jumpy)
    with pytest.raises(ValueError, match="jump_ts"):
        _use_replay("replay", params, jumpy)


def test_replay_too_few_steps_inside_jit_raises(case, getkey):
    model, problem, _, _, _ = case
    v = jr.normal(getkey(), (B, T, N))
    f = eqx.filter_jit(
        lambda m, x: ds.sntk_operator(m, problem, method="replay", num_steps=3).mv(x)
    )
    with pytest.raises(Exception, match="num_steps"):
        jax.block_until_ready(f(model, v))
