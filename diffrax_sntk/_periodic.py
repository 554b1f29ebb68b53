r"""Periodic orbits by shooting on diffrax, with Floquet multipliers.

A periodic orbit of `dx/dt = f(x)` through `x0` with period `T` solves `φ_T(x0) = x0`, where
`φ_T` is the flow. Time is rescaled to `τ = t/T ∈ [0, 1]`, so the shooting map is one diffrax
solve of `dx/dτ = T f(x)` on a fixed interval and `T` is an ordinary unknown. The system is
closed by a phase condition, the hyperplane `⟨f(x_ref), x0 - x_ref⟩ = 0` through a reference
point (the initial guess; along a branch, the previous orbit), and solved by optimistix Newton.

Every computation here works on the unknown `z = (x0, T, s)`, where `s` is a scalar parameter
(a continuation parameter, or a dummy pinned to zero for a single orbit), and one bordered
residual `H(z) = [φ(x0; T, s) - x0, ⟨f_ref, x0 - x_ref⟩, ⟨n, z - a⟩]`: the last row pins `s`
(`n = e_s`) or imposes the pseudo-arclength condition (`n` = the tangent). One corrector thus
serves `find_periodic_orbit`, continuation steps and event localisation
(`_cycles_continuation.py`).

The monodromy matrix `M = ∂φ_T/∂x0` is the forward-mode Jacobian of the flow map, through
diffrax's `ForwardMode` adjoint — the same tangent-linear solve that `jacobian_operator` uses
for its JVPs. The KPFlow `propagator` is not used: it samples Φ(t_k, τ_j) at the quadrature
nodes of a `TrajectoryProblem` and raises on a failed solve, whereas shooting needs Φ(T, 0) at
a traced `T` and must report a failed solve as a result code. The JVP differentiates exactly the
discrete map that Newton solves, so `M` is consistent with the orbit found.
"""

from collections.abc import Callable
from typing import cast

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, ArrayLike, Bool, Complex, Float, Int, PyTree

from ._fixed_points import _MISSING, _as_float, newton_solve, resolve_dynamics
from ._misc import RESULTS, default_tol, error_if_nonfinite, result_where, successful

__all__ = [
    "PeriodicOrbit",
    "find_periodic_orbit",
    "hopf_cycle_predictor",
    "periodic_orbit_from_hopf",
    "periodic_orbit_trajectory",
]

# Shooting that converged to an equilibrium (period or orbit collapsed).
NO_PERIODIC_ORBIT = RESULTS.no_periodic_orbit


# ---------------------------------------------------------------------------------------------
# Options and families.


class ShootingOptions(eqx.Module):
    """How the flow is integrated and the shooting system solved (all static but the solver's
    and controller's own fields)."""

    solver: dfx.AbstractSolver
    stepsize_controller: dfx.AbstractStepSizeController
    dt0: float | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    newton_max_steps: int = eqx.field(static=True)


def make_shooting_options(
    dtype, solver, stepsize_controller, dt0, max_steps, rtol, atol, newton_max_steps
) -> ShootingOptions:
    """Defaults: `Tsit5` with a PID controller at `rtol = 1e-11, atol = 1e-13` (float64) or
    `1e-6, 1e-8` (float32), and Newton tolerances `eps^(2/3)` of the state dtype."""
    f64 = jnp.dtype(dtype) == jnp.float64
    solver = dfx.Tsit5() if solver is None else solver
    if not isinstance(solver, dfx.AbstractSolver):
        raise TypeError(f"`solver` must be a diffrax solver, got {type(solver).__name__}")
    if stepsize_controller is None:
        # The multipliers are derivatives of the flow, accurate to roughly the ODE tolerance:
        # tighter than `TrajectoryProblem`'s defaults because periods and multipliers are
        # the output here, not an intermediate.
        tol = (1e-11, 1e-13) if f64 else (1e-6, 1e-8)
        stepsize_controller = dfx.PIDController(rtol=tol[0], atol=tol[1], norm=optx.max_norm)
    if not isinstance(stepsize_controller, dfx.AbstractStepSizeController):
        raise TypeError(
            "`stepsize_controller` must be a diffrax step-size controller, got "
            f"{type(stepsize_controller).__name__}"
        )
    if not isinstance(stepsize_controller, dfx.AbstractAdaptiveStepSizeController) and dt0 is None:
        raise ValueError("A non-adaptive `stepsize_controller` needs `dt0` (a step in τ = t/T)")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive int, got {max_steps!r}")
    if not isinstance(newton_max_steps, int) or newton_max_steps < 1:
        raise ValueError(f"`newton_max_steps` must be a positive int, got {newton_max_steps!r}")
    tol = default_tol(dtype)
    return ShootingOptions(
        solver=solver,
        stepsize_controller=stepsize_controller,
        dt0=None if dt0 is None else float(dt0),
        max_steps=max_steps,
        rtol=tol if rtol is None else float(rtol),
        atol=tol if atol is None else float(atol),
        newton_max_steps=newton_max_steps,
    )


class FieldFamily(eqx.Module):
    """`vector_field(x, params)` as a family `(x, s, params)` that ignores `s`."""

    vector_field: Callable

    def __call__(self, x, s, args):
        return self.vector_field(x, args)


class ParameterFamily(eqx.Module):
    """`vector_field(x, mu)` or, with args, `vector_field(x, mu, args)` as `(x, s, args)`."""

    vector_field: Callable
    with_args: bool = eqx.field(static=True)

    def __call__(self, x, s, args):
        if self.with_args:
            return self.vector_field(x, s, args)
        return self.vector_field(x, s)


# ---------------------------------------------------------------------------------------------
# The shooting map and its bordered residual.


def split(z):
    """`z = (x0, T, s)` → `(x0, T, s)`."""
    return z[:-2], z[-2], z[-1]


def flow(family, args, x0, period, s, opts: ShootingOptions, ts=None):
    """`(φ_T(x0), failed)`, or the states at the fractions `ts` of the period. Forward-mode
    differentiable (diffrax `ForwardMode`)."""

    def term(tau, x, a):
        T, ss, aa = a
        return T * family(x, ss, aa)

    dtype = x0.dtype
    saveat = dfx.SaveAt(t1=True) if ts is None else dfx.SaveAt(ts=ts)
    sol = dfx.diffeqsolve(
        dfx.ODETerm(term),
        opts.solver,
        jnp.zeros((), dtype),
        jnp.ones((), dtype),
        opts.dt0,
        x0,
        (period, s, args),
        saveat=saveat,
        stepsize_controller=opts.stepsize_controller,
        adjoint=dfx.ForwardMode(),
        max_steps=opts.max_steps,
        throw=False,
    )
    failed = sol.result != dfx.RESULTS.successful
    ys = cast(Array, sol.ys)
    return (ys[-1] if ts is None else ys), failed


def shooting_residual(family, args, z, x_ref, f_ref, opts):
    """`[φ(x0; T, s) - x0, ⟨f_ref, x0 - x_ref⟩]`, NaN where the solve failed (so that Newton
    reports it instead of converging on a truncated trajectory)."""
    x0, T, s = split(z)
    xT, failed = flow(family, args, x0, T, s, opts)
    r = jnp.where(failed, jnp.nan, xT - x0)
    return jnp.concatenate([r, jnp.dot(f_ref, x0 - x_ref)[None]])


def unit(v):
    n = jnp.linalg.norm(v)
    return v / jnp.where(n > 0, n, 1)


def correct(family, args, z_guess, anchor, normal, x_ref, f_ref, opts):
    """Newton on `H(z) = [shooting residual, ⟨normal, z - anchor⟩]`: `(z, result, steps)`."""

    def fn(z, _):
        g = shooting_residual(family, args, z, x_ref, f_ref, opts)
        return jnp.concatenate([g, jnp.dot(normal, z - anchor)[None]])

    return newton_solve(fn, z_guess, None, opts.rtol, opts.atol, opts.newton_max_steps)


def shooting_jacobian(family, args, z, x_ref, f_ref, opts):
    """`(∂G/∂z, G)` of the shooting residual G: the Jacobian has shape `(N + 1, N + 2)`, its
    leading `N × N` block is `M - I` with `M` the monodromy matrix. Forward mode: `N + 2`
    tangent solves (the primal comes with them, so the program holds one solve fewer)."""

    def fn(zz):
        g = shooting_residual(family, args, zz, x_ref, f_ref, opts)
        return g, g

    return jax.jacfwd(fn, has_aux=True)(z)


class Floquet(eqx.Module):
    multipliers: Complex[Array, " state"]
    trivial_index: Int[Array, ""]
    num_unstable: Int[Array, ""]


def floquet(monodromy) -> Floquet:
    """Multipliers sorted by decreasing modulus (then decreasing imaginary part); the trivial
    one is the multiplier closest to 1 (as in MatCont); `num_unstable` counts the others
    outside the unit circle."""
    vals = jnp.linalg.eigvals(monodromy)
    order = jnp.lexsort((-vals.imag, -jnp.abs(vals)))
    vals = vals[order]
    trivial = jnp.argmin(jnp.abs(vals - 1))
    nontrivial = jnp.arange(vals.shape[0]) != trivial
    num_unstable = jnp.sum(nontrivial & (jnp.abs(vals) > 1))
    return Floquet(vals, trivial, num_unstable)


def degenerate(family, args, z, atol):
    """The orbit is an equilibrium: the distance travelled, `T·‖f(x0)‖`, is at the Newton
    tolerance (the period collapsed to zero, or `x0` is a fixed point), or `T <= 0`."""
    x0, T, s = split(z)
    speed = jnp.linalg.norm(family(x0, s, args))
    scale = 1 + jnp.max(jnp.abs(x0))
    return ~(T > 0) | (jnp.abs(T) * speed <= 1e3 * atol * scale)


# ---------------------------------------------------------------------------------------------
# One orbit.


class PeriodicOrbit(eqx.Module):
    """A periodic orbit found by `find_periodic_orbit`.

    **Fields:**

    - `state`: a point `x0` on the orbit (on the phase hyperplane through the initial guess).
    - `period`: the period `T`.
    - `multipliers`: the Floquet multipliers, eigenvalues of `monodromy`, sorted by decreasing
        modulus (then decreasing imaginary part).
    - `trivial_index`: index of the trivial multiplier (the one closest to 1: the flow
        direction, `M f(x0) = f(x0)`).
    - `monodromy`: `M = ∂φ_T/∂x0`, the linearised return map over one period.
    - `num_unstable`: nontrivial multipliers with `|μ| > 1`; `stable` ⇔ it is zero and the
        orbit was found.
    - `residual`: `‖φ_T(x0) - x0‖₂`.
    - `result`: `RESULTS.successful`; `RESULTS.no_periodic_orbit` (the shooting converged to
        an equilibrium: the period collapsed to zero or the orbit shrank to a point); or
        Newton's failure (`nonlinear_max_steps_reached`, `nonfinite`, ...; a failed ODE solve
        shows as `nonfinite`). Read the other fields together with it.
    - `num_steps`: Newton iterations.

    **Properties:** `converged`, `floquet_exponents` (`log μ / T`, principal branch).
    """

    state: Float[Array, "*batch state"]
    period: Float[Array, "*batch"]
    multipliers: Complex[Array, "*batch state"]
    trivial_index: Int[Array, "*batch"]
    monodromy: Float[Array, "*batch state state"]
    num_unstable: Int[Array, "*batch"]
    stable: Bool[Array, "*batch"]
    residual: Float[Array, "*batch"]
    result: RESULTS
    num_steps: Int[Array, "*batch"]

    @property
    def converged(self) -> Bool[Array, "*batch"]:
        return successful(self.result)

    @property
    def floquet_exponents(self) -> Complex[Array, "*batch state"]:
        return jnp.log(self.multipliers) / self.period[..., None]


def orbit_at(family, args, z, result, steps, x_ref, f_ref, opts) -> tuple[PeriodicOrbit, Array]:
    """Assembles a `PeriodicOrbit` at a corrected `z` (multipliers from the shooting Jacobian);
    also returns that Jacobian `(N + 1, N + 2)` for tangents."""
    n = z.shape[0] - 2
    safe = jnp.where(jnp.isfinite(z), z, 0)
    jac, g = shooting_jacobian(family, args, safe, x_ref, f_ref, opts)
    monodromy = jac[:n, :n] + jnp.eye(n, dtype=z.dtype)
    ok_jac = jnp.all(jnp.isfinite(monodromy))
    # `eig` of a non-finite matrix is undefined; such entries are failures in `result`.
    fl = floquet(jnp.where(ok_jac, monodromy, 0))
    result = result_where(~ok_jac, RESULTS.nonfinite, result)
    result = result_where(degenerate(family, args, safe, opts.atol), NO_PERIODIC_ORBIT, result)
    x0, T, _ = split(z)
    # NaN where the solve failed: the residual of an orbit that was not integrated.
    residual = jnp.linalg.norm(g[:n])
    orbit = PeriodicOrbit(
        state=x0,
        period=T,
        multipliers=fl.multipliers,
        trivial_index=fl.trivial_index,
        monodromy=monodromy,
        num_unstable=fl.num_unstable,
        stable=successful(result) & (fl.num_unstable == 0),
        residual=residual,
        result=result,
        num_steps=steps,
    )
    return orbit, jac


def reference(family, args, x, s):
    """Phase reference `(x_ref, f_ref)`: the hyperplane through `x` orthogonal to `f(x)`."""
    return x, unit(family(x, s, args))


def _first_return(family, args, x0, period, s, x_ref, f_ref, opts, num=513):
    """The period guess refined from the relaxed trajectory: the first return to the phase
    hyperplane (a crossing in the direction of the flow, near `x_ref`) within three guessed
    periods, linearly interpolated between samples. Newton needs a period guess well inside
    its basin: from a guess far off, `T → 0` (where the shooting residual vanishes trivially)
    attracts it. Keeps the guess when no return is seen."""
    ts = jnp.linspace(0, 1, num, dtype=x0.dtype)
    window = 3 * period
    ys, failed = flow(family, args, x0, window, s, opts, ts=ts)
    h = (ys - x_ref) @ f_ref
    dist = jnp.linalg.norm(ys - x_ref, axis=-1)
    # Crossings far from x_ref are where the hyperplane cuts the orbit elsewhere.
    near = dist[1:] <= 0.25 * jnp.max(dist)
    up = (h[:-1] < 0) & (h[1:] >= 0) & near
    k = jnp.argmax(up)
    frac = h[k] / jnp.where(h[k] != h[k + 1], h[k] - h[k + 1], 1)
    estimate = window * (ts[k] + frac * (ts[k + 1] - ts[k]))
    return jnp.where(jnp.any(up) & ~failed, estimate, period)


@eqx.filter_jit
def _find_impl(family, args, x0, period, s, opts, throw, transient=None):
    args = error_if_nonfinite(args, "params")
    x0 = error_if_nonfinite(x0, "initial_state")
    period = error_if_nonfinite(period, "period")
    period = eqx.error_if(period, period <= 0, "`period` must be positive")
    s = error_if_nonfinite(s, "parameter")
    if transient is not None:
        # Relax the guess onto an attracting cycle first; a failed solve leaves NaN, which
        # Newton then reports.
        relaxed, failed = flow(family, args, x0, transient, s, opts)
        x0 = jnp.where(failed, jnp.nan, relaxed)
    x_ref, f_ref = reference(family, args, x0, s)
    if transient is not None:
        period = _first_return(family, args, x0, period, s, x_ref, f_ref, opts)
    z0 = jnp.concatenate([x0, period[None], s[None]])
    e_s = jnp.zeros_like(z0).at[-1].set(1)
    z, result, steps = correct(family, args, z0, z0, e_s, x_ref, f_ref, opts)
    orbit, _ = orbit_at(family, args, z, result, steps, x_ref, f_ref, opts)
    if throw:
        orbit = orbit.result.error_if(orbit, ~successful(orbit.result))
    return orbit


def find_periodic_orbit(
    vector_field: Callable,
    params: PyTree = _MISSING,
    initial_state: Float[ArrayLike, " state"] = _MISSING,
    period: float | Float[ArrayLike, ""] = _MISSING,
    *,
    inputs: PyTree = None,
    solver: dfx.AbstractSolver | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    dt0: float | None = None,
    max_steps: int = 4096,
    rtol: float | None = None,
    atol: float | None = None,
    newton_max_steps: int = 32,
    transient: float | Float[ArrayLike, ""] | None = None,
    throw: bool = False,
) -> PeriodicOrbit:
    """A periodic orbit by single shooting, with its Floquet multipliers.

    Two call forms, as for `find_fixed_points` (the number of arguments decides):

    - `find_periodic_orbit(vector_field, params, initial_state, period)` with
        `vector_field(x, params)`;
    - `find_periodic_orbit(model, initial_state, period, inputs=u)` with `model(t, x, u)` at
        `t = 0` and a constant input `u`.

    Newton (optimistix) solves for `(x0, T)`:

    ```
    φ_T(x0) - x0 = 0,        ⟨f(x_ref), x0 - x_ref⟩ = 0,
    ```

    with `x_ref = initial_state` (the phase condition: `x0` lies on the hyperplane through the
    guess orthogonal to the flow there). `φ_T` is one diffrax solve in rescaled time `t/T`;
    the monodromy `M = ∂φ_T/∂x0` is its forward-mode Jacobian. Jittable
    (`eqx.filter_jit`) and `vmap`-able over `params`, `initial_state` and `period`.

    **Arguments:**

    - `vector_field`: `vector_field(x, params) -> dx/dt`; or a model `model(t, x, u)`.
    - `params`: any pytree (omit it for a model).
    - `initial_state`: a state near the orbit, shape `(N,)`.
    - `period`: a guess of the period (positive).
    - `inputs`: the model form's constant input.
    - `solver`, `stepsize_controller`, `dt0`, `max_steps`: the diffrax solve of one period, in
        rescaled time `τ ∈ [0, 1]` (default `Tsit5`, PID at `rtol = 1e-11, atol = 1e-13` in
        float64, `1e-6, 1e-8` in float32).
    - `rtol`, `atol`, `newton_max_steps`: Newton settings (default tolerance `eps^(2/3)`).
    - `transient`: integrate `initial_state` for this time first (onto an attracting cycle,
        e.g. from a state of a trained RNN), then refine `period` from the first return to
        the phase hyperplane within `3 * period`. Newton then starts on the cycle with a period
        inside its basin. Default: none (Newton from the guesses as given).
    - `throw`: raise the result's message when no orbit was found (also under `jit`).

    **Returns:**

    A `PeriodicOrbit`. Non-convergence is a code in `result`, never a silent answer;
    converging to an equilibrium (the period collapsing to zero, or the guess sitting at a
    fixed point) is `RESULTS.no_periodic_orbit`.
    """
    if initial_state is _MISSING and period is _MISSING:
        raise TypeError("`find_periodic_orbit` needs `initial_state` and `period`")
    if period is _MISSING:
        # Three positional arguments: the model form.
        params, initial_state, period = _MISSING, params, initial_state
    x0 = _as_float(initial_state, "initial_state")
    if x0.ndim != 1 or x0.shape[0] < 2:
        raise ValueError(
            f"`initial_state` must have shape (N,) with N >= 2 (a periodic orbit needs two "
            f"dimensions), got {x0.shape}"
        )
    if jnp.ndim(period) != 0:
        raise ValueError(f"`period` must be a scalar, got shape {jnp.shape(period)}")
    vector_field, params = resolve_dynamics(
        vector_field, params, x0, inputs, "find_periodic_orbit", "initial_state"
    )
    opts = make_shooting_options(
        x0.dtype, solver, stepsize_controller, dt0, max_steps, rtol, atol, newton_max_steps
    )
    period = jnp.asarray(period, x0.dtype)
    s = jnp.zeros((), x0.dtype)
    if transient is not None:
        if jnp.ndim(transient) != 0:
            raise ValueError(f"`transient` must be a scalar, got shape {jnp.shape(transient)}")
        transient = error_if_nonfinite(jnp.asarray(transient, x0.dtype), "transient")
    return _find_impl(FieldFamily(vector_field), params, x0, period, s, opts, throw, transient)


def periodic_orbit_trajectory(
    vector_field: Callable,
    params: PyTree,
    orbit_or_state: PeriodicOrbit | Float[ArrayLike, " state"],
    period: float | Float[ArrayLike, ""] | None = None,
    *,
    num: int = 128,
    solver: dfx.AbstractSolver | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    max_steps: int = 4096,
) -> Float[Array, "num state"]:
    """The states `x(k T / (num - 1))`, `k = 0 .. num - 1`, over one period (for plots and
    amplitudes).

    **Arguments:** `vector_field(x, params)` and `params`; a `PeriodicOrbit` (or a state and
    `period`); `num` samples; the diffrax settings as in `find_periodic_orbit`.

    **Returns:** an array `(num, N)`; the first and last rows coincide on a periodic orbit.
    """
    if isinstance(orbit_or_state, PeriodicOrbit):
        x0, T = orbit_or_state.state, orbit_or_state.period
    else:
        if period is None:
            raise TypeError("`period` is needed when a state is given instead of an orbit")
        x0, T = _as_float(orbit_or_state, "orbit_or_state"), period
    T = jnp.asarray(T, x0.dtype)
    opts = make_shooting_options(
        x0.dtype, solver, stepsize_controller, None, max_steps, None, None, 1
    )
    return _trajectory_impl(FieldFamily(vector_field), params, x0, T, opts, num)


@eqx.filter_jit
def _trajectory_impl(family, args, x0, T, opts, num):
    ts = jnp.linspace(0, 1, num, dtype=x0.dtype)
    ys, failed = flow(family, args, x0, T, jnp.zeros((), x0.dtype), opts, ts=ts)
    return jnp.where(failed, jnp.nan, ys)


# ---------------------------------------------------------------------------------------------
# From a Hopf point onto the cycle branch.


def hopf_cycle_predictor(
    hopf, parameter: float | Float[ArrayLike, ""]
) -> tuple[Float[Array, " state"], Float[Array, ""]]:
    r"""The normal-form prediction of the cycle born at a Hopf point: `(x0, period)` at
    `parameter`.

    With the Hopf point `x*` at `μ*`, the critical eigenvector `q` (`‖q‖ = 1`, the eigenvalue
    `iω`), the first Lyapunov coefficient `l1` and `α'(μ*) = dRe λ/dμ` (MatCont/BifurcationKit
    convention, the fields of `HopfNormalForm`), the normal form `ż = (α + iω) z + c1 z|z|²`
    on `x = x* + z q + z̄ q̄` has the cycle `|z| = r = sqrt(−α/l1)`, `α = α'(μ*)(μ − μ*)`, so

    ```
    x0 = x* + 2 r Re q,        T = 2π/ω,
    ```

    accurate to `O(μ − μ*)` in the state (`O(r²)`). The cycle exists on the side where
    `α/l1 < 0`; a `parameter` on the other side raises (also under `jit`).

    **Arguments:** `hopf`, a `Bifurcation` of kind `"hopf"` from `ds.continuation` (its
    `parameter`, `state`, `right_eigenvector` and `normal_form`); `parameter`, the value `μ`.

    **Returns:** `(x0, period)`.
    """
    if getattr(hopf, "kind", "hopf") != "hopf":
        raise ValueError(f"`hopf` must be a Hopf bifurcation, got kind {hopf.kind!r}")
    nf = hopf.normal_form
    x_star = jnp.asarray(hopf.state)
    q = jnp.asarray(hopf.right_eigenvector)
    q = q / jnp.linalg.norm(q)
    mu = jnp.asarray(parameter, x_star.dtype)
    alpha = nf.transversality * (mu - hopf.parameter)
    r2 = -alpha / nf.l1
    r2 = eqx.error_if(
        r2,
        ~(r2 > 0),
        "`parameter` is on the side of the Hopf point where no cycle is born (the normal "
        "form predicts one only where (μ − μ*)·dRe λ/dμ / l1 < 0)",
    )
    x0 = x_star + 2 * jnp.sqrt(r2) * jnp.real(q)
    return x0, 2 * jnp.pi / nf.omega


def periodic_orbit_from_hopf(
    vector_field: Callable,
    hopf,
    parameter: float | Float[ArrayLike, ""],
    *,
    args: PyTree = None,
    solver: dfx.AbstractSolver | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    dt0: float | None = None,
    max_steps: int = 4096,
    rtol: float | None = None,
    atol: float | None = None,
    newton_max_steps: int = 32,
    throw: bool = False,
) -> PeriodicOrbit:
    """The periodic orbit born at a Hopf point, at a nearby parameter value: the amplitude
    predictor `hopf_cycle_predictor` (from the first Lyapunov coefficient), corrected by
    shooting.

    **Arguments:**

    - `vector_field`: `vector_field(x, mu)`, or `vector_field(x, mu, args)` with `args`, as for
        `ds.continuation` (whose `branch.bifurcations` give `hopf`).
    - `hopf`: a `Bifurcation` of kind `"hopf"`.
    - `parameter`: where to find the cycle (on the side where it exists).
    - the rest: as in `find_periodic_orbit`.

    **Returns:** a `PeriodicOrbit` at `parameter` (continue it with
    `continue_periodic_orbit(vector_field, orbit, None, parameter, p1)`).
    """
    x0, period = hopf_cycle_predictor(hopf, parameter)
    opts = make_shooting_options(
        x0.dtype, solver, stepsize_controller, dt0, max_steps, rtol, atol, newton_max_steps
    )
    family = ParameterFamily(vector_field, args is not None)
    return _find_impl(family, args, x0, period, jnp.asarray(parameter, x0.dtype), opts, throw)
