"""Branch switching and automatic bifurcation diagrams against exact branches.

The default tests reuse vector fields (and settings) that other test files already continue, so
they share those compiled continuations: `Poly1D` (ẋ = μx − x³, μx − x², μ − x²), the CTRNN
unit ẋ = −x + g tanh x, `GainCTRNN` (N = 6) and the `args` form of test_continuation_jit. With
`-m slow`: a planar family with a rotated, moving trivial branch, and `switch_branch` under
`eqx.filter_jit`.

The planar family (an `eqx.Module` passed as `args`):

    ż = R g(z),  z = Rᵀ(x − μ v0),
    g1 = μ z1 + c0 z1² + c1 z1³ + c2 z1 z2 + c3 (μ tanh z1 − z1 − μ z1) + c4,
    g2 = −z2 + c5 z1²;

with a rotation R and a moving v0 it has a pitchfork off the coordinate axes whose branches are
z1² = μ/2, z2 = μ/2.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array
from scipy.optimize import brentq

import diffrax_sntk as ds
from diffrax_sntk._branch_switching import SWITCH_FAILED, branch_point_predictor, switch_branch
from diffrax_sntk._continuation import ContinuationProblem, ScalarFamily, make_options
from diffrax_sntk._diagram import BifurcationDiagram, bifurcation_diagram

from .helpers_bifurcation import (
    FOLD,
    PITCHFORK_SUB,
    PITCHFORK_SUPER,
    TRANSCRITICAL,
    GainCTRNN,
    scalar_ctrnn,
)
from .test_continuation_jit import MAX_STEPS, shifted_pitchfork


def _switched(diagram: BifurcationDiagram):
    """The two switched branches of a diagram with one branch point on its primary branch."""
    assert diagram.successful and diagram.failed == () and diagram.num_duplicates == 0
    assert len(diagram.branches) == 3
    assert diagram.parents == (-1, 0, 0) and diagram.depths == (0, 1, 1)
    assert diagram.sides == (0, -1, 1)
    return zip((-1, 1), diagram.branches[1:], strict=True)


def _outer(gain):
    """The positive root of s = gain·tanh(s), solved independently of the package."""
    return brentq(lambda x: gain * np.tanh(x) - x, 1e-3, 10.0)


def test_pitchfork_both_sides():
    diagram = bifurcation_diagram(PITCHFORK_SUPER, jnp.array([0.0]), -1.0, 1.0)
    (bif,) = diagram.primary.bifurcations
    assert bif.kind == "pitchfork" and abs(float(bif.parameter)) < 1e-8
    for side, branch in _switched(diagram):
        assert branch.successful and branch.num_steps > 5
        x, mu = np.asarray(branch.states[:, 0]), np.asarray(branch.parameters)
        # x = ±√μ along the whole switched branch, on the side it was started.
        np.testing.assert_allclose(x, side * np.sqrt(mu), atol=1e-8, rtol=0)
        assert mu[0] > 0 and mu[-1] == pytest.approx(1.0)
        assert bool(np.all(branch.stable))  # supercritical: the new branches are stable
        assert branch.bifurcations == ()
    assert float(diagram.origins[1].parameter) == float(bif.parameter)
    assert [(i, b.kind) for i, b in diagram.bifurcations] == [(0, "pitchfork")]


def test_subcritical_pitchfork_goes_backwards():
    # μx + x³: the branches x = ±√(−μ) exist for μ < 0 and are unstable (δμ = −u² from b3 > 0).
    diagram = bifurcation_diagram(PITCHFORK_SUB, jnp.array([0.0]), -1.0, 1.0)
    for side, branch in _switched(diagram):
        x, mu = np.asarray(branch.states[:, 0]), np.asarray(branch.parameters)
        np.testing.assert_allclose(x, side * np.sqrt(-mu), atol=1e-8, rtol=0)
        assert mu[-1] == pytest.approx(-1.0) and not np.any(branch.stable)


def test_transcritical_exchange():
    diagram = bifurcation_diagram(TRANSCRITICAL, jnp.array([0.0]), -1.0, 1.0)
    (bif,) = diagram.primary.bifurcations
    assert bif.kind == "transcritical" and abs(float(bif.parameter)) < 1e-8
    ends = []
    for _, branch in _switched(diagram):
        x, mu = np.asarray(branch.states[:, 0]), np.asarray(branch.parameters)
        np.testing.assert_allclose(x, mu, atol=1e-8, rtol=0)  # the exchanged branch x = μ
        # Exchange of stability: x = μ is stable for μ > 0, unstable for μ < 0.
        np.testing.assert_array_equal(np.asarray(branch.stable), mu > 0)
        ends.append(float(mu[-1]))
    assert sorted(ends) == pytest.approx([-1.0, 1.0])


def test_pitchfork_off_the_axes_in_a_network():
    # ẋ = −x + g W0 tanh x with W0 = 1.5 v vᵀ − 0.5 (I − v vᵀ), v ∝ (1, −1, 1, 1, −1, 1): the
    # pitchfork at g = 2/3 leaves along v (no coordinate axis), and since |v_i| are equal the
    # branches are exactly x = ±√6 s v with s = 1.5 g tanh s.
    v = np.array([1.0, -1.0, 1.0, 1.0, -1.0, 1.0]) / np.sqrt(6)
    w0 = 1.5 * np.outer(v, v) - 0.5 * (np.eye(6) - np.outer(v, v))
    diagram = bifurcation_diagram(GainCTRNN(jnp.asarray(w0)), jnp.zeros(6), 0.4, 1.5)
    (bif,) = diagram.primary.bifurcations
    assert bif.kind == "pitchfork" and abs(float(bif.parameter) - 2 / 3) < 1e-8
    np.testing.assert_allclose(np.abs(bif.right_eigenvector), np.abs(v), atol=1e-8)
    for _, branch in _switched(diagram):
        x, g = np.asarray(branch.states), np.asarray(branch.parameters)
        a = x @ v
        assert np.all(np.sign(a) == np.sign(a[-1]))
        exact = np.sqrt(6) * np.array([_outer(1.5 * gi) for gi in g])
        np.testing.assert_allclose(np.abs(a), exact, atol=1e-8, rtol=0)
        np.testing.assert_allclose(x - np.outer(a, v), 0.0, atol=1e-8)
    signs = {float(np.sign(b.states[-1] @ v)) for b in diagram.branches[1:]}
    assert signs == {-1.0, 1.0}


def test_ctrnn_unit_diagram():
    diagram = bifurcation_diagram(scalar_ctrnn, jnp.zeros(1), 0.2, 3.0)
    (bif,) = diagram.primary.bifurcations
    assert bif.kind == "pitchfork" and abs(float(bif.parameter) - 1.0) < 1e-8
    for side, branch in _switched(diagram):
        x, g = np.asarray(branch.states[:, 0]), np.asarray(branch.parameters)
        exact = np.array([_outer(gi) for gi in g])
        np.testing.assert_allclose(side * x, exact, atol=1e-8, rtol=0)
        assert g[-1] == pytest.approx(3.0) and bool(np.all(branch.stable))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffrax_sntk.plotting import plot_bifurcation_diagram

    ax = plot_bifurcation_diagram(diagram, xlabel="g")
    # Primary: stable and unstable segments; two switched branches; one marker; a legend.
    assert len(ax.lines) >= 5 and ax.get_legend() is not None
    assert {line.get_linestyle() for line in ax.lines[:2]} == {"-", "--"}
    plt.close(ax.figure)


def test_args_form_and_predictor_under_jit():
    # vector_field(x, mu, args) as in test_continuation_jit (same compiled continuation): the
    # pitchfork of (μ − a0)x − x³ at μ = a0, branches x = ±√(μ − a0).
    a = jnp.array([0.25, 0.0])
    kw = dict(args=a, max_steps=MAX_STEPS)
    primary = ds.continuation(shifted_pitchfork, jnp.zeros(1), -0.5, 1.0, **kw)
    (bif,) = primary.bifurcations
    pair = switch_branch(shifted_pitchfork, bif, -0.5, 1.0, **kw)
    for side, branch in zip((-1, 1), pair, strict=True):
        assert branch.result == ds.RESULTS.successful
        x, mu = np.asarray(branch.states[:, 0]), np.asarray(branch.parameters)
        np.testing.assert_allclose(x, side * np.sqrt(mu - 0.25), atol=1e-8, rtol=0)
    # The predictor is one jittable kernel: under jax.jit it equals the eager call.
    problem = ContinuationProblem(ScalarFamily(shifted_pitchfork, True), a,
                                  make_options(jnp.float64, None, None, 20, None, None))
    nf = bif.normal_form
    inputs = (bif.state, bif.parameter, bif.right_eigenvector, bif.left_eigenvector,
              nf.b1, nf.b2, nf.b3, bif.tangent, jnp.asarray(True))
    eager = branch_point_predictor(problem, *inputs)
    jitted = jax.jit(lambda *xs: branch_point_predictor(problem, *xs))(*inputs)
    assert eager.result == ds.RESULTS.successful
    np.testing.assert_allclose(jitted.direction, eager.direction, atol=1e-12)
    np.testing.assert_allclose(jitted.curvature, eager.curvature, atol=1e-12)
    # c = −b3/(6 b1) = 1: the predicted branch μ = a0 + u².
    np.testing.assert_allclose(eager.curvature[-1], 1.0, atol=1e-6)


def test_negative_controls():
    # No branch point: μ − x² from the lower state has a fold, which is not switched at, and
    # the diagram is the primary branch alone.
    diagram = bifurcation_diagram(FOLD, jnp.array([-1.0]), 1.0, -1.0)
    assert len(diagram.branches) == 1 and diagram.failed == ()
    assert diagram.primary.status == "left_range" and diagram.result == ds.RESULTS.successful
    (fold,) = diagram.primary.bifurcations
    assert fold.kind == "fold"
    with pytest.raises(ValueError, match="`bifurcation`.*fold"):
        switch_branch(FOLD, fold, -1.0, 1.0)
    hopf = dataclasses.replace(fold, kind="hopf")
    with pytest.raises(ValueError, match="`bifurcation`.*periodic orbits"):
        switch_branch(FOLD, hopf, -1.0, 1.0)

    bif = bifurcation_diagram(PITCHFORK_SUPER, jnp.array([0.0]), -1.0, 1.0, 0).primary
    (bif,) = bif.bifurcations
    with pytest.raises(ValueError, match="`bifurcation`.*tangent"):
        switch_branch(PITCHFORK_SUPER, dataclasses.replace(bif, tangent=None))
    # A degenerate normal form (b1 = 0: no transversal crossing) is a failed switch.
    flat = eqx.tree_at(lambda b: b.normal_form.b1, bif, jnp.zeros(()))
    for branch in switch_branch(PITCHFORK_SUPER, flat, -1.0, 1.0):
        assert branch.result == SWITCH_FAILED
    with pytest.raises(Exception, match="branch|fixed point"):
        jax.block_until_ready(switch_branch(PITCHFORK_SUPER, flat, -1.0, 1.0, throw=True))
    # The old branch mistaken for the new one (a tangent along the new branch): the switch
    # fails rather than returning the old branch.
    wrong = eqx.tree_at(lambda b: b.tangent, bif, jnp.array([1.0, 0.0]))
    for branch in switch_branch(PITCHFORK_SUPER, wrong, -1.0, 1.0):
        assert branch.result == SWITCH_FAILED


def test_float32_smoke():
    diagram = bifurcation_diagram(scalar_ctrnn, jnp.zeros(1, jnp.float32), 0.5, 1.5)
    assert len(diagram.branches) == 3 and diagram.result == ds.RESULTS.successful
    for side, branch in _switched(diagram):
        assert branch.states.dtype == jnp.float32
        x, g = np.asarray(branch.states[:, 0]), np.asarray(branch.parameters)
        exact = np.array([_outer(float(gi)) for gi in g])
        np.testing.assert_allclose(side * x, exact, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------
# With -m slow: a planar family of its own (one more compile), and the whole switch under jit.


class Plane(eqx.Module):
    rotation: Array
    v0: Array
    c: Array

    def __call__(self, x, mu):
        z = self.rotation.T @ (x - mu * self.v0)
        c = self.c
        z1, z2 = z[0], z[1]
        g1 = (
            mu * z1
            + c[0] * z1**2
            + c[1] * z1**3
            + c[2] * z1 * z2
            + c[3] * (mu * jnp.tanh(z1) - z1 - mu * z1)
            + c[4]
        )
        g2 = -z2 + c[5] * z1**2
        return self.rotation @ jnp.stack([g1, g2])


def plane(x, mu, field):
    return field(x, mu)


def _plane(c, angle=0.0, v0=(0.0, 0.0)):
    r = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return Plane(jnp.asarray(r), jnp.asarray(v0), jnp.asarray(c, float))


OFF_AXIS = _plane([0, -1, -1, 0, 0, 1], angle=0.5, v0=(0.3, -0.2))
PLANE_PITCHFORK = _plane([0, -1, 0, 0, 0, 0])
PLANE_TRANSCRITICAL = _plane([-1, 0, 0, 0, 0, 0])


def _z(field, branch):
    x, mu = np.asarray(branch.states), np.asarray(branch.parameters)
    return (x - mu[:, None] * np.asarray(field.v0)) @ np.asarray(field.rotation), mu


@pytest.mark.slow
def test_planar_pitchfork_off_the_axes_moving_branch():
    # The trivial branch x = μ v0 moves and the critical direction R e1 is rotated.
    diagram = bifurcation_diagram(plane, -1.0 * OFF_AXIS.v0, -1.0, 1.0, args=OFF_AXIS)
    (bif,) = diagram.primary.bifurcations
    assert bif.kind == "pitchfork" and abs(float(bif.parameter)) < 1e-8
    assert np.min(np.abs(np.asarray(bif.right_eigenvector))) > 0.4
    for _, branch in _switched(diagram):
        z, mu = _z(OFF_AXIS, branch)
        assert branch.successful and np.all(mu > 0)
        np.testing.assert_allclose(z[:, 0] ** 2, mu / 2, atol=1e-8, rtol=0)
        np.testing.assert_allclose(z[:, 1], mu / 2, atol=1e-8, rtol=0)
    signs = {float(np.sign(_z(OFF_AXIS, b)[0][-1, 0])) for b in diagram.branches[1:]}
    assert signs == {-1.0, 1.0}
    # The same compile: the planar transcritical's exchanged branch z1 = μ.
    diagram = bifurcation_diagram(plane, jnp.zeros(2), -1.0, 1.0, args=PLANE_TRANSCRITICAL)
    for _, branch in _switched(diagram):
        z, mu = _z(PLANE_TRANSCRITICAL, branch)
        np.testing.assert_allclose(z[:, 0], mu, atol=1e-8, rtol=0)


@pytest.mark.slow
def test_switch_branch_under_jit():
    primary = ds.continuation(plane, jnp.zeros(2), -1.0, 1.0, args=PLANE_PITCHFORK)
    (bif,) = primary.bifurcations
    eager = switch_branch(plane, bif, -1.0, 1.0, args=PLANE_PITCHFORK)
    jitted = eqx.filter_jit(switch_branch)(plane, bif, -1.0, 1.0, args=PLANE_PITCHFORK)
    for e, j in zip(eager, jitted, strict=True):
        assert e.result == ds.RESULTS.successful and j.result == ds.RESULTS.successful
        assert int(j.length) == e.num_steps
        np.testing.assert_allclose(j.parameters, e.parameters, atol=1e-10)
        np.testing.assert_allclose(j.states, e.states, atol=1e-10)


@pytest.mark.slow
def test_example_diagram(tmp_path):
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "examples", "bifurcation_diagram.py")
    spec = importlib.util.spec_from_file_location("bifurcation_diagram_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(smoke=True, out=str(tmp_path / "diagram.png"))
    assert os.path.getsize(out) > 0


def three_lines(x, mu):
    """ẋ = x (x − μ)(x − 2μ + 1): the lines x = 0, x = μ, x = 2μ − 1 cross pairwise at
    (μ, x) = (0, 0), (0.5, 0) and (1, 1)."""
    return x * (x - mu) * (x - 2 * mu + 1)


@pytest.mark.slow
def test_diagram_deduplicates_a_secondary_branch_point():
    diagram = bifurcation_diagram(three_lines, jnp.zeros(1), -1.0, 2.0, max_depth=3)
    assert diagram.successful and diagram.failed == ()
    # The primary and the two sides of x = μ and of x = 2μ − 1; at (1, 1) the switch from
    # x = μ retraces x = 2μ − 1 (two duplicates), and the same point seen from x = 2μ − 1 is
    # not switched at again.
    assert len(diagram.branches) == 5 and diagram.num_duplicates == 2
    assert diagram.depths == (0, 1, 1, 1, 1)
    kinds = sorted((round(float(b.parameter), 8), b.kind) for _, b in diagram.bifurcations)
    assert kinds == [(0.0, "transcritical"), (0.5, "transcritical"), (1.0, "transcritical"),
                     (1.0, "transcritical")]
    for branch in diagram.branches[1:]:
        x, mu = np.asarray(branch.states[:, 0]), np.asarray(branch.parameters)
        on_line = np.minimum(np.abs(x - mu), np.abs(x - 2 * mu + 1))
        np.testing.assert_allclose(on_line, 0.0, atol=1e-8)
