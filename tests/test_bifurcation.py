import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import diffrax_sntk as ds

from .helpers import raises_check
from .helpers_bifurcation import (
    FOLD,
    GainCTRNN,
    RotationCTRNN,
    gain_model,
    random_w0,
    scalar_ctrnn,
)


def test_ctrnn_pitchfork_at_unit_gain():
    branch = ds.continuation(scalar_ctrnn, jnp.zeros(1), 0.5, 1.5)
    assert branch.successful and branch.status == "completed"
    assert float(branch.parameters[-1]) == pytest.approx(1.5)
    (bif,) = branch.bifurcations
    assert bif.kind == "pitchfork"
    assert abs(float(bif.parameter) - 1.0) < 1e-8
    # tanh(x) = x − x³/3: b1 = 1, b3 = −2 at g = 1, supercritical; stability lost.
    assert float(bif.normal_form.b1) == pytest.approx(1.0, abs=1e-8)
    assert float(bif.normal_form.b3) == pytest.approx(-2.0, abs=1e-6)
    assert bif.criticality == "supercritical" and bif.direction == 1

    import matplotlib

    matplotlib.use("Agg")
    from diffrax_sntk.plotting import plot_bifurcation_diagram

    ax = plot_bifurcation_diagram(branch, xlabel="g")
    assert ax.get_xlabel() == "g" and len(ax.lines) >= 3  # stable, unstable, marker
    import matplotlib.pyplot as plt

    plt.close(ax.figure)


@pytest.mark.slow
def test_example_smoke(tmp_path):
    import runpy
    import sys

    argv = sys.argv
    sys.argv = ["bifurcation_diagram.py", "--smoke", "--out", str(tmp_path / "fig.png")]
    try:
        runpy.run_path("examples/bifurcation_diagram.py", run_name="__main__")
    finally:
        sys.argv = argv
    assert (tmp_path / "fig.png").exists()


def test_rotation_ctrnn_hopf():
    b = 2.0
    branch = ds.continuation(RotationCTRNN(jnp.array(b)), jnp.zeros(2), 0.5, 1.5)
    (bif,) = branch.bifurcations
    assert bif.kind == "hopf"
    assert abs(float(bif.parameter) - 1.0) < 1e-8
    assert float(bif.normal_form.omega) == pytest.approx(b, abs=1e-8)
    # MatCont convention: c1 = −(1 + i b)/2, so l1 = −1/2.
    assert float(bif.normal_form.l1) == pytest.approx(-0.5, abs=1e-8)
    assert bif.criticality == "supercritical"


def _first_bifurcation(n, key):
    w0 = random_w0(key, n)
    lam = np.linalg.eigvals(np.asarray(w0))
    lead = lam[np.argmax(lam.real)]
    g_star = 1 / lead.real
    branch = ds.continuation(GainCTRNN(w0), jnp.zeros(n), 0.5 * g_star, 1.2 * g_star)
    assert branch.bifurcations, branch.status
    bif = branch.bifurcations[0]
    assert abs(float(bif.parameter) - g_star) < 1e-6 * max(1.0, g_star)
    expected = "hopf" if abs(lead.imag) > 1e-8 else "pitchfork"
    assert bif.kind == expected
    if expected == "hopf":
        assert float(bif.normal_form.omega) == pytest.approx(g_star * abs(lead.imag), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_random_ctrnn_first_bifurcation(seed):
    _first_bifurcation(6, jr.PRNGKey(seed))


@pytest.mark.slow
def test_random_ctrnn_first_bifurcation_n200():
    _first_bifurcation(200, jr.PRNGKey(0))


def test_branch_status_flags():
    # Newton cannot converge: 1 + x² + μ² has no root.
    branch = ds.continuation(lambda x, mu: 1 + x**2 + mu**2, jnp.zeros(1), 0.0, 1.0)
    assert branch.status == "initial_point_not_converged" and not branch.successful
    assert branch.bifurcations == ()
    assert branch.result == ds.RESULTS.no_fixed_point and branch.num_steps == 1
    # Steps too short to reach p1 within max_steps (same compilation as the pitchfork test).
    branch = ds.continuation(
        scalar_ctrnn, jnp.zeros(1), 0.5, 1.5, step_size=1e-4, max_step_size=1e-4
    )
    assert branch.status == "max_steps" and not branch.successful
    assert branch.result == ds.RESULTS.continuation_max_steps


def test_bad_input():
    with raises_check("`p0`"):
        ds.continuation(scalar_ctrnn, jnp.zeros(1), 1.0, 1.0)
    with raises_check("`p1`"):
        ds.continuation(scalar_ctrnn, jnp.zeros(1), 0.0, jnp.nan)
    with pytest.raises(ValueError, match="`x0`"):
        ds.continuation(scalar_ctrnn, jnp.zeros((1, 1)), 0.0, 1.0)
    with pytest.raises(ValueError, match="`vector_field`"):
        ds.continuation(lambda x, mu: jnp.zeros(3), jnp.zeros(1), 0.0, 1.0)


def test_float32_continuation():
    branch = ds.continuation(scalar_ctrnn, jnp.zeros(1, jnp.float32), 0.5, 1.5)
    assert branch.states.dtype == jnp.float32
    (bif,) = branch.bifurcations
    assert bif.kind == "pitchfork"
    assert abs(float(bif.parameter) - 1.0) < 1e-4


# --- tracking along training checkpoints ------------------------------------------------------


def _trained_gains(num=15, g0=0.5, target=1.5, lr=0.05):
    # Gradient descent on (g − target)²: g ← g − lr·2(g − target).
    gs = [g0]
    for _ in range(num - 1):
        gs.append(gs[-1] - lr * 2 * (gs[-1] - target))
    return np.asarray(gs)


def _expected_index(gs, g_c=1.0):
    k = int(np.searchsorted(gs, g_c)) - 1
    return k + (g_c - gs[k]) / (gs[k + 1] - gs[k])


def test_tracking_trained_gain_pitchfork():
    gs = _trained_gains()
    seq = {"g": jnp.asarray(gs), "d": jnp.tile(jnp.array([1.0, 0.5]), (len(gs), 1))}
    starts = jnp.array([[0.1, -0.1], [0.0, 0.0]])
    track = ds.track_bifurcations(gain_model, seq, starts)
    assert track.status == "completed" and track.num_branches == 1
    assert bool(jnp.all(track.converged)) and bool(jnp.all(track.alive))
    (bif,) = track.bifurcations
    assert bif.kind == "pitchfork" and bif.branch == 0
    expected = _expected_index(gs)
    assert int(expected) == 6
    assert abs(float(bif.parameter) - expected) < 1e-6
    assert bif.criticality == "supercritical" and bif.direction == 1
    # Matched eigenvalue trajectories are continuous: the first is g·1 − 1, the second g/2 − 1.
    ev = np.asarray(track.eigenvalues[:, 0]).real
    assert np.allclose(np.sort(ev, axis=-1)[:, ::-1], np.stack([gs - 1, gs / 2 - 1], -1))
    assert np.allclose(ev[:, 0], gs - 1)

    # A list of checkpoint pytrees gives the same answer.
    seq_list = [{"g": jnp.asarray(g), "d": jnp.array([1.0, 0.5])} for g in gs]
    track2 = ds.track_bifurcations(gain_model, seq_list, starts)
    assert abs(float(track2.bifurcations[0].parameter) - expected) < 1e-6


def test_tracking_fold_loses_branch():
    # μ_k = 1 − 0.3k: the stable equilibrium x = √μ of μ − x² meets its saddle between k = 3, 4.
    mus = 1.0 - 0.3 * jnp.arange(6.0)
    track = ds.track_bifurcations(lambda x, mu: FOLD(x, mu), mus, jnp.array([[1.0]]))
    (bif,) = track.bifurcations
    assert bif.kind == "fold"
    assert abs(float(bif.parameter) - (3 + 1 / 3)) < 1e-6
    alive = np.asarray(track.alive[:, 0])
    assert alive[:4].all() and not alive[4:].any()
    assert not bool(track.converged[4, 0])


def _jumping_field(x, p):
    # x₀: equilibria at c and c ± 2 (the middle one stable, λ = −4); x₁: pitchfork at μ = 0.
    c, mu = p
    y = x[0] - c
    return jnp.stack([y**3 - 4 * y, mu * x[1] - x[1] ** 3])


def test_tracking_survives_a_newton_jump():
    # Between checkpoints 0 and 1 the followed equilibrium x₀ = c moves by 1.5; Newton
    # warm-started from x₀ = 0 lands on the unstable neighbour c − 2 = −0.5 (a spurious
    # eigenvalue sign change, a step within `jump_tol`). The segment continuation follows the
    # branch to c = 1.5 and tracking goes on from there, so the pitchfork at μ = 0 (fractional
    # index 2.5) is still found. Before the fix the branch was marked lost at checkpoint 1.
    cs = jnp.array([0.0, 1.5, 1.6, 1.7, 1.8, 1.9])
    mus = jnp.array([-1.0, -0.6, -0.2, 0.2, 0.6, 1.0])
    track = ds.track_bifurcations(_jumping_field, (cs, mus), jnp.zeros((1, 2)))
    assert bool(jnp.all(track.alive)) and bool(jnp.all(track.converged))
    assert np.allclose(np.asarray(track.states[:, 0, 0]), np.asarray(cs))
    (bif,) = track.bifurcations
    assert bif.kind == "pitchfork" and abs(float(bif.parameter) - 2.5) < 1e-6
    ev = np.asarray(track.eigenvalues[:, 0]).real
    assert np.allclose(ev[:, 1], -4.0) and np.allclose(ev[:, 0], np.asarray(mus))
    # Control: without the segment continuations the jump is not corrected.
    plain = ds.track_bifurcations(
        _jumping_field, (cs, mus), jnp.zeros((1, 2)), detect_bifurcations=False
    )
    assert float(plain.states[1, 0, 0]) == pytest.approx(-0.5)


def test_tracking_s_shaped_segment_in_path_order():
    # ẋ = μ + x − x³ from the lower sheet, μ: −1 → 1 in one segment: the branch meets the fold
    # at μ = 2/(3√3) (s = 0.692, where the followed equilibrium dies) before the one at
    # μ = −2/(3√3) (s = 0.308), and the scan goes on from the upper sheet.
    track = ds.track_bifurcations(
        lambda x, mu: mu + x - x**3, jnp.array([-1.0, 1.0, 1.2]), jnp.array([[-1.3]])
    )
    assert [b.kind for b in track.bifurcations] == ["fold", "fold"]
    mu_f = 2 / (3 * np.sqrt(3))
    params = [float(b.parameter) for b in track.bifurcations]
    assert np.allclose(params, [(1 + mu_f) / 2, (1 - mu_f) / 2], atol=1e-8)
    assert bool(jnp.all(track.alive)) and float(track.states[1, 0, 0]) > 1.3


def test_tracking_hopf():
    # The Hopf point a = 1 sits exactly on checkpoint 2: reported once.
    aa = jnp.linspace(0.6, 1.4, 5)
    field = RotationCTRNN(jnp.array(2.0))
    track = ds.track_bifurcations(field, aa, jnp.zeros((1, 2)))
    (bif,) = track.bifurcations
    assert bif.kind == "hopf"
    assert abs(float(bif.parameter) - 2.0) < 1e-6
    assert float(bif.normal_form.omega) == pytest.approx(2.0)


def test_tracking_bad_input_and_flags():
    with pytest.raises(ValueError, match="`params_sequence`"):
        bad = {"g": jnp.ones(3), "d": jnp.ones((2, 2))}
        ds.track_bifurcations(gain_model, bad, jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match="`params_sequence`"):
        ds.track_bifurcations(scalar_ctrnn, [jnp.asarray(1.0)], jnp.zeros((1, 1)))
    with raises_check("`params_sequence`"):
        ds.track_bifurcations(scalar_ctrnn, jnp.array([1.0, jnp.nan]), jnp.zeros((1, 1)))
    with pytest.raises(ValueError, match="`initial_states`"):
        ds.track_bifurcations(scalar_ctrnn, jnp.array([1.0, 2.0]), jnp.zeros(1))
    track = ds.track_bifurcations(lambda x, p: p + x**2, jnp.array([1.0, 2.0]), jnp.zeros((1, 1)))
    assert track.status == "no_fixed_points" and track.num_branches == 0
