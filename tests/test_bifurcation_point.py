"""`bifurcation_point`: fold, branch point and Hopf re-solved from their defining systems, with
derivatives in `args` (implicit function theorem) against analytic values and finite
differences, under `jit` and `vmap`; negative controls; float32; the loss example's smoke run.

The default tests build the input `Bifurcation` by hand (a rough guess, as `continuation` would
give) to keep compiles few; `-m slow` runs the same checks from `continuation`'s output."""

import importlib.util
import os
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffrax_sntk as ds

bifurcation_point = ds.bifurcation_point

H = 1e-5  # finite-difference step


def fold_family(x, mu, a):
    """ẋ = μx − x³ + a: fold at μ* = 3(a/2)^{2/3}, x* = −(a/2)^{1/3} (a > 0)."""
    return mu * x - x**3 + a


def brusselator(x, b, a):
    """Hopf at b* = 1 + a², state (a, b/a), ω = a."""
    u, v = x
    return jnp.array([a - (b + 1) * u + u**2 * v, b * u - u**2 * v])


class PitchforkArgs(eqx.Module):
    """Any `eqx.Module` (here with a function leaf) as `args`."""

    a: jax.Array
    c: jax.Array
    cubic: Callable = lambda x: x**3


def pitchfork_family(x, mu, args):
    """ẋ = (μ − a)x − x³ + c: a pitchfork at μ* = a when c = 0; none when c ≠ 0."""
    return (mu - args.a) * x - args.cubic(x) + args.c


def guess(kind, parameter, state, q, w, eigenvalues):
    """A `Bifurcation` as a rough initial guess (what `continuation` provides)."""
    nan = jnp.asarray(jnp.nan)
    if kind == "hopf":
        nf = ds.HopfNormalForm(omega=nan, c1=nan + 0j, l1=nan, transversality=nan)
    elif kind == "fold":
        nf = ds.FoldNormalForm(a=nan, a_f=nan, b1=nan, b2=nan)
    else:
        nf = ds.BranchPointNormalForm(a=nan, b1=nan, b2=nan, b3=nan)
    return ds.Bifurcation(
        kind=kind,
        parameter=jnp.asarray(parameter),
        state=jnp.asarray(state),
        eigenvalues=jnp.asarray(eigenvalues),
        right_eigenvector=jnp.asarray(q),
        left_eigenvector=jnp.asarray(w),
        normal_form=nf,
        direction=1,
        located=True,
    )


FOLD = guess("fold", 1.2, [-0.6], [1.0], [1.0], [0.0 + 0j])


def _jvp_batch(fn, batch):
    """`(values, tangents)` of `fn` at every entry of `batch`, in one compiled program."""

    @eqx.filter_jit
    @eqx.filter_vmap
    def run(a):
        ones = jax.tree.map(lambda v: jnp.ones_like(v) if eqx.is_inexact_array(v) else None, a)
        return eqx.filter_jvp(fn, (a,), (ones,))

    return run(batch)


def test_fold_analytic_fd_jit_vmap():
    a0 = 0.5
    # Entries: the point, two finite-difference neighbours, another a; a = 0 is the negative
    # control (the fold degenerates into a pitchfork: the fold system's solution is a branch
    # point with a = pᵀ f_μ = 0, which must not be reported as a fold).
    aa = jnp.array([a0, a0 + H, a0 - H, 0.3, 0.0])
    out, tan = _jvp_batch(lambda a: bifurcation_point(fold_family, FOLD, a), aa)
    ok = np.asarray(out.result == ds.RESULTS.successful)
    assert ok.tolist() == [True, True, True, True, False]
    assert ds.RESULTS[jax.tree.map(lambda r: r[4], out.result)] != ""
    a = np.asarray(aa)[[0, 3]]
    mu = np.asarray(out.parameter)[[0, 3]]
    x = np.asarray(out.state)[[0, 3], 0]
    np.testing.assert_allclose(mu, 3 * (a / 2) ** (2 / 3), rtol=0, atol=1e-12)
    np.testing.assert_allclose(x, -((a / 2) ** (1 / 3)), rtol=0, atol=1e-12)
    dmu = np.asarray(tan.parameter)[[0, 3]]
    dx = np.asarray(tan.state)[[0, 3], 0]
    np.testing.assert_allclose(dmu, (a / 2) ** (-1 / 3), rtol=1e-10)
    np.testing.assert_allclose(dx, -((a / 2) ** (-2 / 3)) / 6, rtol=1e-10)
    fd = (out.parameter[1] - out.parameter[2]) / (2 * H)
    assert abs(float(fd - tan.parameter[0])) < 1e-7
    assert out.kind == "fold" and bool(jnp.all(jnp.abs(out.normal_form.a_f[:4]) > 0.1))


def test_hopf_brusselator_analytic_fd_jit_vmap():
    a0 = 2.0
    hopf = guess(
        "hopf",
        4.9,
        [2.0, 2.5],
        [0.5 + 0.5j, -0.5 + 0.2j],
        [0.3 - 0.1j, 0.6 + 0.4j],
        [0.0 + 2.0j, 0.0 - 2.0j],
    )
    aa = jnp.array([a0, a0 + H, a0 - H, 2.3])
    out, tan = _jvp_batch(lambda a: bifurcation_point(brusselator, hopf, a), aa)
    assert bool(jnp.all(out.result == ds.RESULTS.successful))
    a = np.asarray(aa)[[0, 3]]
    b = np.asarray(out.parameter)[[0, 3]]
    np.testing.assert_allclose(b, 1 + a**2, rtol=0, atol=1e-11)
    np.testing.assert_allclose(np.asarray(out.state)[[0, 3]], np.stack([a, b / a], 1), atol=1e-11)
    np.testing.assert_allclose(np.asarray(out.normal_form.omega)[[0, 3]], a, atol=1e-11)
    np.testing.assert_allclose(np.asarray(tan.parameter)[[0, 3]], 2 * a, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(tan.normal_form.omega)[[0, 3]], 1.0, rtol=1e-10)
    fd = (out.parameter[1] - out.parameter[2]) / (2 * H)
    assert abs(float(fd - tan.parameter[0])) < 1e-7
    # Its eigenvalues at the solution are ±iω.
    np.testing.assert_allclose(np.asarray(out.eigenvalues[0, 0]), 2.0j, atol=1e-9)


@pytest.mark.slow  # its own compile; the fold test's a = 0 entry is the default negative control
def test_branch_point_module_args_and_negative_control():
    pitchfork = guess("pitchfork", 0.25, [0.02], [1.0], [1.0], [0.0 + 0j])
    # c = 0: a pitchfork at μ* = a; c ≠ 0 (the last entry) breaks it: no branch point.
    batch = PitchforkArgs(a=jnp.array([0.3, 0.3 + H, 0.3 - H, 0.3]), c=jnp.array([0, 0, 0, 0.1]))
    out, tan = _jvp_batch(lambda p: bifurcation_point(pitchfork_family, pitchfork, p), batch)
    ok = np.asarray(out.result == ds.RESULTS.successful)
    assert ok.tolist() == [True, True, True, False]
    assert jax.tree.map(lambda r: r[3], out.result) == ds.RESULTS.not_a_bifurcation
    np.testing.assert_allclose(np.asarray(out.parameter)[:3], np.asarray(batch.a)[:3], atol=1e-12)
    np.testing.assert_allclose(np.asarray(out.state)[:3, 0], 0.0, atol=1e-12)
    # The tangent of the batch moves a and c together: dμ*/da = 1, and c does not move μ*.
    np.testing.assert_allclose(float(tan.parameter[0]), 1.0, rtol=1e-10)
    assert bool(out.normal_form.symmetric[0])


@pytest.mark.slow  # its own compile (the fold system on the Brusselator); default negatives above
def test_negative_control_wrong_kind():
    # The Brusselator's Hopf point handed over as a fold: det J = a² > 0, so there is no fold.
    wrong = guess("fold", 5.0, [2.0, 2.5], [1.0, 0.0], [1.0, 0.0], [0.0 + 0j])
    out = bifurcation_point(brusselator, wrong, jnp.asarray(2.0))
    assert out.result != ds.RESULTS.successful
    with pytest.raises(Exception, match="."):
        bifurcation_point(brusselator, wrong, jnp.asarray(2.0), throw=True)


def test_float32_and_bad_input():
    fold32 = jax.tree.map(
        lambda v: (
            v.astype(jnp.complex64 if jnp.iscomplexobj(v) else jnp.float32)
            if eqx.is_inexact_array(v)
            else v
        ),
        FOLD,
    )
    out = bifurcation_point(fold_family, fold32, jnp.float32(0.5))
    assert out.parameter.dtype == jnp.float32
    assert out.result == ds.RESULTS.successful
    assert abs(float(out.parameter) - 3 * 0.25 ** (2 / 3)) < 1e-4
    with pytest.raises(TypeError, match="`bifurcation`"):
        bifurcation_point(fold_family, (1.2, [-0.6]), 0.5)
    with pytest.raises(ValueError, match="`max_steps`"):
        bifurcation_point(fold_family, FOLD, 0.5, max_steps=0)


def _load_example(name):
    path = os.path.join(os.path.dirname(__file__), "..", "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # the example's continuation compiles for ~25 s on 2 cores
def test_bifurcation_aware_loss_example():
    history = _load_example("bifurcation_aware_loss").main(smoke=True)
    assert history["fold_margin"][-1] > 0  # training stayed on the bistable side of the fold


# ---------------------------------------------------------------------------------------------
# From `continuation`'s output (slow: each continuation compiles for ~25 s on 2 cores).


@pytest.mark.slow
def test_from_continuation_fold_grad():
    branch = ds.continuation(fold_family, jnp.array([-1.53]), 3.0, 0.0, args=jnp.asarray(0.5))
    (fold,) = [b for b in branch.bifurcations if b.kind == "fold"]
    point = lambda a: bifurcation_point(fold_family, fold, a).parameter
    g = jax.jit(jax.grad(point))(jnp.asarray(0.5))
    assert abs(float(g) - 0.25 ** (-1 / 3)) < 1e-10
    assert abs(float(point(jnp.asarray(0.5))) - 3 * 0.25 ** (2 / 3)) < 1e-12


@pytest.mark.slow
def test_from_continuation_hopf_grad():
    a = 2.0
    branch = ds.continuation(brusselator, jnp.array([a, 4.0 / a]), 4.0, 6.0, args=jnp.asarray(a))
    (hopf,) = [b for b in branch.bifurcations if b.kind == "hopf"]
    point = lambda a: bifurcation_point(brusselator, hopf, a).parameter
    g = jax.jit(jax.grad(point))(jnp.asarray(a))
    assert abs(float(g) - 2 * a) < 1e-9
    gs = jax.vmap(jax.grad(point))(jnp.array([1.9, 2.1]))
    np.testing.assert_allclose(np.asarray(gs), [3.8, 4.2], rtol=1e-9)


@pytest.mark.slow
def test_from_continuation_pitchfork():
    args = PitchforkArgs(a=jnp.asarray(0.3), c=jnp.asarray(0.0))
    branch = ds.continuation(pitchfork_family, jnp.array([0.0]), -1.0, 1.0, args=args)
    (bp,) = branch.bifurcations
    assert bp.kind == "pitchfork"
    g = eqx.filter_grad(lambda p: bifurcation_point(pitchfork_family, bp, p).parameter)(args)
    assert abs(float(g.a) - 1.0) < 1e-10 and abs(float(g.c)) < 1e-10
