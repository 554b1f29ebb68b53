"""One contract for every linear operator of the package (the registry in `operator_registry`):
the dense matrix against an independent reference, the transpose, the claimed tags, `jit` and
`vmap` against eager, float32, and misuse (a wrong vector, non-finite parameters)."""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np
import pytest

from .helpers import raises_check, small_ctrnn, small_problem
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
