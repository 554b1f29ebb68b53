"""One contract for every linear operator of the package (the registry in `operator_registry`):
the dense matrix against an independent reference, the transpose, the claimed tags, `jit` and
`vmap` against eager, float32, and misuse (a wrong vector, non-finite parameters). Then the
facts specific to each operator (the output-space kernel's formula, Θ = P K P*, the replay's
selection rules and step budget). Both parts live in one file so that one xdist worker computes
the registry's matrices once for all of them."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import lineax as lx
import numpy as np
import pytest

import diffrax_sntk as ds

from . import operator_registry as registry
from .helpers import OUT, B, N, T, flat_params, raises_check, small_ctrnn, small_problem
from .operator_registry import (
    OPERATORS,
    build,
    eager_mv,
    flat,
    float32_mv,
    matrix,
    transpose_matrix,
)

# What runs by default: every code path once (the replay and solve paths of J, Jᵀ and Θ, the
# kicked solves of P and P* in both directions, K), with the dense, transpose and tag checks on
# every operator listed here. Each solve-path matvec is a compile of its own, so the repeats
# (eager solve-path matvecs, float32 copies of kernels already checked in float32 elsewhere, the
# output-space solve path and the channel split) run with `-m slow`.
_SLOW = {"Theta_output_solve", "Theta_bif", "Theta_res"}
# The output-space J is covered by default through Θ_output (replay), J_out J_outᵀ; its own dense
# reference check (a second jacrev compile through the readout) runs with `-m slow`.
_SLOW_DENSE = {"J_output"}
_SLOW_CHECK = {
    "eager": {"JT_state_solve", "Theta_state_solve", "P_star"},
    "float32": {"JT_state_solve", "Theta_state_solve", "P", "P_star"},
}
# float32 by default: one operator per module (J from _operators, K from _kpflow); the others'
# float32 checks run with `-m slow`.
_FLOAT32_DEFAULT = {"J_state", "K"}


def _names(check=None):
    slow = _SLOW | _SLOW_CHECK.get(check, set()) | (_SLOW_DENSE if check == "dense" else set())
    names = [n for n, e in OPERATORS.items() if check != "float32" or e.float32]
    if check == "float32":
        slow = slow | (set(names) - _FLOAT32_DEFAULT)
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name", _names("dense"))
def test_dense_matches_reference(name):
    entry = OPERATORS[name]
    A, ref = matrix(name), entry.reference()
    assert A.shape == ref.shape
    assert _rel(A, ref) <= entry.dense_rtol


@pytest.mark.parametrize("name", _names())
def test_transpose(name):
    # The transpose's own matvecs (vmapped, under jit) against the matrix: ⟨Av, w⟩ = ⟨v, Aᵀw⟩
    # for every v, w. Both directions differentiate one discrete map, so this holds to rounding.
    A = matrix(name)
    np.testing.assert_allclose(transpose_matrix(name), A.T, rtol=0, atol=1e-11 * np.abs(A).max())
    op = build(name)
    assert op.transpose().in_structure() == op.out_structure()
    assert op.transpose().out_structure() == op.in_structure()


@pytest.mark.parametrize("name", _names())
def test_tags(name):
    entry = OPERATORS[name]
    op, A = build(name), matrix(name)
    assert lx.is_symmetric(op) == entry.symmetric
    assert lx.is_positive_semidefinite(op) == entry.psd
    if entry.symmetric:
        assert op.transpose() is op
        np.testing.assert_allclose(A, A.T, rtol=0, atol=1e-11 * np.abs(A).max())
    if entry.psd:
        assert np.min(np.linalg.eigvalsh(A)) >= -1e-10 * np.abs(A).max()


@pytest.mark.parametrize("name", _names("eager"))
def test_jit_and_vmap_match_eager(name):
    # `as_matrix` ran under jit as a vmap of `mv`; the eager `mv` must give the same vector.
    v, out = eager_mv(name)
    assert _rel(flat(out), matrix(name) @ flat(v)) <= 1e-10


@pytest.mark.parametrize("name", _names("float32"))
def test_float32(name):
    # Built from the float32 model and problem: finite, float32, and close to the float64
    # reference (float32 solves at their default tolerances).
    entry = OPERATORS[name]
    v, out = float32_mv(name)
    leaves = jtu.tree_leaves(out)
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    assert _rel(flat(out), entry.reference() @ flat(v)) <= entry.float32_rtol


@pytest.mark.parametrize("name", _names())
def test_wrong_vector_raises(name):
    op = build(name)
    bad = jtu.tree_map(lambda s: jnp.zeros(s.shape + (1,), s.dtype), op.in_structure())
    with pytest.raises(ValueError, match="`vector`"):
        op.mv(bad)


@pytest.mark.parametrize("name", _names())
def test_nonfinite_parameters_raise(name):
    # The check is an `eqx.error_if` on the parameters: it raises as the operator is built
    # (no host copy of the parameters), and under jit at the first matvec.
    model = small_ctrnn()
    bad = eqx.tree_at(lambda m: m.W, model, model.W.at[0, 1].set(jnp.nan))
    with raises_check("non-finite"):
        OPERATORS[name].build(bad, small_problem())


# ---------------------------------------------------------------------------------------------
# Facts specific to each operator


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
        problem.ts,
        problem.y0,
        stepsize_controller=dfx.ClipStepSizeController(
            dfx.PIDController(rtol=1e-6, atol=1e-8), jump_ts=jnp.array([1.0])
        ),
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
