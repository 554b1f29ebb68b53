"""The compiled continuation stepper behind `continuation` and `track_bifurcations`.

One `lax.while_loop` whose every iteration is one corrector solve and one spectral analysis
writes a padded branch buffer with a valid length. The steps whose eigenvalue signature changes
are queued into a fixed number of event slots; once the stepping ends the same loop localises
each queued event by regula falsi on its test function, with the same corrector as the steps.
A post-pass over the slots (`classify_events`) classifies each event and computes its
normal-form coefficients (`normal_form_at`). The result types (`Branch`, `BifurcationEvents`)
and their assembly live in `_bifurcation.py`; this module knows nothing of them.
"""

from collections.abc import Callable
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Bool, Complex, Float, Int, PyTree

from ._fixed_points import newton_solve
from ._misc import (
    RESULTS,
    default_symmetry_tol,
    default_tol,
    eigen_signature,
    real_mask,
    result_where,
    spectrum_of_matrix,
)
from ._normal_forms import BranchPointNormalForm, HopfNormalForm, normal_form_at

KINDS = ("fold", "transcritical", "pitchfork", "hopf")
_FOLD, _TRANSCRITICAL, _PITCHFORK, _HOPF = range(4)
# Stepper modes: correct the initial point at fixed `p0`, take arclength steps, land on the
# boundary of the parameter range, localise the queued events. Each is one Newton solve.
_INIT, _STEP, _LAND, _LOCATE = range(4)


# ------------------------------------------------------------------------------------------------
# One problem object: the one-parameter family, its traced arguments and the options.


class _Options(eqx.Module):
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    newton_max_steps: int = eqx.field(static=True)
    parameter_tol: float = eqx.field(static=True)
    symmetry_tol: float = eqx.field(static=True)


class ScalarFamily(eqx.Module):
    """`x, s, args -> vector_field(x, s[, args])`: the parameter itself is the family's `s`."""

    vector_field: Callable
    with_args: bool = eqx.field(static=True)

    def __call__(self, x, s, args):
        if self.with_args:
            return self.vector_field(x, s, args)
        return self.vector_field(x, s)


class ContinuationProblem(eqx.Module):
    """`family(x, s, args)`, a one-parameter family of vector fields; `args` are traced."""

    family: Callable
    args: PyTree
    opts: _Options

    def f(self, x, s):
        return self.family(x, s, self.args)


def make_options(dtype, rtol, atol, newton_max_steps, parameter_tol, symmetry_tol) -> _Options:
    tol = default_tol(dtype)
    eps = float(jnp.finfo(dtype).eps)
    return _Options(
        rtol=tol if rtol is None else float(rtol),
        atol=tol if atol is None else float(atol),
        newton_max_steps=int(newton_max_steps),
        parameter_tol=max(1e-10, 10 * eps) if parameter_tol is None else float(parameter_tol),
        symmetry_tol=default_symmetry_tol(dtype) if symmetry_tol is None else float(symmetry_tol),
    )


# ------------------------------------------------------------------------------------------------
# The corrector and the spectral analysis: every iteration of the stepper runs each once.


def _correct(problem: ContinuationProblem, anchor, normal):
    """Newton on `f(x, s) = 0, normalᵀ(z − anchor) = 0` from `anchor`: the pseudo-arclength
    corrector (`normal = τ`, `anchor = y + hτ`), or a solve at fixed `s` (`normal = e_s`)."""

    def fn(z, args):
        res = problem.family(z[:-1], z[-1], args)
        return jnp.concatenate([res, (normal @ (z - anchor))[None]])

    opts = problem.opts
    return newton_solve(fn, anchor, problem.args, opts.rtol, opts.atol, opts.newton_max_steps)


def _sorted_eigenvalues(A):
    vals = jnp.linalg.eigvals(A)
    return vals[jnp.lexsort((-vals.imag, -vals.real))]


def _analyse(problem: ContinuationProblem, z, tau_prev):
    """Unit tangent of the branch at `z = (x, s)` (oriented along `tau_prev`), the sorted
    eigenvalues of `f_x`, and the result of the tangent solve."""
    x, s = z[:-1], z[-1]
    fx = jax.jacfwd(lambda y: problem.f(y, s))(x)
    fs = jax.jvp(lambda t: problem.f(x, t), (s,), (jnp.ones_like(s),))[1]
    m = jnp.concatenate([jnp.concatenate([fx, fs[:, None]], axis=1), tau_prev[None, :]], axis=0)
    rhs = jnp.zeros_like(z).at[-1].set(1)
    # [[f_x, f_s], [τ_prevᵀ]] t = e: t spans the kernel of [f_x, f_s] with τ_prevᵀ t = 1 > 0.
    sol = lx.linear_solve(lx.MatrixLinearOperator(m), rhs, throw=False)
    t = sol.value / jnp.linalg.norm(sol.value)
    result = RESULTS.promote(sol.result)
    result = result_where(~jnp.all(jnp.isfinite(t)), RESULTS.singular_linear_solve, result)
    return t, _sorted_eigenvalues(fx), result


def _psi(ev, hopf):
    """Test function: the real part of the real (`hopf=False`) or complex (`hopf=True`)
    eigenvalue nearest the imaginary axis; NaN when there is none."""
    real = real_mask(ev)
    cand = jnp.where(hopf, ~real, real)
    i = jnp.argmin(jnp.where(cand, jnp.abs(ev.real), jnp.inf))
    return jnp.where(jnp.any(cand), ev.real[i], jnp.nan)


# ------------------------------------------------------------------------------------------------
# The stepper: one `lax.while_loop` whose every iteration is one corrector solve and one spectral
# analysis. The mode decides what is solved: the initial point at fixed `p0`, an arclength step,
# the landing on the end of the range, or one regula-falsi iteration localising a queued event
# (so localisation runs on the same compiled kernel as the steps).


def _signature_change(ev0, ev1):
    """`(real, hopf)`: a real eigenvalue or a complex pair crossed the imaginary axis."""
    d0, n0, c0, m0 = eigen_signature(ev0)
    d1, n1, c1, m1 = eigen_signature(ev1)
    # det f_x changes sign iff an odd number of real eigenvalues crossed zero (complex pairs
    # contribute |λ|² > 0), which is robust to real pairs colliding into complex ones.
    real = d0 != d1
    hopf = ((d0 != d1) & (c0 != c1) & (m0 == m1)) | ((d0 == d1) & (n0 != n1))
    return real, hopf


class _State(eqx.Module):
    mode: Int[Array, ""]
    y: Float[Array, " n1"]
    tau: Float[Array, " n1"]
    h: Float[Array, ""]
    anchor: Float[Array, " n1"]
    num_iter: Int[Array, ""]
    length: Int[Array, ""]
    num_records: Int[Array, ""]
    done: Bool[Array, ""]
    result: RESULTS
    left_range: Bool[Array, ""]
    # Accepted points.
    ys: Float[Array, "buffer n1"]
    taus: Float[Array, "buffer n1"]
    evs: Complex[Array, "buffer n"]
    # One record per accepted step from point j (the last one may leave the range).
    rec_h: Float[Array, " buffer"]
    rec_y1: Float[Array, "buffer n1"]
    rec_tau1: Float[Array, " buffer"]
    rec_ev1: Complex[Array, "buffer n"]
    # Queue of detected events (step, type) and their localisation.
    num_detected: Int[Array, ""]
    q_step: Int[Array, " events"]
    q_hopf: Bool[Array, " events"]
    q_best: Float[Array, "events n1"]
    q_found: Bool[Array, " events"]
    q_located: Bool[Array, " events"]
    # Regula falsi on the current slot, along h' ∈ [lo, hi] of the corrector arc of its step.
    slot: Int[Array, ""]
    lo: Float[Array, ""]
    hi: Float[Array, ""]
    flo: Float[Array, ""]
    fhi: Float[Array, ""]
    side: Int[Array, ""]
    it: Int[Array, ""]
    bracket: Bool[Array, ""]


def _put(buf, idx, val, when):
    return buf.at[idx].set(jnp.where(when, val, buf[idx]))


def step_loop(problem, x0, s0, s1, h0, h_max, h_min, max_steps, detect, max_events, start=None):
    """`start = (anchor, normal, tau)`, each `(N + 1,)`: the first point is the solution of
    `f = 0, normalᵀ(z − anchor) = 0` near `anchor`, its tangent oriented along `tau` (branch
    switching: a predicted point on the new branch, the new branch's tangent). By default the
    solve at fixed `s0` from `(x0, s0)`, oriented towards `s1`."""
    dtype = x0.dtype
    n = x0.shape[0]
    size = max_steps + 1
    cdtype = jnp.result_type(dtype, jnp.complex64)
    ptol = problem.opts.parameter_tol
    e_s = jnp.zeros((n + 1,), dtype).at[-1].set(1)
    sign = jnp.where(s1 > s0, 1.0, -1.0).astype(dtype)
    lo_s, hi_s = jnp.minimum(s0, s1), jnp.maximum(s0, s1)
    if start is None:
        start = (jnp.concatenate([x0, s0[None]]), e_s, sign * e_s)
    y_start, normal0, tau0 = start
    zero = jnp.zeros((), dtype)
    izero = jnp.array(0, jnp.int32)

    init = _State(
        mode=jnp.array(_INIT),
        y=y_start,
        tau=tau0,
        h=h0,
        anchor=y_start,
        num_iter=izero,
        length=izero,
        num_records=izero,
        done=jnp.array(False),
        result=RESULTS.successful,
        left_range=jnp.array(False),
        ys=jnp.zeros((size, n + 1), dtype),
        taus=jnp.zeros((size, n + 1), dtype),
        evs=jnp.full((size, n), jnp.nan, cdtype),
        rec_h=jnp.zeros((size,), dtype),
        rec_y1=jnp.zeros((size, n + 1), dtype),
        rec_tau1=jnp.zeros((size,), dtype),
        rec_ev1=jnp.full((size, n), jnp.nan, cdtype),
        num_detected=izero,
        q_step=jnp.zeros((max_events,), izero.dtype),
        q_hopf=jnp.zeros((max_events,), bool),
        q_best=jnp.zeros((max_events, n + 1), dtype),
        q_found=jnp.zeros((max_events,), bool),
        q_located=jnp.zeros((max_events,), bool),
        slot=izero,
        lo=zero,
        hi=zero,
        flo=zero,
        fhi=zero,
        side=izero,
        it=izero,
        bracket=jnp.array(False),
    )

    def body(st):
        is_init, is_step = st.mode == _INIT, st.mode == _STEP
        is_land, is_loc = st.mode == _LAND, st.mode == _LOCATE
        # The current localisation slot: its step's base point and tangent, next trial h'.
        e = jnp.minimum(st.slot, max_events - 1)
        jl, hopf_l = st.q_step[e], st.q_hopf[e]
        y_l, tau_l = st.ys[jl], st.taus[jl]
        lo, hi, flo, fhi = st.lo, st.hi, st.flo, st.fhi
        sec = (lo * fhi - hi * flo) / jnp.where(fhi == flo, 1, fhi - flo)
        bisect = (st.it % 4 == 3) | ~jnp.isfinite(flo) | ~jnp.isfinite(fhi) | (fhi == flo)
        c = jnp.where(bisect | ~((lo < sec) & (sec < hi)), 0.5 * (lo + hi), sec)

        y_pred = st.y + st.h * st.tau
        anchor = jnp.where(is_step, y_pred, jnp.where(is_loc, y_l + c * tau_l, st.anchor))
        normal = jnp.where(
            is_step, st.tau, jnp.where(is_loc, tau_l, jnp.where(is_init, normal0, e_s))
        )
        tau_prev = jnp.where(is_loc, tau_l, st.tau)
        z, res, nsteps = _correct(problem, anchor, normal)
        ok = res == RESULTS.successful
        z_safe = jnp.where(ok, z, jnp.where(is_loc, y_l, st.y))
        tau_new, ev_new, res_t = _analyse(problem, z_safe, tau_prev)
        tangent_ok = res_t == RESULTS.successful
        s_new = z[-1]

        # Arclength step: accept, or halve the step.
        accept = (
            ok
            & tangent_ok
            & (jnp.linalg.norm(z - y_pred) <= 0.5 * st.h)
            & (tau_new @ st.tau >= 0.9)
        )
        in_range = (lo_s <= s_new) & (s_new <= hi_s)
        h_half = 0.5 * st.h
        too_small = is_step & ~accept & (h_half < h_min)
        grow = jnp.where(nsteps <= 3, jnp.minimum(1.5 * st.h, h_max), st.h)
        # Leaving [lo, hi]: land on the boundary that was crossed, by a solve at fixed s.
        beyond_end = jnp.where(sign > 0, s_new > hi_s, s_new < lo_s)
        boundary = jnp.where(beyond_end, s1, s0)
        s_prev = st.y[-1]
        ds = s_new - s_prev
        frac = jnp.where(ds != 0, (boundary - s_prev) / jnp.where(ds != 0, ds, 1), 1.0)
        land_anchor = jnp.concatenate([st.y[:-1] + frac * (z[:-1] - st.y[:-1]), boundary[None]])

        record = is_step & accept
        to_land = record & ~in_range
        init_failed = is_init & ~ok
        init_tangent_failed = is_init & ok & ~tangent_ok
        append = is_init | (record & in_range) | (is_land & ok)
        point = jnp.where(init_failed, st.anchor, z)
        point_ev = jnp.where(init_failed, jnp.full_like(ev_new, jnp.nan), ev_new)
        exhausted = is_step & ~to_land & ~too_small & (st.num_iter + 1 >= max_steps)
        finish = is_land | init_failed | init_tangent_failed | too_small | exhausted

        j, i = st.length - 1, st.length
        ys = _put(st.ys, i, point, append)
        taus = _put(st.taus, i, tau_new, append)
        evs = _put(st.evs, i, point_ev, append)
        rec_h = _put(st.rec_h, j, st.h, record)
        rec_y1 = _put(st.rec_y1, j, z, record)
        rec_tau1 = _put(st.rec_tau1, j, tau_new[-1], record)
        rec_ev1 = _put(st.rec_ev1, j, ev_new, record)

        # Queue the events of an accepted step (real before Hopf, as along the branch).
        real_bit, hopf_bit = _signature_change(st.evs[j], ev_new)
        add_real = detect & record & real_bit
        add_hopf = detect & record & hopf_bit
        p0 = st.num_detected
        p1 = p0 + add_real
        q_step, q_hopf = st.q_step, st.q_hopf
        for pos, add, kind in ((p0, add_real, False), (p1, add_hopf, True)):
            w = add & (pos < max_events)
            q_step = _put(q_step, jnp.minimum(pos, max_events - 1), j, w)
            q_hopf = _put(q_hopf, jnp.minimum(pos, max_events - 1), kind, w)
        num_detected = p1 + add_hopf

        # One Illinois regula-falsi iteration on the current slot's test function.
        fc = _psi(ev_new, hopf_l)
        exact = ok & (fc == 0)
        same = jnp.sign(fc) == jnp.sign(fhi)
        new_hi = jnp.where(exact, hi, jnp.where(~ok | same, c, hi))
        new_lo = jnp.where(exact | ~ok | same, lo, c)
        new_fhi = jnp.where(ok & same, fc, jnp.where(ok & (st.side == 1), fhi / 2, fhi))
        new_flo = jnp.where(ok & ~same, fc, jnp.where(ok & (st.side == -1), flo / 2, flo))
        new_fhi = jnp.where(exact, fhi, new_fhi)
        new_flo = jnp.where(exact, flo, new_flo)
        side = jnp.where(ok, jnp.where(same, -1, 1), st.side)
        located = st.bracket & (exact | (ok & (new_hi - new_lo <= ptol)))
        slot_done = ~st.bracket | located | (st.it + 1 >= 100)
        loc_ok = is_loc & st.bracket & ok
        q_best = _put(st.q_best, e, z, loc_ok)
        q_found = _put(st.q_found, e, True, loc_ok)
        q_located = _put(st.q_located, e, located, is_loc)

        # Start the next slot (the first one when the stepping has finished).
        num_queued = jnp.minimum(num_detected, max_events)
        t = jnp.where(is_loc, st.slot + 1, 0)
        start = jnp.where(is_loc, slot_done, finish) & (t < num_queued)
        jt, hopf_t = q_step[jnp.minimum(t, max_events - 1)], q_hopf[jnp.minimum(t, max_events - 1)]
        f0, f1 = _psi(evs[jt], hopf_t), _psi(rec_ev1[jt], hopf_t)
        bracket_t = jnp.isfinite(f0) & jnp.isfinite(f1) & (jnp.sign(f0) != jnp.sign(f1))
        pick = lambda a, b, c: jnp.where(start, a, jnp.where(is_loc, b, c))

        moves = (is_init & ok) | (record & in_range)
        result = st.result
        result = result_where(init_failed, RESULTS.no_fixed_point, result)
        result = result_where(init_tangent_failed, res_t, result)
        result = result_where(too_small, RESULTS.continuation_step_too_small, result)
        result = result_where(exhausted, RESULTS.continuation_max_steps, result)
        h = jnp.where(is_step & ~accept, h_half, jnp.where(record & in_range, grow, st.h))
        mode = jnp.where(
            start, _LOCATE, jnp.where(is_init & ok, _STEP, jnp.where(to_land, _LAND, st.mode))
        ).astype(st.mode.dtype)
        done = jnp.where(is_loc, slot_done, finish) & ~start
        return _State(
            mode=mode,
            y=jnp.where(moves, z, st.y),
            tau=jnp.where(moves, tau_new, st.tau),
            h=h,
            anchor=jnp.where(to_land, land_anchor, st.anchor),
            num_iter=st.num_iter + is_step,
            length=st.length + append,
            num_records=st.num_records + record,
            done=st.done | done,
            result=result,
            left_range=st.left_range | (to_land & ~beyond_end),
            ys=ys,
            taus=taus,
            evs=evs,
            rec_h=rec_h,
            rec_y1=rec_y1,
            rec_tau1=rec_tau1,
            rec_ev1=rec_ev1,
            num_detected=num_detected,
            q_step=q_step,
            q_hopf=q_hopf,
            q_best=q_best,
            q_found=q_found,
            q_located=q_located,
            slot=pick(t, st.slot + slot_done, st.slot),
            lo=pick(zero, new_lo, lo),
            hi=pick(rec_h[jt], new_hi, hi),
            flo=pick(f0, new_flo, flo),
            fhi=pick(f1, new_fhi, fhi),
            side=pick(izero, side, st.side),
            it=pick(izero, st.it + 1, st.it),
            bracket=pick(bracket_t, st.bracket, st.bracket),
        )

    final = jax.lax.while_loop(lambda st: ~st.done, body, init)
    return final, lo_s, hi_s


# ------------------------------------------------------------------------------------------------
# Classification: a post-pass over the event slots.


def event_mask(st: _State):
    """`(steps, 2)` event mask (real crossing, Hopf crossing) of the accepted steps, and the
    eigenvalue signature of every point."""
    size = st.ys.shape[0]
    real, hopf = jax.vmap(_signature_change)(st.evs, st.rec_ev1)
    valid = jnp.arange(size) < st.num_records
    return jnp.stack([valid & real, valid & hopf], axis=-1), jax.vmap(eigen_signature)(st.evs)


def _classify(problem, x, s, hopf, fold):
    """Kind, critical eigenpair and normal-form coefficients at `(x, s)`, and their result
    (`RESULTS.not_a_bifurcation` when the spectrum has no eigenvalue of the expected type)."""
    spec = spectrum_of_matrix(jax.jacfwd(lambda v: problem.f(v, s))(x))
    ev, right, left = spec.eigenvalues, spec.right_eigenvectors, spec.left_eigenvectors
    nan = jnp.full((), jnp.nan, x.dtype)
    cnan = jnp.full((), jnp.nan, ev.dtype)
    at = lambda kind: normal_form_at(
        problem.family, problem.args, x, s, ev, right, left, kind, problem.opts.symmetry_tol
    )

    def zero_eigenvalue(_):
        nf, lam, q, w = at("branch_point")
        nf = cast(BranchPointNormalForm, nf)
        coeffs = (nf.a, nf.b1, nf.b2, nf.b3, nan, cnan, nan, jnp.asarray(nf.symmetric))
        lam2 = jnp.stack([lam[0], jnp.conj(lam[0])])
        return coeffs, lam2, q.astype(ev.dtype), w.astype(ev.dtype), nf.result

    def hopf_point(_):
        nf, lam2, q, w = at("hopf")
        nf = cast(HopfNormalForm, nf)
        coeffs = (
            nan,
            nan,
            nan,
            nan,
            nf.omega,
            nf.c1.astype(ev.dtype),
            nf.transversality,
            jnp.array(False),
        )
        return coeffs, lam2, q, w, nf.result

    coeffs, lam2, q, w, result = jax.lax.cond(hopf, hopf_point, zero_eigenvalue, None)
    a, b1, b2, b3, omega, c1, trans, symmetric = coeffs
    kind = jnp.where(
        hopf, _HOPF, jnp.where(fold, _FOLD, jnp.where(symmetric, _PITCHFORK, _TRANSCRITICAL))
    )
    return dict(
        kind=kind,
        eigenvalues=lam2,
        right_eigenvector=q,
        left_eigenvector=w,
        a=a,
        b1=b1,
        b2=b2,
        b3=b3,
        omega=omega,
        c1=c1,
        transversality=trans,
    ), result


def zeros_like(shapes):
    """Zeros with the structure, shapes and dtypes of `shapes` (from `jax.eval_shape`)."""
    return jax.tree.map(lambda sd: jnp.zeros(sd.shape, sd.dtype), shapes)


def classify_events(problem: ContinuationProblem, st: _State, lo, hi) -> dict[str, Any]:
    """Classifies the queued, localised events (a `lax.map` over the slots; an empty slot
    skips its work): the fields of a `BifurcationEvents`, by name."""
    max_events = st.q_step.shape[0]
    ptol = problem.opts.parameter_tol

    def slot(e):
        filled = e < st.num_detected
        j, hopf = st.q_step[e], st.q_hopf[e]
        found, located = st.q_found[e], st.q_located[e]
        # Without a bracket, report at the far end of the step, unlocated.
        yb = jnp.where(found, st.q_best[e], st.rec_y1[j])
        fold = jnp.sign(st.taus[j, -1]) != jnp.sign(st.rec_tau1[j])

        def classify(_):
            return _classify(problem, yb[:-1], yb[-1], hopf, fold)

        cls, nf_result = jax.lax.cond(
            filled, classify, lambda _: zeros_like(jax.eval_shape(classify, None)), None
        )
        f0, f1 = _psi(st.evs[j], hopf), _psi(st.rec_ev1[j], hopf)
        s = yb[-1]
        in_range = (lo - ptol <= s) & (s <= hi + ptol)
        result = result_where(~located, RESULTS.localisation_failed, nf_result)
        up = (f1 > f0) | (~jnp.isfinite(f0 - f1) & hopf)
        # The branch's direction across the event: the chord of its step (the tangent system
        # is singular at a branch point), oriented along the direction of travel.
        chord = st.rec_y1[j] - st.ys[j]
        tangent = chord / jnp.where(jnp.any(chord != 0), jnp.linalg.norm(chord), 1)
        return dict(
            valid=filled & in_range,
            index=j,
            parameter=s,
            state=yb[:-1],
            direction=jnp.where(up, 1, -1),
            located=located,
            result=result,
            normal_form_result=nf_result,
            tangent=tangent,
            **cls,
        )

    out = jax.lax.map(slot, jnp.arange(max_events))
    return dict(out, num_detected=st.num_detected)
