"""Saddle-node births and deaths along checkpoints, and the ghosts before a birth, on the CTRNN
unit `ẋ = −x + g·tanh x + h`, whose folds are known in closed form."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import diffrax_sntk as ds
from diffrax_sntk._tracking import Ghosts

from .helpers import raises_check


def unit(x, p):
    return -p["a"] * x + p["g"] * jnp.tanh(x) + p["h"]


def fold_of(g):
    """The fold with x* > 0: f = 0 and f_x = 0 give cosh²(x*) = g, h* = x* − g·tanh(x*)."""
    x = math.acosh(math.sqrt(g))
    return x, x - g * math.tanh(x)


def expected_fold(gs, hs, k):
    """The fractional index `k + s*` where the interpolated `h(s)` meets `h*(g(s))`, and x*."""
    g = lambda s: gs[k] + s * (gs[k + 1] - gs[k])
    h = lambda s: hs[k] + s * (hs[k + 1] - hs[k])
    s = scipy.optimize.brentq(lambda s: h(s) - fold_of(g(s))[1], 0.0, 1.0, xtol=1e-15)
    return k + s, fold_of(g(s))[0]


# Five checkpoints of (g, h): for h below h*(g) only the far negative equilibrium exists; h
# crosses h*(g) between checkpoints 2 and 3, where a node and a saddle are born near x* ≈ 0.89.
GS = np.array([1.8, 1.9, 2.0, 2.1, 2.2])
HS = np.array([-1.0, -0.8, -0.6, -0.4, -0.2])
SEEDS = jnp.linspace(-3.0, 3.0, 7)[:, None]
START = jnp.array([[-2.0]])


def sequence(gs, hs, a=None, dtype=jnp.float64):
    a = np.ones_like(gs) if a is None else a
    return {k: jnp.asarray(v, dtype) for k, v in (("a", a), ("g", gs), ("h", hs))}


def track(gs, hs, a=None, dtype=jnp.float64, **kw):
    seq = sequence(gs, hs, a, dtype)
    start, seeds = START.astype(dtype), SEEDS.astype(dtype)
    return ds.track_bifurcations(unit, seq, start, seed_states=seeds, **kw)


def test_birth_localised_at_the_analytic_fold():
    tr = track(GS, HS)
    expected, x_star = expected_fold(GS, HS, 2)
    assert int(expected) == 2
    (birth,) = tr.births
    assert birth.kind == "fold" and birth.branch == -1 and birth.located
    assert birth.result == ds.RESULTS.successful
    assert abs(float(birth.parameter) - expected) < 1e-8
    assert abs(float(birth.state[0]) - x_star) < 1e-6
    assert abs(float(birth.eigenvalues[0].real)) < 1e-6
    assert tr.deaths == ()
    # One equilibrium before the birth, three after; the tracked branch lives on unchanged.
    assert [e.shape[0] for e in tr.equilibria] == [1, 1, 1, 3, 3]
    assert tr.status == "completed" and tr.bifurcations == ()
    assert bool(jnp.all(tr.alive))

    # The ghost: a slow point at checkpoint 2 (speed |h − h*| at x*), none before.
    ghosts = tr.ghosts
    assert isinstance(ghosts, Ghosts) and ghosts.num_ghosts == 1
    assert int(ghosts.checkpoint[0]) == 2 and int(ghosts.birth[0]) == 0
    x_ghost = math.acosh(math.sqrt(GS[2]))
    assert abs(float(ghosts.state[0, 0]) - x_ghost) < 1e-5
    assert float(ghosts.speed[0]) == pytest.approx(abs(HS[2] - fold_of(GS[2])[1]), rel=1e-6)


def test_death_of_the_reversed_sequence():
    # Per-checkpoint seeds `(K, M, N)` (here the same at each) share the compiled search.
    tr = ds.track_bifurcations(
        unit, sequence(GS[::-1], HS[::-1]), START, seed_states=jnp.broadcast_to(SEEDS, (5, 7, 1))
    )
    expected, x_star = expected_fold(GS[::-1], HS[::-1], 1)
    assert tr.births == ()
    (death,) = tr.deaths
    assert death.kind == "fold" and death.result == ds.RESULTS.successful
    assert abs(float(death.parameter) - expected) < 1e-8
    assert abs(float(death.state[0]) - x_star) < 1e-6
    assert [e.shape[0] for e in tr.equilibria] == [3, 3, 1, 1, 1]


def test_no_fold_no_birth():
    # h stays far below h*(g): one equilibrium throughout, no birth, death or ghost.
    tr = track(GS, HS - 1.0)
    assert tr.births == () and tr.deaths == ()
    assert [e.shape[0] for e in tr.equilibria] == [1] * 5
    assert tr.ghosts is not None and tr.ghosts.num_ghosts == 0
    # Without seeds nothing of this is computed.
    plain = ds.track_bifurcations(unit, sequence(GS, HS), START)
    assert plain.births == () and plain.equilibria == () and plain.ghosts is None


def test_seed_states_checks():
    seq = sequence(GS, HS)
    with pytest.raises(ValueError, match="`seed_states`"):
        ds.track_bifurcations(unit, seq, START, seed_states=jnp.zeros((4, 7, 1)))
    with pytest.raises(ValueError, match="`detect_bifurcations"):
        ds.track_bifurcations(unit, seq, START, seed_states=SEEDS, detect_bifurcations=False)
    with pytest.raises(ValueError, match="`ghost_speed`"):
        ds.track_bifurcations(unit, seq, START, seed_states=SEEDS, ghost_speed=0.0)
    with raises_check("`seed_states`"):
        ds.track_bifurcations(unit, seq, START, seed_states=SEEDS.at[0, 0].set(jnp.nan))


def test_birth_from_infinity_is_reported_unlocalised():
    # ẋ = 1 − a·x with a = 0, 0, 0.5, 1, 1: no equilibrium until a > 0, then x = 1/a comes in
    # from infinity. No fold bounds the branch backwards: a birth that cannot be localised is
    # reported with `localisation_failed`, not dropped.
    a = np.array([0.0, 0.0, 0.5, 1.0, 1.0])
    tr = track(np.zeros(5), np.ones(5), a)
    assert tr.status == "no_fixed_points"
    assert [e.shape[0] for e in tr.equilibria] == [0, 0, 1, 1, 1]
    (birth,) = tr.births
    assert birth.result == ds.RESULTS.localisation_failed and not birth.located
    assert 1.0 <= float(birth.parameter) < 2.0 and float(birth.state[0]) > 2.0
    assert tr.deaths == ()


def test_birth_float32():
    tr = track(GS, HS, dtype=jnp.float32)
    expected, x_star = expected_fold(GS, HS, 2)
    (birth,) = tr.births
    assert birth.state.dtype == jnp.float32 and birth.result == ds.RESULTS.successful
    assert abs(float(birth.parameter) - expected) < 1e-4
    assert abs(float(birth.state[0]) - x_star) < 1e-2
