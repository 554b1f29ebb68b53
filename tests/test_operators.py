"""Operators J, Jᵀ, Θ and the KPFlow factors: the facts specific to each (the output-space
kernel's formula, Θ = P K P*, the replay's selection rules and step budget). The checks common
to every operator are the contract in test_operator_contract.py; both use the matrices that
`operator_registry` computes once per session."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import diffrax_sntk as ds

from . import operator_registry as registry
from .helpers import OUT, B, N, T, flat_params, small_ctrnn, small_problem


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def test_output_space_kernel():
    # Θ_out = C Θ Cᵀ + (x_aᵀ x_b + 1) I_O: the readout parameters C, d add the second term.
    model, problem = small_ctrnn(), small_problem()
    theta_out = registry.matrix("Theta_output_replay")
    theta = registry.matrix("Theta_state_replay")
    assert registry.build("Theta_output_replay").in_structure().shape == (B, T, OUT)
    xs = np.asarray(ds.simulate(model, problem)).reshape(B * T, N)
    big_c = np.kron(np.eye(B * T), np.asarray(model.C))
    expected = big_c @ theta @ big_c.T + np.kron(xs @ xs.T + 1.0, np.eye(OUT))
    assert _rel(theta_out, expected) <= 1e-8


def test_kpflow_factors_compose_to_theta():
    # Θ = P K P*, to the accuracy of the quadrature (order 6 here).
    P, K, Ps = (registry.matrix(name) for name in ("P", "K", "P_star"))
    theta = registry.matrix("Theta_state_replay")
    assert _rel(P @ K @ Ps, theta) <= 1e-8
    # P* is the adjoint of P in the quadrature inner product: Pᵀ = W P*.
    _, w = ds.quadrature_grid(small_problem(), registry.ORDER)
    wdiag = np.tile(np.repeat(np.asarray(w), N), B)
    np.testing.assert_allclose(P.T, wdiag[:, None] * Ps, rtol=1e-9, atol=1e-12)


def test_kpflow_factors_live_in_kpflow():
    from diffrax_sntk import _kpflow, _operators

    for name in ("propagator", "adjoint_propagator", "parameter_operator", "quadrature_grid"):
        assert getattr(_operators, name) is getattr(_kpflow, name) is getattr(ds, name)


def test_replay_is_the_reference_discrete_map():
    # Built outside jit, `method="auto"` replays the recorded steps: J and Θ equal the
    # reference path (jax.jacrev through diffeqsolve) to rounding, not just to tolerance.
    model, problem = small_ctrnn(), small_problem()
    assert ds.sntk_operator(model, problem).fn.func.__name__ == "_lin_theta_mv"  # auto: replay
    jac = registry.jacobian_reference("state")
    assert _rel(registry.matrix("J_state"), jac) <= 1e-10
    assert _rel(registry.matrix("Theta_state_replay"), jac @ jac.T) <= 1e-10


def test_replay_inside_jit(getkey):
    # Inside jit `auto` uses the solve path; `replay` works too, with a static step budget.
    model, problem = small_ctrnn(), small_problem()
    theta_mat = registry.matrix("Theta_state_replay")
    v = jr.normal(getkey(), (B, T, N))
    replay = eqx.filter_jit(
        lambda m, x: ds.sntk_operator(m, problem, method="replay", num_steps=512).mv(x)
    )(model, v)
    expected = (theta_mat @ np.asarray(v).reshape(-1)).reshape(B, T, N)
    assert np.max(np.abs(np.asarray(replay) - expected)) <= 1e-10 * np.max(np.abs(expected))


def test_replay_bad_arguments():
    model, problem = small_ctrnn(), small_problem()
    with pytest.raises(ValueError, match="`method`"):
        ds.sntk_operator(model, problem, method="fast")
    with pytest.raises(ValueError, match="`num_steps=3` is too small"):
        ds.jacobian_operator(model, problem, method="replay", num_steps=3)
    with pytest.raises(ValueError, match="`num_steps`"):
        ds.sntk_operator(model, problem, method="replay", num_steps=0)
    implicit = ds.TrajectoryProblem(problem.ts, problem.y0, solver=dfx.Kvaerno5())
    with pytest.raises(ValueError, match="explicit solver"):
        ds.sntk_operator(ds.CTRNN(N, key=jr.PRNGKey(0)), implicit, method="replay")


def test_replay_selection_rules():
    from diffrax_sntk._operators import _use_replay

    model, problem = small_ctrnn(), small_problem()
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


def test_replay_too_few_steps_inside_jit_raises(getkey):
    model, problem = small_ctrnn(), small_problem()
    v = jr.normal(getkey(), (B, T, N))
    f = eqx.filter_jit(
        lambda m, x: ds.sntk_operator(m, problem, method="replay", num_steps=3).mv(x)
    )
    with pytest.raises(Exception, match="num_steps"):
        jax.block_until_ready(f(model, v))


def test_trajectory_and_jacobian_share_one_linearisation():
    # One recording solve and one linearised replay give X (= simulate, to rounding) and J;
    # inside jit, Jᵀ ∂L/∂X is the reverse-mode gradient of the loss.
    from diffrax_sntk._operators import trajectory_and_jacobian

    model, problem = small_ctrnn(), small_problem()
    jac = registry.jacobian_reference("state")
    ys, J = trajectory_and_jacobian(model, problem)
    assert _rel(ys, ds.simulate(model, problem)) <= 1e-10
    assert _rel(J.as_matrix(), jac) <= 1e-10
    target = 0.5 * np.asarray(ys)

    @eqx.filter_jit
    def grad(m):
        ys, J = trajectory_and_jacobian(m, problem, num_steps=512)
        dys = jax.grad(lambda y: jnp.sum((y - target) ** 2))(ys)
        return jax.flatten_util.ravel_pytree(J.transpose().mv(dys))[0]

    expected = jac.T @ (2 * (np.asarray(ys) - target)).reshape(-1)
    assert _rel(grad(model), expected) <= 1e-10
    implicit = ds.TrajectoryProblem(problem.ts, problem.y0, solver=dfx.Kvaerno5())
    with pytest.raises(ValueError, match="explicit solver"):
        trajectory_and_jacobian(ds.CTRNN(N, key=jr.PRNGKey(0)), implicit)
