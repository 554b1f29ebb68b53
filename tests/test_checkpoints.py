"""`sntk_over_checkpoints` against the dense Θ = J Jᵀ of each checkpoint, and its views."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import numpy as np
import pytest

import diffrax_sntk as ds
from diffrax_sntk import sntk_over_checkpoints

from .helpers import dense_jacobian, raises_check, small_ctrnn, small_problem

matplotlib.use("Agg")


def checkpoints(dtype=jnp.float64):
    """Three checkpoints of the standard small CTRNN; the first two are identical (alignment
    exactly 1: the negative control for the alignment of distinct kernels)."""
    m0 = small_ctrnn(dtype)
    dw = jr.normal(jr.PRNGKey(9), m0.W.shape, dtype)
    m1 = eqx.tree_at(lambda m: m.W, m0, m0.W + 0.5 * dw)
    return [m0, m0, m1]


def tiny_checkpoints():
    """The same pattern on a 2-unit CTRNN without inputs (cheap to compile)."""
    m0 = ds.CTRNN(2, key=jr.PRNGKey(3), gain=1.5)
    m0 = eqx.tree_at(lambda m: m.b, m0, jnp.array([0.2, -0.1]))
    m1 = eqx.tree_at(lambda m: m.W, m0, m0.W + 0.5 * jr.normal(jr.PRNGKey(9), (2, 2)))
    return [m0, m0, m1]


def tiny_problem(dtype=jnp.float64):
    """Euler with a constant step: the smallest solve programs (B·T·N = 1·3·2 = 6)."""
    return ds.TrajectoryProblem(
        jnp.array([0.5, 1.0, 1.5], dtype), jnp.array([[0.8, -0.5]], dtype),
        solver=diffrax.Euler(), stepsize_controller=diffrax.ConstantStepSize(), dt0=0.25,
    )


def euler_jacobian(model, problem):
    """Dense J of `tiny_problem` by hand: Euler steps of 0.25 from t = 0, observed every second
    step; independent of diffrax and cheap to compile."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def observed(p):
        m, x, out = eqx.combine(p, static), problem.y0[0], []
        for i in range(1, 7):
            x = x + 0.25 * m(0.0, x, None)
            if i % 2 == 0:
                out.append(x)
        return jnp.stack(out)

    jac = jax.jacfwd(observed)(params)
    return np.concatenate([np.asarray(a).reshape(6, -1) for a in jax.tree_util.tree_leaves(jac)],
                          axis=1)


def dense_stats(models, problem, k, jacobian=dense_jacobian):
    thetas = []
    for m in models:
        J = jacobian(m, problem)
        thetas.append(J @ J.T)
    lam = [np.linalg.eigvalsh(t)[::-1] for t in thetas]
    pr = np.array([np.sum(v) ** 2 / np.sum(v**2) for v in lam])
    top = np.stack([v[:k] for v in lam])
    al = np.array([np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))
                   for a, b in zip(thetas[:-1], thetas[1:], strict=True)])
    return pr, top, al


def check_against_dense(stats, models, problem, k, jacobian=dense_jacobian):
    pr, top, al = dense_stats(models, problem, k, jacobian)
    assert bool(jnp.all(stats.converged)) and stats.messages() == [""] * 3
    assert bool(jnp.all(stats.alignment_result == ds.RESULTS.successful))
    np.testing.assert_allclose(np.asarray(stats.effective_rank), pr, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(stats.top_eigenvalues), top, rtol=1e-7)
    np.testing.assert_allclose(np.asarray(stats.alignment), al, rtol=1e-9)
    # Identical checkpoints align exactly; distinct ones measurably less (negative control).
    assert float(stats.alignment[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(stats.alignment[1]) < 0.999


@pytest.fixture(scope="module")
def stats():
    # Dimension 6 ≤ num_matvecs: the exact paths of effective_rank and alignment.
    return sntk_over_checkpoints(tiny_checkpoints(), tiny_problem(), k=2, num_matvecs=8,
                                 steps=[0, 10, 20], batch_size=2)


def test_against_dense(stats):
    check_against_dense(stats, tiny_checkpoints(), tiny_problem(), 2, euler_jacobian)
    np.testing.assert_array_equal(np.asarray(stats.steps), [0.0, 10.0, 20.0])


def test_stacked_models(stats):
    # A stacked model (leading checkpoint axis; eqx.filter_vmap builds the same from per-
    # checkpoint keys), two chunks of two with the last padded: the same numbers.
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *tiny_checkpoints())
    out = sntk_over_checkpoints(stacked, tiny_problem(), k=2, num_matvecs=8, batch_size=2,
                                progress=True)
    np.testing.assert_allclose(np.asarray(out.effective_rank),
                               np.asarray(stats.effective_rank), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(out.alignment), np.asarray(stats.alignment),
                               rtol=1e-12)


@pytest.mark.slow  # one more compile (~35 s CPU on the shared machine)
def test_float32():
    models = tiny_checkpoints()[1:]
    as32 = lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a
    out = sntk_over_checkpoints(jax.tree_util.tree_map(as32, models), tiny_problem(jnp.float32),
                                k=2, num_matvecs=8, batch_size=2)
    assert out.effective_rank.dtype == jnp.float32
    pr, _, al = dense_stats(models, tiny_problem(), 2, euler_jacobian)
    np.testing.assert_allclose(np.asarray(out.effective_rank), pr, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(out.alignment), al, rtol=1e-3)


@pytest.mark.slow  # the standard small CTRNN (adaptive Tsit5): compiles for minutes on 2 cores
def test_against_dense_small_ctrnn():
    stats = sntk_over_checkpoints(checkpoints(), small_problem(), k=3, num_matvecs=64,
                                  batch_size=3)
    check_against_dense(stats, checkpoints(), small_problem(), 3)


def test_bad_arguments():
    models = tiny_checkpoints()
    with pytest.raises(TypeError, match="`problem`"):
        sntk_over_checkpoints(models, None)
    with pytest.raises(ValueError, match="`models`"):
        sntk_over_checkpoints([], tiny_problem())
    with pytest.raises(ValueError, match="same array shapes"):
        other = ds.CTRNN(4, key=jr.PRNGKey(0))
        sntk_over_checkpoints([models[0], other], tiny_problem())
    with pytest.raises(ValueError, match="`steps`"):
        sntk_over_checkpoints(models, tiny_problem(), steps=[0, 1])
    with pytest.raises(ValueError, match="`k`"):
        sntk_over_checkpoints(models, tiny_problem(), k=0)
    bad = eqx.tree_at(lambda m: m.b, models[0], models[0].b.at[0].set(jnp.nan))
    with raises_check("`models` contains non-finite"):
        sntk_over_checkpoints([models[0], bad], tiny_problem())


def test_view_with_bifurcations(stats):
    import matplotlib.pyplot as plt

    from diffrax_sntk._plotting_rnn import plot_sntk_over_training

    class FakeBif:
        kind, parameter = "fold", 1.5  # halfway between checkpoints 1 and 2 (steps 10, 20)

    ax_r, ax_e, ax_a = plot_sntk_over_training(stats, bifurcations=[FakeBif()])
    marks = [ln for ln in ax_r.lines if ln.get_linestyle() == ":"]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == pytest.approx(15.0)
    assert len(ax_e.lines) == 3 and len(ax_a.lines) == 2
    plt.close("all")


@pytest.mark.slow  # the stochastic estimators (exact=False) on the standard small CTRNN
def test_estimators_within_error_bars():
    pr, _, al = dense_stats(checkpoints(), small_problem(), 3)
    out = sntk_over_checkpoints(checkpoints(), small_problem(), k=3, num_matvecs=16,
                                exact=False, batch_size=3)
    er, se = np.asarray(out.effective_rank), np.asarray(out.effective_rank_se)
    assert np.all(np.abs(er - pr) <= 4 * se)
    a, ase = np.asarray(out.alignment), np.asarray(out.alignment_se)
    assert np.all(np.abs(a - al) <= 4 * ase + 1e-12)


@pytest.mark.slow  # an outer jit: one more compile
def test_under_jit(stats):
    # The problem is built outside `jit` (its constant step grid needs concrete times).
    fn = eqx.filter_jit(
        lambda ms, prob: sntk_over_checkpoints(ms, prob, k=2, num_matvecs=8,
                                               steps=[0, 10, 20], batch_size=2)
    )
    out = fn(tiny_checkpoints(), tiny_problem())
    np.testing.assert_allclose(np.asarray(out.effective_rank),
                               np.asarray(stats.effective_rank), rtol=1e-10)
