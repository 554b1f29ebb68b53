import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

import diffrax_sntk as ds

from .helpers import raises_check
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


def test_bad_input():
    with pytest.raises(ValueError, match="`kind`"):
        ds.normal_form_coefficients(FOLD, jnp.zeros(1), 0.0, kind="cusp")
    with pytest.raises(ValueError, match="`x`"):
        ds.normal_form_coefficients(FOLD, jnp.zeros((1, 1)), 0.0)
    with pytest.raises(ValueError, match="`vector_field`"):
        ds.normal_form_coefficients(lambda x, p: jnp.concatenate([x, x]), jnp.zeros(1), 0.0)
    with raises_check("`params`"):
        ds.normal_form_coefficients(FOLD, jnp.zeros(1), jnp.nan)
    with raises_check("`x`"):
        ds.normal_form_coefficients(FOLD, jnp.array([jnp.inf]), 0.0)


def test_float32_stuart_landau():
    field = StuartLandau(jnp.array(-1.0, jnp.float32))
    branch = ds.continuation(field, jnp.zeros(2, jnp.float32), -1.0, 1.0)
    assert branch.states.dtype == jnp.float32
    bif = _only(branch, "hopf")
    assert abs(float(bif.parameter)) < 1e-4
    assert float(bif.normal_form.l1) == pytest.approx(-2.0, abs=1e-3)
    assert np.isfinite(float(bif.normal_form.omega))


# ------------------------------------------------------------------------------------------------
# Results, throw, jit/vmap, and models as eqx.Modules holding functions.


class Func(eqx.Module):
    """A neural ODE written the usual diffrax way: the MLP's activation is a jitted function."""

    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return self.mlp(y)


def pitchfork_mlp():
    # f(y) = 2 tanh(y) − tanh(2y): f'(0) = 0, f''(0) = 0, f'''(0) = 2·(−2) − 8·(−2) = 12, so the
    # origin is a pitchfork with b3 = 12 (q = p = 1). Moving the first output weight by δ adds
    # δ·tanh(y): b1 = 1.
    mlp = eqx.nn.MLP(1, 1, 2, 1, activation=jax.jit(jnp.tanh), key=jax.random.PRNGKey(0))
    mlp = eqx.tree_at(lambda m: m.layers[0].weight, mlp, jnp.array([[1.0], [2.0]]))
    mlp = eqx.tree_at(lambda m: m.layers[0].bias, mlp, jnp.zeros(2))
    mlp = eqx.tree_at(lambda m: m.layers[1].weight, mlp, jnp.array([[2.0, -1.0]]))
    mlp = eqx.tree_at(lambda m: m.layers[1].bias, mlp, jnp.zeros(1))
    return Func(mlp)


def test_neural_ode_module_as_params():
    func = pitchfork_mlp()
    x = jnp.zeros(1)
    as_field = lambda y, f: f(0.0, y, None)
    direction = jtu.tree_map(jnp.zeros_like, eqx.filter(func, eqx.is_array))
    direction = eqx.tree_at(lambda f: f.mlp.layers[1].weight, direction, jnp.array([[1.0, 0.0]]))
    for nf in (
        ds.normal_form_coefficients(as_field, x, func, parameter_direction=direction),
        ds.normal_form_coefficients(func, x, parameter_direction=direction),
    ):
        assert isinstance(nf, ds.BranchPointNormalForm)
        assert nf.result == ds.RESULTS.successful
        assert bool(nf.symmetric) and nf.criticality == "subcritical"
        assert float(nf.b1) == pytest.approx(1.0, abs=1e-12)
        assert float(nf.b3) == pytest.approx(12.0, abs=1e-10)
    # Without a direction the model form still gives the state-only coefficients.
    assert float(ds.normal_form_coefficients(func, x).b3) == pytest.approx(12.0, abs=1e-10)
    with pytest.raises(ValueError, match="`parameter_direction`"):
        ds.normal_form_coefficients(func, x, parameter_direction={"w": jnp.ones(1)})


def test_neural_ode_hopf():
    # ẏ = W (tanh(y + c) − tanh(c)): the Jacobian W·diag(sech² c) has zero trace and positive
    # determinant for this W, so the origin is a Hopf point (a rotation W would give a centre,
    # l1 = 0). The module form, the model form and a plain function agree.
    c = jnp.array([0.3, -0.2])
    d = 1 - jnp.tanh(c) ** 2
    w = jnp.array([[0.5 / d[0], -2.0], [1.0, -0.5 / d[1]]])
    mlp = eqx.nn.MLP(2, 2, 2, 1, activation=jax.jit(jnp.tanh), key=jax.random.PRNGKey(0))
    mlp = eqx.tree_at(lambda m: m.layers[0].weight, mlp, jnp.eye(2))
    mlp = eqx.tree_at(lambda m: m.layers[0].bias, mlp, c)
    mlp = eqx.tree_at(lambda m: m.layers[1].weight, mlp, w)
    mlp = eqx.tree_at(lambda m: m.layers[1].bias, mlp, -w @ jnp.tanh(c))
    func = Func(mlp)
    x = jnp.zeros(2)
    ref = ds.lyapunov_coefficient(lambda y, p: w @ (jnp.tanh(y + c) - jnp.tanh(c)), x, 0.0)
    assert np.isfinite(float(ref)) and abs(float(ref)) > 1e-2
    l1 = ds.lyapunov_coefficient(lambda y, f: f(0.0, y, None), x, func)
    assert float(l1) == pytest.approx(float(ref), abs=1e-12)
    nf = ds.normal_form_coefficients(func, x, kind="hopf")
    assert float(nf.l1) == pytest.approx(float(ref), abs=1e-12)
    omega = float(jnp.sqrt(jnp.linalg.det(w * d[None, :])))
    assert float(nf.omega) == pytest.approx(omega, abs=1e-12)


def test_not_a_bifurcation_result():
    # The fold μ − x² has a real critical eigenvalue only: as a Hopf point it is reported, not
    # raised, unless asked.
    nf = ds.normal_form_coefficients(FOLD, jnp.zeros(1), 0.0, kind="hopf")
    assert nf.result == ds.RESULTS.not_a_bifurcation
    assert nf.criticality is None
    with raises_check("not a bifurcation"):
        ds.normal_form_coefficients(FOLD, jnp.zeros(1), 0.0, kind="hopf", throw=True)
    with raises_check("not a bifurcation"):
        ds.lyapunov_coefficient(FOLD, jnp.zeros(1), 0.0)
    assert np.isnan(float(ds.lyapunov_coefficient(FOLD, jnp.zeros(1), 0.0, throw=False)))
    # ... and the same under jit.
    hopf = jax.jit(lambda mu: ds.normal_form_coefficients(FOLD, jnp.zeros(1), mu, kind="hopf"))
    assert hopf(0.0).result == ds.RESULTS.not_a_bifurcation


def test_singular_solve_result():
    # ẋ = x² (elementwise, N = 2): A = 0 has a double zero eigenvalue, so the bordered system
    # of the branch-point coefficients is singular. The solve's result is kept.
    field = lambda x, p: x**2 + p
    nf = ds.normal_form_coefficients(field, jnp.zeros(2), 0.0, kind="fold")
    assert nf.result != ds.RESULTS.successful
    with raises_check("singular|non-finite"):
        ds.normal_form_coefficients(field, jnp.zeros(2), 0.0, kind="fold", throw=True)
    # The tuple-returning kernel kept for old callers turns the failure into NaN, not garbage.
    from diffrax_sntk._normal_forms import make_family, zero_eigenvalue_coefficients

    family, args = make_family(field, jnp.zeros(()), jnp.ones(()))
    q = jnp.array([1.0, 0.0])
    coeffs = zero_eigenvalue_coefficients(family, args, jnp.zeros(2), jnp.zeros(()), q, q)
    assert all(bool(jnp.isnan(c)) for c in coeffs)


def test_jit_and_vmap():
    # One compiled program for both pitchforks, vmapped over the cubic coefficient.
    def b3(c3):
        field = Poly1D(jnp.stack([0.0, 1.0, 0.0, c3]))
        nf = ds.normal_form_coefficients(field, jnp.zeros(1), 0.0, kind="branch_point")
        return nf.b3, nf.symmetric, nf.result == ds.RESULTS.successful

    b3s, sym, ok = jax.jit(jax.vmap(b3))(jnp.array([-1.0, 1.0]))
    assert np.allclose(np.asarray(b3s), [-6.0, 6.0])
    assert bool(jnp.all(sym)) and bool(jnp.all(ok))
    # vmap over `params` (a dict): b3 = 6c, b1 = 2 along the direction.
    field = lambda x, p: p["mu"] * x + p["c"] * x**3
    direction = {"mu": jnp.array(2.0), "c": jnp.array(0.0)}
    coeffs = jax.vmap(
        lambda c: ds.normal_form_coefficients(
            field, jnp.zeros(1), {"mu": jnp.array(0.0), "c": c}, kind="branch_point",
            parameter_direction=direction,
        )
    )(jnp.array([-1.0, 0.5]))
    assert np.allclose(np.asarray(coeffs.b3), [-6.0, 3.0])
    assert np.allclose(np.asarray(coeffs.b1), 2.0)
    # vmap over the Stuart–Landau parameter: l1 = 2σ.
    sl = lambda sigma: ds.normal_form_coefficients(
        StuartLandau(sigma), jnp.zeros(2), 0.0, kind="hopf"
    ).l1
    assert np.allclose(np.asarray(jax.vmap(sl)(jnp.array([-1.0, 1.0]))), [-2.0, 2.0])
    # The kind cannot be inferred from traced values: a clear error.
    with pytest.raises(TypeError, match="`kind=`"):
        jax.jit(lambda mu: ds.normal_form_coefficients(FOLD, jnp.zeros(1), mu).a)(0.0)
    with raises_check("`x`"):
        jax.jit(lambda x: ds.normal_form_coefficients(FOLD, x, 0.0, kind="fold").a)(
            jnp.array([jnp.nan])
        )


def test_float32_direct():
    nf = ds.normal_form_coefficients(
        StuartLandau(jnp.array(-1.0, jnp.float32)), jnp.zeros(2, jnp.float32), 0.0
    )
    assert isinstance(nf, ds.HopfNormalForm) and nf.result == ds.RESULTS.successful
    assert nf.l1.dtype == jnp.float32
    assert float(nf.l1) == pytest.approx(-2.0, abs=1e-4)
