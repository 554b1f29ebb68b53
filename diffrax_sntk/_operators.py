r"""Matrix-free sNTK operators as lineax operators.

- `jacobian_operator`: J = ∂X/∂θ, parameters → state tangents (B, T, N). `J.mv` is one tangent
  (forward-mode) solve; `J.transpose().mv` is one adjoint (reverse-mode) solve.
- `sntk_operator`: Θ = J Jᵀ (symmetric, PSD), in state space or readout space.
- `propagator`, `adjoint_propagator`, `parameter_operator`: the continuous-time KPFlow factors
  with Θ ≈ P K P* (observation sampling O is folded into P and P*).

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
import numpy as np
from jaxtyping import Array, Float, PyTree

from ._problem import (
    TrajectoryProblem,
    adaptive_controller,
    check_model,
    integrate,
    partition_model,
    trajectory_fn,
)
from ._replay import linearise

__all__ = [
    "PairedLinearOperator",
    "jacobian_operator",
    "sntk_operator",
    "propagator",
    "adjoint_propagator",
    "parameter_operator",
    "quadrature_grid",
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


def _jvp(params, static, problem, space, tangent):
    fn = trajectory_fn(static, problem, space, "forward")
    return jax.jvp(fn, (params,), (tangent,))[1]


def _vjp(params, static, problem, space, cotangent):
    fn = trajectory_fn(static, problem, space, "reverse")
    _, pullback = jax.vjp(fn, params)
    (out,) = pullback(cotangent)
    return out


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
    # The output shape without tracing a solve (`eval_shape` of a diffeqsolve costs ~1-2 s).
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
    """
    params, static, out_struct = _prepare(model, problem, space, filter_spec)
    if _use_replay(method, params, problem):
        lin = linearise(params, static, problem, space, num_steps)
        return PairedLinearOperator(lin.jvp, lin.vjp, params, out_struct)
    fn = eqx.Partial(_jvp, params, static, problem, space)
    tfn = eqx.Partial(_vjp, params, static, problem, space)
    return PairedLinearOperator(fn, tfn, params, out_struct)


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


# ---------------------------------------------------------------------------------------------
# KPFlow factors in continuous time


def quadrature_grid(
    problem: TrajectoryProblem, order: int = 4
) -> tuple[Float[Array, " nodes"], Float[Array, " nodes"]]:
    """Gauss–Legendre nodes and weights, `order` per observation interval [t_{k-1}, t_k]
    (with t_{-1} = t0), on which the KPFlow factors represent functions of time.

    **Returns:**

    `(nodes, weights)`, each of shape `(time * order,)`. A zero-length first interval (when
    `ts[0] == t0`) gets nodes at t0 with zero weight.
    """
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"`order` must be a positive int, got {order!r}.")
    x, w = np.polynomial.legendre.leggauss(order)
    edges = jnp.concatenate([problem.t0[None], problem.ts])
    a, b = edges[:-1], edges[1:]
    half = (b - a)[:, None] / 2
    nodes = (a[:, None] + half * (jnp.asarray(x, problem.dtype)[None] + 1)).reshape(-1)
    weights = (half * jnp.asarray(w, problem.dtype)[None]).reshape(-1)
    return nodes, weights


def _kicked_trial(params, static, problem, order, x0, trial_inputs, kicks, adjoint):
    # States at the observation times when the state receives additive kicks `kicks[j]` at the
    # quadrature nodes: ∂x(t_k)/∂kick_j = Φ(t_k, τ_j), the state-transition matrix. One scan
    # over all segments (nodes and observation times interleaved) keeps a single diffeqsolve in
    # the compiled program.
    nodes, _ = quadrature_grid(problem, order)
    num_t, n = problem.num_times, problem.state_size
    ends = jnp.concatenate([nodes.reshape(num_t, order), problem.ts[:, None]], axis=1).reshape(-1)
    starts = jnp.concatenate([problem.t0[None], ends[:-1]])
    kicks = jnp.concatenate(
        [kicks.reshape(num_t, order, n), jnp.zeros((num_t, 1, n), kicks.dtype)], axis=1
    ).reshape(-1, n)
    controller = adaptive_controller(problem)

    def segment(x, inp):
        ta, tb, kick = inp
        # Zero-length segments (coincident nodes) are skipped rather than solved.
        x = jax.lax.cond(
            tb > ta,
            lambda xx: integrate(
                params, static, problem, xx, trial_inputs, adjoint, ta, tb, "end", controller
            ),
            lambda xx: xx,
            x,
        )
        x = x + kick
        return x, x

    _, xs = jax.lax.scan(segment, x0, (starts, ends, kicks))
    return xs.reshape(num_t, order + 1, n)[:, -1]


def _kicked(params, static, problem, order, kicks, adjoint):
    return jax.vmap(_kicked_trial, in_axes=(None, None, None, None, 0, 0, 0, None))(
        params, static, problem, order, problem.y0, problem.per_trial_inputs(), kicks, adjoint
    )


def _p_mv(params, static, problem, order, forcing):
    _, w = quadrature_grid(problem, order)
    zero = jnp.zeros_like(forcing)
    fn = lambda k: _kicked(params, static, problem, order, k, dfx.ForwardMode())
    return jax.jvp(fn, (zero,), (forcing * w[None, :, None],))[1]


def _pstar_mv(params, static, problem, order, weighted, cotangent):
    zero = jnp.zeros(
        (problem.batch_size, problem.num_times * order, problem.state_size), problem.dtype
    )
    fn = lambda k: _kicked(params, static, problem, order, k, problem.adjoint)
    _, pullback = jax.vjp(fn, zero)
    (lam,) = pullback(cotangent)
    if weighted:
        _, w = quadrature_grid(problem, order)
        lam = lam * w[None, :, None]
    return lam


def _node_states(params, static, problem, order):
    nodes, _ = quadrature_grid(problem, order)
    controller = adaptive_controller(problem)

    def one(x0, tr):
        # Integrate through the observation times so the node states come from the same kind
        # of solve as the kicked trajectory.
        return integrate(
            params, static, problem, x0, tr, problem.adjoint, None, None, nodes, controller
        )

    # `SaveAt(ts=...)` needs t0 <= nodes; a zero-length first interval puts nodes at t0.
    return jax.vmap(one)(problem.y0, problem.per_trial_inputs())


def _k_mv(params, static, problem, order, lam):
    return _k_apply(params, static, problem, order, lam, weighted_in=True)


def _k_apply(params, static, problem, order, lam, weighted_in):
    nodes, w = quadrature_grid(problem, order)
    w3 = w[None, :, None]
    xs = _node_states(params, static, problem, order)
    us = problem.per_trial_inputs()

    def f_params(p, t, x, tr):
        return eqx.combine(p, static)(t, x, problem.input_at(t, tr))

    def gt_lam(t, x, tr, lam_t):
        _, pull = jax.vjp(lambda p: f_params(p, t, x, tr), params)
        return pull(lam_t)[0]

    per_node = jax.vmap(jax.vmap(gt_lam, in_axes=(0, 0, None, 0)), in_axes=(None, 0, 0, 0))
    contrib = per_node(nodes, xs, us, lam * w3 if weighted_in else lam)
    c = jtu.tree_map(lambda a: jnp.sum(a, axis=(0, 1)), contrib)

    def g_c(t, x, tr):
        return jax.jvp(lambda p: f_params(p, t, x, tr), (params,), (c,))[1]

    out = jax.vmap(jax.vmap(g_c, in_axes=(0, 0, None)), in_axes=(None, 0, 0))(nodes, xs, us)
    return out if weighted_in else out * w3


def _forcing_struct(problem, order):
    return jax.ShapeDtypeStruct(
        (problem.batch_size, problem.num_times * order, problem.state_size), problem.dtype
    )


def _prepare_factor(model, problem, filter_spec, order):
    params, static, out_struct = _prepare(model, problem, "state", filter_spec)
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"`order` must be a positive int, got {order!r}.")
    return params, static, out_struct, _forcing_struct(problem, order)


def propagator(
    model: Callable,
    problem: TrajectoryProblem,
    *,
    order: int = 4,
    filter_spec: Any = eqx.is_inexact_array,
) -> PairedLinearOperator:
    r"""The tangent-linear propagator P (with observation sampling O folded in).

    P maps a forcing q(t) to δx(t_k), where dδx/dt = A(t) δx + q(t), δx(t0) = 0, A = ∂f/∂x along
    the trajectory. Forcings are represented by their values at the Gauss–Legendre nodes of
    `quadrature_grid(problem, order)`, shape `(batch, time * order, state)`, and Duhamel's
    integral δx(t_k) = ∫ Φ(t_k, s) q(s) ds is taken by that quadrature.

    **Returns:**

    A `PairedLinearOperator`; its `.transpose()` is the Euclidean transpose. The adjoint with
    respect to the quadrature inner product ⟨q, λ⟩ = Σ_j w_j q_j·λ_j is `adjoint_propagator`.
    """
    params, static, out_struct, f_struct = _prepare_factor(model, problem, filter_spec, order)
    fn = eqx.Partial(_p_mv, params, static, problem, order)
    tfn = eqx.Partial(_pstar_mv, params, static, problem, order, True)
    return PairedLinearOperator(fn, tfn, f_struct, out_struct)


def adjoint_propagator(
    model: Callable,
    problem: TrajectoryProblem,
    *,
    order: int = 4,
    filter_spec: Any = eqx.is_inexact_array,
) -> PairedLinearOperator:
    r"""The adjoint propagator P* (with O* folded in): r ↦ λ(τ_j).

    λ solves the adjoint ODE −dλ/dt = A(t)ᵀ λ backwards from λ(t_T⁺) = 0 with jumps
    λ(t_k⁻) = λ(t_k⁺) + r_k at the observation times; the result is sampled at the quadrature
    nodes, shape `(batch, time * order, state)`. P* is the adjoint of `propagator` in the
    quadrature inner product, so Θ ≈ P K P* with K = `parameter_operator`.
    """
    params, static, out_struct, f_struct = _prepare_factor(model, problem, filter_spec, order)
    fn = eqx.Partial(_pstar_mv, params, static, problem, order, False)
    tfn = eqx.Partial(_pstar_mv_transpose, params, static, problem, order)
    return PairedLinearOperator(fn, tfn, out_struct, f_struct)


def _pstar_mv_transpose(params, static, problem, order, forcing):
    # (P*)ᵀ = W⁻¹-free Duhamel sum: q ↦ Σ_j Φ(t_k, τ_j) q_j (no quadrature weights).
    zero = jnp.zeros_like(forcing)
    fn = lambda k: _kicked(params, static, problem, order, k, dfx.ForwardMode())
    return jax.jvp(fn, (zero,), (forcing,))[1]


def parameter_operator(
    model: Callable,
    problem: TrajectoryProblem,
    *,
    order: int = 4,
    filter_spec: Any = eqx.is_inexact_array,
) -> PairedLinearOperator:
    r"""The instantaneous parameter operator K = G Gᵀ on functions of time.

    With G(t) = ∂f/∂θ at (t, x_b(t), u_b(t)) and kernel K(t, s) = G(t) G(s)ᵀ,
    (K λ)_b(τ_i) = G_b(τ_i) Σ_{b'} Σ_j w_j G_{b'}(τ_j)ᵀ λ_{b'}(τ_j): the parameters are shared
    by all trials, so K couples them. Self-adjoint in the quadrature inner product.

    **Returns:**

    A `PairedLinearOperator` on arrays of shape `(batch, time * order, state)`.
    """
    params, static, _, f_struct = _prepare_factor(model, problem, filter_spec, order)
    fn = eqx.Partial(_k_mv, params, static, problem, order)
    tfn = eqx.Partial(_k_mv_transpose, params, static, problem, order)
    return PairedLinearOperator(fn, tfn, f_struct, f_struct, ())


def _k_mv_transpose(params, static, problem, order, mu):
    # K = G Gᵀ W, so Kᵀ = W G Gᵀ.
    return _k_apply(params, static, problem, order, mu, weighted_in=False)
