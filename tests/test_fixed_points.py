import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import diffrax_sntk as ds

from .helpers import raises_check, small_ctrnn
from .helpers_bifurcation import GainCTRNN, random_w0, scalar_ctrnn

STARTS = jnp.linspace(-3.0, 3.0, 7)[:, None]


class Func(eqx.Module):
    """A neural ODE written the usual diffrax way: the MLP's activation is a jitted function."""

    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return self.mlp(y)


def neural_ode(root):
    """`Func` with the last bias shifted so that `root` is an exact fixed point."""
    func = Func(eqx.nn.MLP(3, 3, 8, 1, activation=jax.nn.softplus, key=jr.PRNGKey(0)))
    shift = func(0.0, root, None)
    return eqx.tree_at(lambda f: f.mlp.layers[-1].bias, func, func.mlp.layers[-1].bias - shift)


ROOT = jnp.array([0.3, -0.2, 0.1])


def test_multistart_dedupe_and_stability():
    fps = ds.find_fixed_points(scalar_ctrnn, jnp.asarray(2.0), STARTS)
    assert bool(jnp.all(fps.converged))
    assert bool(jnp.all(fps.result == ds.RESULTS.successful))
    assert fps.messages() == [""] * STARTS.shape[0]
    unique = fps.deduplicated()
    xs = np.sort(np.asarray(unique.states[:, 0]))
    assert xs.shape == (3,)
    assert xs[1] == pytest.approx(0.0, abs=1e-10)
    assert xs[2] == pytest.approx(-xs[0]) and xs[2] == pytest.approx(2 * np.tanh(xs[2]), abs=1e-10)
    # The origin is unstable (eigenvalue g − 1 = 1), the two symmetric points stable.
    stable = {
        round(float(x), 6): bool(s)
        for x, s in zip(unique.states[:, 0], unique.stable, strict=True)
    }
    assert stable[0.0] is False and sum(stable.values()) == 2
    assert np.all(np.asarray(fps.residuals) < 1e-9)
    rep = np.asarray(fps.representative)
    assert np.allclose(np.asarray(fps.states)[rep], np.asarray(fps.states), atol=1e-8)


def test_spectrum_biorthogonal(getkey):
    w0 = random_w0(getkey(), 5)
    field = GainCTRNN(w0)
    x = jnp.linspace(-0.5, 0.5, 5)
    spec = ds.jacobian_spectrum(field, x, jnp.asarray(1.3))
    A = np.asarray(spec.jacobian)
    assert np.allclose(A, jax.jacfwd(field)(x, 1.3))
    lam, v, w = map(np.asarray, (spec.eigenvalues, spec.right_eigenvectors, spec.left_eigenvectors))
    assert np.all(np.diff(lam.real) <= 1e-12)
    assert np.allclose(A @ v, v * lam, atol=1e-10)
    assert np.allclose(A.T @ w, w * lam, atol=1e-10)
    assert np.allclose(w.T @ v, np.eye(5), atol=1e-10)
    assert np.allclose(np.linalg.norm(v, axis=0), 1.0)


def test_no_root_gives_results_and_slow_point():
    # 1 + x² has no real root; ½‖f‖² has its minimum at x = 0 with speed ‖f‖ = 1.
    fps = ds.find_fixed_points(lambda x, p: p + x**2, 1.0, jnp.array([[0.7], [-1.5]]))
    assert not bool(jnp.any(fps.converged))
    # Why Newton failed is kept (optimistix's code, promoted), not reduced to a boolean.
    newton_failures = (fps.result == ds.RESULTS.nonlinear_max_steps_reached) | (
        fps.result == ds.RESULTS.nonlinear_divergence
    )
    assert bool(jnp.all(newton_failures))
    assert not bool(jnp.any(fps.unique))
    assert bool(jnp.all(fps.slow_point))
    assert np.allclose(np.asarray(fps.states), 0.0, atol=1e-5)
    assert np.allclose(np.asarray(fps.residuals), 1.0, atol=1e-8)
    assert fps.deduplicated().states.shape == (0, 1)


def test_newton_failure_without_slow_points():
    fps = ds.find_fixed_points(lambda x, p: p + x**2, 1.0, jnp.array([[0.7]]), slow_points=False)
    assert not bool(fps.converged[0]) and not bool(fps.slow_point[0])
    assert "nonlinear solve" in fps.messages()[0].lower()


def test_throw():
    field = lambda x, p: p + x**2
    with raises_check("No initial state converged"):
        ds.find_fixed_points(field, 1.0, jnp.array([[0.7]]), slow_points=False, throw=True)
    with raises_check("No initial state converged"):
        jax.jit(
            lambda p: ds.find_fixed_points(field, p, jnp.array([[0.7]]), slow_points=False,
                                           throw=True).states
        )(1.0)
    # One converged start is enough: no error.
    fps = ds.find_fixed_points(scalar_ctrnn, 2.0, STARTS, slow_points=False, throw=True)
    assert bool(jnp.all(fps.converged))


def test_bad_input():
    with pytest.raises(ValueError, match="`vector_field`"):
        ds.find_fixed_points(lambda x, p: jnp.concatenate([x, x]), 1.0, STARTS)
    with pytest.raises(TypeError, match="`vector_field`"):
        ds.find_fixed_points(lambda x, p: (x, x), 1.0, STARTS)
    with pytest.raises(ValueError, match="`initial_states`"):
        ds.find_fixed_points(scalar_ctrnn, 1.0, jnp.zeros(3))
    with raises_check("`initial_states`"):
        ds.find_fixed_points(scalar_ctrnn, 1.0, jnp.array([[jnp.nan]]))
    with raises_check("`params`"):
        ds.find_fixed_points(scalar_ctrnn, jnp.nan, STARTS)
    with pytest.raises(ValueError, match="`x`"):
        ds.jacobian_spectrum(scalar_ctrnn, jnp.zeros((1, 1)), 1.0)
    with raises_check("`x`"):
        ds.jacobian_spectrum(scalar_ctrnn, jnp.array([jnp.inf]), 1.0)


def test_value_checks_fire_under_jit():
    find = jax.jit(lambda p, x0s: ds.find_fixed_points(scalar_ctrnn, p, x0s).states)
    assert find(2.0, STARTS).shape == STARTS.shape
    with raises_check("`params`"):
        find(jnp.nan, STARTS)
    with raises_check("`initial_states`"):
        find(2.0, STARTS.at[3, 0].set(jnp.nan))
    spectrum = jax.jit(lambda x: ds.jacobian_spectrum(scalar_ctrnn, x, 2.0).eigenvalues)
    with raises_check("`x`"):
        spectrum(jnp.array([jnp.nan]))


def test_signature_errors():
    # Two positional arguments select the model form `model(t, x, u)`.
    with pytest.raises(TypeError, match=r"model\(t, x, u\)"):
        ds.find_fixed_points(scalar_ctrnn, STARTS)
    # Three select `vector_field(x, params)`; a model there gets a pointer to the model form.
    with pytest.raises((TypeError, ValueError), match="inputs=u"):
        ds.find_fixed_points(small_ctrnn(), 1.0, jnp.zeros((1, 3)))
    with pytest.raises(TypeError, match="`inputs`"):
        ds.find_fixed_points(scalar_ctrnn, 2.0, STARTS, inputs=jnp.zeros(1))
    with pytest.raises(TypeError, match="`model`"):
        ds.find_fixed_points(3.0, STARTS)


def test_neural_ode_module_as_params():
    # Issue 16: an eqx.Module with a jitted activation as `params` (it used to raise TypeError
    # from `jax.eval_shape`).
    func = neural_ode(ROOT)
    x0s = ROOT + 0.05 * jr.normal(jr.PRNGKey(1), (4, 3))
    fps = ds.find_fixed_points(lambda x, f: f(0.0, x, None), func, x0s)
    assert bool(jnp.all(fps.converged))
    assert np.allclose(np.asarray(fps.states), np.asarray(ROOT), atol=1e-10)
    assert int(jnp.sum(fps.unique)) == 1
    # The model form gives the same result.
    fps2 = ds.find_fixed_points(func, x0s)
    assert np.allclose(np.asarray(fps2.states), np.asarray(fps.states), atol=1e-12)
    assert np.allclose(np.asarray(fps2.spectrum.eigenvalues), np.asarray(fps.spectrum.eigenvalues))
    # Under eqx.filter_jit (the module holds a function, so not plain jax.jit).
    states = eqx.filter_jit(lambda f: ds.find_fixed_points(f, x0s).states)(func)
    assert np.allclose(np.asarray(states), np.asarray(ROOT), atol=1e-10)
    # Spectra, both forms, against jax.jacfwd of the user's function.
    spec = ds.jacobian_spectrum(lambda x, f: f(0.0, x, None), ROOT, func)
    spec2 = ds.jacobian_spectrum(func, ROOT)
    A = jax.jacfwd(lambda y: func(0.0, y, None))(ROOT)
    assert np.allclose(np.asarray(spec.jacobian), np.asarray(A), atol=1e-14)
    assert np.allclose(np.asarray(spec2.jacobian), np.asarray(A), atol=1e-14)
    # A NaN inside the module is caught, naming the model.
    bias = func.mlp.layers[0].bias
    bad = eqx.tree_at(lambda f: f.mlp.layers[0].bias, func, bias.at[0].set(jnp.nan))
    with raises_check("`model`"):
        ds.find_fixed_points(bad, x0s)
    with raises_check("`params`"):
        ds.find_fixed_points(lambda x, f: f(0.0, x, None), bad, x0s)


def test_model_form_with_inputs():
    model = small_ctrnn()
    u = jnp.array([0.3, -0.5])
    x0s = jnp.zeros((2, 3)).at[1].set(0.5)
    fps = ds.find_fixed_points(model, x0s, inputs=u)
    ref = ds.find_fixed_points(lambda x, m: m(0.0, x, u), model, x0s)
    assert bool(jnp.all(fps.converged))
    assert np.allclose(np.asarray(fps.states), np.asarray(ref.states), atol=1e-12)
    assert np.allclose(np.asarray(model(0.0, fps.states[0], u)), 0.0, atol=1e-10)
    # `initial_states` by keyword is the model form too.
    fps_kw = ds.find_fixed_points(model, initial_states=x0s, inputs=u)
    assert np.allclose(np.asarray(fps_kw.states), np.asarray(fps.states))
    with raises_check("`inputs`"):
        ds.find_fixed_points(model, x0s, inputs=jnp.array([jnp.nan, 0.0]))


def test_jit_and_vmap_over_params():
    # vmap over the gain under one jit: one distinct fixed point below g = 1, three above.
    def count(g):
        return jnp.sum(ds.find_fixed_points(scalar_ctrnn, g, STARTS, slow_points=False).unique)

    assert jax.jit(jax.vmap(count))(jnp.array([0.5, 2.0])).tolist() == [1, 3]
    fps = jax.vmap(lambda g: ds.find_fixed_points(scalar_ctrnn, g, STARTS, slow_points=False))(
        jnp.array([0.5, 2.0])
    )
    assert fps.result._value.shape == (2, STARTS.shape[0])
    assert bool(jnp.all(fps.converged))


def test_vmap_over_models():
    # vmap over a batch of models in the model form.
    model = small_ctrnn()
    scaled = lambda s: eqx.tree_at(lambda m: m.b, model, s * model.b)
    models = jax.vmap(scaled)(jnp.array([0.5, 2.0]))
    u = jnp.array([0.3, -0.5])
    x0s = jnp.zeros((1, 3))
    find = lambda m: ds.find_fixed_points(m, x0s, inputs=u, slow_points=False).states[0]
    xs = eqx.filter_vmap(find)(models)
    for k, s in enumerate((0.5, 2.0)):
        assert np.allclose(np.asarray(xs[k]), np.asarray(find(scaled(s))), atol=1e-12)


def test_float32():
    fps = ds.find_fixed_points(
        scalar_ctrnn, jnp.float32(2.0), STARTS.astype(jnp.float32), slow_points=False
    )
    assert fps.states.dtype == jnp.float32
    assert bool(jnp.all(fps.converged))
    assert int(jnp.sum(fps.unique)) == 3
    assert np.all(np.isfinite(np.asarray(fps.spectrum.eigenvalues)))
    # A Python float parameter keeps the state's dtype.
    fps = ds.find_fixed_points(scalar_ctrnn, 2.0, STARTS.astype(jnp.float32), slow_points=False)
    assert fps.states.dtype == jnp.float32
