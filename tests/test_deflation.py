"""Deflated Newton in `find_fixed_points(..., deflation=...)`: every root from ONE start (a cubic,
a rotated 2-D system with 9 equilibria), a one-root negative control, jit and vmap, the model
form, float32, option checks."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffrax_sntk as ds
from diffrax_sntk._deflation import deflation_factor

Deflation = ds.Deflation

THETA = 0.4
ROT = jnp.array([[np.cos(THETA), -np.sin(THETA)], [np.sin(THETA), np.cos(THETA)]])


def cubic(x, p):
    """p (x³ − x): roots −1, 0, 1 (p ≠ 0)."""
    return p * (x**3 - x)


def rotated(x, p):
    """ż = z − p z³ in rotated coordinates x = R z: with p = 1 the 9 equilibria R·{−1, 0, 1}²,
    coupled in x; with p = 0 the linear field x, whose only equilibrium is the origin."""
    z = ROT.T @ x
    return ROT @ (z - p * z**3)


NINE = np.array([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)], float) @ np.asarray(ROT).T


def _match(found, expected):
    """Largest distance from each expected root to the nearest found one, and vice versa."""
    d = np.max(np.abs(found[:, None, :] - expected[None, :, :]), axis=-1)
    return max(d.min(axis=0).max(), d.min(axis=1).max())


@pytest.mark.slow  # float64 twin of the float32 test below (which runs by default)
def test_cubic_all_roots_from_one_start():
    fps = ds.find_fixed_points(cubic, 1.0, jnp.array([[0.3]]), deflation=5)
    ok = np.asarray(fps.converged)
    assert ok.sum() == 3 and ok[:3].all()  # three roots, filed first; two empty slots
    assert np.all(np.isnan(np.asarray(fps.states)[3:]))
    assert all(m != "" for m in fps.messages()[3:])
    roots = np.sort(np.asarray(fps.states)[ok, 0])
    np.testing.assert_allclose(roots, [-1.0, 0.0, 1.0], atol=1e-12)
    # Spectra as usual: f'(±1) = 2 (unstable), f'(0) = −1 (stable).
    assert np.asarray(fps.stable)[ok].sum() == 1
    assert np.all(np.asarray(fps.unique)[ok])


def test_nine_equilibria_and_one_root_control_under_jit_vmap():
    run = eqx.filter_jit(
        jax.vmap(
            lambda p: ds.find_fixed_points(
                rotated,
                p,
                jnp.array([[0.3, 0.2]]),
                deflation=Deflation(max_roots=12),
                spectra=False,
            )
        )
    )
    fps = run(jnp.array([1.0, 0.0]))
    ok = np.asarray(fps.converged)
    states = np.asarray(fps.states)
    # p = 1: all 9 equilibria from one start, to 1e-10, each once.
    assert ok[0].sum() == 9
    assert _match(states[0][ok[0]], NINE) < 1e-10
    assert np.asarray(fps.unique)[0].sum() == 9
    # p = 0 (negative control): exactly one root, the origin; no spurious roots.
    assert ok[1].sum() == 1
    np.testing.assert_allclose(states[1][ok[1]], [[0.0, 0.0]], atol=1e-12)
    assert np.all(np.asarray(fps.residuals)[ok] < 1e-10)


@pytest.mark.slow
def test_model_form_and_multistart_misses_saddles():
    # The model form `model(t, x, u)` with a constant input; the rotated system as a model.
    model = lambda t, x, u: rotated(x, u)
    fps = ds.find_fixed_points(model, jnp.array([[0.3, 0.2]]), inputs=1.0, deflation=12)
    assert int(fps.num_converged) == 9
    # Plain multi-start Newton from the same start finds only one of them.
    plain = ds.find_fixed_points(model, jnp.array([[0.3, 0.2]]), inputs=1.0)
    assert int(plain.num_converged) == 1


def test_cubic_float32_and_options():
    # The cubic from one start, in float32: its three roots, filed first, then empty slots.
    fps = ds.find_fixed_points(cubic, 1.0, jnp.array([[0.3]], jnp.float32), deflation=5)
    assert fps.states.dtype == jnp.float32
    ok = np.asarray(fps.converged)
    assert ok.tolist() == [True, True, True, False, False]
    assert np.all(np.isnan(np.asarray(fps.states)[3:])) and fps.messages()[3] != ""
    roots = np.sort(np.asarray(fps.states)[ok, 0])
    np.testing.assert_allclose(roots, [-1.0, 0.0, 1.0], atol=1e-5)
    assert np.asarray(fps.stable)[ok].sum() == 1  # f'(0) = −1; f'(±1) = 2
    with pytest.raises(TypeError, match="`deflation`"):
        ds.find_fixed_points(cubic, 1.0, jnp.array([[0.3]]), deflation="yes")
    with pytest.raises(ValueError, match="`deflation.power`"):
        ds.find_fixed_points(cubic, 1.0, jnp.array([[0.3]]), deflation=Deflation(power=0.5))
    with pytest.raises(ValueError, match="`deflation.max_roots`"):
        ds.find_fixed_points(cubic, 1.0, jnp.array([[0.3]]), deflation=0)
    # The deflation operator: M = Π (‖x − r‖^(−p) + σ) over the active roots only.
    m = deflation_factor(
        jnp.array([2.0]), jnp.array([[0.0], [1.0]]), jnp.array([True, False]), 2.0, 1.0
    )
    assert float(m) == pytest.approx(1.25)


@pytest.mark.slow
def test_start_on_a_root():
    # A start exactly on a root: the next deflated solve starts slightly off it.
    fps = ds.find_fixed_points(cubic, 1.0, jnp.array([[0.0]]), deflation=4)
    roots = np.sort(np.asarray(fps.states)[np.asarray(fps.converged), 0])
    np.testing.assert_allclose(roots, [-1.0, 0.0, 1.0], atol=1e-12)


class TwoUnits(eqx.Module):
    """A model `model(t, x, u)` whose activation is a (non-static) function leaf."""

    w: jax.Array
    activation: Callable = jnp.tanh

    def __call__(self, t, x, u):
        return -x + self.w @ self.activation(x)


@pytest.mark.slow
def test_module_with_function_leaf_under_filter_vmap():
    # Two uncoupled units ẋ = −x + g tanh x: for g = 2 the 9 equilibria {−r, 0, r}², r = 2 tanh r
    # (saddles included); for g = 0.5 only the origin.
    models = TwoUnits(w=jnp.stack([2.0 * jnp.eye(2), 0.5 * jnp.eye(2)]))
    run = eqx.filter_jit(
        eqx.filter_vmap(
            lambda m: ds.find_fixed_points(m, jnp.array([[0.3, 0.2]]), deflation=12, spectra=False)
        )
    )
    fps = run(models)
    ok = np.asarray(fps.converged)
    assert ok.sum(axis=1).tolist() == [9, 1]
    r = 1.9150080481545
    expected = np.array([[i * r, j * r] for i in (-1, 0, 1) for j in (-1, 0, 1)])
    assert _match(np.asarray(fps.states)[0][ok[0]], expected) < 1e-10
