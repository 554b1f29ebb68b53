r"""Linearised replay: the fast path of J, Jᵀ and Θ at a fixed linearisation point.

The reference path (`_operators._jvp` / `_vjp`) calls `diffeqsolve` for every matvec: each Jᵀv
re-solves the primal (with its probe tangent, error control and rejected steps) and then runs
the adjoint; each Jv re-solves primal and tangent. For a spectral computation — hundreds of
matvecs at one θ — almost all of that work is repeated.

diffrax's adaptive controllers never differentiate through step-size selection (the PID
controller wraps its factor in `stop_gradient`), so the map that the reference path
differentiates is the *discrete* map "one explicit solver step per accepted step, then dense
interpolation at the observation times". Here we

1. record the accepted step grid of each trial once, with the problem's own controller and
   probe tangent (one `diffeqsolve` with `SaveAt(steps=True)`);
2. replay that grid inside a fixed-length `lax.scan` — explicit Runge–Kutta stages unrolled from
   the solver's diffrax Butcher tableau (other explicit solvers: the solver's own `step`), dense
   output from the solver's `interpolation_cls`; padding steps have zero length, which every
   explicit step maps to the identity — and `jax.linearize` it once: the residuals of every step
   are stored;
3. serve J v as the stored linear map and Jᵀ v as its `jax.linear_transpose` (traced at call
   time, so both directions share one copy of the residuals).

A matvec then does only linear work (no primal, no error estimate, no rejected step), and a
block of vectors shares the stored linearisation under `vmap`. The result is the same discrete
map as the reference path, so it agrees with it to rounding (tested to 1e-10 in float64).

Why not diffrax itself for the replay: `StepTo` needs a strictly increasing grid of static
length, while the number of accepted steps is only known after the recording solve and differs
between trials; and `diffeqsolve`'s while loop cannot be linearised once and transposed — both
its reverse-mode adjoints recompute the primal per call by design. The tableau, the FSAL/SSAL
structure and the dense output are diffrax's own (the unrolled step is tested against
`solver.step`).

Not replayed (the operators fall back to the solve path): controllers with `jump_ts`, where
diffrax re-evaluates the vector field after each jump and the recorded step ends are shifted by
one ulp across the jump.
"""

from __future__ import annotations

import numbers

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import PyTree

from ._problem import TrajectoryProblem, integrate

__all__ = [
    "record_steps",
    "replay_trajectory_fn",
    "linearise",
    "linearise_with_outputs",
    "bucket_steps",
]


def bucket_steps(num_steps: int) -> int:
    """The static scan length for `num_steps` accepted steps: the smallest 2^j or 3·2^j that
    holds them (at most a third of the scan is padding, and nearby step counts share one
    compilation)."""
    num_steps = max(int(num_steps), 1)
    power = 1 << (num_steps - 1).bit_length()  # the smallest 2^j >= num_steps
    three = 3 * power // 4
    return three if num_steps <= three and power >= 4 else power


def record_steps(params: PyTree, static: PyTree, problem: TrajectoryProblem):
    """The accepted step grid of every trial, from the problem's own controller.

    **Returns:** `(ends, num_accepted)`: `ends[b, n]` is the end time of step `n` of trial `b`
    (`inf` after the last step), shape `(batch, max_steps)`; `num_accepted` has shape `(batch,)`.
    """

    def one(x0, tr):
        return integrate(params, static, problem, x0, tr, problem.adjoint, save_ts="steps")

    return jax.vmap(one)(problem.y0, problem.per_trial_inputs())


def _step_grid(ends, t0, t_end, length: int):
    ends = ends[:, :length]
    ends = jnp.where(jnp.isfinite(ends), ends, t_end)
    starts = jnp.concatenate([jnp.broadcast_to(t0, ends.shape[:1])[:, None], ends[:, :-1]], 1)
    return starts, ends


def _unrolled_tableau(solver):
    """The Butcher tableau of an explicit Runge–Kutta solver, or None (use `solver.step`)."""
    tab = getattr(solver, "tableau", None)
    if not isinstance(solver, dfx.AbstractERK) or tab is None or tab.a_diagonal is not None:
        return None
    return tab


def _erk_step(tab, field, t0, t1, y0, f0):
    # One explicit Runge–Kutta step with the stages unrolled in Python. diffrax's own `step`
    # loops over stages with a (bounded) while loop writing into a stage buffer; linearised and
    # transposed, that is a loop with per-stage dynamic slices and conditionals, and a parameter
    # cotangent accumulated once per *stage*. Unrolled, XLA fuses the stage arithmetic into
    # fewer, larger kernels. Same tableau, same dense output (`k` = h·f, as diffrax stores it);
    # checked against `solver.step` in the tests.
    h = t1 - t0
    fs = [f0]
    yi = y0
    for ci, ai in zip(tab.c, tab.a_lower, strict=True):
        incr = sum(float(a) * fj for a, fj in zip(ai, fs, strict=True) if a != 0)
        yi = y0 + h * incr
        fs.append(field(t1 if float(ci) == 1.0 else t0 + float(ci) * h, yi))
    if tab.ssal:
        y1 = yi
    else:
        y1 = y0 + h * sum(float(b) * fj for b, fj in zip(tab.b_sol, fs, strict=True) if b != 0)
    f1 = fs[-1] if tab.fsal else None
    return y1, dict(y0=y0, y1=y1, k=h * jnp.stack(fs)), f1


def _replay_trials(params, static, problem: TrajectoryProblem, starts, ends):
    """All trials in one scan over the step index, the trials vmapped inside each step.

    Scanning over steps with the trials inside (rather than vmapping a per-trial scan) stores
    the linearisation's residuals step-major, the layout its scan reads: the vmapped per-trial
    scan stored them trial-major, and every matvec transposed each stored array (and each
    stacked tangent) before and after its scans.
    """
    trial_inputs = problem.per_trial_inputs()
    starts_t, ends_t = starts.T, ends.T  # (steps, batch)
    solver = problem.solver

    def field(trial, t, x, p):
        return eqx.combine(p, static)(t, x, problem.input_at(t, trial))

    tab = _unrolled_tableau(solver)
    if tab is not None:

        def step(trial, x, f0, ta, tb):
            f = lambda t, y: field(trial, t, y, params)
            if f0 is None:
                f0 = f(ta, x)
            x1, dense, f1 = _erk_step(tab, f, ta, tb, x, f0)
            return (x1, f1), dense

        first = jax.vmap(lambda tr, t, x: field(tr, t, x, params))
        init = (problem.y0, first(trial_inputs, starts[:, 0], problem.y0) if tab.fsal else None)
    else:
        # Other explicit solvers (Euler): the solver's own step, a plain function of its inputs.
        def term(trial):
            return dfx.ODETerm(lambda t, x, p: field(trial, t, x, p))

        def step(trial, x, state, ta, tb):
            x1, _, dense, state1, _ = solver.step(term(trial), ta, tb, x, params, state, False)
            return (x1, state1), dense

        init_one = lambda tr, t0, t1, x: solver.init(term(tr), t0, t1, x, params)
        state0 = jax.vmap(init_one)(trial_inputs, starts[:, 0], ends[:, 0], problem.y0)
        init = (problem.y0, state0)

    def body(carry, t01):
        return jax.vmap(step)(trial_inputs, *carry, *t01)

    _, dense = jax.lax.scan(body, init, (starts_t, ends_t))  # leaves: (steps, batch, ...)

    # diffrax saves t_k from the first accepted step whose end is >= t_k (`ts[i] <= tnext`).
    last = ends.shape[1] - 1
    which = jax.vmap(lambda en: jnp.searchsorted(en, problem.ts, side="left"))(ends)
    which = jnp.clip(which, 0, last)  # (batch, time)
    trial = jnp.arange(which.shape[0])[:, None]
    # One gather straight from the step-major stack (a vmap over trials would first move the
    # trial axis to the front, transposing the whole stack in every matvec).
    info = jtu.tree_map(lambda a: a[which, trial], dense)  # leaves: (batch, time, ...)
    t0s, t1s = starts[trial, which], ends[trial, which]

    def save(info, t0, t1, t):
        return solver.interpolation_cls(t0=t0, t1=t1, **info).evaluate(t)

    ts = jnp.broadcast_to(problem.ts, which.shape)
    return jax.vmap(jax.vmap(save))(info, t0s, t1s, ts)


def replay_trajectory_fn(static, problem: TrajectoryProblem, space: str, starts, ends):
    """θ ↦ X(θ) on the recorded grids `starts, ends` (each `(batch, steps)`)."""

    def fn(params):
        ys = _replay_trials(params, static, problem, starts, ends)
        if space == "output":
            model = eqx.combine(params, static)
            ys = jax.vmap(jax.vmap(model.readout))(ys)
        return ys

    return fn


class Linearisation(eqx.Module):
    """J at a fixed θ, stored: `jvp` (parameters → trajectory tangents, closure-converted so that
    the stored residuals are pytree leaves) and `vjp`, its exact transpose, traced from `jvp` at
    call time so that both directions share one copy of the residuals."""

    jvp: eqx.Module
    num_steps: jax.Array
    param_structure: PyTree = eqx.field(static=True)
    scan_length: int = eqx.field(static=True)

    def vjp(self, cotangent):
        return jax.linear_transpose(self.jvp, self.param_structure)(cotangent)[0]


def _linearise(params, static, problem, space, ends, length):
    starts, ends = _step_grid(ends, problem.t0, problem.ts[-1], length)
    fn = replay_trajectory_fn(static, problem, space, starts, ends)
    ys, f_jvp = jax.linearize(fn, params)
    p_struct = jtu.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    # The replayed trajectory comes with the linearisation at no extra cost: one program serves
    # both the operators (which drop it) and `trajectory_and_jacobian` (which returns it).
    return ys, eqx.filter_closure_convert(f_jvp, p_struct)


_linearise_jit = eqx.filter_jit(_linearise)
_record_jit = eqx.filter_jit(record_steps)


def _check_num_steps(num_steps):
    if num_steps is None:
        return
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive int, got {num_steps!r}.")


def linearise(params, static, problem: TrajectoryProblem, space: str, num_steps=None):
    """Record the step grid and store the linearisation (see the module docs).

    The scan length is static: given `num_steps`, or (outside a trace) the bucketed maximum
    number of accepted steps over the trials, or (inside a trace) `problem.max_steps`.
    """
    return linearise_with_outputs(params, static, problem, space, num_steps)[1]


def linearise_with_outputs(params, static, problem: TrajectoryProblem, space: str, num_steps=None):
    """As `linearise`, also returning the replayed trajectory: `(ys, linearisation)`."""
    _check_num_steps(num_steps)
    ends, num = _record_jit(params, static, problem)
    concrete = not isinstance(num, jax.core.Tracer)
    if num_steps is None:
        length = bucket_steps(int(jnp.max(num))) if concrete else problem.max_steps
        length = min(length, problem.max_steps)
    else:
        length = min(int(num_steps), problem.max_steps)
        if concrete and int(jnp.max(num)) > length:
            raise ValueError(
                f"`num_steps={num_steps}` is too small: the recorded solve took "
                f"{int(jnp.max(num))} steps."
            )
    if not concrete:
        # More accepted steps than the scan holds would silently truncate the trajectory. The
        # check sits on `ends`, which the linearisation consumes, so it cannot be pruned.
        ends = eqx.error_if(
            ends,
            jnp.max(num) > length,
            "diffrax_sntk: the recorded solve took more steps than `num_steps`; increase it.",
        )
    ys, jvp = _linearise_jit(params, static, problem, space, ends, length)
    p_struct = jtu.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    return ys, Linearisation(jvp, num, p_struct, length)
