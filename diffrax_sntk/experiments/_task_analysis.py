r"""Bifurcations along training for the fold and Hopf tasks (any model, births included).

The pitchfork task keeps its own tracker (`_analysis.critical_eigenvalues`: the student's
initial equilibrium only), so its runs are unchanged. Here the tracker also receives
`seed_states` (trajectory samples of the student at every evaluation checkpoint and at the
last one), so saddle-node *births* away from the initial equilibrium are seen; every event —
bifurcations of the tracked branch, births and deaths — is a crossing, and the first one sets
the equilibrium whose critical eigenvalue λ_c is reported (`docs/student_teacher_protocol.md`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import diffrax_sntk as ds

from ._tasks import autonomous_field

__all__ = ["TaskEvents", "task_events", "stacked_models", "hopf_coefficients", "initial_branch"]

# Trajectory samples used as seeds: these fractions of the observation times.
_SEED_TIMES = (0.5, 1.0)


class TaskEvents(NamedTuple):
    track: ds.BifurcationTrack
    lam_c: np.ndarray  # (evals,) Re of the rightmost eigenvalue at the followed equilibrium
    states: np.ndarray  # (evals, N) the followed equilibrium (NaN where it does not exist)
    crossings: list  # every event, sorted by fractional evaluation index
    followed: str  # "initial" or "newborn"


def stacked_models(history, student, spec, idx):
    """The full student models at history rows `idx`, stacked along a leading axis (the
    untrained arrays broadcast)."""
    _, static = eqx.partition(student, spec)
    sub = jax.tree_util.tree_map(lambda h: jnp.asarray(np.asarray(h)[idx]), history)
    k = len(idx)
    static_b = jax.tree_util.tree_map(
        lambda a: jnp.broadcast_to(a, (k,) + a.shape) if eqx.is_array(a) else a, static)
    return eqx.combine(sub, static_b)


@eqx.filter_jit
def _trajectories(models, problem):
    # One checkpoint at a time: a batched adaptive solve takes the steps of its stiffest member.
    return jax.lax.map(lambda m: ds.simulate(m, problem), models)


def _seeds(models, problem):
    ys = np.asarray(_trajectories(models, problem))  # (K, B, T, N)
    t = ys.shape[2]
    cols = sorted({min(t - 1, max(0, int(round(f * t)) - 1)) for f in _SEED_TIMES})
    per = ys[:, :, cols, :].reshape(ys.shape[0], -1, ys.shape[-1])
    last = np.broadcast_to(per[-1], per.shape)
    return jnp.asarray(np.concatenate([per, last], axis=1))


def _rightmost(model, x):
    A = jax.jacfwd(autonomous_field)(jnp.asarray(x), model)
    return float(np.max(np.real(np.linalg.eigvals(np.asarray(A)))))


def _same_event(a, b) -> bool:
    return (a.kind == b.kind and abs(float(a.parameter) - float(b.parameter)) < 1e-6
            and np.max(np.abs(np.asarray(a.state) - np.asarray(b.state))) < 1e-4)


def task_events(history, student, spec, eval_steps, problem) -> TaskEvents:
    """Tracks the student's equilibria over the evaluation checkpoints with births.

    **Returns:** a `TaskEvents`: the track, every crossing, and λ_c with the followed
    equilibrium's states (the newborn attractor when the first crossing is a birth, NaN before
    it; else the initial equilibrium, tracked from x = 0 at step 0).
    """
    idx = np.asarray(eval_steps)
    models = stacked_models(history, student, spec, idx)
    n = problem.state_size
    dtype = problem.dtype
    seeds = _seeds(models, problem)
    track = ds.track_bifurcations(autonomous_field, models, jnp.zeros((1, n), dtype),
                                  seed_states=seeds)
    path = [b for b in track.bifurcations if b.branch == 0]
    events = list(path)
    for b in list(track.births) + list(track.deaths):
        if not any(_same_event(b, e) for e in events):
            events.append(b)
    events.sort(key=lambda b: float(b.parameter))
    # The followed branch's own events keep the tracker's path order (in an S-shaped interval
    # the fold where the followed equilibrium dies comes first) in the slots they occupy.
    slots = [i for i, e in enumerate(events) if any(e is p for p in path)]
    for i, e in zip(slots, path, strict=True):
        events[i] = e

    eig = np.asarray(track.eigenvalues)[:, 0, :]
    alive = np.asarray(track.alive)[:, 0] & np.asarray(track.converged)[:, 0]
    lam = np.where(alive, np.max(np.real(eig), axis=-1), np.nan)
    states = np.where(alive[:, None], np.asarray(track.states)[:, 0, :], np.nan)
    followed = "initial"
    if events and any(events[0] is b for b in track.births):
        followed = "newborn"
        lam, states = _follow_newborn(track, events[0], models, len(idx), n)
    return TaskEvents(track, lam, states, events, followed)


def _follow_newborn(track, birth, models, num, n):
    """λ_c and states of the newborn attractor: from the first checkpoint after the birth, the
    equilibrium nearest the fold state among the stable ones (else among all), followed by
    warm-started Newton (`ds.track_bifurcations` without detection)."""
    lam = np.full(num, np.nan)
    states = np.full((num, n), np.nan)
    k0 = int(math.floor(float(birth.parameter))) + 1
    if k0 >= num:
        return lam, states
    at = lambda k: jax.tree_util.tree_map(lambda a: a[k] if eqx.is_array(a) else a, models)
    cands = np.asarray(track.equilibria[k0]) if k0 < len(track.equilibria) else np.zeros((0, n))
    if cands.shape[0] == 0:
        return lam, states
    x_b = np.asarray(birth.state)
    rights = np.array([_rightmost(at(k0), x) for x in cands])
    pool = np.flatnonzero(rights < 0)
    pool = pool if pool.size else np.arange(len(cands))
    start = cands[pool[np.argmin(np.max(np.abs(cands[pool] - x_b), axis=-1))]]
    if num - k0 >= 2:
        rest = jax.tree_util.tree_map(lambda a: a[k0:] if eqx.is_array(a) else a, models)
        sub = ds.track_bifurcations(autonomous_field, rest, jnp.asarray(start)[None],
                                    detect_bifurcations=False)
        ok = np.asarray(sub.alive)[:, 0] & np.asarray(sub.converged)[:, 0]
        if np.asarray(sub.states).shape[1] == 1:
            lam[k0:] = np.where(ok, np.max(np.real(np.asarray(sub.eigenvalues)[:, 0, :]), axis=-1),
                                np.nan)
            states[k0:] = np.where(ok[:, None], np.asarray(sub.states)[:, 0, :], np.nan)
    else:
        lam[k0] = rights[np.argmin(np.max(np.abs(cands - start), axis=-1))]
        states[k0] = start
    return lam, states


def initial_branch(history, student, spec, eval_steps):
    """The initial equilibrium (x = 0 at step 0) tracked over `eval_steps`, without seeds.
    **Returns:** `(track, lam_c)` as `_analysis.critical_eigenvalues`."""
    models = stacked_models(history, student, spec, np.asarray(eval_steps))
    n = student.U.shape[0]
    track = ds.track_bifurcations(autonomous_field, models,
                                  jnp.zeros((1, n), jnp.result_type(float)))
    eig = np.asarray(track.eigenvalues)[:, 0, :]
    alive = np.asarray(track.alive)[:, 0] & np.asarray(track.converged)[:, 0]
    return track, np.where(alive, np.max(np.real(eig), axis=-1), np.nan)


def _left_coordinate(v, w):
    """ℓ with ℓᵀv = 1 from the stored left vector (plain or conjugate normalisation)."""
    if abs(complex(w @ v) - 1) <= abs(complex(np.conj(w) @ v) - 1):
        return w
    return np.conj(w)


def hopf_coefficients(model, spec, bif, u_tree):
    """(v, ℓ, λ, c₁, δλ, a_u) of a Hopf `bif` for the perturbation `u_tree` (at input 0)."""
    params, static = eqx.partition(model, spec)
    x = jnp.asarray(bif.state)
    v = np.asarray(bif.right_eigenvector, complex)
    ell = _left_coordinate(v, np.asarray(bif.left_eigenvector, complex))

    def f(y, prm):
        return autonomous_field(y, eqx.combine(prm, static))

    _, df = jax.jvp(lambda prm: f(x, prm), (params,), (u_tree,))
    dA = lambda vec: np.asarray(jax.jvp(
        lambda prm: jax.jvp(lambda y: f(y, prm), (x,), (jnp.asarray(vec),))[1],
        (params,), (u_tree,))[1])
    dAv = dA(np.real(v)) + 1j * dA(np.imag(v))
    lam = complex(np.asarray(bif.eigenvalues)[0])
    c1 = complex(np.asarray(bif.normal_form.c1))
    return v, ell, lam, c1, complex(ell @ dAv), complex(ell @ np.asarray(df))
