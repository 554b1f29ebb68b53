r"""Periodic orbits tracked along a sequence of parameters (training checkpoints).

The cycle found at one checkpoint is the initial guess at the next (natural continuation in the
checkpoint index, one shooting solve per checkpoint, a `lax.scan`). Where the shooting fails the
guess stays at the last orbit found, so a cycle that disappears and comes back is picked up
again. Host-side, `CycleTrack.events` reads off where the cycle is born or lost and where a
multiplier crosses −1 (PD) or a complex pair crosses the unit circle (NS) between checkpoints,
at a fractional checkpoint index interpolated linearly in the test function (the parameters
themselves are not interpolated).
"""

from collections.abc import Callable
from typing import NamedTuple

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Complex, Float, Int, PyTree

from ._cycles_continuation import test_functions
from ._fixed_points import _as_float
from ._misc import RESULTS, error_if_nonfinite, successful
from ._periodic import (
    FieldFamily,
    correct,
    make_shooting_options,
    orbit_at,
    reference,
)
from ._tracking import _stack_sequence

__all__ = ["CycleTrack", "CycleTrackEvent", "track_periodic_orbits"]


class CycleTrackEvent(NamedTuple):
    """`kind`: `"born"` (found at `position` after failing before), `"lost"` (failing at
    `position` after being found), `"PD"` or `"NS"` (a multiplier crossing between two
    checkpoints where the orbit was found); `position`: the (fractional) checkpoint index."""

    kind: str
    position: float


class CycleTrack(eqx.Module):
    """Result of `track_periodic_orbits`: one row per checkpoint.

    **Fields:** `states (K, N)`, `periods (K,)`, `multipliers (K, N)` (sorted by decreasing
    modulus), `trivial_index (K,)`, `num_unstable (K,)`, `stable (K,)`, `result (K,)` (as for
    `PeriodicOrbit`; a failed checkpoint's other fields describe the failed iterate) and
    `test_functions (K, 3)` (`ψ_PD`, `ψ_NS` in columns 1, 2; column 0 is unused here).

    **Properties:** `converged (K,)`; `events` (host-side): a tuple of `CycleTrackEvent`.
    """

    states: Float[Array, "checkpoints state"]
    periods: Float[Array, " checkpoints"]
    multipliers: Complex[Array, "checkpoints state"]
    trivial_index: Int[Array, " checkpoints"]
    num_unstable: Int[Array, " checkpoints"]
    stable: Bool[Array, " checkpoints"]
    result: RESULTS
    test_functions: Float[Array, "checkpoints 3"]

    @property
    def converged(self) -> Bool[Array, " checkpoints"]:
        return successful(self.result)

    @property
    def events(self) -> tuple[CycleTrackEvent, ...]:
        ok = np.asarray(self.converged)
        g = np.asarray(self.test_functions)
        out = []
        for k in range(1, ok.shape[0]):
            if ok[k] and not ok[k - 1]:
                out.append(CycleTrackEvent("born", float(k)))
            if ok[k - 1] and not ok[k]:
                out.append(CycleTrackEvent("lost", float(k)))
            if ok[k] and ok[k - 1]:
                for col, kind in ((1, "PD"), (2, "NS")):
                    a, b = g[k - 1, col], g[k, col]
                    if np.sign(a) != np.sign(b):
                        out.append(CycleTrackEvent(kind, float(k - 1 + a / (a - b))))
        return tuple(out)


@eqx.filter_jit
def _track_impl(family, static, dyn_seq, x0, period, opts):
    x0 = error_if_nonfinite(x0, "initial_state")
    period = eqx.error_if(period, ~(period > 0), "`period` must be positive and finite")
    dyn_seq = error_if_nonfinite(dyn_seq, "params_sequence")
    s = jnp.zeros((), x0.dtype)
    m = x0.shape[0] + 2
    e_s = jnp.zeros((m,), x0.dtype).at[-1].set(1)

    def body(carry, p_dyn):
        x, T = carry
        args = eqx.combine(p_dyn, static)
        x_ref, f_ref = reference(family, args, x, s)
        z0 = jnp.concatenate([x, T[None], s[None]])
        z, result, steps = correct(family, args, z0, z0, e_s, x_ref, f_ref, opts)
        orbit, jac = orbit_at(family, args, z, result, steps, x_ref, f_ref, opts)
        ok = successful(orbit.result)
        # The tangent is irrelevant here (no scalar parameter): ψ_LPC is left at zero.
        g = test_functions(jnp.zeros((m,), x0.dtype), orbit.multipliers, orbit.trivial_index)
        carry = (jnp.where(ok, orbit.state, x), jnp.where(ok, orbit.period, T))
        return carry, (orbit, g)

    _, (orbits, g) = jax.lax.scan(body, (x0, period), dyn_seq)
    return CycleTrack(
        states=orbits.state,
        periods=orbits.period,
        multipliers=orbits.multipliers,
        trivial_index=orbits.trivial_index,
        num_unstable=orbits.num_unstable,
        stable=orbits.stable,
        result=orbits.result,
        test_functions=g,
    )


def track_periodic_orbits(
    vector_field: Callable,
    params_sequence: list[PyTree] | PyTree,
    initial_state: Float[ArrayLike, " state"],
    period: float | Float[ArrayLike, ""],
    *,
    solver: dfx.AbstractSolver | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    dt0: float | None = None,
    max_steps: int = 4096,
    rtol: float | None = None,
    atol: float | None = None,
    newton_max_steps: int = 32,
) -> CycleTrack:
    """A periodic orbit followed along a sequence of parameters (e.g. training checkpoints),
    with its period and Floquet multipliers at each, as `track_bifurcations` does for
    equilibria.

    **Arguments:**

    - `vector_field`: `vector_field(x, params) -> dx/dt` (for a model,
        `lambda x, m: m(0.0, x, u)` with the checkpoints as `params`).
    - `params_sequence`: a list of pytrees of one structure (at least two), or one pytree whose
        array leaves have a leading checkpoint axis.
    - `initial_state`, `period`: a guess of the orbit at the first checkpoint.
    - the rest: as in `find_periodic_orbit`.

    **Returns:** a `CycleTrack`; `track.events` lists births, losses, PD and NS crossings.
    Jittable (`eqx.filter_jit`) for a stacked `params_sequence`.
    """
    x0 = _as_float(initial_state, "initial_state")
    if x0.ndim != 1 or x0.shape[0] < 2:
        raise ValueError(f"`initial_state` must have shape (N,) with N >= 2, got {x0.shape}")
    if jnp.ndim(period) != 0:
        raise ValueError(f"`period` must be a scalar, got shape {jnp.shape(period)}")
    dyn_seq, static = _stack_sequence(params_sequence)
    opts = make_shooting_options(
        x0.dtype, solver, stepsize_controller, dt0, max_steps, rtol, atol, newton_max_steps
    )
    return _track_impl(
        FieldFamily(vector_field), static, dyn_seq, x0, jnp.asarray(period, x0.dtype), opts
    )
