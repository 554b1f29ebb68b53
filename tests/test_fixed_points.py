import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffrax_sntk as ds

from .helpers_bifurcation import GainCTRNN, random_w0, scalar_ctrnn

STARTS = jnp.linspace(-3.0, 3.0, 7)[:, None]


def test_multistart_dedupe_and_stability():
    fps = ds.find_fixed_points(scalar_ctrnn, jnp.asarray(2.0), STARTS)
    assert bool(jnp.all(fps.converged))
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


def test_no_root_gives_flags_and_slow_point():
    # 1 + x² has no real root; ½‖f‖² has its minimum at x = 0 with speed ‖f‖ = 1.
    fps = ds.find_fixed_points(lambda x, p: p + x**2, 1.0, jnp.array([[0.7], [-1.5]]))
    assert not bool(jnp.any(fps.converged))
    assert not bool(jnp.any(fps.unique))
    assert bool(jnp.all(fps.slow_point))
    assert np.allclose(np.asarray(fps.states), 0.0, atol=1e-5)
    assert np.allclose(np.asarray(fps.residuals), 1.0, atol=1e-8)
    assert fps.deduplicated().states.shape == (0, 1)


def test_newton_failure_without_slow_points():
    fps = ds.find_fixed_points(lambda x, p: p + x**2, 1.0, jnp.array([[0.7]]), slow_points=False)
    assert not bool(fps.converged[0]) and not bool(fps.slow_point[0])


def test_bad_input():
    with pytest.raises(ValueError, match="`vector_field`"):
        ds.find_fixed_points(lambda x, p: jnp.concatenate([x, x]), 1.0, STARTS)
    with pytest.raises(TypeError, match="`vector_field`"):
        ds.find_fixed_points(lambda x, p: (x, x), 1.0, STARTS)
    with pytest.raises(ValueError, match="`initial_states`"):
        ds.find_fixed_points(scalar_ctrnn, 1.0, jnp.zeros(3))
    with pytest.raises(ValueError, match="`initial_states`"):
        ds.find_fixed_points(scalar_ctrnn, 1.0, jnp.array([[jnp.nan]]))
    with pytest.raises(ValueError, match="`params`"):
        ds.find_fixed_points(scalar_ctrnn, jnp.nan, STARTS)
    with pytest.raises(ValueError, match="`x`"):
        ds.jacobian_spectrum(scalar_ctrnn, jnp.zeros((1, 1)), 1.0)


def test_jit_and_vmap_over_params():
    # vmap over the gain under one jit: one distinct fixed point below g = 1, three above.
    @eqx.filter_jit
    def count(gains):
        find = lambda g: ds.find_fixed_points(scalar_ctrnn, g, STARTS, slow_points=False)
        return jax.vmap(lambda g: jnp.sum(find(g).unique))(gains)

    assert count(jnp.array([0.5, 2.0])).tolist() == [1, 3]


def test_float32():
    fps = ds.find_fixed_points(
        scalar_ctrnn, jnp.float32(2.0), STARTS.astype(jnp.float32), slow_points=False
    )
    assert fps.states.dtype == jnp.float32
    assert bool(jnp.all(fps.converged))
    assert int(jnp.sum(fps.unique)) == 3
    assert np.all(np.isfinite(np.asarray(fps.spectrum.eigenvalues)))
