r"""Per-run analysis of the student–teacher experiment: bifurcations along training, the
quantities at the first crossing, and criteria C1–C6 (`docs/student_teacher_protocol.md`).

Runs on the host after the vmapped training (`_run.py`), one run at a time; the JAX pieces are
`eqx.filter_jit`-compiled once per shape and shared by the runs of a sweep.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import numpy as np

import diffrax_sntk as ds

from .._misc import participation_ratio
from . import _criteria as C
from ._config import StudentTeacherConfig
from ._criteria_hopf import c4_hopf
from ._run import Setup, make_problem, mse, observation_times, param_spec, use_exact
from ._task_analysis import hopf_coefficients, initial_branch, task_events

__all__ = ["analyse_run", "critical_eigenvalues", "stable_learning_rate"]

# Points per unit time of the fine grid on which C4's reduced equation is integrated.
_FINE_PER_UNIT_TIME = 40
# SGD "spikes at the crossing" when its spike's peak lies within this many steps of it (C5).
_SPIKE_WINDOW = 3


def _field(x, wb):
    # The student's autonomous dynamics (u = 0, τ = 1) as a function of (W, b).
    W, b = wb
    return -x + W @ jnp.tanh(x) + b


def _weights(history, student, idx):
    """(W, b) at the history rows `idx` (b from the fixed student when it is not trained)."""
    W = np.asarray(history.W)[idx]
    b = np.asarray(history.b)[idx] if history.b is not None else np.broadcast_to(
        np.asarray(student.b), (len(idx),) + student.b.shape)
    return jnp.asarray(W), jnp.asarray(b)


def critical_eigenvalues(history, student, eval_steps):
    """Tracks the student's initial equilibrium (x = 0 at step 0) over the evaluation
    checkpoints. **Returns:** `(track, lam_c)`: the `ds.BifurcationTrack` and the real part of
    the rightmost eigenvalue at each checkpoint (NaN where the branch was lost)."""
    W, b = _weights(history, student, np.asarray(eval_steps))
    n = W.shape[-1]
    track = ds.track_bifurcations(_field, (W, b), jnp.zeros((1, n), W.dtype))
    eig = np.asarray(track.eigenvalues)[:, 0, :]
    lam = np.max(eig.real, axis=-1)
    alive = np.asarray(track.alive)[:, 0] & np.asarray(track.converged)[:, 0]
    return track, np.where(alive, lam, np.nan)


def _interpolate(history, c, eval_steps):
    """Parameters at fractional checkpoint `c` (the tracker's linear interpolation between the
    evaluation checkpoints) and the matching fractional step."""
    e = min(int(math.floor(c)), len(eval_steps) - 2)
    frac = c - e
    i0, i1 = int(eval_steps[e]), int(eval_steps[e + 1])
    theta = jax.tree_util.tree_map(lambda h: (1 - frac) * h[i0] + frac * h[i1], history)
    return theta, i0 + frac * (i1 - i0)


def _rows(history):
    return jax.tree_util.tree_leaves(history)[0].shape[0]


# `bifurcation_channels`' default numerical-rank threshold, recorded with each run.
_CHANNEL_RANK_TOL = 0.1


@eqx.filter_jit
def _split(model, problem, critical, spec):
    return ds.bifurcation_channels(model, problem, critical, input=jnp.zeros(1), filter_spec=spec,
                                   channel_rank_tol=_CHANNEL_RANK_TOL)


def _hopf_c4_args(cfg, seed_setup, model_c, spec, bif, u_tree, response):
    """C4's inputs at a Hopf crossing: the complex projection z = ℓᵀ(x − x*) of each trial on
    the fine grid and the reduced coefficients (`_criteria_hopf`)."""
    v, ell, lam, c1, dlam, a_u = hopf_coefficients(model_c, spec, bif, u_tree)
    num_fine = int(round(_FINE_PER_UNIT_TIME * cfg.t_end))
    t_fine = np.linspace(0.0, cfg.t_end, num_fine + 1)
    fine = make_problem(cfg, seed_setup.y0, ts=jnp.asarray(t_fine[1:]))
    xs = np.asarray(_simulate(model_c, fine))
    xs = np.concatenate([np.asarray(seed_setup.y0)[:, None, :], xs], axis=1)
    z = (xs - np.asarray(bif.state)) @ ell
    return dict(response=response, v=v, z=z, t_fine=t_fine,
                t_obs=np.asarray(observation_times(cfg)), lam=lam, c1=c1, dlam=dlam, a_u=a_u)


@eqx.filter_jit
def _gram(model, problem, spec):
    jm = ds.jacobian_operator(model, problem, filter_spec=spec).as_matrix()
    return jm, jnp.linalg.svd(jm, full_matrices=False)


def _kind(bif) -> str:
    return bif.kind


@eqx.filter_jit
def _as_matrix(J):
    return J.as_matrix()


@eqx.filter_jit
def _simulate(model, problem):
    return ds.simulate(model, problem)


@eqx.filter_jit
def _loss_along(s, params, u_tree, static, problem, target):
    moved = jax.tree_util.tree_map(lambda p, u: p + s * u, params, u_tree)
    return mse(eqx.combine(moved, static), problem, target)


def _state_response(cfg, model, problem, spec, exact):
    """PR, s₁/s₂ and the dominant parameter direction u₁ (unit) with its response J u₁."""
    if exact:
        jm, (_, sv, vt) = _gram(model, problem, spec)
        s = np.asarray(sv) ** 2
        pr = float(participation_ratio(s))
        gap = float(s[0] / s[1]) if s[1] > 0 else math.inf
        u_flat = vt[0]
        response = np.asarray(jm @ u_flat).reshape(cfg.trials, cfg.times, cfg.hidden)
        return pr, gap, u_flat, response
    theta = ds.sntk_operator(model, problem, filter_spec=spec)
    pairs = ds.top_eigenpairs(theta, 2, key=jax.random.PRNGKey(0))
    s = np.asarray(pairs.values)
    pr = float(ds.effective_rank(theta, key=jax.random.PRNGKey(1)).estimate)
    J = ds.jacobian_operator(model, problem, filter_spec=spec)
    top_vec = pairs.vectors[0]
    g = J.transpose().mv(top_vec)
    u_flat, _ = jfu.ravel_pytree(g)
    u_flat = u_flat / jnp.linalg.norm(u_flat)
    # Θ v₁ = s₁ v₁ and Jᵀv₁ = √s₁ u₁, so J u₁ = √s₁ v₁.
    response = np.asarray(top_vec) * math.sqrt(max(s[0], 0.0))
    return pr, float(s[0] / s[1]), u_flat, response


def _reduced_coefficients(model, spec, x_star, q, p, u_tree):
    """a_u = pᵀ ∂_θf·u and b₁ᵤ = pᵀ (∂_θA·u) q at x* (JVPs in the parameters, input u = 0)."""
    params, static = eqx.partition(model, spec)

    def f(x, prm):
        return eqx.combine(prm, static)(0.0, x, jnp.zeros(1))

    _, df = jax.jvp(lambda prm: f(x_star, prm), (params,), (u_tree,))
    dAq = jax.jvp(lambda prm: jax.jvp(lambda x: f(x, prm), (x_star,), (q,))[1],
                  (params,), (u_tree,))[1]
    return float(p @ df), float(p @ dAq)


def stable_learning_rate(cfg, model, problem, spec, num_outputs, exact=True) -> float:
    """2/λ_max of the Gauss–Newton matrix (2/#outputs) J_outᵀ J_out of the MSE."""
    if exact:
        J = ds.jacobian_operator(model, problem, space="output", filter_spec=spec)
        sv = np.linalg.svd(np.asarray(_as_matrix(J)), compute_uv=False)
        top = float(sv[0] ** 2)
    else:
        theta = ds.sntk_operator(model, problem, space="output", filter_spec=spec)
        top = float(ds.top_eigenpairs(theta, 1, key=jax.random.PRNGKey(0)).values[0])
    return 2.0 / (2.0 / num_outputs * top)


def _nan_list(x):
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(x, float).reshape(-1)]


def analyse_run(
    cfg: StudentTeacherConfig,
    seed_setup: Setup,
    sgd: dict,
    ng: dict,
    baselines: dict[str, dict[float, np.ndarray]],
    timings: dict[str, Any],
    stable_rates: dict[str, float],
    *,
    landscape: bool = False,
) -> dict[str, Any]:
    """One run's record (without `config`/`error`): criteria, bifurcations and curves.

    `sgd` and `ng` hold `losses` `(steps + 1,)`, `history` (parameters at every step), `pr` and
    `top` at the evaluation steps; `baselines[name][lr]` are loss curves of the C5 baselines;
    `timings` the per-step wall times of C6 (`time_steps`' output, optionally with
    `learning_rate`, the rate they were timed at); `stable_rates` 2/λ_max(GN) at the initial and the
    teacher parameters.
    """
    eval_steps = np.arange(0, cfg.steps + 1, cfg.eval_every)
    student = seed_setup.student
    spec = param_spec(cfg, student)
    _, static = eqx.partition(student, spec)
    problem = make_problem(cfg, seed_setup.y0)
    pr = np.asarray(sgd["pr"], float)
    top = np.asarray(sgd["top"], float)
    sgd_losses = np.asarray(sgd["losses"], float)
    # A diverged run is frozen at its last finite parameters: evaluations from its divergence
    # on repeat one point (a flat PR would be a "local minimum" everywhere), so they are cut.
    bad = np.flatnonzero(~np.isfinite(sgd_losses))
    diverged_at = int(bad[0]) if bad.size else None
    if diverged_at is not None:
        keep = eval_steps < diverged_at
        eval_steps, pr, top = eval_steps[keep], pr[keep], top[keep]

    followed_states = None
    followed = "initial"
    if len(eval_steps) >= 2 and not cfg.tracks_births:
        track, lam_c = critical_eigenvalues(sgd["history"], student, eval_steps)
        # In the order the followed equilibrium meets them (the tracker's path order; in an
        # S-shaped interval the fold where it dies comes before the other one).
        crossings = [b for b in track.bifurcations if b.branch == 0]
    elif len(eval_steps) >= 2:
        events = task_events(sgd["history"], student, spec, eval_steps, problem)
        track, lam_c, crossings = events.track, events.lam_c, events.crossings
        followed_states, followed = events.states, events.followed
    else:
        track, lam_c, crossings = None, np.full(len(eval_steps), np.nan), []
    births = [] if track is None else list(track.births)
    bif_list = [{"kind": _kind(b), "step": float(b.parameter) * cfg.eval_every,
                 "direction": int(b.direction), "located": bool(b.located),
                 **({"event": "birth" if any(b is x for x in births) else
                     "death" if b.branch < 0 else "branch"} if cfg.tracks_births else {})}
                for b in crossings]
    cross_steps = [d["step"] for d in bif_list]
    has = bool(crossings)
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(student, spec)))
    exact = use_exact(cfg, num_params)

    criteria: dict[str, Any] = {}
    criteria["C1_localisation"] = C.c1_localisation(
        eval_steps=eval_steps, pr=pr, lam_c=lam_c, crossings=cross_steps,
        eval_every=cfg.eval_every, steps=cfg.steps, rng_seed=cfg.seed)
    at: dict[str, Any] = {}
    c2_args = dict(pr_at_crossing=None, gap_at_crossing=None)
    c3_args: dict[str, Any] = dict(energy_at_crossing=None, overlap_at_crossing=None,
                                   lam_c_points=[], energy_points=[], overlap_points=[])
    c4_args: dict[str, Any] = {}
    c4_hopf_args: dict[str, Any] | None = None
    channel_rank = None
    kind = None
    if has:
        first = crossings[0]
        kind = _kind(first)
        theta_c, step_c = _interpolate(sgd["history"], float(first.parameter), eval_steps)
        model_c = eqx.combine(theta_c, static)
        pr_c, gap_c, u_flat, response = _state_response(cfg, model_c, problem, spec, exact)
        _, unravel = jfu.ravel_pytree(theta_c)
        u_tree = unravel(u_flat)
        # The split reads only the crossing's state and eigenvalue; its static bookkeeping
        # (branch, step index, direction) would otherwise recompile the split for every run.
        split = _split(model_c, problem, dataclasses.replace(
            first, branch=0, index=0, direction=1, located=True), spec)
        channel_rank = int(split.channel_rank)
        c2_args = dict(pr_at_crossing=pr_c, gap_at_crossing=gap_c)
        c3_args.update(energy_at_crossing=float(split.energy_fraction),
                       overlap_at_crossing=float(split.dominant_overlap))
        idx = C.choose_channel_evaluations(lam_c)
        states = (np.asarray(track.states)[:, 0, :] if followed_states is None  # type: ignore[union-attr]
                  else followed_states)
        for i in idx:
            theta_i = jax.tree_util.tree_map(lambda h, i=i: h[eval_steps[i]], sgd["history"])
            s_i = _split(eqx.combine(theta_i, static), problem, jnp.asarray(states[i]), spec)
            c3_args["lam_c_points"].append(float(lam_c[i]))
            c3_args["energy_points"].append(float(s_i.energy_fraction))
            c3_args["overlap_points"].append(float(s_i.dominant_overlap))
        # C4: the reduced equation along the critical eigenvector, driven by each trial's
        # projected trajectory on a fine grid.
        if kind == "hopf" and cfg.tracks_births:
            c4_hopf_args = _hopf_c4_args(cfg, seed_setup, model_c, spec, first, u_tree, response)
        x_star = np.asarray(first.state)
        q = np.real(np.asarray(first.right_eigenvector))
        p = np.real(np.asarray(first.left_eigenvector))
        nf = first.normal_form
        b2 = float(getattr(nf, "b2", 0.0))
        b3 = float(getattr(nf, "b3", 0.0))
        a_u, b1_u = _reduced_coefficients(model_c, spec, jnp.asarray(x_star), jnp.asarray(q),
                                          jnp.asarray(p), u_tree)
        num_fine = int(round(_FINE_PER_UNIT_TIME * cfg.t_end))
        t_fine = np.linspace(0.0, cfg.t_end, num_fine + 1)
        fine = make_problem(cfg, seed_setup.y0, ts=jnp.asarray(t_fine[1:]))
        xs = np.asarray(_simulate(model_c, fine))
        xs = np.concatenate([np.asarray(seed_setup.y0)[:, None, :], xs], axis=1)
        w = (xs - x_star) @ p
        c4_args = dict(kind=kind if kind != "branch_point" else "transcritical", response=response,
                       q=q, w=w, t_fine=t_fine, t_obs=np.asarray(observation_times(cfg)),
                       lam_c=float(np.real(np.asarray(first.eigenvalues)[0])), b2=b2, b3=b3,
                       a_u=a_u, b1_u=b1_u)
        at = {"step": step_c, "kind": kind, "pr": pr_c, "gap": gap_c,
              "energy_fraction": float(split.energy_fraction),
              "dominant_overlap": float(split.dominant_overlap),
              "alignment": float(split.alignment), "b2": b2, "b3": b3, "a_u": a_u,
              "b1_u": b1_u}
        if landscape:
            try:
                at["landscape"] = _landscape(cfg, model_c, static, spec, u_tree, b1_u, problem,
                                             seed_setup.target)
            except Exception as e:  # a figure's data: recorded, the criteria stand
                at["landscape_error"] = f"{type(e).__name__}: {e}"
    criteria["C2_depth"] = C.c2_depth(pr=pr, lam_c=lam_c, top_eigenvalues=top if exact
                                      else np.full((len(pr), 2), np.nan), has_crossing=has,
                                      **c2_args)
    criteria["C3_channel"] = C.c3_channel(has_crossing=has, **c3_args)
    if has and c4_hopf_args is not None:
        criteria["C4_normal_form"] = c4_hopf(**c4_hopf_args)
    elif has and not np.all(np.isfinite(c4_args["q"])):
        criteria["C4_normal_form"] = C._result(None, None, "crossing not localised", errors={},
                                               best_rival=None, scale=None)
    elif has:
        criteria["C4_normal_form"] = C.c4_normal_form(has_crossing=True, **c4_args)
    else:
        criteria["C4_normal_form"] = C.c4_normal_form(
            kind="pitchfork", response=None, q=None, w=None, t_fine=None, t_obs=None, lam_c=None,
            b2=None, b3=None, a_u=None, b1_u=None, has_crossing=False)
    criteria["C5_optimizer"] = C.c5_optimizer(ng_losses=np.asarray(ng["losses"]),
                                              baseline_losses=baselines)
    try:
        if "error" in timings:
            raise ValueError(timings["error"])
        criteria["C6_cost"] = C.c6_cost(
            sgd_times=timings["sgd"], ng_times=timings["ng"],
            sgd_solver_steps=timings.get("sgd_solver_steps"),
            ng_solver_steps=timings.get("ng_solver_steps"),
            timed_rate=timings.get("learning_rate"))
    except ValueError as e:  # e.g. a diverged timing run: C6 alone is not assessable
        criteria["C6_cost"] = {"value": None, "pass": None, "note": f"error: {e}"}
        if timings.get("learning_rate") is not None:
            criteria["C6_cost"]["timed_rate"] = float(timings["learning_rate"])
    if diverged_at is not None:
        for name in ("C1_localisation", "C2_depth", "C3_channel", "C4_normal_form"):
            criteria[name]["sgd_diverged_at"] = diverged_at

    # C5 context: the stable learning rates and whether SGD spikes at the crossing there.
    spike = C.spike_factor(sgd_losses)
    peak = _spike_peak(sgd_losses)
    limit = min(stable_rates.values())
    stable = None if not math.isfinite(limit) else bool(cfg.learning_rate < limit)
    criteria["C5_optimizer"].update({
        "learning_rate_stable": stable,
        "stable_rate_initial": stable_rates["initial"],
        "stable_rate_teacher": stable_rates["teacher"],
        "sgd_spike": None if not math.isfinite(spike) else spike,
        "sgd_spike_step": peak,
        "sgd_spikes_at_crossing": bool(has and spike > 1.05 and peak is not None
                                       and abs(peak - cross_steps[0]) <= _SPIKE_WINDOW),
    })
    # The NG run's evaluation indices refer to the full grid (the SGD grid may be cut above).
    ng_steps = np.arange(0, cfg.steps + 1, cfg.eval_every)[ng["eval_idx"]]
    ng_note = None
    try:
        tracker = critical_eigenvalues if cfg.task == "pitchfork" else (
            lambda h, st, steps: initial_branch(h, st, spec, steps))
        ng_track, ng_lam = (tracker(ng["history"], student, ng_steps)
                            if len(ng_steps) > 1 else (None, None))
    except Exception as e:  # context only: recorded, the criteria stand
        ng_track, ng_lam, ng_note = None, None, f"{type(e).__name__}: {e}"
    curves = {
        "eval_steps": eval_steps.tolist(),
        "pr": _nan_list(pr), "lam_c": _nan_list(lam_c),
        "top": [_nan_list(row) for row in top],
        "loss_sgd": _nan_list(sgd_losses), "loss_ng": _nan_list(ng["losses"]),
        "ng_eval_steps": ng_steps.tolist(),
        "ng_pr": _nan_list(ng["pr"]),
        "ng_lam_c": None if ng_lam is None else _nan_list(ng_lam),
        "ng_bifurcations": [] if ng_track is None else [
            {"kind": b.kind, "step": float(np.interp(float(b.parameter),
                                                      np.arange(len(ng_steps)), ng_steps))}
            for b in ng_track.bifurcations if b.branch == 0],
        "ng_tracking_error": ng_note,
        # Failed eigenbasis refreshes of the natural-gradient run (each kept the previous basis).
        "ng_refresh_failures": int(ng.get("refresh_failures", 0)),
    }
    if cfg.tracks_births:
        curves["followed_equilibrium"] = followed
        curves["births"] = [float(b.parameter) * cfg.eval_every for b in births]
        curves["deaths"] = [] if track is None else [
            float(b.parameter) * cfg.eval_every for b in track.deaths]
        curves["ghosts"] = 0 if track is None or track.ghosts is None else int(
            track.ghosts.num_ghosts)
    extra = {"task": cfg.task_label, "channel_rank": channel_rank,
             "channel_rank_tol": _CHANNEL_RANK_TOL,
             "branch_lost_step": branch_lost_step(eval_steps, lam_c, cross_steps)}
    return {**extra, "criteria": criteria, "bifurcations": bif_list,
            "first_bifurcation_kind": kind,
            "at_crossing": C._clean(at), "curves": curves}


def branch_lost_step(eval_steps, lam_c, crossings) -> float | None:
    """The first evaluation step at which the followed equilibrium was lost (λ_c turns NaN after
    a finite value) *before* any detected crossing, else `None`.

    A diagnostic recorded with each run (it changes no criterion): a run whose branch is lost
    this way reports "no crossing" for C1–C4 although the tracker, not the dynamics, ended the
    search (seen at N = 64, where the branch was lost at steps 2–6 with Re λ_c ≤ −0.02).
    """
    lam = np.asarray(lam_c, float)
    steps = np.asarray(eval_steps)
    finite = np.isfinite(lam)
    if not finite.any():
        return None
    after = np.flatnonzero(~finite & (np.arange(lam.size) > np.flatnonzero(finite)[0]))
    if after.size == 0:
        return None
    lost = float(steps[after[0]])
    if crossings and min(crossings) <= lost:
        return None
    return lost


def _spike_peak(losses):
    if not np.all(np.isfinite(losses)) or losses.size < 2:
        return None
    running = np.minimum.accumulate(losses)
    return int(np.argmax(losses[1:] / running[:-1]) + 1)


def _landscape(cfg, model_c, static, spec, u_tree, b1_u, problem, target):
    """s ↦ L(θ_c + s u₁), centre pinned at the crossing; s spans about ±0.3 of λ_c."""
    s_max = 0.3 / max(abs(b1_u), 1e-3)
    s_values = np.linspace(-s_max, s_max, cfg.landscape_points)
    params, _ = eqx.partition(model_c, spec)
    loss = np.array([float(_loss_along(jnp.asarray(s), params, u_tree, static, problem, target))
                     for s in s_values])
    check = C.landscape_check(s_values, loss)
    return {"s": s_values.tolist(), "loss": loss.tolist(), "check": check}
