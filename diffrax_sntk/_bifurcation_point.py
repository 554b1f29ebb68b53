"""Differentiable bifurcation points: a detected bifurcation re-solved from a minimally augmented
defining system with optimistix, so that its parameter and state (and the Hopf frequency) are
differentiable in the family's `args` by the implicit function theorem.

Defining systems (Govaerts, *Numerical methods for bifurcations of dynamical equilibria*, SIAM
2000, ch. 3–4; the forms MatCont and BifurcationKit.jl continue), with `J = f_x(x, μ; args)`
and fixed bordering vectors taken from the detected bifurcation's eigenvectors:

- fold, unknowns `(x, μ)`: `f = 0`, `g = 0`, where `[[J, b], [cᵀ, 0]] [v; g] = [0; 1]`
  (`b` ≈ left and `c` ≈ right null vector). `g` vanishes exactly where `J` is singular.
- branch point, unknowns `(x, μ, β)`: `f + β b = 0`, `g₁ = g₂ = 0`, where
  `[[J, f_μ, b], [Cᵀ, 0]] [V; g] = [0; I₂]` with `C = [(q, 0), (0, 1)]` (a basis approximating
  the two-dimensional kernel of `[J, f_μ]` at a branch point). A branch point is codimension
  two in a generic one-parameter family; the unfolding parameter `β` is zero when the family
  really has one (`β ≠ 0` is reported as `RESULTS.not_a_bifurcation`).
- Hopf, unknowns `(x, μ, κ = ω²)`: `f = 0` and two entries of the 2×2 `G` in
  `[[J² + κ I, B], [Cᵀ, 0]] [V; G] = [0; I₂]` (`B`, `C` orthonormal bases of the real and
  imaginary parts of the left and right critical eigenvectors). `J² + κI` has a
  two-dimensional kernel exactly at `λ = ±i√κ`; the pair of entries is chosen at the initial
  guess as the one whose Jacobian is best conditioned (MatCont chooses likewise).

`optimistix.root_find` (Newton) solves the system; its default `ImplicitAdjoint` gives the
derivatives through `args`: `dz/dargs = −(∂F/∂z)⁻¹ ∂F/∂args`, regular at a nondegenerate point.
"""

import dataclasses
import itertools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from jaxtyping import PyTree

from ._bifurcation import Bifurcation
from ._continuation import ScalarFamily
from ._misc import (
    RESULTS,
    check_vector_field,
    default_tol,
    error_if_nonfinite,
    result_where,
    spectrum_of_matrix,
)
from ._normal_forms import normal_form_at

_PAIRS = tuple(itertools.combinations(range(4), 2))


def _stop(tree: PyTree) -> PyTree:
    return jtu.tree_map(
        lambda leaf: jax.lax.stop_gradient(leaf) if eqx.is_inexact_array(leaf) else leaf, tree
    )


def _solve(matrix, rhs):
    # A small dense bordered matrix: lineax's LU (throw=False: a singular border shows up as a
    # non-finite residual, which Newton reports).
    return lx.linear_solve(lx.MatrixLinearOperator(matrix), rhs, throw=False).value


def _solve_columns(matrix, rhs):
    return jax.vmap(lambda r: _solve(matrix, r), in_axes=1, out_axes=1)(rhs)


def _orthonormal_pair(u, v):
    basis, _ = jnp.linalg.qr(jnp.stack([u, v], axis=1))
    return basis


# ---------------------------------------------------------------------------------------------
# The three defining systems: residual(z, (args, borders)).


def _fold_residual(family, n):
    def residual(z, data):
        args, (b, c) = data
        x, s = z[:n], z[n]
        f = family(x, s, args)
        J = jax.jacfwd(family)(x, s, args)
        bordered = jnp.block([[J, b[:, None]], [c[None, :], jnp.zeros((1, 1), J.dtype)]])
        g = _solve(bordered, jnp.zeros((n + 1,), J.dtype).at[n].set(1))[n]
        return jnp.concatenate([f, g[None]])

    return residual


def _branch_point_residual(family, n):
    def residual(z, data):
        args, (b, C) = data
        x, s, beta = z[:n], z[n], z[n + 1]
        f = family(x, s, args)
        J = jax.jacfwd(family)(x, s, args)
        fs = jax.jacfwd(family, argnums=1)(x, s, args)
        A = jnp.concatenate([J, fs[:, None]], axis=1)
        bordered = jnp.block([[A, b[:, None]], [C.T, jnp.zeros((2, 1), J.dtype)]])
        rhs = jnp.zeros((n + 2, 2), J.dtype).at[n:, :].set(jnp.eye(2, dtype=J.dtype))
        g = _solve_columns(bordered, rhs)[n + 1]
        return jnp.concatenate([f + beta * b, g])

    return residual


def _hopf_entries(family, n):
    """All four entries of `G` (Hopf): `(x, μ, κ), data -> (f, vec G)`."""

    def entries(z, data):
        args, (B, C) = data
        x, s, kappa = z[:n], z[n], z[n + 1]
        f = family(x, s, args)
        J = jax.jacfwd(family)(x, s, args)
        M = J @ J + kappa * jnp.eye(n, dtype=J.dtype)
        bordered = jnp.block([[M, B], [C.T, jnp.zeros((2, 2), J.dtype)]])
        rhs = jnp.zeros((n + 2, 2), J.dtype).at[n:, :].set(jnp.eye(2, dtype=J.dtype))
        G = _solve_columns(bordered, rhs)[n:, :]
        return f, G.ravel()

    return entries


def _hopf_residual(family, n):
    entries = _hopf_entries(family, n)

    def residual(z, data):
        args, (B, C, select) = data
        f, g = entries(z, (args, (B, C)))
        return jnp.concatenate([f, select @ g])

    return residual


def _hopf_selection(family, n, z0, args, B, C):
    """`(2, 4)` selection of the pair of entries of `G` whose augmented Jacobian at `z0` has the
    largest `|det|`, scaled by its rows' norms (a scale-free conditioning proxy)."""
    entries = _hopf_entries(family, n)
    jf, jg = jax.jacfwd(entries)(z0, (args, (B, C)))
    eye4 = jnp.eye(4, dtype=z0.dtype)

    def score(pair):
        rows = jnp.concatenate([jf, jg[jnp.array(pair)]], axis=0)
        norms = jnp.prod(jnp.linalg.norm(rows, axis=1))
        return jnp.abs(jnp.linalg.det(rows)) / jnp.where(norms > 0, norms, 1)

    scores = jnp.stack([score(pair) for pair in _PAIRS])
    scores = jnp.where(jnp.isfinite(scores), scores, -1)
    choices = jnp.stack([eye4[jnp.array(pair)] for pair in _PAIRS])
    return choices[jnp.argmax(scores)]


# ---------------------------------------------------------------------------------------------


@eqx.filter_jit
def _bifurcation_point_impl(vector_field, bifurcation, args, rtol, atol, max_steps, throw):
    family = ScalarFamily(vector_field, True)
    kind = bifurcation.kind
    x0 = jax.lax.stop_gradient(bifurcation.state)
    dtype = x0.dtype
    n = x0.shape[0]
    s0 = jax.lax.stop_gradient(jnp.asarray(bifurcation.parameter, dtype))
    args = error_if_nonfinite(args, "args")
    x0 = error_if_nonfinite(x0, "bifurcation.state")
    q = jax.lax.stop_gradient(jnp.asarray(bifurcation.right_eigenvector))
    w = jax.lax.stop_gradient(jnp.asarray(bifurcation.left_eigenvector))
    nonfinite_border = ~(jnp.all(jnp.isfinite(q)) & jnp.all(jnp.isfinite(w)))
    q = jnp.where(jnp.isfinite(q), q, 1)
    w = jnp.where(jnp.isfinite(w), w, 1)

    if kind == "hopf":
        qr, qi = jnp.real(q).astype(dtype), jnp.imag(q).astype(dtype)
        wr, wi = jnp.real(w).astype(dtype), jnp.imag(w).astype(dtype)
        B, C = _orthonormal_pair(wr, wi), _orthonormal_pair(qr, qi)
        omega0 = jnp.abs(jnp.imag(jnp.asarray(bifurcation.eigenvalues)[0])).astype(dtype)
        z0 = jnp.concatenate([x0, s0[None], (omega0**2)[None]])
        select = _hopf_selection(family, n, z0, _stop(args), B, C)
        borders = (B, C, select)
        residual = _hopf_residual(family, n)
    elif kind == "fold":
        b = jnp.real(w).astype(dtype)
        c = jnp.real(q).astype(dtype)
        borders = (b / jnp.linalg.norm(b), c / jnp.linalg.norm(c))
        z0 = jnp.concatenate([x0, s0[None]])
        residual = _fold_residual(family, n)
    else:
        b = jnp.real(w).astype(dtype)
        c = jnp.real(q).astype(dtype)
        e = jnp.zeros((n + 1,), dtype).at[n].set(1)
        C = jnp.stack([jnp.concatenate([c / jnp.linalg.norm(c), jnp.zeros((1,), dtype)]), e], 1)
        borders = (b / jnp.linalg.norm(b), C)
        z0 = jnp.concatenate([x0, s0[None], jnp.zeros((1,), dtype)])
        residual = _branch_point_residual(family, n)

    sol = optx.root_find(
        residual,
        optx.Newton(rtol=rtol, atol=atol),
        z0,
        args=(args, borders),
        max_steps=max_steps,
        adjoint=optx.ImplicitAdjoint(),
        throw=False,
    )
    z = sol.value
    result = RESULTS.promote(sol.result)
    result = result_where(nonfinite_border, RESULTS.nonfinite, result)
    result = result_where(~jnp.all(jnp.isfinite(z)), RESULTS.nonfinite, result)
    x, s = z[:n], z[n]

    # Classification data at the (non-differentiated) solution: eigenvectors are not
    # differentiable in JAX, and the normal form is reported, not differentiated.
    xs, ss, sargs = jax.lax.stop_gradient(x), jax.lax.stop_gradient(s), _stop(args)
    xs = jnp.where(jnp.isfinite(xs), xs, 0)
    ss = jnp.where(jnp.isfinite(ss), ss, 0)
    spec = spectrum_of_matrix(jax.jacfwd(family)(xs, ss, sargs))
    nf_kind = "branch_point" if kind in ("transcritical", "pitchfork") else kind
    symmetry_tol = 100 * float(jnp.finfo(dtype).eps) ** 0.5
    nf, lam, right, left = normal_form_at(
        family,
        sargs,
        xs,
        ss,
        spec.eigenvalues,
        spec.right_eigenvectors,
        spec.left_eigenvectors,
        nf_kind,
        symmetry_tol,
    )
    result = result_where(nf.result == RESULTS.not_a_bifurcation, RESULTS.not_a_bifurcation, result)
    # Kind checks: a solution of the defining system may be a degenerate point or a point of
    # another kind (the fold system is also solved by a branch point, where `a = pᵀ f_μ = 0`).
    sqrt_eps = float(jnp.finfo(dtype).eps) ** 0.5
    if kind == "fold":
        fs = jax.jacfwd(family, argnums=1)(xs, ss, sargs)
        scale = jnp.linalg.norm(left) * jnp.linalg.norm(fs)
        # `a = pᵀ f_μ` (the normal form's `a`), with `p` normalised by `pᵀq = 1`.
        not_fold = (jnp.abs(left @ fs) <= sqrt_eps * scale) | (scale == 0)
        result = result_where(not_fold, RESULTS.not_a_bifurcation, result)
    elif kind == "hopf":
        kappa = z[n + 1]
        result = result_where(~(kappa > 0), RESULTS.not_a_bifurcation, result)
        omega = jnp.sqrt(jnp.where(kappa > 0, kappa, 1.0))
        nf = eqx.tree_at(lambda m: m.omega, nf, omega)
    else:
        beta = z[n + 1]
        scale = 1 + jnp.max(jnp.abs(xs))
        result = result_where(jnp.abs(beta) > 1e2 * atol * scale, RESULTS.not_a_bifurcation, result)
    # `dataclasses.replace` keeps every other field of the input (`direction`, `located`,
    # `branch`, `index`, and any added later).
    out = dataclasses.replace(
        bifurcation,
        parameter=s,
        state=x,
        eigenvalues=lam,
        right_eigenvector=right,
        left_eigenvector=left,
        normal_form=nf,
        result=result,
    )
    if throw:
        out = result.error_if(out, result != RESULTS.successful)
    return out


def bifurcation_point(
    vector_field: Callable,
    bifurcation: Bifurcation,
    args: PyTree = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 32,
    throw: bool = False,
) -> Bifurcation:
    """Re-solves a bifurcation from its minimally augmented defining system, differentiably in
    `args`.

    Starting from a `Bifurcation` found by `continuation(vector_field, ..., args=args)`, Newton
    (optimistix) solves the fold, branch-point or Hopf defining system (see
    `docs/deflation_and_bifurcation_points.md`; bordering vectors from the detected
    eigenvectors). The returned `parameter`, `state` and, for a Hopf point,
    `normal_form.omega` are differentiable with respect to `args` by the implicit function
    theorem (`optimistix.ImplicitAdjoint`): `jax.grad`, `jax.jacfwd`, `jax.jit` and `jax.vmap`
    over `args` all work.

    **Arguments:**

    - `vector_field`: `vector_field(x, mu, args) -> dx/dt`, `mu` a scalar.
    - `bifurcation`: a `Bifurcation` (`kind` `"fold"`, `"transcritical"`, `"pitchfork"` or
        `"hopf"`): the initial guess (state, parameter, Hopf frequency) and the bordering
        vectors. Its values are not differentiated.
    - `args`: any pytree (arrays, an `eqx.Module`): the family's parameters, traced.
    - `rtol`, `atol`: Newton tolerances (default `eps^(2/3)` of the state dtype).
    - `max_steps`: Newton iterations.
    - `throw`: raise the failure's message (also under `jit`) instead of only reporting it.

    **Returns:**

    A `Bifurcation` of the same kind at the re-solved point. `result` is the optimistix code
    (promoted to `RESULTS`), `RESULTS.nonfinite`, or `RESULTS.not_a_bifurcation` when the
    solution is not a nondegenerate point of the requested kind (a fold system converging to a
    branch point, `ω² ≤ 0` for Hopf, an unfolding `β ≠ 0` for a branch point: the family has
    none there). Eigenvalues, eigenvectors and the normal form are computed at the solution
    but are not differentiated (except `normal_form.omega`); the other fields (`direction`,
    `located`, `branch`, `index`, ...) are copied from the input.
    """
    if not isinstance(bifurcation, Bifurcation):
        raise TypeError(
            f"`bifurcation` must be a `Bifurcation` (from `continuation`), got "
            f"{type(bifurcation).__name__}"
        )
    if bifurcation.kind not in ("fold", "transcritical", "pitchfork", "hopf"):
        raise ValueError(
            f"`bifurcation.kind` must be a codimension-one kind, got {bifurcation.kind!r}"
        )
    x0 = jnp.asarray(bifurcation.state)
    if x0.ndim != 1:
        raise ValueError(
            f"`bifurcation.state` must have shape (N,), got {x0.shape}; pass one bifurcation, "
            "not a batch (vmap over `args` instead)"
        )
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise TypeError(f"`bifurcation.state` must be a real floating array, got {x0.dtype}")
    if bifurcation.kind == "hopf" and x0.shape[0] < 2:
        raise ValueError("a Hopf point needs a state of dimension at least 2")
    if int(max_steps) < 1:
        raise ValueError(f"`max_steps` must be a positive integer, got {max_steps}")
    check_vector_field(
        lambda x, mu: vector_field(x, mu, args), x0, jnp.asarray(bifurcation.parameter, x0.dtype)
    )
    tol = default_tol(x0.dtype)
    rtol = tol if rtol is None else float(rtol)
    atol = tol if atol is None else float(atol)
    # The static bookkeeping (`direction`, `located`, `branch`, `index`) is normalised for the
    # compiled program and restored afterwards, so every bifurcation of a kind shares one compile.
    statics = {k: getattr(bifurcation, k) for k in ("direction", "located", "branch", "index")}
    normalised = dataclasses.replace(bifurcation, direction=1, located=True, branch=0, index=0)
    out = _bifurcation_point_impl(
        vector_field, normalised, args, rtol, atol, int(max_steps), bool(throw)
    )
    return dataclasses.replace(out, **statics)
