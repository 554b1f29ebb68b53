import jax.numpy as jnp
import numpy as np
import pytest

import diffrax_sntk as ds

from .helpers_bifurcation import (
    FOLD,
    PITCHFORK_SUB,
    PITCHFORK_SUPER,
    TRANSCRITICAL,
    Poly1D,
    StuartLandau,
)


def _only(branch, kind):
    assert len(branch.bifurcations) == 1, branch.bifurcations
    bif = branch.bifurcations[0]
    assert bif.kind == kind
    assert bif.located
    return bif


def test_fold_normal_form():
    # μ − x²: start on the unstable lower branch x = −1 at μ = 1 and sweep μ down to −1; the branch
    # turns at the fold (0, 0) and leaves the range through μ = 1 on the stable upper branch.
    branch = ds.continuation(FOLD, jnp.array([-1.0]), 1.0, -1.0)
    assert branch.status == "left_range"
    assert not branch.successful
    bif = _only(branch, "fold")
    assert abs(float(bif.parameter)) < 1e-6
    assert abs(float(bif.state[0])) < 1e-4
    nf = bif.normal_form
    assert isinstance(nf, ds.FoldNormalForm)
    # q = p = 1: a = pᵀf_μ = 1, a_f = ½ pᵀB(q, q) = −1 exactly.
    assert float(nf.a) == pytest.approx(1.0, abs=1e-8)
    assert float(nf.a_f) == pytest.approx(-1.0, abs=1e-8)
    assert "a_f" in bif.convention
    assert float(bif.right_eigenvector @ bif.left_eigenvector) == pytest.approx(1.0)
    # From the unstable lower branch to the stable upper one: stability gained.
    assert bif.direction == -1
    assert np.all(np.asarray(branch.parameters) <= 1.0 + 1e-12)


def test_transcritical_normal_form():
    branch = ds.continuation(TRANSCRITICAL, jnp.array([0.0]), -1.0, 1.0)
    assert branch.successful
    bif = _only(branch, "transcritical")
    assert abs(float(bif.parameter)) < 1e-6
    nf = bif.normal_form
    assert isinstance(nf, ds.BranchPointNormalForm)
    assert float(nf.a) == pytest.approx(0.0, abs=1e-12)
    assert float(nf.b1) == pytest.approx(1.0, abs=1e-8)
    assert float(nf.b2) == pytest.approx(-2.0, abs=1e-8)
    assert nf.criticality is None
    assert bif.direction == 1


@pytest.mark.parametrize(
    "field, b3, criticality",
    [(PITCHFORK_SUPER, -6.0, "supercritical"), (PITCHFORK_SUB, 6.0, "subcritical")],
)
def test_pitchfork_normal_form(field, b3, criticality):
    branch = ds.continuation(field, jnp.array([0.0]), -1.0, 1.0)
    bif = _only(branch, "pitchfork")
    assert abs(float(bif.parameter)) < 1e-6
    nf = bif.normal_form
    assert float(nf.b1) == pytest.approx(1.0, abs=1e-8)
    assert float(nf.b2) == pytest.approx(0.0, abs=1e-12)
    assert float(nf.b3) == pytest.approx(b3, abs=1e-8)
    assert bif.criticality == criticality
    # Stable for μ < 0, unstable after.
    assert bool(branch.stable[0]) and not bool(branch.stable[-1])


@pytest.mark.parametrize("sigma, l1", [(-1.0, -2.0), (1.0, 2.0)])
def test_stuart_landau_hopf(sigma, l1):
    branch = ds.continuation(StuartLandau(jnp.array(sigma)), jnp.zeros(2), -1.0, 1.0)
    bif = _only(branch, "hopf")
    assert abs(float(bif.parameter)) < 1e-6
    nf = bif.normal_form
    assert isinstance(nf, ds.HopfNormalForm)
    # Exact in the MatCont convention (‖q‖ = 1, <p, q> = 1): ω = 1, l1 = ∓2.
    assert float(nf.omega) == pytest.approx(1.0, abs=1e-10)
    assert float(nf.l1) == pytest.approx(l1, abs=1e-10)
    assert float(nf.transversality) == pytest.approx(1.0, abs=1e-8)
    assert bif.criticality == ("supercritical" if l1 < 0 else "subcritical")
    assert "MatCont" in bif.convention
    lam = np.asarray(bif.eigenvalues)
    assert lam.shape == (2,) and lam[0].imag == pytest.approx(1.0) and lam[1] == np.conj(lam[0])
    v, w = np.asarray(bif.right_eigenvector), np.asarray(bif.left_eigenvector)
    assert np.linalg.norm(v) == pytest.approx(1.0)
    assert w @ v == pytest.approx(1.0)
    assert bif.direction == 1


def test_direct_api_matches_continuation():
    sl = StuartLandau(jnp.array(-1.0))
    assert float(ds.lyapunov_coefficient(sl, jnp.zeros(2), 0.0)) == pytest.approx(-2.0, abs=1e-10)
    nf = ds.normal_form_coefficients(sl, jnp.zeros(2), 0.0)
    assert isinstance(nf, ds.HopfNormalForm)
    nf = ds.normal_form_coefficients(PITCHFORK_SUPER, jnp.zeros(1), 0.0)
    assert isinstance(nf, ds.BranchPointNormalForm) and nf.criticality == "supercritical"
    nf = ds.normal_form_coefficients(FOLD, jnp.zeros(1), 0.0)
    assert isinstance(nf, ds.FoldNormalForm)
    assert float(nf.a_f) == pytest.approx(-1.0)


def test_pytree_params_with_direction():
    # The same pitchfork with μ inside a dict, unfolded along a direction in parameter space.
    def field(x, p):
        return p["mu"] * x + p["c"] * x**3

    params = {"mu": jnp.array(0.0), "c": jnp.array(-1.0)}
    direction = {"mu": jnp.array(2.0), "c": jnp.array(0.0)}
    nf = ds.normal_form_coefficients(
        field, jnp.zeros(1), params, kind="branch_point", parameter_direction=direction
    )
    assert float(nf.b1) == pytest.approx(2.0)
    assert float(nf.b3) == pytest.approx(-6.0)
    # Without a direction the parameter-dependent coefficients are not available (zero).
    nf = ds.normal_form_coefficients(field, jnp.zeros(1), params, kind="branch_point")
    assert float(nf.b1) == 0.0 and float(nf.b3) == pytest.approx(-6.0)


def test_coefficient_invariance_under_scaling():
    # Rescaling time by 3 scales every coefficient by 3 (the normalisation fixes q, p only).
    nf = ds.normal_form_coefficients(Poly1D(jnp.array([0.0, 3.0, 0.0, -3.0])), jnp.zeros(1), 0.0)
    assert float(nf.b1) == pytest.approx(3.0) and float(nf.b3) == pytest.approx(-18.0)


def test_bad_kind():
    with pytest.raises(ValueError, match="`kind`"):
        ds.normal_form_coefficients(FOLD, jnp.zeros(1), 0.0, kind="cusp")
    with pytest.raises(ValueError, match="`x`"):
        ds.normal_form_coefficients(FOLD, jnp.zeros((1, 1)), 0.0)


def test_float32_stuart_landau():
    field = StuartLandau(jnp.array(-1.0, jnp.float32))
    branch = ds.continuation(field, jnp.zeros(2, jnp.float32), -1.0, 1.0)
    assert branch.states.dtype == jnp.float32
    bif = _only(branch, "hopf")
    assert abs(float(bif.parameter)) < 1e-4
    assert float(bif.normal_form.l1) == pytest.approx(-2.0, abs=1e-3)
    assert np.isfinite(float(bif.normal_form.omega))
