"""Branch switching and automatic bifurcation diagrams against exact branches.

Every float64 test uses one planar family (an `eqx.Module` with array coefficients passed as
`args`), so they share one compiled continuation:

    ż = R g(z),  z = Rᵀ(x − μ v0),
    g1 = μ z1 + c0 z1² + c1 z1³ + c2 z1 z2 + c3 (μ tanh z1 − z1 − μ z1) + c4,
    g2 = −z2 + c5 z1².

With R = I, v0 = 0 it is ẋ = μx − x³ (pitchfork), ẋ = μx − x² (transcritical), the CTRNN unit
ẋ = −x + g tanh x, or the imperfect μx − x³ + h, each beside a decoupled stable ż2 = −z2; with a
rotation R and a moving v0 it is a pitchfork off the coordinate axes whose branches are
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
from diffrax_sntk._branch_switching import SWITCH_FAILED, switch_branch
from diffrax_sntk._diagram import BifurcationDiagram, bifurcation_diagram


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


def _plane(c, angle=0.0, v0=(0.0, 0.0), dtype=jnp.float64):
    r = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return Plane(jnp.asarray(r, dtype), jnp.asarray(v0, dtype), jnp.asarray(c, dtype))


PITCHFORK = _plane([0, -1, 0, 0, 0, 0])
TRANSCRITICAL = _plane([-1, 0, 0, 0, 0, 0])
CTRNN_UNIT = _plane([0, 0, 0, 1, 0, 0])
IMPERFECT = _plane([0, -1, 0, 0, 0.05, 0])
OFF_AXIS = _plane([0, -1, -1, 0, 0, 1], angle=0.5, v0=(0.3, -0.2))


def _diagram(field, x0, p0, p1, **kw) -> BifurcationDiagram:
    return bifurcation_diagram(plane, jnp.asarray(x0, jnp.float64), p0, p1, args=field, **kw)


def _z(field, branch):
    """The states in the family's own coordinates z = Rᵀ(x − μ v0)."""
    x, mu = np.asarray(branch.states), np.asarray(branch.parameters)
    return (x - mu[:, None] * np.asarray(field.v0)) @ np.asarray(field.rotation), mu


def _switched(diagram):
    assert diagram.parents[1:] == (0, 0) and diagram.depths == (0, 1, 1)
    assert sorted(diagram.sides[1:]) == [-1, 1]
    return diagram.branches[1:]


def test_pitchfork_both_sides():
    diagram = _diagram(PITCHFORK, [0.0, 0.0], -1.0, 1.0)
    assert diagram.successful and diagram.failed == () and diagram.num_duplicates == 0
    assert len(diagram.branches) == 3
    (bif,) = diagram.primary.bifurcations
    assert bif.kind == "pitchfork" and abs(float(bif.parameter)) < 1e-8
    for side, branch in zip(diagram.sides[1:], _switched(diagram)):
        assert branch.successful and branch.num_steps > 5
        z, mu = _z(PITCHFORK, branch)
        # x = ±√μ along the whole switched branch, on the side it was started.
        np.testing.assert_allclose(z[:, 0], side * np.sqrt(mu), atol=1e-8, rtol=0)
        np.testing.assert_allclose(z[:, 1], 0.0, atol=1e-12)
        assert mu[0] > 0 and mu[-1] == pytest.approx(1.0)
        assert bool(np.all(branch.stable))  # supercritical: the new branches are stable
        assert branch.bifurcations == ()


def test_transcritical_exchange():
    diagram = _diagram(TRANSCRITICAL, [0.0, 0.0], -1.0, 1.0)
    assert diagram.successful and len(diagram.branches) == 3
    (bif,) = diagram.primary.bifurcations
    assert bif.kind == "transcritical" and abs(float(bif.parameter)) < 1e-8
    ends = []
    for branch in _switched(diagram):
        z, mu = _z(TRANSCRITICAL, branch)
        np.testing.assert_allclose(z[:, 0], mu, atol=1e-8, rtol=0)  # the branch x = μ
        # Exchange of stability: x = μ is stable for μ > 0, unstable for μ < 0.
        np.testing.assert_array_equal(np.asarray(branch.stable), mu > 0)
        ends.append(float(mu[-1]))
    assert sorted(ends) == pytest.approx([-1.0, 1.0])


def test_pitchfork_off_the_axes():
    diagram = _diagram(OFF_AXIS, -1.0 * OFF_AXIS.v0, -1.0, 1.0)
    assert diagram.successful and len(diagram.branches) == 3
    (bif,) = diagram.primary.bifurcations
    assert bif.kind == "pitchfork" and abs(float(bif.parameter)) < 1e-8
    # The critical direction is R e1: not a coordinate axis.
    q = np.asarray(bif.right_eigenvector)
    assert np.min(np.abs(q)) > 0.4
    for branch in _switched(diagram):
        z, mu = _z(OFF_AXIS, branch)
        assert branch.successful and np.all(mu > 0)
        np.testing.assert_allclose(z[:, 0] ** 2, mu / 2, atol=1e-8, rtol=0)
        np.testing.assert_allclose(z[:, 1], mu / 2, atol=1e-8, rtol=0)
    # The two sides are the two signs of z1.
    signs = {float(np.sign(_z(OFF_AXIS, b)[0][-1, 0])) for b in diagram.branches[1:]}
    assert signs == {-1.0, 1.0}


def test_ctrnn_unit_diagram():
    diagram = _diagram(CTRNN_UNIT, [0.0, 0.0], 0.2, 3.0)
    assert diagram.successful and len(diagram.branches) == 3
    (bif,) = diagram.primary.bifurcations
    assert bif.kind == "pitchfork" and abs(float(bif.parameter) - 1.0) < 1e-8
    for side, branch in zip(diagram.sides[1:], _switched(diagram)):
        z, g = _z(CTRNN_UNIT, branch)
        # The outer fixed point x*(g) > 0 of x = g tanh x, solved independently.
        exact = np.array([brentq(lambda x, g=gi: g * np.tanh(x) - x, 1e-3, 10.0) for gi in g])
        np.testing.assert_allclose(side * z[:, 0], exact, atol=1e-8, rtol=0)
        assert g[-1] == pytest.approx(3.0) and bool(np.all(branch.stable))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffrax_sntk.plotting import plot_bifurcation_diagram

    ax = plot_bifurcation_diagram(diagram, xlabel="g")
    # Primary: stable + unstable segments; two switched branches; one marker; a legend.
    assert len(ax.lines) >= 5 and ax.get_legend() is not None
    plt.close(ax.figure)


def test_switch_branch_directly_and_under_jit():
    primary = ds.continuation(plane, jnp.zeros(2), -1.0, 1.0, args=PITCHFORK)
    (bif,) = primary.bifurcations
    eager = switch_branch(plane, bif, -1.0, 1.0, args=PITCHFORK)
    jitted = eqx.filter_jit(switch_branch)(plane, bif, -1.0, 1.0, args=PITCHFORK)
    for e, j in zip(eager, jitted):
        assert e.result == ds.RESULTS.successful and j.result == ds.RESULTS.successful
        assert int(j.length) == e.num_steps
        np.testing.assert_allclose(j.parameters, e.parameters, atol=1e-10)
        np.testing.assert_allclose(j.states, e.states, atol=1e-10)


def test_negative_controls():
    # A system without a branch point: the diagram is the primary branch alone. The branch
    # from the lower state passes the fold of μx − x³ + h, which is not switched at.
    diagram = _diagram(IMPERFECT, [-1.2, 0.0], 1.0, -1.0)
    assert diagram.successful and len(diagram.branches) == 1 and diagram.failed == ()
    (fold,) = diagram.primary.bifurcations
    assert fold.kind == "fold"
    assert abs(float(fold.parameter) - 3 * 0.025 ** (2 / 3)) < 1e-8
    with pytest.raises(ValueError, match="`bifurcation`.*fold"):
        switch_branch(plane, fold, -1.0, 1.0, args=IMPERFECT)
    hopf = dataclasses.replace(fold, kind="hopf")
    with pytest.raises(ValueError, match="`bifurcation`.*periodic orbits"):
        switch_branch(plane, hopf, -1.0, 1.0, args=IMPERFECT)

    primary = ds.continuation(plane, jnp.zeros(2), -1.0, 1.0, args=PITCHFORK)
    (bif,) = primary.bifurcations
    with pytest.raises(ValueError, match="`bifurcation`.*tangent"):
        switch_branch(plane, dataclasses.replace(bif, tangent=None), args=PITCHFORK)
    # A degenerate normal form (b1 = 0: no transversal crossing) is a failed switch.
    flat = eqx.tree_at(lambda b: b.normal_form.b1, bif, jnp.zeros(()))
    for branch in switch_branch(plane, flat, -1.0, 1.0, args=PITCHFORK):
        assert branch.result == SWITCH_FAILED
    # The old branch mistaken for the new one (the tangent along the new branch): the switch
    # must fail rather than return the old branch.
    vertical = jnp.concatenate([bif.right_eigenvector, jnp.zeros(1)])
    wrong = eqx.tree_at(lambda b: b.tangent, bif, vertical)
    for branch in switch_branch(plane, wrong, -1.0, 1.0, args=PITCHFORK):
        assert branch.result == SWITCH_FAILED
    with pytest.raises(Exception, match="branch|fixed point"):
        jax.block_until_ready(switch_branch(plane, flat, -1.0, 1.0, args=PITCHFORK, throw=True))


def test_float32_two_argument_form():
    field = _plane([0, -1, 0, 0, 0, 0], dtype=jnp.float32)
    diagram = bifurcation_diagram(field, jnp.zeros(2, jnp.float32), -1.0, 1.0)
    assert diagram.successful and len(diagram.branches) == 3
    for side, branch in zip(diagram.sides[1:], diagram.branches[1:]):
        assert branch.states.dtype == jnp.float32
        z, mu = np.asarray(branch.states), np.asarray(branch.parameters)
        np.testing.assert_allclose(z[:, 0], side * np.sqrt(mu), atol=1e-3, rtol=0)
