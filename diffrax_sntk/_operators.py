r"""Matrix-free sNTK operators as lineax operators.

- `jacobian_operator`: J = ∂X/∂θ, parameters → state tangents (B, T, N). `J.mv` is one tangent
  (forward-mode) solve; `J.transpose().mv` is one adjoint (reverse-mode) solve.
- `sntk_operator`: Θ = J Jᵀ (symmetric, PSD), in state space or readout space.

The continuous-time KPFlow factors P, P*, K (Θ ≈ P K P*) live in `_kpflow.py`; they are
re-exported from here for existing imports.

Why a custom operator class: lineax's `FunctionLinearOperator.transpose` calls
`jax.linear_transpose`, which cannot transpose through diffrax's while loops. Here we know the
transpose of every map (a JVP's transpose is the VJP of the same discrete solve), so
`PairedLinearOperator` stores both directions and registers the lineax queries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, Float, PyTree

from ._problem import (
    TrajectoryProblem,
    check_model,
    check_params,
    check_solved,
    partition_model,
    trajectory_fn,
)
from ._replay import linearise, linearise_with_outputs

__all__ = [
    "PairedLinearOperator",
    "jacobian_operator",
    "sntk_operator",
    "trajectory_and_jacobian",
]


def _structure(tree: PyTree) -> PyTree[jax.ShapeDtypeStruct]:
    return jtu.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def _check_vector(vector, structure, name: str = "vector"):
    got = jtu.tree_structure(vector)
    want = jtu.tree_structure(structure)
    if got != want:
        raise ValueError(
            f"`{name}` must have the operator's input structure {want}, got {got}."
        )
    for v, s in zip(jtu.tree_leaves(vector), jtu.tree_leaves(structure), strict=True):
        if jnp.shape(v) != s.shape:
            raise ValueError(
                f"`{name}` has a leaf of shape {jnp.shape(v)}; the operator expects {s.shape}."
            )


class PairedLinearOperator(lx.AbstractLinearOperator):
    """A linear map given by a function together with its transpose.

    **Arguments:**

    - `fn`: the linear map (a pytree-compatible callable, e.g. `equinox.Partial`).
    - `transpose_fn`: its transpose.
    - `input_structure`, `output_structure`: pytrees of `jax.ShapeDtypeStruct`.
    - `tags`: lineax tags (e.g. `lx.symmetric_tag`, `lx.positive_semidefinite_tag`).
    """

    fn: Callable
    transpose_fn: Callable
    input_structure: Any = eqx.field(static=True)
    output_structure: Any = eqx.field(static=True)
    tags: frozenset = eqx.field(static=True)

    def __init__(self, fn, transpose_fn, input_structure, output_structure, tags=()):
        self.fn = fn
        self.transpose_fn = transpose_fn
        self.input_structure = _structure(input_structure)
        self.output_structure = _structure(output_structure)
        self.tags = frozenset(tags if isinstance(tags, (tuple, list, set, frozenset)) else (tags,))

    def mv(self, vector):
        _check_vector(vector, self.input_structure)
        return self.fn(vector)

    def as_matrix(self) -> Float[Array, "out in"]:
        flat, unravel = jfu.ravel_pytree(
            jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), self.input_structure)
        )
        eye = jnp.eye(flat.size, dtype=flat.dtype)
        cols = jax.vmap(lambda e: jfu.ravel_pytree(self.fn(unravel(e)))[0])(eye)
        return cols.T

    def transpose(self) -> "PairedLinearOperator":
        if lx.symmetric_tag in self.tags:
            return self
        return PairedLinearOperator(
            self.transpose_fn,
            self.fn,
            self.output_structure,
            self.input_structure,
            lx.transpose_tags(self.tags),
        )

    def in_structure(self):
        return self.input_structure

    def out_structure(self):
        return self.output_structure


@lx.linearise.register(PairedLinearOperator)
def _(operator):
    return operator


@lx.materialise.register(PairedLinearOperator)
def _(operator):
    return lx.MatrixLinearOperator(operator.as_matrix(), operator.tags)


@lx.diagonal.register(PairedLinearOperator)
def _(operator):
    return jnp.diag(operator.as_matrix())


@lx.tridiagonal.register(PairedLinearOperator)
def _(operator):
    m = operator.as_matrix()
    return jnp.diag(m), jnp.diag(m, -1), jnp.diag(m, 1)


@lx.is_symmetric.register(PairedLinearOperator)
def _(operator):
    return lx.symmetric_tag in operator.tags


@lx.is_diagonal.register(PairedLinearOperator)
def _(operator):
    return lx.diagonal_tag in operator.tags


@lx.is_tridiagonal.register(PairedLinearOperator)
def _(operator):
    return lx.tridiagonal_tag in operator.tags or lx.diagonal_tag in operator.tags


@lx.has_unit_diagonal.register(PairedLinearOperator)
def _(operator):
    return lx.unit_diagonal_tag in operator.tags


@lx.is_lower_triangular.register(PairedLinearOperator)
def _(operator):
    return lx.lower_triangular_tag in operator.tags or lx.diagonal_tag in operator.tags


@lx.is_upper_triangular.register(PairedLinearOperator)
def _(operator):
    return lx.upper_triangular_tag in operator.tags or lx.diagonal_tag in operator.tags


@lx.is_positive_semidefinite.register(PairedLinearOperator)
def _(operator):
    return lx.positive_semidefinite_tag in operator.tags


@lx.is_negative_semidefinite.register(PairedLinearOperator)
def _(operator):
    return lx.negative_semidefinite_tag in operator.tags


@lx.conj.register(PairedLinearOperator)
def _(operator):
    return operator


# ---------------------------------------------------------------------------------------------
# J, Jᵀ, Θ


# A failed solve (e.g. `max_steps`) must not hand back a garbage derivative. The check sits on
# the derivative itself: `eqx.error_if` on the primal does not guard its tangent, and under `jit`
# a check that nothing consumes is pruned.


def _jvp(params, static, problem, space, tangent):
    fn = trajectory_fn(static, problem, space, "forward", with_failure=True)
    _, out, failed = jax.jvp(fn, (params,), (tangent,), has_aux=True)
    return check_solved(out, failed)


def _vjp(params, static, problem, space, cotangent):
    fn = trajectory_fn(static, problem, space, "reverse", with_failure=True)
    _, pullback, failed = jax.vjp(fn, params, has_aux=True)
    (out,) = pullback(cotangent)
    return check_solved(out, failed)


def _theta_mv(params, static, problem, space, vector):
    return _jvp(params, static, problem, space, _vjp(params, static, problem, space, vector))


_METHODS = ("auto", "replay", "solve")


def _has_jumps(controller) -> bool:
    # diffrax re-evaluates the vector field after a jump and ends the step one ulp before it;
    # the replay does neither, so such problems take the solve path.
    while controller is not None:
        if getattr(controller, "jump_ts", None) is not None:
            return True
        controller = getattr(controller, "controller", None)
    return False


def _in_trace() -> bool:
    # Under `jit`/`vmap` tracing every new array is staged, even when the model and problem are
    # closed-over constants.
    return isinstance(jnp.zeros(()) + 0, jax.core.Tracer)


def _use_replay(method, params, problem) -> bool:
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}, got {method!r}.")
    explicit = isinstance(problem.solver, (dfx.AbstractERK, dfx.Euler))
    jumps = _has_jumps(problem.stepsize_controller)
    if method == "replay" and not explicit:
        raise ValueError(
            f"`method='replay'` needs an explicit solver (a Runge–Kutta ERK such as Tsit5, or "
            f"Euler), got `solver={type(problem.solver).__name__}()`; use `method='solve'`."
        )
    if method == "replay" and jumps:
        raise ValueError(
            "`method='replay'` does not support step-size controllers with `jump_ts`; use "
            "`method='solve'`."
        )
    if method != "auto":
        return method == "replay"
    # Replay needs a concrete step count (eager construction) and differentiates the same
    # discrete map as the default `RecursiveCheckpointAdjoint`; a user-chosen adjoint (e.g. a
    # continuous `BacksolveAdjoint`) is honoured by the solve path.
    traced = _in_trace() or any(
        isinstance(x, jax.core.Tracer) for x in jtu.tree_leaves((params, problem))
    )
    return (
        explicit
        and not jumps
        and not traced
        and type(problem.adjoint) is dfx.RecursiveCheckpointAdjoint
    )


def _lin_theta_mv(lin, vector):
    return lin.jvp(lin.vjp(vector))


def _prepare(model, problem, space, filter_spec):
    if not isinstance(problem, TrajectoryProblem):
        raise TypeError(
            f"`problem` must be a `diffrax_sntk.TrajectoryProblem`, got {type(problem).__name__}."
        )
    check_model(model, problem, space)
    params, static = partition_model(model, filter_spec)
    if not jtu.tree_leaves(params):
        raise ValueError("`model` has no parameters selected by `filter_spec`.")
    # Every operator closes over these parameters, so the check fires at each matvec under
    # `jit` (and at construction outside it), without copying them to the host.
    params = check_params(params)
    # The output shape without tracing a solve (an `eval_shape` of a diffeqsolve is slow).
    x = jax.ShapeDtypeStruct((problem.state_size,), problem.dtype)
    if space == "output":
        y = eqx.filter_eval_shape(lambda m, xx: m.readout(xx), model, x)
        out_struct = jtu.tree_map(
            lambda a: jax.ShapeDtypeStruct((problem.batch_size, problem.num_times) + a.shape,
                                           a.dtype),
            y,
        )
    else:
        out_struct = jax.ShapeDtypeStruct(
            (problem.batch_size, problem.num_times, problem.state_size), problem.dtype
        )
    return params, static, out_struct


def jacobian_operator(
    model: Callable,
    problem: TrajectoryProblem,
    *,
    space: str = "state",
    filter_spec: Any = eqx.is_inexact_array,
    method: str = "auto",
    num_steps: int | None = None,
) -> PairedLinearOperator:
    r"""The trajectory Jacobian J = ∂X/∂θ as a lineax operator.

    `J.mv(dθ)` maps a parameter tangent (a pytree shaped like the model's parameters, `None` in
    non-parameter positions) to state tangents of shape `(batch, time, state)` by one
    forward-mode solve; `J.transpose().mv(r)` maps a cotangent of shape `(batch, time, state)`
    to a parameter cotangent by one reverse-mode (adjoint) solve. The two are exact transposes
    of the same discrete map.

    **Arguments:**

    - `model`: the model (`model(t, x, u) -> dx/dt`).
    - `problem`: a `TrajectoryProblem`.
    - `space`: `"state"` (X) or `"output"` (the readout Y = readout(X), including the readout's
      own parameters).
    - `filter_spec`: which leaves of `model` are parameters (default: inexact arrays).
    - `method`: how matvecs are computed.
        - `"replay"`: at construction, solve once with the problem's controller, record the
          accepted steps and store the linearisation of that discrete map; every matvec is
          then a linear pass over the stored steps (no primal re-solve, no error control),
          and a block of vectors shares them. Costs memory for the stored residuals (about
          the solver's stages × state size per step and trial).
        - `"solve"`: every matvec is a fresh `diffeqsolve` (tangent: `ForwardMode`; adjoint:
          `problem.adjoint`). Nothing is stored; works inside `jit` at any θ.
        - `"auto"` (default): `"replay"` when the operator is built outside `jit`/`vmap`, the
          solver is explicit (an ERK such as Tsit5, or Euler), the controller has no
          `jump_ts` and `problem.adjoint` is the default `RecursiveCheckpointAdjoint`; else
          `"solve"`.

      Both give the same discrete map: they agree to rounding.
    - `num_steps`: replay only: the static length of the stored step grid. Default: the
      recorded number of steps rounded up (outside `jit`), or `problem.max_steps` (inside,
      where every padding step still costs a step). A solve that needs more steps raises an
      error (at construction outside `jit`, at run time inside).

    **Returns:**

    A `PairedLinearOperator` (a lineax operator). `as_matrix()` materialises it for small
    problems.

    **Raises:**

    `ValueError`/`TypeError` for structural misuse. Non-finite parameters raise as the operator
    is built (inside `jit`: at the first matvec), without copying them to the host; a matvec
    whose solve does not finish (e.g. `max_steps`) raises rather than return a partial
    derivative, also under `jit`. Both also hold for `sntk_operator` and the KPFlow factors.
    """
    params, static, out_struct = _prepare(model, problem, space, filter_spec)
    if _use_replay(method, params, problem):
        lin = linearise(params, static, problem, space, num_steps)
        return PairedLinearOperator(lin.jvp, lin.vjp, params, out_struct)
    fn = eqx.Partial(_jvp, params, static, problem, space)
    tfn = eqx.Partial(_vjp, params, static, problem, space)
    return PairedLinearOperator(fn, tfn, params, out_struct)


def trajectory_and_jacobian(
    model: Callable,
    problem: TrajectoryProblem,
    *,
    space: str = "state",
    filter_spec: Any = eqx.is_inexact_array,
    num_steps: int | None = None,
) -> tuple[PyTree[Float[Array, "batch time ..."]], PairedLinearOperator]:
    r"""The trajectory X(θ) and its Jacobian J = ∂X/∂θ from one stored linearisation.

    A training step that needs both the loss gradient and J (the low-rank natural gradient)
    gets them from one recording solve and one linearised replay (`method="replay"` of
    `jacobian_operator`): the gradient is `J.transpose().mv(∂L/∂X)`, a linear pass over the
    stored steps, and the natural gradient's refresh reuses the same linearisation instead of
    re-solving the trajectory for every JVP and VJP.

    ```python
    @eqx.filter_jit
    def step(model, state):
        ys, J = ds.trajectory_and_jacobian(model, problem, num_steps=64)
        loss, dys = jax.value_and_grad(lambda y: jnp.mean((y - target) ** 2))(ys)
        grads = J.transpose().mv(dys)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, state = opt.update(grads, state, params, jacobian=J)
        return eqx.apply_updates(model, updates), state, loss
    ```

    **Arguments:**

    - `model`, `problem`, `space`, `filter_spec`: as for `jacobian_operator`.
    - `num_steps`: the static length of the stored step grid, as for `jacobian_operator`'s
        replay. Inside `jit` pass it (the default there is `problem.max_steps`, and every
        padding step costs a step), with room for the step count to grow during training: a
        solve that needs more steps raises at run time.

    **Returns:**

    `(ys, J)`: `ys` the observed states (or readout, for `space="output"`), equal to
    `ds.simulate(model, problem, space=space)` to rounding (the same discrete map), as a value
    (differentiate through `J`, not through `ys`); `J` the replay `jacobian_operator`.

    **Raises:**

    As `jacobian_operator(..., method="replay")`: a `ValueError` for an implicit solver or a
    controller with `jump_ts`.
    """
    params, static, out_struct = _prepare(model, problem, space, filter_spec)
    _use_replay("replay", params, problem)  # the structural checks of the replay path
    ys, lin = linearise_with_outputs(params, static, problem, space, num_steps)
    return ys, PairedLinearOperator(lin.jvp, lin.vjp, params, out_struct)


def sntk_operator(
    model: Callable,
    problem: TrajectoryProblem,
    *,
    space: str = "state",
    filter_spec: Any = eqx.is_inexact_array,
    method: str = "auto",
    num_steps: int | None = None,
) -> PairedLinearOperator:
    r"""The state-space NTK Θ = J Jᵀ as a symmetric PSD lineax operator.

    $$\Theta_{(b,k,i),(b',k',j)} = \sum_p \frac{\partial x_{b}(t_k)_i}{\partial\theta_p}
    \frac{\partial x_{b'}(t_{k'})_j}{\partial\theta_p}.$$

    One matvec costs one adjoint pass (Jᵀv) and one tangent pass (J(Jᵀv)): with the default
    `method="auto"` outside `jit`, linear passes over the stored linearisation (about 2× a
    forward solve; a vmapped block of vectors costs about one forward solve per vector), else
    one adjoint and one tangent `diffeqsolve`.

    **Arguments:**

    - `model`, `problem`, `filter_spec`, `method`, `num_steps`: as for `jacobian_operator`.
    - `space`: `"state"` for Θ on R^{B×T×N}, `"output"` for the readout-space kernel.

    **Returns:**

    A `PairedLinearOperator` tagged `symmetric` and `positive_semidefinite`; input and output are
    arrays of shape `(batch, time, state)` (or `(batch, time, output)`).
    """
    params, static, out_struct = _prepare(model, problem, space, filter_spec)
    if _use_replay(method, params, problem):
        lin = linearise(params, static, problem, space, num_steps)
        fn = eqx.Partial(_lin_theta_mv, lin)
    else:
        fn = eqx.Partial(_theta_mv, params, static, problem, space)
    return PairedLinearOperator(
        fn, fn, out_struct, out_struct, (lx.symmetric_tag, lx.positive_semidefinite_tag)
    )


# The KPFlow factors moved to `_kpflow`, which imports this module; they stay importable from
# here (`from ._operators import propagator`) through a lazy attribute, so neither module's
# import order matters.
_KPFLOW_NAMES = ("propagator", "adjoint_propagator", "parameter_operator", "quadrature_grid")


def __getattr__(name: str):
    if name in _KPFLOW_NAMES:
        from . import _kpflow

        return getattr(_kpflow, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
