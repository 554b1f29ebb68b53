r"""KPFlow's factors of the sNTK in continuous time: Θ ≈ P K P* (KPFlow, arXiv 2507.06381).

- `propagator` P: a forcing q(t) ↦ δx(t_k), the tangent-linear ODE dδx/dt = A(t) δx + q(t) from
  δx(t0) = 0 sampled at the observation times (O folded in);
- `adjoint_propagator` P*: r ↦ λ(τ), the adjoint ODE −dλ/dt = A(t)ᵀ λ with jumps r_k at t_k;
- `parameter_operator` K = G Gᵀ, with G(t) = ∂f/∂θ along the trajectory;
- `quadrature_grid`: the Gauss–Legendre nodes τ_j and weights w_j on which functions of time are
  represented.

Both propagators differentiate one "kicked" solve: the trajectory receiving additive kicks at
the quadrature nodes, whose derivative with respect to the kick at τ_j is the state-transition
matrix Φ(t_k, τ_j). P is its JVP (with quadrature weights), P* its VJP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Float

from ._operators import PairedLinearOperator, _prepare
from ._problem import TrajectoryProblem, adaptive_controller, check_solved, integrate, solve_trial

__all__ = ["propagator", "adjoint_propagator", "parameter_operator", "quadrature_grid"]


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

    def segment(carry, inp):
        x, failed = carry
        ta, tb, kick = inp
        # Zero-length segments (coincident nodes) are skipped rather than solved.
        x, seg_failed = jax.lax.cond(
            tb > ta,
            lambda xx: solve_trial(
                params, static, problem, xx, trial_inputs, adjoint, ta, tb, "end", controller
            ),
            lambda xx: (xx, jnp.array(False)),
            x,
        )
        x = x + kick
        return (x, failed | seg_failed), x

    (_, failed), xs = jax.lax.scan(segment, (x0, jnp.array(False)), (starts, ends, kicks))
    return xs.reshape(num_t, order + 1, n)[:, -1], failed


def _kicked(params, static, problem, order, kicks, adjoint):
    # Returns `(states, failed)`; the derivatives below take `failed` as `has_aux` and check it
    # on what they return (a check on the primal would not guard the tangent).
    return jax.vmap(_kicked_trial, in_axes=(None, None, None, None, 0, 0, 0, None))(
        params, static, problem, order, problem.y0, problem.per_trial_inputs(), kicks, adjoint
    )


# The four propagator maps are two kernels with a weight array: P = Φ W and Pᵀ = W Φᵀ, while
# P* = Φᵀ and (P*)ᵀ = Φ take unit weights. Weights as arrays (not a static flag) make P and P*
# share their compiled programs.


def _phi_mv(params, static, problem, order, scale, forcing):
    # q ↦ Σ_j Φ(t_k, τ_j) scale_j q_j: the JVP of the kicked solve.
    zero = jnp.zeros_like(forcing)
    fn = lambda k: _kicked(params, static, problem, order, k, dfx.ForwardMode())
    _, out, failed = jax.jvp(fn, (zero,), (forcing * scale[None, :, None],), has_aux=True)
    return check_solved(out, failed)


def _phi_t_mv(params, static, problem, order, scale, cotangent):
    # r ↦ scale_j Σ_k Φ(t_k, τ_j)ᵀ r_k: the VJP of the kicked solve.
    zero = jnp.zeros(
        (problem.batch_size, problem.num_times * order, problem.state_size), problem.dtype
    )
    fn = lambda k: _kicked(params, static, problem, order, k, problem.adjoint)
    _, pullback, failed = jax.vjp(fn, zero, has_aux=True)
    (lam,) = pullback(cotangent)
    return check_solved(lam, failed) * scale[None, :, None]


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


def _k_apply(params, static, problem, order, scale_in, scale_out, lam):
    # K = G Gᵀ W (scale_in = w, scale_out = 1) and Kᵀ = W G Gᵀ (scale_in = 1, scale_out = w).
    nodes, _ = quadrature_grid(problem, order)
    xs = _node_states(params, static, problem, order)
    us = problem.per_trial_inputs()

    def f_params(p, t, x, tr):
        return eqx.combine(p, static)(t, x, problem.input_at(t, tr))

    def gt_lam(t, x, tr, lam_t):
        _, pull = jax.vjp(lambda p: f_params(p, t, x, tr), params)
        return pull(lam_t)[0]

    per_node = jax.vmap(jax.vmap(gt_lam, in_axes=(0, 0, None, 0)), in_axes=(None, 0, 0, 0))
    contrib = per_node(nodes, xs, us, lam * scale_in[None, :, None])
    c = jtu.tree_map(lambda a: jnp.sum(a, axis=(0, 1)), contrib)

    def g_c(t, x, tr):
        return jax.jvp(lambda p: f_params(p, t, x, tr), (params,), (c,))[1]

    out = jax.vmap(jax.vmap(g_c, in_axes=(0, 0, None)), in_axes=(None, 0, 0))(nodes, xs, us)
    return out * scale_out[None, :, None]


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
    _, w = quadrature_grid(problem, order)
    fn = eqx.Partial(_phi_mv, params, static, problem, order, w)
    tfn = eqx.Partial(_phi_t_mv, params, static, problem, order, w)
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
    ones = jnp.ones(f_struct.shape[1], f_struct.dtype)
    fn = eqx.Partial(_phi_t_mv, params, static, problem, order, ones)
    # (P*)ᵀ: q ↦ Σ_j Φ(t_k, τ_j) q_j, the Duhamel sum without quadrature weights.
    tfn = eqx.Partial(_phi_mv, params, static, problem, order, ones)
    return PairedLinearOperator(fn, tfn, out_struct, f_struct)


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
    _, w = quadrature_grid(problem, order)
    ones = jnp.ones_like(w)
    fn = eqx.Partial(_k_apply, params, static, problem, order, w, ones)
    tfn = eqx.Partial(_k_apply, params, static, problem, order, ones, w)
    return PairedLinearOperator(fn, tfn, f_struct, f_struct, ())
