"""Trajectory problems: observation times, a batch of initial states, inputs, and every diffrax
choice, plus `simulate`.

Two measured hazards shape the defaults here (see ARCHITECTURE.md, "Known pitfalls"):

1. *Fixed points.* An adaptive controller watching only the primal state takes huge steps on or
   near a fixed point, where the state barely moves but its sensitivities do. The default
   controller therefore also watches a *probe tangent*: the state is augmented with
   s' = (∂f/∂x) s + (∂f/∂θ) p for one fixed unit parameter direction p, so the steps resolve the
   tangent-linear dynamics too. The probe is wrapped in `stop_gradient`, so J and Jᵀ stay exact
   transposes of the same discrete map and no derivative work is spent on it.
2. *float32 under jit.* With `ConstantStepSize`, diffrax advances time by repeated addition
   `t ← t + dt`. When observation times lie on that grid, each save falls an ulp before or after a
   step boundary, and the recomputed forward pass of `RecursiveCheckpointAdjoint`, compiled inside
   an outer `jit`, can round those additions differently from the original pass: saves are then
   attributed to different steps in the two passes and the float32 VJP was off by 19–31%. We
   replace `ConstantStepSize` by `StepTo` on a precomputed grid in which the observation times
   appear exactly, so every pass sees bit-identical step times.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Bool, Float, PyTree

from ._misc import error_if_nonfinite, error_if_not
from ._model import has_readout

__all__ = ["TrajectoryProblem", "simulate"]

_NOT_SUCCESSFUL_MSG = (
    "diffrax_sntk: an ODE solve did not finish successfully (most often it hit `max_steps`). "
    "Increase `TrajectoryProblem(max_steps=...)`, loosen `rtol`/`atol`, use a stiff solver, or "
    "check the model for blow-up."
)


class TrajectoryProblem(eqx.Module):
    """Everything about *how* a model is integrated and observed, separate from the model.

    Trial `b` solves dx/dt = f(t, x, u_b(t); θ) from `y0[b]` at time `t0` and is observed at `ts`.
    """

    ts: Float[Array, " time"]
    y0: Float[Array, "batch state"]
    inputs: Any
    input_ts: Float[Array, " input_time"] | None
    t0: Float[Array, ""]
    solver: dfx.AbstractSolver
    stepsize_controller: dfx.AbstractStepSizeController
    dt0: float | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    adjoint: dfx.AbstractAdjoint
    tangent_control: bool = eqx.field(static=True)
    input_mode: str = eqx.field(static=True)

    def __init__(
        self,
        ts: ArrayLike,
        y0: ArrayLike,
        inputs: Any = None,
        *,
        input_ts: ArrayLike | None = None,
        t0: float | ArrayLike = 0.0,
        solver: dfx.AbstractSolver | None = None,
        stepsize_controller: dfx.AbstractStepSizeController | None = None,
        dt0: float | None = None,
        max_steps: int = 4096,
        rtol: float | None = None,
        atol: float | None = None,
        adjoint: dfx.AbstractAdjoint | None = None,
        tangent_control: bool = True,
    ):
        """**Arguments:**

        - `ts`: observation times, shape `(T,)`, strictly increasing, `ts[0] >= t0`.
        - `y0`: initial states, shape `(B, N)` (a single `(N,)` state is promoted to `B = 1`).
        - `inputs`: `None`; an array `(B, T_in, M)` (per trial) or `(T_in, M)` (shared) sampled at
          `input_ts` and linearly interpolated; a `diffrax.AbstractPath`; or a callable
          `u(t) -> (M,)` shared by all trials.
        - `input_ts`: the time grid of array inputs, shape `(T_in,)`, covering `[t0, ts[-1]]`.
        - `t0`: start time (default 0).
        - `solver`: any diffrax solver (default `Tsit5()`).
        - `stepsize_controller`: any diffrax controller. Default: a `PIDController` with
          `rtol`/`atol` that also controls the error of a probe tangent (see `tangent_control`).
          A `ConstantStepSize` is converted to an equivalent `StepTo` grid containing `ts`
          exactly (this makes float32 VJPs under `jit` reproducible; see the module docs).
        - `dt0`: initial (or constant) step size; `None` lets adaptive controllers choose.
        - `max_steps`: step budget per solve.
        - `rtol`, `atol`: tolerances of the default controller (default 1e-8/1e-10 in float64,
          1e-5/1e-7 in float32).
        - `adjoint`: diffrax adjoint for reverse mode (default `RecursiveCheckpointAdjoint()`).
          Forward mode always uses `ForwardMode()`.
        - `tangent_control`: with an adaptive controller, also control the local error of a
          probe tangent so that sensitivities are resolved near fixed points (default `True`).

        **Raises:**

        `ValueError`/`TypeError` for wrong shapes, types or a missing argument. Wrong *values*
        (non-finite `ts`, `y0`, `inputs`; `ts` or `input_ts` not increasing; `input_ts` not
        covering `[t0, ts[-1]]`) are `eqx.error_if` checks on the stored arrays: they raise
        here when the values are known, and at run time when the problem is built inside
        `jax.jit` (an `EquinoxRuntimeError`/`JaxRuntimeError` carrying the same message).
        """
        ts = jnp.asarray(ts)
        if not jnp.issubdtype(ts.dtype, jnp.floating):
            ts = ts.astype(jnp.zeros(()).dtype)
        if ts.ndim != 1 or ts.shape[0] < 1:
            raise ValueError(
                f"`ts` must be a 1-D array of observation times, got shape {ts.shape}."
            )
        y0 = jnp.asarray(y0)
        if not jnp.issubdtype(y0.dtype, jnp.floating):
            y0 = y0.astype(ts.dtype)
        if y0.ndim == 1:
            y0 = y0[None]
        if y0.ndim != 2:
            raise ValueError(
                f"`y0` must have shape (batch, state) or (state,), got shape {y0.shape}."
            )
        dtype = jnp.result_type(ts.dtype, y0.dtype)
        ts = ts.astype(dtype)
        y0 = y0.astype(dtype)
        t0 = jnp.asarray(t0, dtype)
        if t0.ndim != 0:
            raise ValueError(f"`t0` must be a scalar, got shape {t0.shape}.")
        # Value checks are `eqx.error_if`s threaded into the stored arrays: they raise at
        # construction when the values are known, and at run time when the problem is built
        # inside `jit`/`vmap` (the checked arrays are what every solve consumes).
        t0 = error_if_nonfinite(t0, "t0")
        ts = error_if_nonfinite(ts, "ts")
        if ts.shape[0] > 1:
            ts = error_if_not(ts, jnp.all(jnp.diff(ts) > 0), "`ts` must be strictly increasing.")
        ts = error_if_not(ts, ts[0] >= t0, "`ts[0]` must be >= `t0`.")
        y0 = error_if_nonfinite(y0, "y0")
        batch = y0.shape[0]

        # Inputs.
        if inputs is None:
            input_mode = "none"
            if input_ts is not None:
                raise ValueError("`input_ts` was given but `inputs` is None.")
        elif isinstance(inputs, dfx.AbstractPath):
            input_mode = "path"
        elif callable(inputs) and not isinstance(inputs, (jax.Array, np.ndarray)):
            input_mode = "callable"
        else:
            inputs = jnp.asarray(inputs, dtype)
            if input_ts is None:
                raise ValueError("Array `inputs` need `input_ts`, the times they are sampled at.")
            input_ts = jnp.asarray(input_ts, dtype)
            if input_ts.ndim != 1 or input_ts.shape[0] < 2:
                raise ValueError(
                    f"`input_ts` must be 1-D with at least 2 times, got shape {input_ts.shape}."
                )
            if inputs.ndim == 2:
                inputs = jnp.broadcast_to(inputs, (batch,) + inputs.shape)
            if inputs.ndim != 3 or inputs.shape[:2] != (batch, input_ts.shape[0]):
                raise ValueError(
                    "`inputs` must have shape (batch, input_time, input) = "
                    f"({batch}, {input_ts.shape[0]}, M) or (input_time, input), "
                    f"got shape {inputs.shape}."
                )
            input_ts = error_if_nonfinite(input_ts, "input_ts")
            input_ts = error_if_not(
                input_ts,
                jnp.all(jnp.diff(input_ts) > 0),
                "`input_ts` must be strictly increasing.",
            )
            input_ts = error_if_not(
                input_ts,
                (input_ts[0] <= t0) & (input_ts[-1] >= ts[-1]),
                "`input_ts` must cover [t0, ts[-1]] (the interval the solves integrate over).",
            )
            inputs = error_if_nonfinite(inputs, "inputs")
            input_mode = "array"

        if not isinstance(max_steps, int) or max_steps <= 0:
            raise ValueError(f"`max_steps` must be a positive int, got {max_steps!r}.")
        solver = dfx.Tsit5() if solver is None else solver
        if not isinstance(solver, dfx.AbstractSolver):
            raise TypeError(f"`solver` must be a diffrax solver, got {type(solver).__name__}.")

        if stepsize_controller is None:
            if dtype == jnp.float64:
                rtol = 1e-8 if rtol is None else rtol
                atol = 1e-10 if atol is None else atol
            else:
                rtol = 1e-5 if rtol is None else rtol
                atol = 1e-7 if atol is None else atol
            if solver.error_order(dfx.ODETerm(lambda t, y, a: y)) is None:
                raise ValueError(
                    f"`solver={type(solver).__name__}()` has no error estimate, so it cannot use "
                    "the default adaptive controller: pass `stepsize_controller="
                    "diffrax.ConstantStepSize()` and `dt0`."
                )
            stepsize_controller = dfx.PIDController(
                rtol=rtol, atol=atol, pcoeff=0.0, icoeff=1.0, norm=optx.max_norm
            )
        elif rtol is not None or atol is not None:
            raise ValueError(
                "`rtol`/`atol` configure the default controller only; set them on your own "
                "`stepsize_controller` instead."
            )
        if isinstance(stepsize_controller, dfx.ConstantStepSize):
            if dt0 is None:
                raise ValueError("`ConstantStepSize` needs `dt0`.")
            stepsize_controller = _constant_to_step_to(ts, t0, float(dt0), max_steps)
            dt0 = None
        if (
            input_mode == "array"
            and isinstance(stepsize_controller, dfx.PIDController)
            and input_ts is not None
        ):
            # Linearly interpolated inputs have kinks at `input_ts`: step onto them.
            stepsize_controller = dfx.ClipStepSizeController(
                stepsize_controller, step_ts=input_ts
            )
        self.ts = ts
        self.y0 = y0
        self.inputs = inputs
        self.input_ts = input_ts
        self.t0 = t0
        self.solver = solver
        self.stepsize_controller = stepsize_controller
        self.dt0 = None if dt0 is None else float(dt0)
        self.max_steps = max_steps
        self.adjoint = dfx.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
        self.tangent_control = bool(tangent_control)
        self.input_mode = input_mode

    @property
    def batch_size(self) -> int:
        return self.y0.shape[0]

    @property
    def num_times(self) -> int:
        return self.ts.shape[0]

    @property
    def state_size(self) -> int:
        return self.y0.shape[1]

    @property
    def dtype(self):
        return self.y0.dtype

    def input_at(self, t, trial_inputs):
        """The input at time `t` for one trial (`trial_inputs` from `_per_trial_inputs`)."""
        if self.input_mode == "none":
            return None
        if self.input_mode == "array":
            return dfx.LinearInterpolation(ts=self.input_ts, ys=trial_inputs).evaluate(t)
        if self.input_mode == "path":
            return self.inputs.evaluate(t)
        return self.inputs(t)

    def per_trial_inputs(self):
        """The per-trial part of the inputs (vmapped over the batch), or a dummy."""
        if self.input_mode == "array":
            return self.inputs
        return jnp.zeros((self.batch_size,), self.dtype)


def _constant_to_step_to(ts, t0, dt0: float, max_steps: int) -> dfx.StepTo:
    # The grid's length is static, so it is computed from the values on the host: a structural
    # requirement (a traced `ts` cannot be converted), not a value check skipped under `jit`.
    if isinstance(ts, jax.core.Tracer) or isinstance(t0, jax.core.Tracer):
        raise ValueError(
            "`ConstantStepSize` needs concrete `ts` and `t0` (build the `TrajectoryProblem` "
            "outside `jit`)."
        )
    if not dt0 > 0:
        raise ValueError(f"`dt0` must be positive, got {dt0}.")
    ts_np = np.asarray(ts, np.float64)
    start, end = float(t0), float(ts_np[-1])
    n = int(np.ceil((end - start) / dt0 - 1e-9))
    grid = start + dt0 * np.arange(n + 1)
    # Snap grid points within a small fraction of a step to the observation times, so saves sit
    # exactly on step boundaries.
    # (1e-3·dt0 is far above any rounding of either grid, far below a real step.)
    keep = np.min(np.abs(grid[:, None] - ts_np[None, :]), axis=1) > 1e-3 * dt0
    grid = np.union1d(grid[keep & (grid < end)], np.concatenate([[start], ts_np]))
    grid = np.unique(grid[grid >= start].astype(np.dtype(ts.dtype)))
    if grid.shape[0] - 1 > max_steps:
        raise ValueError(
            f"`ConstantStepSize` with `dt0={dt0}` needs {grid.shape[0] - 1} steps, more than "
            f"`max_steps={max_steps}`; increase `max_steps`."
        )
    return dfx.StepTo(ts=jnp.asarray(grid, ts.dtype))


# ---------------------------------------------------------------------------------------------
# Solving


def partition_model(model, filter_spec=eqx.is_inexact_array):
    """Split a model into (parameters, static rest) with `filter_spec`."""
    return eqx.partition(model, filter_spec)


def _probe_direction(params: PyTree) -> PyTree:
    # A fixed Rademacher direction of unit norm: generic enough to excite every mode the
    # parameters can excite, and deterministic so that the step sequence (hence J) is a fixed map.
    flat, unravel = jfu.ravel_pytree(params)
    if flat.size == 0:
        return params
    signs = jr.rademacher(jr.PRNGKey(0), flat.shape, dtype=flat.dtype)
    return unravel(signs / jnp.sqrt(jnp.asarray(flat.size, flat.dtype)))


def solve_trial(
    params: PyTree,
    static: PyTree,
    problem: TrajectoryProblem,
    x0: Float[Array, " state"],
    trial_inputs,
    adjoint: dfx.AbstractAdjoint,
    t_start=None,
    t_end=None,
    save_ts=None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
) -> tuple[Any, Bool[Array, ""]]:
    """Integrate one trial from `t_start` (default `problem.t0`) and return `(out, failed)`.

    `out` holds the states at `save_ts` (default `problem.ts`), or only the final state when
    `save_ts == "end"`, or `(step_end_times, num_accepted_steps)` when `save_ts == "steps"` (the
    accepted grid). `failed` is True when diffrax did not finish (`max_steps`, a step size that
    underflowed, ...); `out` is then not a solution.

    The flag is returned rather than raised here because a check placed on the primal output
    guards only the primal: `eqx.error_if` passes tangents through unchecked, so under `jit` a
    JVP or VJP that uses only the tangent would prune a check on `out`. Callers differentiating
    this solve put the check on what they return (see `check_solved`).
    """

    def field(t, x, p):
        model = eqx.combine(p, static)
        return model(t, x, problem.input_at(t, trial_inputs))

    controller = problem.stepsize_controller if stepsize_controller is None else stepsize_controller
    t_start = problem.t0 if t_start is None else t_start
    save_ts = problem.ts if save_ts is None else save_ts
    if t_end is None:
        t_end = problem.ts[-1] if isinstance(save_ts, str) else save_ts[-1]
    use_probe = problem.tangent_control and isinstance(
        controller, dfx.AbstractAdaptiveStepSizeController
    )
    if use_probe:
        probe = _probe_direction(params)

        def term_fn(t, z, p):
            x, _s = z
            fx = field(t, x, p)
            # The probe only steers step sizes: no gradient flows through it.
            p_, x_, s_ = jax.lax.stop_gradient((p, x, _s))
            _, ds = jax.jvp(lambda xx, pp: field(t, xx, pp), (x_, p_), (s_, probe))
            return fx, ds

        z0 = (x0, jnp.zeros_like(x0))
        pick = lambda t, z, args: z[0]
    else:
        term_fn = field
        z0 = x0
        pick = None
    if save_ts == "steps":
        saveat = dfx.SaveAt(steps=True, fn=lambda t, z, args: jnp.zeros((), t.dtype))
    elif isinstance(save_ts, str):
        saveat = dfx.SaveAt(t1=True) if pick is None else dfx.SaveAt(t1=True, fn=pick)
    else:
        saveat = dfx.SaveAt(ts=save_ts) if pick is None else dfx.SaveAt(ts=save_ts, fn=pick)
    sol = dfx.diffeqsolve(
        dfx.ODETerm(term_fn),
        problem.solver,
        t_start,
        t_end,
        problem.dt0 if stepsize_controller is None else None,
        z0,
        params,
        saveat=saveat,
        stepsize_controller=controller,
        adjoint=_backward_throws(adjoint),
        max_steps=problem.max_steps,
        # Not diffrax's own `throw`: its check sits on the primal outputs only (see above).
        throw=False,
    )
    failed = sol.result != dfx.RESULTS.successful
    if save_ts == "steps":
        return (sol.ts, sol.stats["num_accepted_steps"]), failed
    ys = sol.ys
    return (ys[-1] if isinstance(save_ts, str) else ys), failed


def _backward_throws(adjoint: dfx.AbstractAdjoint) -> dfx.AbstractAdjoint:
    # A continuous adjoint's backward solves inherit `throw` from the forward call, which is off
    # here; their failures would pass silently into the cotangent. diffrax's own check on the
    # backward solution sits on the cotangent itself, so it is the right one there.
    if isinstance(adjoint, dfx.BacksolveAdjoint) and "throw" not in adjoint.kwargs:
        return dfx.BacksolveAdjoint(**adjoint.kwargs, throw=True)
    return adjoint


def check_solved(x: PyTree, failed: Bool[ArrayLike, "..."]) -> PyTree:
    """`x`, with an error (also under `jit`) if any of the solves behind it `failed`.

    The check sits on a scalar zero that is added to every leaf (the data dependency keeps it
    from being pruned). An `eqx.error_if` on `x` itself would put all of `x` through a
    conditional with a host callback, which gathers an array sharded over trials onto every
    device (see `shard_trials`).
    """
    zero = eqx.error_if(jnp.zeros((), jnp.int8), failed, _NOT_SUCCESSFUL_MSG)
    return jtu.tree_map(lambda leaf: leaf + zero.astype(leaf.dtype), x)


def integrate(
    params: PyTree,
    static: PyTree,
    problem: TrajectoryProblem,
    x0: Float[Array, " state"],
    trial_inputs,
    adjoint: dfx.AbstractAdjoint,
    t_start=None,
    t_end=None,
    save_ts=None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
) -> Any:
    """As `solve_trial`, returning `out` only, with an error if the solve failed. For primal
    values: a derivative of this function is not guarded (use `solve_trial`)."""
    out, failed = solve_trial(
        params, static, problem, x0, trial_inputs, adjoint, t_start, t_end, save_ts,
        stepsize_controller,
    )
    return check_solved(out, failed)


def adaptive_controller(problem: TrajectoryProblem) -> dfx.AbstractStepSizeController:
    """The problem's controller if adaptive, else a default adaptive one of matching precision
    (used for sub-interval solves that a fixed grid cannot serve)."""
    if isinstance(problem.stepsize_controller, dfx.AbstractAdaptiveStepSizeController):
        return problem.stepsize_controller
    tol = (1e-8, 1e-10) if problem.dtype == jnp.float64 else (1e-5, 1e-7)
    return dfx.PIDController(rtol=tol[0], atol=tol[1], pcoeff=0.0, icoeff=1.0, norm=optx.max_norm)


def trajectory_fn(
    static: PyTree,
    problem: TrajectoryProblem,
    space: str = "state",
    mode: str = "reverse",
    with_failure: bool = False,
) -> Callable[[PyTree], Any]:
    """The map θ ↦ X(θ) (B, T, N) (or the readout Y(θ)) for the given differentiation mode.

    With `with_failure=True` it returns `(X, failed)`, `failed` of shape `(B,)` (for `has_aux`
    in `jax.jvp`/`jax.vjp`, whose caller guards the derivative with `check_solved`); else the
    primal X carries the check itself.
    """
    adjoint = problem.adjoint if mode == "reverse" else dfx.ForwardMode()

    def fn(params):
        ys, failed = jax.vmap(solve_trial, in_axes=(None, None, None, 0, 0, None))(
            params, static, problem, problem.y0, problem.per_trial_inputs(), adjoint
        )
        if not with_failure:
            ys = check_solved(ys, failed)
        if space == "output":
            model = eqx.combine(params, static)
            ys = jax.vmap(jax.vmap(model.readout))(ys)
        return (ys, failed) if with_failure else ys

    return fn


def check_model(model, problem: TrajectoryProblem, space: str = "state") -> None:
    """Structural checks of a model against a problem: callable, readout, output shape. The
    parameters' values are checked where they are consumed (`check_params`)."""
    if not callable(model):
        raise TypeError(
            f"`model` must be callable as `model(t, x, u)`, got {type(model).__name__}."
        )
    if space not in ("state", "output"):
        raise ValueError(f"`space` must be 'state' or 'output', got {space!r}.")
    if space == "output" and not has_readout(model):
        raise ValueError("`space='output'` needs a model with a `readout(x)` method.")
    x = jax.ShapeDtypeStruct((problem.state_size,), problem.dtype)
    trial = jax.ShapeDtypeStruct(problem.per_trial_inputs().shape[1:], problem.dtype)

    def one(m, xx, tr):
        return m(problem.t0, xx, problem.input_at(problem.t0, tr))

    try:
        out = eqx.filter_eval_shape(one, model, x, trial)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"Calling `model(t, x, u)` with a state of shape {x.shape} (from `y0`) failed: {e}"
        ) from e
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != x.shape:
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"`model(t, x, u)` must return dx/dt of the state's shape {x.shape} (the state size "
            f"comes from `y0`), got {shape}."
        )


def check_params(params: PyTree) -> PyTree:
    """`params` with a finiteness check that also fires under `jit` (thread the result into
    the computation: an unused check is pruned). No host copy of the parameters is made."""
    return error_if_nonfinite(params, "model")


def simulate(
    model: Callable, problem: TrajectoryProblem, *, space: str = "state"
) -> Float[Array, "batch time state"]:
    """Integrate every trial of `problem` and return the observed states.

    **Arguments:**

    - `model`: a model `model(t, x, u) -> dx/dt` (an `equinox.Module`).
    - `problem`: a `TrajectoryProblem`.
    - `space`: `"state"` for x(t_k), `"output"` for the readout y(t_k) = readout(x(t_k)).

    **Returns:**

    An array of shape `(batch, time, state)` (or `(batch, time, output)`). Differentiable with
    respect to the model (reverse mode through `problem.adjoint`).

    **Raises:**

    An error (also under `jax.jit`) if the model's parameters are not finite or a solve did not
    finish (e.g. `max_steps` reached).
    """
    check_model(model, problem, space)
    params, static = partition_model(model)
    return trajectory_fn(static, problem, space, "reverse")(check_params(params))
