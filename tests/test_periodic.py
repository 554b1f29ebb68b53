"""Periodic orbits: shooting, Floquet multipliers, Hopf switching, continuation of cycles with
LPC/PD/NS detection, and tracking along checkpoints — against analytic values.

Default suite: Stuart–Landau (eager, and jit+vmap with a negative control in the batch) and the
dense `jax.jacfwd` check of the multipliers. Everything that compiles a continuation or a
second field runs with `-m slow`.
"""

import importlib.util
import os

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffrax_sntk as ds
from diffrax_sntk import (
    RESULTS,
    PeriodicOrbit,
    continue_periodic_orbit,
    find_periodic_orbit,
    hopf_cycle_predictor,
    periodic_orbit_from_hopf,
    periodic_orbit_trajectory,
    track_periodic_orbits,
)

# ---------------------------------------------------------------------------------------------
# Fields with known cycles.


def stuart_landau(x, p):
    """ż = (μ + iω) z − |z|² z: the cycle r = √μ, T = 2π/ω, multiplier exp(−2μT)."""
    mu, omega = p
    r2 = x[0] ** 2 + x[1] ** 2
    return jnp.stack([mu * x[0] - omega * x[1] - r2 * x[0], omega * x[0] + mu * x[1] - r2 * x[1]])


def bautin(x, mu):
    """ṙ = μr + r³ − r⁵, θ̇ = 1: cycles r² = (1 ± √(1 + 4μ))/2 meeting at the LPC μ = −1/4."""
    r2 = x[0] ** 2 + x[1] ** 2
    g = mu + r2 - r2**2
    return jnp.stack([g * x[0] - x[1], x[0] + g * x[1]])


def brusselator(x, b, a=1.0):
    """Hopf at b* = 1 + a², ω = a."""
    return jnp.stack([a - (b + 1) * x[0] + x[0] ** 2 * x[1], b * x[0] - x[0] ** 2 * x[1]])


def _transverse(x, matrix_fn, twist):
    # Cylindrical coordinates (ρ, θ, z) with θ̇ = 1; the transverse vector ξ = (ρ − 1, z) obeys
    # ξ̇ = B(θ) ξ + (twist/2) J ξ, linear, so the circle ρ = 1, z = 0 is a cycle of period 2π
    # whose nontrivial multipliers are those of the transverse flow over one turn.
    rho = jnp.sqrt(x[0] ** 2 + x[1] ** 2)
    c, s = x[0] / rho, x[1] / rho
    xi = jnp.stack([rho - 1, x[2]])
    J = jnp.array([[0.0, -1.0], [1.0, 0.0]])
    dxi = matrix_fn(c, s) @ xi + 0.5 * twist * (J @ xi)
    return jnp.stack([dxi[0] * c - x[1], dxi[0] * s + x[0], dxi[1]])


def mobius(x, mu):
    """A half-twisted (Möbius) transverse bundle: in the frame rotating by θ/2 the transverse
    flow is diag(μ, −1), so the multipliers are 1, −e^{2πμ}, −e^{−2π}: period doubling at
    μ = 0 exactly."""

    def B(c, s):
        a, b = mu, -1.0
        return (a + b) / 2 * jnp.eye(2) + (a - b) / 2 * jnp.array([[c, s], [s, -c]])

    return _transverse(x, B, 1.0)


def focus_twist(x, mu):
    """No twist, a focus transversally: multipliers 1, e^{2π(μ ± 0.7i)}: Neimark–Sacker at μ = 0."""
    return _transverse(x, lambda c, s: jnp.array([[mu, -0.7], [0.7, mu]]), 0.0)


SL_PARAMS = (jnp.asarray(1.0), jnp.asarray(1.0))
SL_GUESS = jnp.array([1.2, 0.1])


def _sl_checks(orbit, mu, omega, tol=1e-8):
    T = 2 * np.pi / omega
    assert orbit.result == RESULTS.successful
    assert abs(float(jnp.linalg.norm(orbit.state)) - np.sqrt(mu)) < tol
    assert abs(float(orbit.period) - T) < tol
    nontrivial = np.delete(np.asarray(orbit.multipliers), int(orbit.trivial_index))
    assert abs(nontrivial[0] - np.exp(-2 * mu * T)) < tol
    assert abs(orbit.multipliers[orbit.trivial_index] - 1) < tol
    assert bool(orbit.stable) and int(orbit.num_unstable) == 0


# ---------------------------------------------------------------------------------------------
# Default suite.


def test_stuart_landau_orbit():
    orbit = find_periodic_orbit(stuart_landau, SL_PARAMS, SL_GUESS, 6.0)
    _sl_checks(orbit, 1.0, 1.0)
    assert float(orbit.residual) < 1e-10
    # Multipliers sorted by decreasing modulus; Floquet exponents log μ / T.
    assert abs(orbit.multipliers[0]) >= abs(orbit.multipliers[1])
    assert abs(complex(orbit.floquet_exponents[1]) + 2.0) < 1e-8


def _flow_physical(x0, T, params):
    # An independent flow map: physical time, another solver, its own tolerances.
    sol = dfx.diffeqsolve(
        dfx.ODETerm(lambda t, x, p: stuart_landau(x, p)),
        dfx.Dopri8(),
        0.0,
        T,
        None,
        x0,
        params,
        stepsize_controller=dfx.PIDController(rtol=1e-12, atol=1e-14),
        adjoint=dfx.ForwardMode(),
        max_steps=10_000,
    )
    return sol.ys[-1]


def test_multipliers_match_dense_jacfwd():
    params = (jnp.asarray(0.5), jnp.asarray(2.0))
    orbit = find_periodic_orbit(stuart_landau, params, jnp.array([0.8, 0.1]), 3.0)
    dense = jax.jit(jax.jacfwd(_flow_physical))(orbit.state, orbit.period, params)
    assert np.max(np.abs(np.asarray(dense - orbit.monodromy))) < 1e-8
    ev = np.sort_complex(np.linalg.eigvals(np.asarray(dense)))
    assert np.max(np.abs(ev - np.sort_complex(np.asarray(orbit.multipliers)))) < 1e-8
    _sl_checks(orbit, 0.5, 2.0)


def test_negative_control_at_stable_focus():
    # μ < 0: a stable focus and no cycle. The shooting must report failure (here the period
    # collapses to 0 or Newton diverges), never a cycle. Same compiled program as above.
    params = (jnp.asarray(-0.5), jnp.asarray(1.0))
    orbit = find_periodic_orbit(stuart_landau, params, jnp.array([0.3, 0.1]), 6.0)
    assert orbit.result != RESULTS.successful and not bool(orbit.stable)


@pytest.mark.slow
def test_jit_vmap_with_negative_control():
    # A batch over μ: two cycles, and μ < 0 (a stable focus, no cycle), which must fail.
    mus = jnp.array([1.0, 0.25, -0.5])

    @eqx.filter_jit
    def batch(mus):
        def one(mu):
            guess = jnp.stack([1.1 * jnp.sqrt(jnp.abs(mu)), jnp.asarray(0.1)])
            return find_periodic_orbit(stuart_landau, (mu, jnp.asarray(1.0)), guess, 6.0)

        return jax.vmap(one)(mus)

    orbits = batch(mus)
    assert isinstance(orbits, PeriodicOrbit)
    ok = np.asarray(orbits.converged)
    assert ok.tolist() == [True, True, False]
    for i, mu in enumerate([1.0, 0.25]):
        _sl_checks(jax.tree_util.tree_map(lambda a, i=i: a[i], orbits), mu, 1.0)
    assert not bool(orbits.stable[2])


def test_input_errors():
    with pytest.raises(ValueError, match="`initial_state`"):
        find_periodic_orbit(stuart_landau, SL_PARAMS, jnp.ones(1), 6.0)
    with pytest.raises(ValueError, match="`period`"):
        find_periodic_orbit(stuart_landau, SL_PARAMS, SL_GUESS, jnp.ones(2))
    with pytest.raises(TypeError, match="model"):
        find_periodic_orbit(stuart_landau, SL_GUESS, 6.0)  # model form with a 2-arg callable


# ---------------------------------------------------------------------------------------------
# Slow: more fields, continuation, tracking, float32, the example.


@pytest.mark.slow
def test_model_form_and_negative_control_at_focus():
    class SL(eqx.Module):
        mu: jax.Array
        omega: jax.Array

        def __call__(self, t, x, u):
            return stuart_landau(x, (self.mu + u, self.omega))

    model = SL(jnp.asarray(0.5), jnp.asarray(1.0))
    orbit = find_periodic_orbit(model, SL_GUESS, 6.0, inputs=jnp.asarray(0.5))
    _sl_checks(orbit, 1.0, 1.0)
    # A start at a stable focus (μ = −0.5): no cycle → a non-success code, with throw= raising.
    bad = find_periodic_orbit(model, jnp.array([0.05, 0.0]), 6.0, inputs=jnp.asarray(-1.0))
    assert bad.result != RESULTS.successful and not bool(bad.stable)
    with pytest.raises(eqx.EquinoxRuntimeError):
        find_periodic_orbit(
            model, jnp.array([0.05, 0.0]), 6.0, inputs=jnp.asarray(-1.0), throw=True
        )


@pytest.mark.slow
def test_float32_smoke():
    params = (jnp.asarray(1.0, jnp.float32), jnp.asarray(1.0, jnp.float32))
    orbit = find_periodic_orbit(stuart_landau, params, SL_GUESS.astype(jnp.float32), 6.0)
    assert orbit.state.dtype == jnp.float32
    _sl_checks(orbit, 1.0, 1.0, tol=1e-4)


@pytest.mark.slow
def test_bautin_lpc():
    mu0 = -0.1
    r0 = np.sqrt((1 + np.sqrt(1 + 4 * mu0)) / 2)
    branch = continue_periodic_orbit(bautin, jnp.array([r0, 0.0]), 2 * np.pi, mu0, -0.3)
    assert branch.result == RESULTS.successful
    (lpc,) = branch.bifurcations
    assert lpc.kind == "LPC" and lpc.result == RESULTS.successful
    assert abs(float(lpc.parameter) + 0.25) < 1e-8
    assert abs(float(jnp.linalg.norm(lpc.state)) ** 2 - 0.5) < 1e-6
    # Both cycles along the branch: r² on the analytic branches; the big one stable, the small
    # one unstable; the nontrivial multiplier exp(T (μ + 3r² − 5r⁴)·2r²/r²)... checked via r.
    mus, r2 = np.asarray(branch.parameters), np.sum(np.asarray(branch.states) ** 2, axis=1)
    big = (1 + np.sqrt(1 + 4 * mus)) / 2
    small = (1 - np.sqrt(1 + 4 * mus)) / 2
    assert np.all(np.minimum(abs(r2 - big), abs(r2 - small)) < 1e-8)
    stable = np.asarray(branch.stable)
    assert stable[0] and not stable[-1]
    assert np.max(np.abs(np.asarray(branch.periods) - 2 * np.pi)) < 1e-8
    # Nontrivial multiplier: exp(T · d(μr + r³ − r⁵)/dr) = exp(2π (μ + 3r² − 5r⁴)).
    m = np.asarray(branch.multipliers)
    nontrivial = m[np.arange(len(m)), np.argmax(np.abs(m - 1), axis=1)]
    expected = np.exp(2 * np.pi * (mus + 3 * r2 - 5 * r2**2))
    assert np.max(np.abs(nontrivial - expected)) < 1e-7


@pytest.mark.slow
def test_bautin_no_lpc_inside_range():
    # Negative control: the same branch on a range that stops before the fold.
    mu0 = -0.1
    r0 = np.sqrt((1 + np.sqrt(1 + 4 * mu0)) / 2)
    branch = continue_periodic_orbit(bautin, jnp.array([r0, 0.0]), 2 * np.pi, mu0, -0.2)
    assert branch.result == RESULTS.successful and branch.bifurcations == ()


@pytest.mark.slow
def test_period_doubling_at_zero():
    x0 = jnp.array([1.0, 0.0, 0.0])
    branch = continue_periodic_orbit(mobius, x0, 2 * np.pi, -0.3, 0.3)
    assert branch.result == RESULTS.successful
    (pd,) = branch.bifurcations
    assert pd.kind == "PD" and pd.result == RESULTS.successful
    assert abs(float(pd.parameter)) < 1e-8
    # Multipliers along the branch: 1, −e^{2πμ}, −e^{−2π}.
    mus = np.asarray(branch.parameters)
    m = np.sort_complex(np.asarray(branch.multipliers))
    expected = np.sort_complex(
        np.stack([np.ones_like(mus), -np.exp(2 * np.pi * mus), -np.exp(-2 * np.pi) + 0 * mus], 1)
        + 0j
    )
    assert np.max(np.abs(m - expected)) < 1e-8
    assert list(np.asarray(branch.stable)[[0, -1]]) == [True, False]


@pytest.mark.slow
def test_neimark_sacker_at_zero():
    x0 = jnp.array([1.0, 0.0, 0.0])
    branch = continue_periodic_orbit(focus_twist, x0, 2 * np.pi, -0.3, 0.3)
    assert branch.result == RESULTS.successful
    (ns,) = branch.bifurcations
    assert ns.kind == "NS" and ns.result == RESULTS.successful
    assert abs(float(ns.parameter)) < 1e-8
    m = np.asarray(ns.multipliers)
    nontrivial = np.sort_complex(np.delete(m, np.argmin(np.abs(m - 1))))
    expected = np.sort_complex(np.exp(2 * np.pi * np.array([0.7j, -0.7j])))
    assert np.max(np.abs(nontrivial - expected)) < 1e-7


@pytest.mark.slow
def test_brusselator_hopf_switch():
    branch = ds.continuation(brusselator, jnp.array([1.0, 1.5]), 1.5, 2.5)
    (hopf,) = [b for b in branch.bifurcations if b.kind == "hopf"]
    errors = []
    for d in (1e-2, 1e-3, 1e-4):
        orbit = periodic_orbit_from_hopf(brusselator, hopf, 2.0 + d)
        assert orbit.result == RESULTS.successful
        errors.append(abs(float(orbit.period) - 2 * np.pi))
        # The l1 predictor: the state's error is O(δμ) (amplitude O(√δμ)).
        x_guess, T_guess = hopf_cycle_predictor(hopf, 2.0 + d)
        assert float(jnp.linalg.norm(x_guess - orbit.state)) < 1.0 * d
        assert abs(float(T_guess) - 2 * np.pi) < 1e-10
    # Period → 2π/ω linearly in δμ.
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4
    with pytest.raises(Exception, match="side"):
        hopf_cycle_predictor(hopf, 2.0 - 1e-2)
    # And continued away from the Hopf point.
    orbit = periodic_orbit_from_hopf(brusselator, hopf, 2.01)
    cyc = continue_periodic_orbit(brusselator, orbit, None, 2.01, 2.3, max_steps=30)
    assert cyc.result == RESULTS.successful and bool(np.all(np.asarray(cyc.stable)))
    assert np.all(np.diff(np.asarray(cyc.periods)) > 0)
    # Back towards the Hopf point the cycles shrink onto the equilibrium: the branch creeps
    # up to b* (period → 2π/ω) and ends there with a failure code; it does not jump through
    # the equilibrium onto the same family with the opposite phase (same compiled program).
    # (Within ~1e-8 of b*, the shooting system is singular, the nontrivial multiplier at 1,
    # and the parameter jitters at that level; 22 steps stop short of it.)
    back = continue_periodic_orbit(brusselator, cyc.states[-1], cyc.periods[-1], 2.3, 1.9,
                                   max_steps=22)  # fmt: skip
    assert back.result in (RESULTS.continuation_max_steps, RESULTS.continuation_step_too_small)
    b_back = np.asarray(back.parameters)
    assert np.all(b_back > 2.0) and np.all(np.diff(b_back) < 0)
    assert b_back[-1] - 2.0 < 1e-4 and abs(float(back.periods[-1]) - 2 * np.pi) < 1e-4
    assert back.bifurcations == ()


@pytest.mark.slow
def test_track_along_checkpoints():
    def sl(x, p):
        return stuart_landau(x, (p["mu"], p["omega"]))

    mus = jnp.array([0.5, 0.3, 0.1, -0.1, 0.2])
    seq = [{"mu": m, "omega": jnp.asarray(1.0)} for m in mus]
    track = track_periodic_orbits(sl, seq, jnp.array([0.7, 0.0]), 6.0)
    ok = np.asarray(track.converged)
    assert ok.tolist() == [True, True, True, False, True]
    r = np.linalg.norm(np.asarray(track.states), axis=1)
    assert np.max(np.abs(r[ok] - np.sqrt(np.asarray(mus)[ok]))) < 1e-8
    assert np.max(np.abs(np.asarray(track.periods)[ok] - 2 * np.pi)) < 1e-8
    assert [e.kind for e in track.events] == ["lost", "born"]
    # PD between checkpoints of the Möbius field (stacked form): −e^{2πμ} through −1 at μ = 0,
    # interpolated linearly in ψ_PD.
    track = track_periodic_orbits(
        mobius, jnp.array([-0.2, -0.1, 0.1]), jnp.array([1.0, 0.0, 0.0]), 2 * np.pi
    )
    kinds = [e.kind for e in track.events]
    assert kinds == ["PD"] and 1.0 < track.events[0].position < 2.0


@pytest.mark.slow
def test_continuation_jit_vmap():
    mu0 = jnp.array([-0.1, -0.15])
    r0 = jnp.sqrt((1 + jnp.sqrt(1 + 4 * mu0)) / 2)

    @eqx.filter_jit
    def run(r, m):
        return continue_periodic_orbit(bautin, jnp.stack([r, 0.0]), 2 * jnp.pi, m, -0.3)

    branches = jax.vmap(run)(r0, mu0)
    ev = branches.events
    assert np.all(np.asarray(ev.valid[:, 0])) and np.all(np.asarray(ev.kind[:, 0]) == 0)
    assert np.max(np.abs(np.asarray(ev.parameter[:, 0]) + 0.25)) < 1e-8


@pytest.mark.slow
def test_trajectory_samples():
    orbit = find_periodic_orbit(stuart_landau, SL_PARAMS, SL_GUESS, 6.0)
    ys = periodic_orbit_trajectory(stuart_landau, SL_PARAMS, orbit, num=16)
    assert ys.shape == (16, 2)
    assert np.max(np.abs(np.linalg.norm(np.asarray(ys), axis=1) - 1)) < 1e-8


@pytest.mark.slow
def test_example_smoke(tmp_path):
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "limit_cycles.py")
    spec = importlib.util.spec_from_file_location("limit_cycles", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(smoke=True, out=str(tmp_path / "cycles.png"))
    assert os.path.getsize(out) > 0


def _ctrnn(a):
    # Two units with W = [[a, −1], [1, a]]: the origin has eigenvalues (a − 1) ± i, a Hopf
    # point at a = 1, supercritical (tanh saturates): a stable cycle for a > 1.
    model = ds.CTRNN(2, key=jax.random.PRNGKey(0))
    W = jnp.array([[a, -1.0], [1.0, a]])
    return eqx.tree_at(lambda m: (m.W, m.b), model, (W, jnp.zeros(2)))


@pytest.mark.slow
def test_ctrnn_model_form_with_transient():
    model = _ctrnn(1.3)
    orbit = find_periodic_orbit(model, jnp.array([0.1, 0.0]), 6.0, transient=60.0)
    assert orbit.result == RESULTS.successful and bool(orbit.stable)
    assert float(orbit.residual) < 1e-10
    # The monodromy against a dense jacfwd of an independent flow of the model.
    flow = lambda x0, T: dfx.diffeqsolve(
        dfx.ODETerm(lambda t, x, m: m(t, x, None)), dfx.Dopri8(), 0.0, T, None, x0, model,
        stepsize_controller=dfx.PIDController(rtol=1e-12, atol=1e-14),
        adjoint=dfx.ForwardMode(), max_steps=10_000,
    ).ys[-1]  # fmt: skip
    dense = jax.jacfwd(flow)(orbit.state, orbit.period)
    assert np.max(np.abs(np.asarray(dense - orbit.monodromy))) < 1e-8
    # Without the transient, a start far inside the cycle does not converge: flagged.
    bad = find_periodic_orbit(model, jnp.array([0.01, 0.0]), 6.0)
    assert bad.result != RESULTS.successful
    # Along "training checkpoints" that shrink the recurrent gain through the Hopf point a = 1.
    checkpoints = [_ctrnn(a) for a in (1.3, 1.2, 1.1, 0.95)]
    track = track_periodic_orbits(
        lambda x, m: m(0.0, x, None), checkpoints, orbit.state, orbit.period
    )
    assert np.asarray(track.converged).tolist() == [True, True, True, False]
    assert [e.kind for e in track.events] == ["lost"]
    periods = np.asarray(track.periods)[:3]
    assert np.all(np.diff(periods) < 0)  # the period shrinks towards 2π/ω = 2π at the Hopf
