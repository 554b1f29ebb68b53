r"""Pseudo-arclength continuation of periodic orbits in a scalar parameter, with detection and
localisation of their codimension-one bifurcations, and the switch from a Hopf point onto the
branch of cycles it emits.

The unknown is `z = (x0, T, μ)`; each step predicts along the tangent and corrects with the
shooting corrector of `_periodic.py` (shooting residual, phase condition on the previous orbit,
arclength condition). Test functions at every point (MatCont's, on the Floquet multipliers
`μ_i` of the monodromy matrix; the trivial multiplier `μ_1 ≈ 1` is excluded where noted):

- fold of cycles (LPC): `ψ = dμ/ds`, the parameter component of the unit tangent;
- period doubling (PD): `ψ = det(M + I) = Π_i (1 + μ_i)` (a real multiplier through −1);
- Neimark–Sacker (NS): `ψ = Π_{i<j, nontrivial} (μ_i μ_j − 1)` (a complex pair through the
  unit circle; a real pair with `μ_i μ_j = 1`, a neutral saddle, also zeroes it and is reported
  as spurious, `RESULTS.not_a_bifurcation`).

A sign change between two accepted points queues an event; once stepping ends, the same loop
localises each queued event by regula falsi (Illinois) in the arclength coordinate along the
tangent at the bracket's first point. Everything is one `lax.while_loop` with a single
corrector call site, so it runs under `jax.jit` and `jax.vmap` and compiles once.
"""

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Complex, Float, Int, PyTree

from ._misc import RESULTS, error_if_nonfinite, error_if_not, real_mask, result_where, successful
from ._periodic import (
    ParameterFamily,
    PeriodicOrbit,
    ShootingOptions,
    correct,
    make_shooting_options,
    orbit_at,
    reference,
    split,
)

__all__ = ["CycleBifurcation", "CycleBranch", "CycleEvents", "continue_periodic_orbit"]

KINDS = ("LPC", "PD", "NS")
_LPC, _PD, _NS = range(3)
_INIT, _STEP, _LOCATE, _DONE = range(4)


def test_functions(tangent, multipliers, trivial_index):
    """`(ψ_LPC, ψ_PD, ψ_NS)` at one point (see the module docstring)."""
    n = multipliers.shape[0]
    lpc = tangent[-1]
    pd = jnp.real(jnp.prod(1 + multipliers))
    nontrivial = jnp.arange(n) != trivial_index
    pair = nontrivial[:, None] & nontrivial[None, :] & jnp.triu(jnp.ones((n, n), bool), k=1)
    prod = multipliers[:, None] * multipliers[None, :] - 1
    ns = jnp.real(jnp.prod(jnp.where(pair, prod, 1)))
    return jnp.stack([lpc, pd, ns])


def classify(kind, multipliers, trivial_index, dtype):
    """Is the localised point a bifurcation of `kind`? LPC: always (the tangent turned);
    PD: a nontrivial real multiplier near −1; NS: a nontrivial complex pair near the circle."""
    n = multipliers.shape[0]
    nontrivial = jnp.arange(n) != trivial_index
    tol = 1e3 * float(jnp.finfo(dtype).eps) ** 0.5
    real = real_mask(multipliers)
    pd = jnp.any(nontrivial & real & (jnp.abs(multipliers + 1) < tol))
    ns = jnp.any(nontrivial & ~real & (jnp.abs(jnp.abs(multipliers) - 1) < tol))
    return jnp.stack([jnp.array(True), pd, ns])[kind]


def _where(pred, a, b):
    # `RESULTS.where` takes a scalar predicate only; this is its elementwise form.
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


class _State(eqx.Module):
    mode: Int[Array, ""]
    it: Int[Array, ""]
    k: Int[Array, ""]
    h: Float[Array, ""]
    result: RESULTS
    z: Float[Array, " z"]
    t: Float[Array, " z"]
    g: Float[Array, " 3"]
    z_buf: Float[Array, "steps z"]
    mult_buf: Complex[Array, "steps state"]
    unstable_buf: Int[Array, " steps"]
    # Event slots: bracket [u_lo, u_hi] along t_a from z_a; outputs.
    num_detected: Int[Array, ""]
    slot: Int[Array, ""]
    ev_kind: Int[Array, " events"]
    ev_index: Int[Array, " events"]
    ev_za: Float[Array, "events z"]
    ev_ta: Float[Array, "events z"]
    ev_u: Float[Array, "events 2"]
    ev_g: Float[Array, "events 2"]
    ev_side: Int[Array, " events"]
    ev_iter: Int[Array, " events"]
    ev_z: Float[Array, "events z"]
    ev_mult: Complex[Array, "events state"]
    ev_located: Bool[Array, " events"]
    ev_result: RESULTS


def _step_loop(
    family,
    args,
    z0,
    s1,
    h0,
    h_max,
    h_min,
    max_steps,
    max_events,
    locate_steps,
    opts: ShootingOptions,
    parameter_tol,
):
    m = z0.shape[0]
    n = m - 2
    dtype = z0.dtype
    direction = jnp.where(s1 >= z0[-1], 1.0, -1.0).astype(dtype)
    e_s = jnp.zeros((m,), dtype).at[-1].set(1)
    st = _State(
        mode=jnp.array(_INIT),
        it=jnp.array(0),
        k=jnp.array(0),
        h=h0,
        result=RESULTS.successful,
        z=z0,
        t=direction * e_s,
        g=jnp.zeros((3,), dtype),
        z_buf=jnp.full((max_steps + 1, m), jnp.nan, dtype),
        mult_buf=jnp.full((max_steps + 1, n), jnp.nan, jnp.result_type(dtype, jnp.complex64)),
        unstable_buf=jnp.zeros((max_steps + 1,), int),
        num_detected=jnp.array(0),
        slot=jnp.array(0),
        ev_kind=jnp.zeros((max_events,), int),
        ev_index=jnp.zeros((max_events,), int),
        ev_za=jnp.zeros((max_events, m), dtype),
        ev_ta=jnp.zeros((max_events, m), dtype),
        ev_u=jnp.zeros((max_events, 2), dtype),
        ev_g=jnp.ones((max_events, 2), dtype),
        ev_side=jnp.zeros((max_events,), int),
        ev_iter=jnp.zeros((max_events,), int),
        ev_z=jnp.full((max_events, m), jnp.nan, dtype),
        ev_mult=jnp.full((max_events, n), jnp.nan, jnp.result_type(dtype, jnp.complex64)),
        ev_located=jnp.zeros((max_events,), bool),
        ev_result=jax.tree_util.tree_map(
            lambda a: jnp.broadcast_to(a, (max_events,)), RESULTS.successful
        ),
    )
    max_iterations = 4 * max_steps + max_events * (locate_steps + 1) + 1

    def body(st: _State) -> _State:
        mode = st.mode
        slot = jnp.minimum(st.slot, max_events - 1)
        za, ta = st.ev_za[slot], st.ev_ta[slot]
        (u_lo, u_hi), (g_lo, g_hi) = st.ev_u[slot], st.ev_g[slot]
        u_new = u_lo - g_lo * (u_hi - u_lo) / jnp.where(g_hi != g_lo, g_hi - g_lo, 1)
        # Guess, anchor of the last row, its normal (also the tangent's border), and the phase
        # reference for each mode.
        guess = jnp.select(
            [mode == _INIT, mode == _STEP], [st.z, st.z + st.h * st.t], za + u_new * ta
        )
        normal = jnp.where((mode == _LOCATE)[None], ta, st.t)
        base = jnp.where((mode == _LOCATE)[None], za, st.z)
        x_ref, f_ref = reference(family, args, split(base)[0], split(base)[2])
        z, res, steps = correct(family, args, guess, guess, normal, x_ref, f_ref, opts)
        orbit, jac = orbit_at(family, args, z, res, steps, x_ref, f_ref, opts)
        bordered = jnp.concatenate([jac, normal[None]], axis=0)
        t_new = jnp.linalg.solve(bordered, jnp.zeros((m,), dtype).at[-1].set(1))
        t_new = t_new / jnp.linalg.norm(t_new)
        # The phase hyperplane cuts a cycle twice; the corrector may land on the far
        # intersection, where the flow crosses the hyperplane backwards. Near a Hopf point,
        # where the cycles are small, that is a jump through the equilibrium onto the same
        # family with the opposite phase (and a spurious turn of the tangent): reject it, so
        # the step shrinks instead.
        x_new, _, s_new = split(z)
        forward = jnp.dot(family(x_new, s_new, args), f_ref) > 0
        ok = successful(orbit.result) & jnp.all(jnp.isfinite(t_new)) & forward
        g_new = test_functions(t_new, orbit.multipliers, orbit.trivial_index)

        # --- INIT / STEP: accept or shrink.
        accept = ok & (mode != _LOCATE)
        k = jnp.where(accept, st.k + (mode == _STEP), st.k)
        z_buf = jnp.where(accept, st.z_buf.at[k].set(z), st.z_buf)
        mult_buf = jnp.where(accept, st.mult_buf.at[k].set(orbit.multipliers), st.mult_buf)
        unstable_buf = jnp.where(
            accept, st.unstable_buf.at[k].set(orbit.num_unstable), st.unstable_buf
        )
        # Queue events from sign changes between the last point and this one.
        changed = (mode == _STEP) & accept & (jnp.sign(g_new) != jnp.sign(st.g))
        u_end = jnp.dot(z - st.z, st.t)

        def enqueue(i, ev):
            c = changed[i] & (ev["count"] < max_events)
            j = jnp.minimum(ev["count"], max_events - 1)
            put = lambda buf, v: jnp.where(c, buf.at[j].set(v), buf)
            ev = dict(ev)
            ev["kind"] = put(ev["kind"], i)
            ev["index"] = put(ev["index"], k - 1)
            ev["za"] = put(ev["za"], st.z)
            ev["ta"] = put(ev["ta"], st.t)
            ev["u"] = put(ev["u"], jnp.stack([jnp.zeros((), dtype), u_end]))
            ev["g"] = put(ev["g"], jnp.stack([st.g[i], g_new[i]]))
            ev["count"] = ev["count"] + changed[i]
            return ev

        ev = dict(
            kind=st.ev_kind,
            index=st.ev_index,
            za=st.ev_za,
            ta=st.ev_ta,
            u=st.ev_u,
            g=st.ev_g,
            count=st.num_detected,
        )
        for i in range(3):
            ev = enqueue(i, ev)

        grow = jnp.where(steps <= 3, 1.5, jnp.where(steps <= 6, 1.0, 0.7))
        h = jnp.where(
            mode == _STEP, jnp.where(accept, jnp.minimum(st.h * grow, h_max), st.h / 2), st.h
        )
        # The end of the range, or back before the start (the branch folded back over p0).
        past_end = (
            (mode == _STEP)
            & accept
            & ((direction * (z[-1] - s1) >= 0) | (direction * (z[-1] - z0[-1]) < 0))
        )
        too_small = (mode == _STEP) & ~accept & (h < h_min)
        full = accept & (k >= max_steps)
        init_failed = (mode == _INIT) & ~ok
        stop_stepping = past_end | too_small | full | init_failed
        result = st.result
        result = RESULTS.where(init_failed, orbit.result, result)
        result = result_where(too_small, RESULTS.continuation_step_too_small, result)
        result = result_where(full & ~past_end, RESULTS.continuation_max_steps, result)

        # --- LOCATE: update the bracket (Illinois) or finish the slot.
        loc = mode == _LOCATE
        g_k = g_new[st.ev_kind[slot]]
        same_as_lo = jnp.sign(g_k) == jnp.sign(g_lo)
        new_u = jnp.where(same_as_lo, jnp.stack([u_new, u_hi]), jnp.stack([u_lo, u_new]))
        side = jnp.where(same_as_lo, 1, -1)
        # Illinois: halve the stale end's value when the same end moved twice.
        g_lo2 = jnp.where(~same_as_lo & (st.ev_side[slot] == -1), g_lo / 2, g_lo)
        g_hi2 = jnp.where(same_as_lo & (st.ev_side[slot] == 1), g_hi / 2, g_hi)
        new_g = jnp.where(same_as_lo, jnp.stack([g_k, g_hi2]), jnp.stack([g_lo2, g_k]))
        width = jnp.abs(new_u[1] - new_u[0])
        iters = st.ev_iter[slot] + 1
        converged = ok & ((width <= parameter_tol) | (g_k == 0))
        finish = loc & (~ok | converged | (iters >= locate_steps))
        upd = loc & ok
        ev_u = jnp.where(upd, st.ev_u.at[slot].set(new_u), st.ev_u)
        ev_g = jnp.where(upd, st.ev_g.at[slot].set(new_g), st.ev_g)
        ev_side = jnp.where(upd, st.ev_side.at[slot].set(side), st.ev_side)
        ev_iter = jnp.where(loc, st.ev_iter.at[slot].set(iters), st.ev_iter)
        ev_z = jnp.where(loc & ok, st.ev_z.at[slot].set(z), st.ev_z)
        ev_mult = jnp.where(loc & ok, st.ev_mult.at[slot].set(orbit.multipliers), st.ev_mult)
        is_kind = classify(st.ev_kind[slot], orbit.multipliers, orbit.trivial_index, dtype)
        slot_result = RESULTS.where(
            converged,
            RESULTS.where(is_kind, RESULTS.successful, RESULTS.not_a_bifurcation),
            RESULTS.localisation_failed,
        )
        ev_result = _where(finish & (jnp.arange(max_events) == slot), slot_result, st.ev_result)
        ev_located = jnp.where(finish, st.ev_located.at[slot].set(converged), st.ev_located)

        stored = jnp.minimum(ev["count"], max_events)
        next_slot = jnp.where(finish, st.slot + 1, st.slot)
        after_stepping = jnp.where(stored > 0, _LOCATE, _DONE)
        new_mode = jnp.select(
            [mode == _INIT, mode == _STEP],
            [
                jnp.where(init_failed, _DONE, _STEP),
                jnp.where(stop_stepping, after_stepping, _STEP),
            ],
            jnp.where(next_slot >= stored, _DONE, _LOCATE),
        )
        return _State(
            mode=new_mode,
            it=st.it + 1,
            k=k,
            h=h,
            result=result,
            z=jnp.where(accept, z, st.z),
            t=jnp.where(accept, t_new, st.t),
            g=jnp.where(accept, g_new, st.g),
            z_buf=z_buf,
            mult_buf=mult_buf,
            unstable_buf=unstable_buf,
            num_detected=ev["count"],
            slot=next_slot,
            ev_kind=ev["kind"],
            ev_index=ev["index"],
            ev_za=ev["za"],
            ev_ta=ev["ta"],
            ev_u=jnp.where(loc, ev_u, ev["u"]),
            ev_g=jnp.where(loc, ev_g, ev["g"]),
            ev_side=ev_side,
            ev_iter=ev_iter,
            ev_z=ev_z,
            ev_mult=ev_mult,
            ev_located=ev_located,
            ev_result=ev_result,
        )

    cond = lambda st: (st.mode != _DONE) & (st.it < max_iterations)
    st = jax.lax.while_loop(cond, body, st)
    return st


# ---------------------------------------------------------------------------------------------
# Results.


class CycleEvents(eqx.Module):
    """Bifurcations of a cycle branch as padded arrays (leading axis: `max_events` slots).

    **Fields:** `valid` (a slot holds an event), `kind` (index into `("LPC", "PD", "NS")`),
    `index` (the step after which it lies), `parameter`, `state`, `period`, `multipliers` at the
    localised point, `located` (the bracket shrank below `parameter_tol`), `result` per slot
    (`successful`; `localisation_failed`; `not_a_bifurcation` for a spurious NS test zero, a
    neutral saddle), and `num_detected` (events flagged, possibly more than the slots).
    """

    valid: Bool[Array, " events"]
    kind: Int[Array, " events"]
    index: Int[Array, " events"]
    parameter: Float[Array, " events"]
    state: Float[Array, "events state"]
    period: Float[Array, " events"]
    multipliers: Complex[Array, "events state"]
    located: Bool[Array, " events"]
    result: RESULTS
    num_detected: Int[Array, ""]


class CycleBifurcation(eqx.Module):
    """One localised bifurcation of a cycle branch: `kind` (`"LPC"` fold of cycles, `"PD"`
    period doubling, `"NS"` Neimark–Sacker), `parameter`, `state` (on the cycle), `period`,
    `multipliers` (sorted by decreasing modulus), `index` (step after which it lies) and
    `result`."""

    kind: str = eqx.field(static=True)
    parameter: Float[Array, ""]
    state: Float[Array, " state"]
    period: Float[Array, ""]
    multipliers: Complex[Array, " state"]
    index: int = eqx.field(static=True)
    result: RESULTS


class CycleBranch(eqx.Module):
    """A branch of periodic orbits from `continue_periodic_orbit`.

    Buffers have `max_steps + 1` rows of which the first `length` are the branch. Eagerly,
    `parameters`, `states`, `periods`, `multipliers`, `stable` give the valid part and
    `bifurcations` a tuple of `CycleBifurcation`; under `jit`/`vmap` read the `*_buffer`
    fields, `length` and `events`. `result`: `successful` (reached `p1`),
    `continuation_step_too_small`, `continuation_max_steps`, or the initial orbit's failure.
    """

    parameter_buffer: Float[Array, " steps"]
    state_buffer: Float[Array, "steps state"]
    period_buffer: Float[Array, " steps"]
    multiplier_buffer: Complex[Array, "steps state"]
    num_unstable_buffer: Int[Array, " steps"]
    length: Int[Array, ""]
    events: CycleEvents
    result: RESULTS

    def _valid(self, buf):
        return buf[: int(self.length)]

    @property
    def parameters(self) -> Float[Array, " steps"]:
        return self._valid(self.parameter_buffer)

    @property
    def states(self) -> Float[Array, "steps state"]:
        return self._valid(self.state_buffer)

    @property
    def periods(self) -> Float[Array, " steps"]:
        return self._valid(self.period_buffer)

    @property
    def multipliers(self) -> Complex[Array, "steps state"]:
        return self._valid(self.multiplier_buffer)

    @property
    def stable(self) -> Bool[Array, " steps"]:
        return self._valid(self.num_unstable_buffer) == 0

    @property
    def bifurcations(self) -> tuple[CycleBifurcation, ...]:
        """The valid events that are bifurcations (spurious ones excluded), along the branch."""
        ev = self.events
        out = []
        codes = np.asarray(ev.result._value)
        for i in np.nonzero(np.asarray(ev.valid))[0]:
            if codes[i] == RESULTS.not_a_bifurcation._value:
                continue
            out.append(
                CycleBifurcation(
                    kind=KINDS[int(ev.kind[i])],
                    parameter=ev.parameter[i],
                    state=ev.state[i],
                    period=ev.period[i],
                    multipliers=ev.multipliers[i],
                    index=int(ev.index[i]),
                    result=jax.tree_util.tree_map(lambda a, i=i: a[i], ev.result),
                )
            )
        return tuple(sorted(out, key=lambda b: b.index))


@eqx.filter_jit
def _continue_impl(
    family,
    args,
    x0,
    period,
    s0,
    s1,
    h0,
    h_max,
    h_min,
    max_steps,
    max_events,
    locate_steps,
    opts,
    parameter_tol,
):
    args = error_if_nonfinite(args, "args")
    x0 = error_if_nonfinite(x0, "x0")
    period = eqx.error_if(period, ~(period > 0), "`period` must be positive and finite")
    s1 = error_if_not(s1, s0 != s1, "`p0` and `p1` must differ")
    z0 = jnp.concatenate([x0, period[None], s0[None]])
    st = _step_loop(
        family,
        args,
        z0,
        s1,
        h0,
        h_max,
        h_min,
        max_steps,
        max_events,
        locate_steps,
        opts,
        parameter_tol,
    )
    n = x0.shape[0]
    valid = jnp.arange(max_events) < jnp.minimum(st.num_detected, max_events)
    events = CycleEvents(
        valid=valid,
        kind=st.ev_kind,
        index=st.ev_index,
        parameter=st.ev_z[:, -1],
        state=st.ev_z[:, :n],
        period=st.ev_z[:, n],
        multipliers=st.ev_mult,
        located=st.ev_located,
        # A slot the loop never finished (iteration cap) was not localised.
        result=_where(
            valid & ~st.ev_located & successful(st.ev_result),
            RESULTS.localisation_failed,
            st.ev_result,
        ),
        num_detected=st.num_detected,
    )
    length = jnp.where(jnp.isnan(st.z_buf[0, -1]), 0, st.k + 1)
    return CycleBranch(
        parameter_buffer=st.z_buf[:, -1],
        state_buffer=st.z_buf[:, :n],
        period_buffer=st.z_buf[:, n],
        multiplier_buffer=st.mult_buf,
        num_unstable_buffer=st.unstable_buf,
        length=length,
        events=events,
        result=st.result,
    )


def continue_periodic_orbit(
    vector_field: Callable,
    x0: Float[ArrayLike, " state"] | PeriodicOrbit,
    period: float | Float[ArrayLike, ""] | None,
    p0: float | Float[ArrayLike, ""],
    p1: float | Float[ArrayLike, ""],
    *,
    args: PyTree = None,
    step_size: float | None = None,
    max_step_size: float | None = None,
    min_step_size: float | None = None,
    max_steps: int = 100,
    max_events: int = 4,
    locate_steps: int = 16,
    parameter_tol: float | None = None,
    solver: dfx.AbstractSolver | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    dt0: float | None = None,
    ode_max_steps: int = 4096,
    rtol: float | None = None,
    atol: float | None = None,
    newton_max_steps: int = 16,
) -> CycleBranch:
    """Pseudo-arclength continuation of a periodic orbit in a scalar parameter, with detection
    and localisation of folds of cycles (LPC), period doublings (PD) and Neimark–Sacker (NS)
    bifurcations.

    The branch `{(x0, T, μ): φ_T(x0; μ) = x0, phase condition}` is followed from near
    `(x0, period, p0)` towards `μ = p1`, passing folds of cycles. Each point carries its
    Floquet multipliers; the test functions of the module docstring locate the events by
    regula falsi to `parameter_tol` in arclength. One compiled program: runs under `jax.jit`
    and `jax.vmap` (over `x0`, `period`, `args`, `p0`, `p1`).

    **Arguments:**

    - `vector_field`: `vector_field(x, mu)`; with `args`, `vector_field(x, mu, args)`.
    - `x0`, `period`: a point near the cycle at `μ = p0` and its period guess (or a
        `PeriodicOrbit` with `period=None`); corrected at `p0` first.
    - `p0`, `p1`: start and end of the parameter range; the last point may lie up to one step
        beyond `p1`.
    - `args`: any pytree passed to the vector field (traced).
    - `step_size`, `max_step_size`, `min_step_size`: arclength steps in `(x0, T, μ)` (defaults
        `|p1 - p0|/20`, `|p1 - p0|/5`, `1e-6·|p1 - p0|`).
    - `max_steps`: continuation steps stored (buffers have `max_steps + 1` rows).
    - `max_events`, `locate_steps`, `parameter_tol`: event slots, regula-falsi iterations per
        event, and its tolerance (default `1e-9` in float64, `1e-4` in float32).
    - `solver`, `stepsize_controller`, `dt0`, `ode_max_steps`, `rtol`, `atol`,
        `newton_max_steps`: as in `find_periodic_orbit`.

    **Returns:** a `CycleBranch`.
    """
    if isinstance(x0, PeriodicOrbit):
        if period is not None:
            raise TypeError("pass `period=None` together with a `PeriodicOrbit`")
        x0, period = x0.state, x0.period
    if period is None:
        raise TypeError("`period` is needed when `x0` is a state")
    x0 = jnp.asarray(x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(jnp.result_type(float))
    if x0.ndim != 1:
        raise ValueError(f"`x0` must have shape (N,), got {x0.shape}")
    for name, p in (("p0", p0), ("p1", p1), ("period", period)):
        if jnp.ndim(p) != 0:
            raise ValueError(f"`{name}` must be a scalar, got shape {jnp.shape(p)}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive int, got {max_steps!r}")
    if not isinstance(max_events, int) or max_events < 1:
        raise ValueError(f"`max_events` must be a positive int, got {max_events!r}")
    dtype = x0.dtype
    family = ParameterFamily(vector_field, args is not None)
    out = eqx.filter_eval_shape(lambda x, s, a: family(x, s, a), x0, jnp.zeros((), dtype), args)
    if getattr(out, "shape", None) != x0.shape:
        raise ValueError(
            "`vector_field(x, mu[, args])` must return dx/dt of the shape of `x0` "
            f"{x0.shape}, got {getattr(out, 'shape', type(out).__name__)}"
        )
    opts = make_shooting_options(
        dtype, solver, stepsize_controller, dt0, ode_max_steps, rtol, atol, newton_max_steps
    )
    s0, s1 = jnp.asarray(p0, dtype), jnp.asarray(p1, dtype)
    span = jnp.abs(s1 - s0)
    as_h = lambda v, default: default if v is None else jnp.asarray(v, dtype)
    f64 = dtype == jnp.float64
    tol = (1e-9 if f64 else 1e-4) if parameter_tol is None else float(parameter_tol)
    return _continue_impl(
        family,
        args,
        x0,
        jnp.asarray(period, dtype),
        s0,
        s1,
        as_h(step_size, span / 20),
        as_h(max_step_size, span / 5),
        as_h(min_step_size, 1e-6 * span),
        max_steps,
        max_events,
        int(locate_steps),
        opts,
        tol,
    )
