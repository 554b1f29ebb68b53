"""Branch switching at branch points (transcritical, pitchfork) found by `continuation`.

At a branch point `(x*, μ*)` the Jacobian `A = f_x` has a simple zero eigenvalue with right and
left null vectors `q`, `p` (`pᵀq = 1`) and `a = pᵀf_μ = 0`. Near it the equilibria are
`x = x* + w q + δμ h_μ + O(2)` (`A h_μ = −f_μ`, `pᵀh_μ = 0`), where `(w, δμ)` solve the
algebraic bifurcation equation

    (b2/2) w² + b1 w δμ + (a2/2) δμ² + (b3/6) w³ + … = 0,

with `b1, b2, b3` the branch-point normal form (`docs/bifurcations.md`) and
`a2 = pᵀ d²/dt² f(x* + t h_μ, μ* + t)|₀`. Its quadratic part has two real null directions (the
two branches through the point); the one the continuation arrived on is recognised by the
recorded tangent (`Bifurcation.tangent`), and the other is the new branch. At a pitchfork
(`b2 = 0`) the new branch is vertical to first order and bends as `δμ = −b3/(6 b1) u²` in its
amplitude `u`. Each side of the new branch starts from the predicted point, corrected on the
hyperplane through it orthogonal to the predicted tangent, and is continued by the compiled
continuation (`_continuation.step_loop`, with a `start`).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, PyTree

from ._bifurcation import Bifurcation, Branch, continue_family
from ._continuation import ContinuationProblem, ScalarFamily, make_options
from ._misc import RESULTS, check_vector_field, error_if_nonfinite, result_where, successful
from ._normal_form_types import BranchPointNormalForm

# A failed switch: the predictor did not converge onto a new branch, landed back on the old
# one, or the normal form is degenerate.
SWITCH_FAILED = RESULTS.branch_switch_failed

# The recorded tangent (a chord of the arrival step) must match one of the two predicted
# directions at least this well (|cos|), else the predictor and the branch disagree.
_MATCH = 0.5


class _Predictor(eqx.Module):
    """The new branch's predicted geometry at the branch point (all in `(x, μ)` space)."""

    direction: Float[Array, " n1"]  # unit tangent of the new branch (one of its two sides)
    curvature: Float[Array, " n1"]  # second-order term: z(u) = z* + u·direction + u²·curvature
    old: Float[Array, " n1"]  # unit tangent of the old branch (the predicted one)
    result: RESULTS


def _bordered_solve(A, q, p, rhs):
    """`h` with `A h = rhs − (pᵀrhs) q`, `pᵀh = 0`, and the solve's result."""
    n = A.shape[0]
    m = jnp.block([[A, q[:, None]], [p[None, :], jnp.zeros((1, 1), A.dtype)]])
    sol = lx.linear_solve(
        lx.MatrixLinearOperator(m), jnp.concatenate([rhs, jnp.zeros((1,), rhs.dtype)]),
        throw=False,
    )
    return sol.value[:n], RESULTS.promote(sol.result)


@eqx.filter_jit
def branch_point_predictor(
    problem: ContinuationProblem, x, s, q, p, b1, b2, b3, tangent, symmetric
) -> _Predictor:
    """Jittable: the predicted tangent (and, at a pitchfork, curvature) of the new branch at
    the branch point `(x, s)` with null vectors `q`, `p`, coefficients `b1, b2, b3` and the old
    branch's recorded unit `tangent`."""
    dtype = x.dtype
    one = jnp.ones((), dtype)
    A = jax.jacfwd(lambda y: problem.f(y, s))(x)
    f_s = jax.jvp(lambda t: problem.f(x, t), (s,), (one,))[1]
    h, res = _bordered_solve(A, q, p, -f_s)
    # a2: the second derivative of f along the line (x* + t h_μ, μ* + t), projected on p.
    line = lambda t: problem.f(x + t * h, s + t)
    a2 = p @ jax.jvp(lambda t: jax.jvp(line, (t,), (one,))[1], (jnp.zeros_like(s),), (one,))[1]
    # The quadratic form Q(w, δμ) = (w, δμ) M (w, δμ)ᵀ; its null directions are the branches.
    # A transversal branch point has det M < 0: eigenvalues l0 < 0 < l1, null directions
    # √l1·e0 ± √(−l0)·e1.
    m = jnp.stack([jnp.stack([b2 / 2, b1 / 2]), jnp.stack([b1 / 2, a2 / 2])])
    lam, vecs = jnp.linalg.eigh(m)
    transversal = (lam[0] < 0) & (lam[1] > 0)
    root = lambda sgn: (
        jnp.sqrt(jnp.abs(lam[1])) * vecs[:, 0] + sgn * jnp.sqrt(jnp.abs(lam[0])) * vecs[:, 1]
    )

    def ambient(wd):
        v = jnp.concatenate([wd[0] * q + wd[1] * h, wd[1][None]])
        return v / jnp.linalg.norm(v)

    ta, tb = ambient(root(1.0)), ambient(root(-1.0))
    ca, cb = jnp.abs(ta @ tangent), jnp.abs(tb @ tangent)
    new, old = jnp.where(ca < cb, ta, tb), jnp.where(ca < cb, tb, ta)
    matched = jnp.maximum(ca, cb) >= _MATCH
    # Pitchfork (`symmetric`, traced so that both kinds share one compile): the new branch
    # leaves along (q, 0); along it δμ = c u² with c = −b3/(6 b1), and x follows the old
    # branch's slope, x* + u q + δμ (h_μ + s1 q) with s1 = w_old/δμ_old.
    c = -b3 / (6 * b1)
    vertical = old[-1] == 0
    old_slope = old / jnp.where(vertical, 1, old[-1])
    pitchfork_ok = (b1 != 0) & jnp.isfinite(c) & ~vertical
    new = jnp.where(symmetric, jnp.concatenate([q, jnp.zeros((1,), dtype)]), new)
    curvature = jnp.where(symmetric & pitchfork_ok, c * old_slope, jnp.zeros_like(new))
    ok = transversal & matched & (pitchfork_ok | ~symmetric)
    ok = ok & jnp.all(jnp.isfinite(new)) & jnp.all(jnp.isfinite(curvature))
    result = result_where(~ok, SWITCH_FAILED, res)
    return _Predictor(direction=new, curvature=curvature, old=old, result=result)


class _Starts(eqx.Module):
    """Everything the two sides' continuations need, computed in one compiled call."""

    pred: _Predictor
    result: RESULTS
    z_bp: Float[Array, " n1"]
    x0: tuple[Array, Array]
    s0: tuple[Array, Array]
    s1: tuple[Array, Array]
    start: tuple[tuple[Array, Array, Array], tuple[Array, Array, Array]]
    h0: Array
    h_max: Array
    h_min: Array
    amplitude: Array


@eqx.filter_jit
def _prepare(problem, x, s, q, p, b1, b2, b3, nf_result, tangent, p0, p1, steps, symmetric):
    """The predictor and, for each side `u = ∓amplitude`, the first point's anchor, its unit
    tangent (away from the branch point) and the range ends in the order the stepper wants
    (`s1` is the end the tangent points to)."""
    dtype = x.dtype
    p0, p1 = error_if_nonfinite((jnp.asarray(p0, dtype), jnp.asarray(p1, dtype)), "p0, p1")
    lo, hi = jnp.minimum(p0, p1), jnp.maximum(p0, p1)
    span = hi - lo
    step_size, max_step_size, min_step_size, amplitude = steps
    as_h = lambda v, default: default if v is None else jnp.asarray(v, dtype)
    h0 = as_h(step_size, span / 50)
    ds = as_h(amplitude, h0)
    pred = branch_point_predictor(problem, x, s, q, p, b1, b2, b3, tangent, symmetric)
    result = RESULTS.where(successful(nf_result), pred.result, nf_result)
    z_bp = jnp.concatenate([x, s[None]])
    x0s, s0s, s1s, starts = [], [], [], []
    for side in (-1.0, 1.0):
        u = side * ds
        anchor = z_bp + u * pred.direction + u**2 * pred.curvature
        tau = side * (pred.direction + 2 * u * pred.curvature)
        tau = tau / jnp.linalg.norm(tau)
        # Keep the solve finite when the predictor failed (the result says so).
        finite = jnp.all(jnp.isfinite(anchor)) & jnp.all(jnp.isfinite(tau))
        anchor = jnp.where(finite, anchor, z_bp)
        tau = jnp.where(finite, tau, jnp.zeros_like(tau).at[-1].set(1))
        up = tau[-1] >= 0
        x0s.append(anchor[:-1])
        s0s.append(jnp.where(up, lo, hi))
        s1s.append(jnp.where(up, hi, lo))
        starts.append((anchor, tau, tau))
    return _Starts(
        pred=pred, result=result, z_bp=z_bp, x0=tuple(x0s), s0=tuple(s0s), s1=tuple(s1s),
        start=tuple(starts), h0=h0, h_max=as_h(max_step_size, span / 10),
        h_min=as_h(min_step_size, 1e-8 * span), amplitude=ds,
    )


@eqx.filter_jit
def _validate(branches: tuple[Branch, ...], starts: _Starts) -> tuple[Branch, ...]:
    """Each branch with its result: `SWITCH_FAILED` when the predictor failed, the first point
    did not converge, or it lies closer to the old branch's direction than to the new one's."""
    pred = starts.pred
    out = []
    for branch in branches:
        z1 = jnp.concatenate([branch.state_buffer[0], branch.parameter_buffer[0][None]])
        d = z1 - starts.z_bp
        on_new = jnp.abs(d @ pred.direction) > jnp.abs(d @ pred.old)
        landed = (jnp.linalg.norm(d) > 0.1 * starts.amplitude) & on_new
        result = RESULTS.where(
            branch.result == RESULTS.no_fixed_point, SWITCH_FAILED, branch.result
        )
        result = RESULTS.where(successful(starts.result), result, SWITCH_FAILED)
        result = result_where(~landed, SWITCH_FAILED, result)
        out.append(eqx.tree_at(lambda b: b.result, branch, result))
    return tuple(out)


def switch_branch(
    vector_field: Callable,
    bifurcation: Bifurcation,
    p0: float | Float[ArrayLike, ""] | None = None,
    p1: float | Float[ArrayLike, ""] | None = None,
    *,
    args: PyTree = None,
    amplitude: float | Float[ArrayLike, ""] | None = None,
    step_size: float | None = None,
    max_step_size: float | None = None,
    min_step_size: float | None = None,
    max_steps: int = 1000,
    detect_bifurcations: bool = True,
    max_bifurcations: int = 16,
    rtol: float | None = None,
    atol: float | None = None,
    newton_max_steps: int = 20,
    parameter_tol: float | None = None,
    symmetry_tol: float | None = None,
    throw: bool = False,
) -> tuple[Branch, Branch]:
    """The two sides of the branch emanating from a transcritical or pitchfork point.

    The new branch's tangent comes from the branch-point normal form (`b1, b2, b3` of
    `bifurcation.normal_form` and `a2 = pᵀ d²f[(h_μ, 1), (h_μ, 1)]`, see the module notes and
    `docs/branch_switching.md`); the old branch is the null direction that matches
    `bifurcation.tangent`. At a pitchfork each side starts at `x* ± u q` with
    `μ = μ* − b3/(6 b1) u²` (both halves `x ≈ ±√…` count); at a transcritical at
    `(x*, μ*) ± u·t_new`. Each start is corrected on the hyperplane orthogonal to the predicted
    tangent and then continued like `continuation` (same settings, same compiled program),
    until it leaves `[p0, p1]`.

    Jittable (`eqx.filter_jit`) given a `Bifurcation` (its `kind` is static); eagerly the
    continuation compiles once per vector field and configuration, shared with `continuation`.

    **Arguments:**

    - `vector_field`: `vector_field(x, mu) -> dx/dt`; with `args`, `vector_field(x, mu, args)`
        (the form the branch was continued with).
    - `bifurcation`: a transcritical or pitchfork `Bifurcation` from `continuation` (it carries
        the branch's `tangent`).
    - `p0`, `p1`: the parameter range of the new branch (default: `μ* ± max(1, |μ*|)`).
    - `args`: the pytree passed to the vector field, as for `continuation`.
    - `amplitude`: distance of the first predicted point from the branch point (default: the
        continuation's first step, `|p1 − p0|/50`).
    - the other keywords: as for `continuation`.
    - `throw`: raise a branch's failure (also under `jit`) instead of only reporting it.

    **Returns:**

    `(branch_minus, branch_plus)`, the two sides (`u < 0`, `u > 0`; for a transcritical, the
    sides of the new branch's tangent), each a `Branch` whose first point is the corrected
    predicted point. `branch.result` is the continuation's, or `SWITCH_FAILED`
    (`RESULTS.branch_switch_failed`) when the predictor did not converge, landed back on
    the old branch, or the normal form is degenerate (`b1 = 0`, `b1² ≤ a2·b2`).
    """
    if not isinstance(bifurcation, Bifurcation):
        raise TypeError(
            f"`bifurcation` must be a `Bifurcation` from `ds.continuation`, got "
            f"{type(bifurcation).__name__}"
        )
    if bifurcation.kind not in ("transcritical", "pitchfork"):
        hint = (
            "no equilibrium branch emanates from a fold"
            if bifurcation.kind == "fold"
            else "the branch born at a Hopf point is a family of periodic orbits"
        )
        raise ValueError(
            f"`bifurcation` must be a transcritical or pitchfork point to switch branches, got a "
            f"{bifurcation.kind!r} ({hint})"
        )
    nf = bifurcation.normal_form
    if not isinstance(nf, BranchPointNormalForm):
        raise TypeError("`bifurcation.normal_form` must be a `BranchPointNormalForm`")
    if bifurcation.tangent is None:
        raise ValueError(
            "`bifurcation` has no `tangent` (the branch's direction across it): pass a "
            "bifurcation from `ds.continuation`"
        )
    x = jnp.asarray(bifurcation.state)
    dtype = x.dtype
    n = x.shape[0]
    s = jnp.asarray(bifurcation.parameter, dtype)
    family = ScalarFamily(vector_field, args is not None)
    check_vector_field(lambda y, mu: family(y, mu, args), x, s)
    if (p0 is None) != (p1 is None):
        raise ValueError("`p0` and `p1` must be given together")
    if p0 is None:
        width = jnp.maximum(1.0, jnp.abs(s))
        p0, p1 = s - width, s + width
    for name, v in (("p0", p0), ("p1", p1)):
        if jnp.ndim(jnp.asarray(v)) != 0:
            raise ValueError(f"`{name}` must be a scalar, got shape {jnp.shape(jnp.asarray(v))}")
    if int(max_steps) < 1:
        raise ValueError(f"`max_steps` must be a positive integer, got {max_steps}")
    tangent = jnp.asarray(bifurcation.tangent)
    if tangent.shape != (n + 1,):
        raise ValueError(f"`bifurcation.tangent` must have shape ({n + 1},), got {tangent.shape}")
    opts = make_options(dtype, rtol, atol, newton_max_steps, parameter_tol, symmetry_tol)
    problem = ContinuationProblem(family, args, opts)
    # Python floats would be static under `filter_jit` (one compile per value): make arrays.
    arr = lambda v: None if v is None else jnp.asarray(v, dtype)
    starts = _prepare(
        problem, x, s, bifurcation.right_eigenvector, bifurcation.left_eigenvector,
        nf.b1, nf.b2, nf.b3, nf.result, tangent, arr(p0), arr(p1),
        tuple(arr(v) for v in (step_size, max_step_size, min_step_size, amplitude)),
        jnp.asarray(bifurcation.kind == "pitchfork"),
    )
    branches = tuple(
        continue_family(
            problem, starts.x0[i], starts.s0[i], starts.s1[i], starts.h0, starts.h_max,
            starts.h_min, int(max_steps), bool(detect_bifurcations), int(max_bifurcations),
            starts.start[i],
        )
        for i in range(2)
    )
    minus, plus = _validate(branches, starts)
    if throw:
        minus = minus.result.error_if(minus, ~successful(minus.result))
        plus = plus.result.error_if(plus, ~successful(plus.result))
    return minus, plus
