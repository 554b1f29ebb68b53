"""Fixed-point analysis of a model under constant inputs (`analyse_fixed_points`), its views,
and the flip-flop example in smoke mode."""

import importlib.util
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

from diffrax_sntk import analyse_fixed_points, sample_states

from .helpers import raises_check

matplotlib.use("Agg")

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


class Units(eqx.Module):
    """A user's own model: two uncoupled units ẋ = −x + g·tanh(x) + u (g = 2: a pitchfork's
    three equilibria per unit, 0 and ±x*, x* = 2 tanh x*)."""

    g: jax.Array

    def __call__(self, t, x, u):
        return -x + self.g * jnp.tanh(x) + u


class Ghost(eqx.Module):
    """ẋ₀ = x₀² + c, ẋ₁ = −x₁: no equilibrium for c > 0; the slow point (0, 0) has q = c²/2."""

    c: jax.Array

    def __call__(self, t, x, u):
        return jnp.stack([x[0] ** 2 + self.c, -x[1]])


X_STAR = 1.9150080481545251  # the root of x = 2 tanh x
STARTS = jnp.array(
    [[-3.0, -3.0], [-2.9, -3.1], [0.2, 0.1], [0.1, -0.2], [3.0, 3.0], [3.0, -3.0], [2.5, 2.9]]
)


@pytest.fixture(scope="module")
def units_analysis():
    return analyse_fixed_points(Units(jnp.asarray(2.0)), STARTS, inputs=jnp.zeros(2))


def test_dedupe_stability_and_modes(units_analysis):
    an = units_analysis
    assert bool(jnp.all(an.converged)) and an.messages() == [""] * 7
    kept = an.kept_points()
    # Starts 0/1 coincide, 2/3 coincide (the origin), 4/6 coincide: four distinct points.
    assert int(an.num_kept) == 4
    got = sorted(map(tuple, np.round(np.asarray(kept.states) / X_STAR, 8).tolist()))
    assert got == [(-1.0, -1.0), (0.0, 0.0), (1.0, -1.0), (1.0, 1.0)]
    rep = np.asarray(an.representative)
    assert rep[0] == rep[1] and rep[2] == rep[3] and rep[4] == rep[6]
    np.testing.assert_allclose(np.asarray(an.states)[rep], np.asarray(an.states), atol=1e-10)
    # Jacobian at a point: diag(−1 + g(1 − tanh²x)); the origin has the double eigenvalue 1.
    origin = int(np.argmin(np.abs(np.asarray(kept.states)).sum(axis=1)))
    np.testing.assert_allclose(np.asarray(kept.jacobians[origin]), np.eye(2), atol=1e-12)
    np.testing.assert_allclose(np.asarray(kept.eigenvalues[origin]).real, [1.0, 1.0], atol=1e-12)
    lam = -1 + 2 * (1 - np.tanh(X_STAR) ** 2)
    other = [i for i in range(4) if i != origin]
    np.testing.assert_allclose(np.asarray(kept.eigenvalues)[other].real, lam, atol=1e-10)
    assert np.asarray(kept.stable).tolist() == [i != origin for i in range(4)]
    assert int(an.num_stable) == 3 and int(an.num_saddles) == 0  # the origin is a repeller
    modes = kept.unstable_modes(origin)
    assert modes.shape == (2, 2)
    np.testing.assert_allclose(modes.T @ modes, np.eye(2), atol=1e-12)  # spans R²
    assert kept.unstable_modes(other[0]).shape == (2, 0)
    np.testing.assert_allclose(np.asarray(an.q), 0.0, atol=1e-20)


def test_inputs_per_start_saddle_and_outlier():
    # One unit with input u, the other autonomous with a far away equilibrium at x = 40 reached
    # from one start only (an outlier when the scale is small).
    class Far(eqx.Module):
        g: jax.Array

        def __call__(self, t, x, u):
            return jnp.stack([-x[0] + self.g * jnp.tanh(x[0]) + u[0], -(x[1] - 40.0) * x[1]])

    model = Far(jnp.asarray(2.0))
    x0s = jnp.array([[0.1, 0.3], [0.1, 0.3], [2.0, 0.2], [2.0, 35.0]])
    us = jnp.array([[0.0], [0.5], [0.0], [0.0]])
    an = analyse_fixed_points(model, x0s, inputs=us, outlier_distance_scale=None)
    assert an.inputs.shape == (4, 1) and bool(jnp.all(an.converged))
    # Same start, different inputs: two different points, both kept.
    assert bool(an.kept[0] & an.kept[1])
    f = lambda x, u: -x + 2 * np.tanh(x) + u
    assert abs(f(float(an.states[1, 0]), 0.5)) < 1e-10
    # Start 2 reaches (x*, 0): a saddle (eigenvalues λ* < 0 and +40).
    assert bool(an.saddle[2]) and int(an.num_unstable[2]) == 1
    mode = an.unstable_modes(2)
    np.testing.assert_allclose(np.abs(mode[:, 0]), [0.0, 1.0], atol=1e-12)
    assert float(an.states[3, 1]) == pytest.approx(40.0)
    assert not bool(an.outlier.any())
    an2 = analyse_fixed_points(model, x0s, inputs=us, outlier_distance_scale=2.0)
    assert np.asarray(an2.outlier).tolist() == [False, False, False, True]
    assert not bool(an2.kept[3])


def test_slow_point_with_known_q_and_negative_control():
    c = 0.1
    model = Ghost(jnp.asarray(c))
    x0s = jnp.array([[0.5, 0.3], [-0.4, 0.2], [0.3, -0.5]])
    # Every start finds the same slow point (0, 0) with q = c²/2; none is a fixed point.
    an = analyse_fixed_points(model, x0s, q_threshold=1e-2)
    assert not bool(an.converged.any()) and bool(an.slow_point.all())
    np.testing.assert_allclose(np.asarray(an.q), c**2 / 2, rtol=1e-8)
    np.testing.assert_allclose(np.asarray(an.states), 0.0, atol=1e-5)
    assert int(an.num_kept) == 1 and all(m != "" for m in an.messages())
    # Negative control: a threshold below c²/2 keeps nothing, and `throw` says so.
    none = analyse_fixed_points(model, x0s, q_threshold=1e-3)
    assert int(none.num_kept) == 0
    with raises_check("No initial state converged"):
        analyse_fixed_points(model, x0s, q_threshold=1e-3, throw=True)


def test_float32():
    # float32 smoke: the same points at float32 accuracy.
    an32 = analyse_fixed_points(Units(jnp.asarray(2.0, jnp.float32)), STARTS.astype(jnp.float32),
                                inputs=jnp.zeros(2, jnp.float32))
    assert an32.states.dtype == jnp.float32 and int(an32.num_kept) == 4
    assert int(an32.num_stable) == 3
    np.testing.assert_allclose(np.abs(np.asarray(an32.kept_points().states)).max(), X_STAR,
                               rtol=1e-5)


@pytest.mark.slow  # two more compiles of the whole analysis (outer jit, vmap)
def test_jit_vmap(units_analysis):
    model = Units(jnp.asarray(2.0))
    jitted = eqx.filter_jit(lambda m, x: analyse_fixed_points(m, x, inputs=jnp.zeros(2)))
    an = jitted(model, STARTS)
    np.testing.assert_array_equal(np.asarray(an.kept), np.asarray(units_analysis.kept))
    np.testing.assert_allclose(np.asarray(an.states), np.asarray(units_analysis.states))
    # vmap over shared inputs: the fixed point moves with u (x = 2 tanh x + u).
    us = jnp.array([[0.0, 0.0], [0.3, -0.3]])
    xs = jax.vmap(lambda u: analyse_fixed_points(model, STARTS, inputs=u).states)(us)
    res = -xs + 2 * jnp.tanh(xs) + us[:, None, :]
    assert float(jnp.max(jnp.abs(res))) < 1e-10


def test_bad_arguments():
    model = Units(jnp.asarray(2.0))
    with pytest.raises(ValueError, match="`initial_states`"):
        analyse_fixed_points(model, jnp.zeros(2))
    with pytest.raises(ValueError, match="`inputs` per start"):
        analyse_fixed_points(model, STARTS, inputs=jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="`q_threshold`"):
        analyse_fixed_points(model, STARTS, inputs=jnp.zeros(2), q_threshold=-1.0)
    with raises_check("non-finite"):
        analyse_fixed_points(model, STARTS.at[0, 0].set(jnp.nan), inputs=jnp.zeros(2))


def test_sample_states(getkey):
    ys = jnp.arange(24.0).reshape(2, 4, 3)
    s = sample_states(ys, 5, key=getkey())
    assert s.shape == (5, 3)
    rows = {tuple(r) for r in np.asarray(ys).reshape(-1, 3).tolist()}
    assert all(tuple(r) in rows for r in np.asarray(s).tolist())
    noisy = sample_states(ys, 5, key=getkey(), noise_scale=0.1)
    assert not any(tuple(r) in rows for r in np.asarray(noisy).tolist())
    with pytest.raises(ValueError, match="`num_samples`"):
        sample_states(ys, 0, key=getkey())


def test_views(units_analysis, tmp_path):
    import matplotlib.pyplot as plt

    from diffrax_sntk.plotting import pca_projection, plot_eigenvalues, plot_fixed_points

    ts = np.linspace(0, 1, 20)
    ys = np.stack([np.outer(1 - ts, s) + np.outer(ts, [X_STAR, X_STAR]) for s in STARTS])
    mean, comps = pca_projection(ys, 2)
    np.testing.assert_allclose(comps @ comps.T, np.eye(2), atol=1e-12)
    ax = plot_fixed_points(units_analysis, ys)
    # Trajectories, two unstable-mode segments of the origin, then the point markers.
    assert len(ax.lines) == len(STARTS) + 2
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["stable (3)", "unstable (1)"]
    ax2 = plot_eigenvalues(units_analysis)
    assert len(ax2.collections) == 2
    ax.figure.savefig(tmp_path / "fp.png")
    assert os.path.getsize(tmp_path / "fp.png") > 0
    plt.close("all")
    with pytest.raises(ValueError, match="state size"):
        plot_fixed_points(units_analysis, ys[..., :1])


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # the smoke run compiles training, solves, the sNTK and the tracking
def test_flip_flop_example(tmp_path):
    out = _load("flip_flop").main(smoke=True, out=str(tmp_path))
    assert all(os.path.getsize(p) > 0 for p in out["figures"])
    assert out["num_stable"] >= 1
    assert out["stats"].effective_rank.shape == (3,)
