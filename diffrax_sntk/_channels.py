r"""The bifurcation-channel / residual split of the sNTK.

At a fixed point x* of dx/dt = f(x; θ) with critical eigenvalue λ_c of A = ∂f/∂x (right vector v,
left vector w, wᵀv = 1) two parameter directions carry the amplified part of the sNTK:

- the forcing (unfolding) direction g_f = (∂f/∂θ)ᵀ w, which moves the equilibrium along v by
  ~‖g_f‖²/|λ_c| (a fold);
- the eigenvalue direction g_λ = ∇_θ λ_c = wᵀ (∂_θ A) v, which moves the critical eigenvalue
  (pitchfork, transcritical, and for a Hopf pair both the growth rate and the frequency).

With U an orthonormal basis of their span, Θ = J Jᵀ splits exactly into
Θ_bif = J Π_U Jᵀ = (J U)(J U)ᵀ (rank ≤ 4, ≤ 2 for the default directions) and
Θ_res = J (I − Π_U) Jᵀ, both symmetric PSD. See `docs/channels.md` for the derivation.

Θ and Θ_res are compositions of the one public trajectory Jacobian `jacobian_operator(method=...)`
(replay or solve, as that operator picks), so J is linearised once and shared by Θ, Θ_res, the
channel factors J U and the dominant direction Jᵀv₁.
"""

from __future__ import annotations

import functools as ft
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from ._bifurcation import Bifurcation
from ._channel_types import (
    BifurcationChannels as BifurcationChannels,
    ChannelDiagnostics as ChannelDiagnostics,
    ChannelSplit as ChannelSplit,
    CriticalMode as CriticalMode,
)
from ._fixed_points import FixedPoints
from ._misc import (
    RESULTS,
    check_callable,
    check_vector_field,
    error_if_nonfinite,
    gauge_fix,
    participation_ratio,
    real_mask,
    result_where,
    spectrum_of_matrix,
)
from ._operators import PairedLinearOperator, jacobian_operator
from ._problem import TrajectoryProblem
from ._spectral import top_eigenpairs
from ._trace_estimators import effective_rank, trace

__all__ = [
    "BifurcationChannels",
    "ChannelDiagnostics",
    "ChannelSplit",
    "CriticalMode",
    "bifurcation_channels",
]

_DIRECTIONS = ("auto", "forcing", "eigenvalue", "both")
_METHODS = ("auto", "dense", "matfree")
# Candidate directions, in this order: Re g_f, Re g_λ (∇Re λ_c), Im g_λ (∇Im λ_c), Im g_f.
_REAL_MASKS = {
    "auto": (True, True, False, False), "forcing": (True, False, False, True),
    "eigenvalue": (False, True, True, False), "both": (True, True, True, True),
}
_PSD = (lx.symmetric_tag, lx.positive_semidefinite_tag)


class _FromProblem:
    def __repr__(self):
        return "<input of trial 0 at problem.t0>"


_FROM_PROBLEM = _FromProblem()


# ---------------------------------------------------------------------------------------------
# Operators: Θ, Θ_res and low-rank pieces, all from one J.


def _stack_dot(stack: PyTree, tree: PyTree) -> Array:
    """⟨stack[j], tree⟩ for every j of a leading-axis stack (pytrees with None leaves)."""
    parts = jtu.tree_map(lambda s, t: jnp.tensordot(s, t, axes=t.ndim), stack, tree)
    return ft.reduce(jnp.add, jtu.tree_leaves(parts))


def _stack_combine(stack: PyTree, coeffs: Array) -> PyTree:
    return jtu.tree_map(lambda s: jnp.tensordot(coeffs, s, axes=1), stack)


def _gram_mv(J, basis, vector):
    # J (I − Π_U) Jᵀ v.
    g = J.transpose().mv(vector)
    g = jtu.tree_map(lambda a, b: a - b, g, _stack_combine(basis, _stack_dot(basis, g)))
    return J.mv(g)


def _gram_operator(J: PairedLinearOperator, basis: PyTree) -> PairedLinearOperator:
    """J (I − Π_U) Jᵀ; Θ itself is the case U = 0, so that Θ and Θ_res have one matvec
    program (applying or materialising both under one `jit`-ed function compiles once)."""
    fn = eqx.Partial(_gram_mv, J, basis)
    struct = J.out_structure()
    return PairedLinearOperator(fn, fn, struct, struct, _PSD)


def _lowrank_mv(factors, vector):
    # Σ_j f_j ⟨f_j, v⟩ for factors of shape (r, *out).
    return jnp.tensordot(jnp.tensordot(factors, vector, axes=vector.ndim), factors, axes=1)


def _lowrank_operator(factors, struct) -> PairedLinearOperator:
    fn = eqx.Partial(_lowrank_mv, factors)
    return PairedLinearOperator(fn, fn, struct, struct, _PSD)


# ---------------------------------------------------------------------------------------------
# The point, the critical mode and its parameter directions.


def _critical_state(critical, n: int, dtype):
    """(x*, target eigenvalue or None, found) from the accepted kinds of `critical`; `found` is
    false for a `FixedPoints` without a converged entry."""
    if isinstance(critical, Bifurcation):
        return jnp.asarray(critical.state, dtype), critical.eigenvalues[0], jnp.array(True)
    if isinstance(critical, FixedPoints):
        if critical.states.ndim != 2 or critical.states.shape[-1] != n:
            raise ValueError(
                f"`critical` (FixedPoints) must hold states of shape (points, {n}), got "
                f"{critical.states.shape}."
            )
        converged = jnp.asarray(critical.converged)
        return jnp.asarray(critical.states[jnp.argmax(converged)], dtype), None, jnp.any(converged)
    if isinstance(critical, (jax.Array, list, tuple, float, int)) or hasattr(critical, "__array__"):
        x = jnp.asarray(critical)
        if x.shape != (n,):
            raise ValueError(
                f"`critical` as a state must have shape ({n},) (the problem's state size), got "
                f"{x.shape}."
            )
        return error_if_nonfinite(x.astype(dtype), "critical"), None, jnp.array(True)
    raise TypeError(
        "`critical` must be a `ds.Bifurcation`, a `ds.FixedPoints` result or a state array of "
        f"shape (state,), got {type(critical).__name__}."
    )


def _mode(A, target):
    """λ_c, v, w (gauge-fixed, wᵀv = 1), is_complex and the gap ratio of the index-0 mode
    (largest real part) or of the one nearest `target`."""
    spec = spectrum_of_matrix(A)
    vals = spec.eigenvalues
    i = 0 if target is None else jnp.argmin(jnp.abs(vals - jnp.asarray(target, vals.dtype)))
    lam = vals[i]
    v = spec.right_eigenvectors[:, i]
    w = spec.left_eigenvectors[:, i]
    # v ↦ c v with |c| = 1 (largest entry real positive, so real modes are real); w ↦ w / c
    # keeps wᵀv = 1.
    v_fixed = gauge_fix(v)
    c = jnp.vdot(v, v_fixed) / jnp.vdot(v, v)
    v_norm = jnp.linalg.norm(v_fixed)
    v, w = v_fixed / v_norm, w / c * v_norm
    real = real_mask(vals)
    is_complex = ~real[i]
    # Non-critical modes: all but λ_c and (for a complex pair) its conjugate.
    n = vals.shape[0]
    others = jnp.ones((n,), bool).at[i].set(False)
    conj = jnp.argmin(jnp.where(others, jnp.abs(vals - jnp.conj(lam)), jnp.inf))
    others = jnp.where(is_complex & (n > 1), others.at[conj].set(False), others)
    min_other = jnp.min(jnp.where(others, jnp.abs(vals.real), jnp.inf))
    gap = jnp.where(jnp.isfinite(min_other), jnp.abs(lam.real) / min_other, 0.0)
    return lam, v, w, is_complex, gap


def _directions(f, x, flat, v, w):
    """Re g_f, Im g_f, ∇Re λ_c, ∇Im λ_c (flat) for f(x, flat_params), x held at x*."""
    _, pull = jax.vjp(lambda p: f(x, p), flat)
    gf_re, gf_im = pull(w.real)[0], pull(w.imag)[0]

    def lam_of(p):
        Av_re = jax.jvp(lambda z: f(z, p), (x,), (v.real,))[1]
        Av_im = jax.jvp(lambda z: f(z, p), (x,), (v.imag,))[1]
        re = w.real @ Av_re - w.imag @ Av_im
        im = w.real @ Av_im + w.imag @ Av_re
        return jnp.stack([re, im])

    gl = jax.jacrev(lam_of)(flat)
    return gf_re, gf_im, gl[0], gl[1]


def _critical_mode(f, x, flat, target, directions, rank_tol, to_tree):
    """The `CriticalMode` at x, the channel basis U (4, P) with its rank, and ĝ_f."""
    lam, v, w, is_complex, gap = _mode(jax.jacfwd(f)(x, flat), target)
    gf_re, gf_im, gl_re, gl_im = _directions(f, x, flat, v, w)
    real_dirs = _REAL_MASKS[directions]
    cplx_dirs = (False, True, True, False) if directions == "auto" else real_dirs
    mask = jnp.where(is_complex, jnp.array(cplx_dirs), jnp.array(real_dirs))
    U, rank = _orthonormal_basis(jnp.stack([gf_re, gl_re, gl_im, gf_im]), mask, rank_tol)
    gf_norm = jnp.linalg.norm(gf_re)
    mode = CriticalMode(
        state=x, fixed_point_residual=jnp.linalg.norm(f(x, flat)), eigenvalue=lam,
        right_eigenvector=v, left_eigenvector=w, is_complex=is_complex, gap_ratio=gap,
        forcing_direction=to_tree(jnp.stack([gf_re, gf_im])),
        eigenvalue_direction=to_tree(jnp.stack([gl_re, gl_im])),
    )
    return mode, U, rank, gf_re / jnp.where(gf_norm > 0, gf_norm, 1.0)


def _orthonormal_basis(cands, mask, rank_tol):
    """Modified Gram–Schmidt with dropping; independent columns packed to the front."""
    k, p = cands.shape
    Q = jnp.zeros((k, p), cands.dtype)
    count = jnp.array(0)
    for j in range(k):
        c = cands[j]
        c_norm = jnp.linalg.norm(c)
        r = c - Q.T @ (Q @ c)
        r = r - Q.T @ (Q @ r)
        r_norm = jnp.linalg.norm(r)
        keep = mask[j] & (c_norm > 0) & (r_norm > rank_tol * c_norm)
        q = jnp.where(keep, r / jnp.where(keep, r_norm, 1.0), 0.0)
        Q = Q.at[jnp.minimum(count, k - 1)].add(q)
        count = count + keep.astype(count.dtype)
    return Q, count


def _profile(problem, lam, v, is_complex, c):
    tau = problem.ts - problem.t0
    z = lam * tau
    small = jnp.abs(z) < 1e-3
    z_safe = jnp.where(small, 1.0, z)
    series = tau * (1 + z / 2 + z**2 / 6 + z**3 / 24)
    # e(t) = (e^{λτ} − 1)/λ, by its series where λτ is small (no cancellation, finite at λ = 0).
    e = jnp.where(small, series, tau * (jnp.exp(z_safe) - 1) / z_safe)
    shape = (c * e)[:, None] * v[None, :]
    shape = jnp.where(is_complex, 2.0, 1.0) * shape.real
    return jnp.broadcast_to(shape, (problem.batch_size,) + shape.shape)


# ---------------------------------------------------------------------------------------------
# Θ's spectral summary: dense (exact, by SVD of J) or matrix-free (Lanczos and trace estimators).


class _Spectra(NamedTuple):
    factors: Array  # J [U; ĝ_f], (5, n_out) flat
    top_value: Array  # λ_max(Θ)
    top_vector: Array  # v1, flat
    dominant: Array  # u1, flat parameters, unit norm
    trace: Array  # tr Θ
    effective_rank: Array
    residual_top: Array  # λ_max(Θ_res)
    converged: Array


def _dense_spectra(J, tangents, U) -> _Spectra:
    Jm = J.as_matrix()  # (n_out, P): one tangent pass per parameter
    cols = (Jm @ tangents.T).T
    W, s, Vt = jnp.linalg.svd(Jm, full_matrices=False)
    J_perp = Jm - cols[:4].T @ U
    sq = s**2
    return _Spectra(
        factors=cols, top_value=sq[0], top_vector=W[:, 0], dominant=Vt[0], trace=jnp.sum(sq),
        effective_rank=participation_ratio(sq), residual_top=jnp.linalg.norm(J_perp, ord=2) ** 2,
        converged=jnp.array(True),
    )


def _matfree_spectra(J, theta, residual, tangents, unravel, key) -> _Spectra:
    cols = jax.vmap(lambda t: J.mv(unravel(t)))(tangents).reshape(tangents.shape[0], -1)
    k1, k2, k3, k4 = jr.split(key, 4)
    pairs = top_eigenpairs(theta, 1, key=k1)
    res_pairs = top_eigenpairs(residual, 1, key=k4)
    u1 = jfu.ravel_pytree(J.transpose().mv(pairs.vectors[0]))[0]
    u1_norm = jnp.linalg.norm(u1)
    return _Spectra(
        factors=cols, top_value=pairs.values[0], top_vector=pairs.vectors[0].reshape(-1),
        dominant=u1 / jnp.where(u1_norm > 0, u1_norm, 1.0), trace=trace(theta, key=k2).estimate,
        effective_rank=effective_rank(theta, key=k3).estimate,
        residual_top=res_pairs.values[0],
        converged=jnp.all(pairs.converged) & jnp.all(res_pairs.converged),
    )


# ---------------------------------------------------------------------------------------------
# Assembling the result groups.


def _channel_eigen(factors):
    """Eigenvalues (descending, ≥ 0) and top eigenvector of Σ_j f_j f_jᵀ from (r, n) factors."""
    vals, vecs = jnp.linalg.eigh(factors @ factors.T)
    top = factors.T @ vecs[:, -1]
    top_norm = jnp.linalg.norm(top)
    return jnp.maximum(vals[::-1], 0.0), top / jnp.where(top_norm > 0, top_norm, 1.0)


def _range_projection_norm(factors, vector, rank_tol):
    """‖Π_range(factorsᵀ) vector‖ via an SVD of the factors."""
    _, s, vt = jnp.linalg.svd(factors, full_matrices=False)
    keep = s > rank_tol * s[0]
    return jnp.linalg.norm(jnp.where(keep, vt @ vector, 0.0))


def _numerical_rank(values, tol):
    """How many of the descending, non-negative `values` are ≥ `tol` × the largest."""
    return jnp.sum((values >= tol * values[0]) & (values > 0)).astype(jnp.int32)


def _make_split(spectra, J, theta, residual, U, rank, to_tree, channel_rank_tol) -> ChannelSplit:
    shape = J.out_structure().shape
    JU = spectra.factors[:4]
    chan_vals, chan_vec = _channel_eigen(JU)
    tr_bif = jnp.sum(JU**2)
    res_top = spectra.residual_top
    # (J u1)(J u1)ᵀ = λ1 v1 v1ᵀ, since J u1 = σ1 v1.
    Ju1 = jnp.sqrt(jnp.maximum(spectra.top_value, 0.0)) * spectra.top_vector
    struct = J.out_structure()
    return ChannelSplit(
        bifurcation=_lowrank_operator(JU.reshape((4,) + shape), struct),
        residual=residual,
        sntk=theta,
        restricted=_lowrank_operator(Ju1.reshape((1,) + shape), struct),
        basis=to_tree(U),
        rank=rank,
        factors=JU.reshape((4,) + shape),
        trace=spectra.trace,
        channel_trace=tr_bif,
        energy_fraction=tr_bif / spectra.trace,
        channel_eigenvalues=chan_vals,
        channel_eigenvector=chan_vec.reshape(shape),
        top_eigenvalue=spectra.top_value,
        residual_top_eigenvalue=res_top,
        amplification=jnp.where(res_top > 0, chan_vals[0] / jnp.where(res_top > 0, res_top, 1.0),
                                jnp.inf),
        channel_rank=_numerical_rank(chan_vals, channel_rank_tol),
    )


def _make_diagnostics(spectra, mode, U, split, predicted, rank_tol, residual_tol, gap_tol,
                      to_tree) -> ChannelDiagnostics:
    shape = predicted.shape
    JU, computed = spectra.factors[:4], spectra.factors[4]
    v1, u1 = spectra.top_vector, spectra.dominant
    # 0/0 = NaN when Re g_f = 0 (ĝ_f = 0): there is no forcing response to compare.
    error = jnp.linalg.norm(computed - predicted.reshape(-1)) / jnp.linalg.norm(computed)
    return ChannelDiagnostics(
        top_eigenvector=v1.reshape(shape),
        effective_rank=spectra.effective_rank,
        alignment=jnp.abs(v1 @ split.channel_eigenvector.reshape(-1)),
        subspace_alignment=_range_projection_norm(JU, v1, rank_tol),
        dominant_direction=to_tree(u1[None]),
        dominant_overlap=jnp.linalg.norm(U @ u1),
        profile_computed=computed.reshape(shape),
        profile_predicted=predicted,
        profile_error=error,
        residual_too_large=mode.fixed_point_residual > residual_tol,
        far_from_critical=mode.gap_ratio > gap_tol,
        eigensolver_converged=spectra.converged,
    )


def _result_code(found, mode, spectra, split, residual_tol):
    """First failure wins: no fixed point, unconverged eigensolves, non-finite spectra."""
    values = jnp.stack([
        spectra.trace, spectra.top_value, spectra.residual_top, spectra.effective_rank,
        split.energy_fraction, jnp.abs(mode.eigenvalue),
    ])
    finite = jnp.all(jnp.isfinite(values)) & jnp.all(jnp.isfinite(spectra.factors))
    fixed = found & (mode.fixed_point_residual <= residual_tol)
    result = result_where(~fixed, RESULTS.no_fixed_point, RESULTS.successful)
    result = result_where(~spectra.converged, RESULTS.eigensolver_max_restarts, result)
    return result_where(~finite, RESULTS.nonfinite, result)


# ---------------------------------------------------------------------------------------------


def bifurcation_channels(
    model: Callable,
    problem: TrajectoryProblem,
    critical: Bifurcation | FixedPoints | Float[ArrayLike, " state"],
    *,
    vector_field: Callable | None = None,
    input: Any = _FROM_PROBLEM,
    directions: Literal["auto", "forcing", "eigenvalue", "both"] = "auto",
    method: Literal["auto", "dense", "matfree"] = "auto",
    operator_method: Literal["auto", "replay", "solve"] = "auto",
    num_steps: int | None = None,
    residual_tol: float | None = None,
    gap_tol: float = 0.5,
    rank_tol: float | None = None,
    channel_rank_tol: float = 0.1,
    filter_spec: Any = eqx.is_inexact_array,
    key: PRNGKeyArray | None = None,
    throw: bool = False,
) -> BifurcationChannels:
    r"""Split the sNTK into the bifurcation channel and a residual: Θ = Θ_bif + Θ_res.

    At the fixed point x* with critical eigenvalue λ_c of A = ∂f/∂x (right v, left w, wᵀv = 1)
    the channel directions in parameter space are

    $$g_f = (\partial_\theta f)^\top w, \qquad g_\lambda = \nabla_\theta \lambda_c
    = w^\top (\partial_\theta A)\, v$$

    (g_λ is computed with x held at x*, by differentiating wᵀ A(θ) v, never the eigenvectors).
    With U an orthonormal basis of the selected directions,
    Θ_bif = J U Uᵀ Jᵀ and Θ_res = J (I − U Uᵀ) Jᵀ — exact, symmetric, PSD.

    The vector field at a state is `model(problem.t0, x, u0)` with `u0` the input of trial 0
    at `problem.t0` (`None` without inputs); pass `input=` to freeze another input, or
    `vector_field(x, model) -> dx/dt` to replace it entirely. Any `eqx.Module` model works,
    including ones with non-array leaves (e.g. an `eqx.nn.MLP` with a jitted activation).

    Jittable with `eqx.filter_jit` (pass the model as an argument so that different parameter
    values share one compilation) and vmappable with `eqx.filter_vmap` over points or
    parameters; `warnings` is then read from the returned (unbatched) result.

    **Arguments:**

    - `model`: the model (`model(t, x, u) -> dx/dt`).
    - `problem`: a `TrajectoryProblem` (state space; the split concerns Θ = J Jᵀ of the states).
    - `critical`: a `ds.Bifurcation` (its `state`; the model's eigenvalue nearest the recorded
        critical one is used), a `ds.FixedPoints` result (its first converged entry; without
        one, entry 0 with `result = RESULTS.no_fixed_point`) or a state `(N,)`; for the last two
        the leading mode (largest real part; for a complex pair the one with positive imaginary
        part) is used.
    - `vector_field`: optional `vector_field(x, model) -> dx/dt`.
    - `input`: the frozen input `u` for the default vector field.
    - `directions`: `"auto"` (default): g_f and g_λ for a real λ_c, (∇Re λ_c, ∇Im λ_c) for a
        complex pair (the Hopf case: growth rate and frequency); `"forcing"`: Re/Im g_f;
        `"eigenvalue"`: Re/Im g_λ; `"both"`: all four.
    - `method`: `"dense"` materialises J by forward-mode passes (one per parameter) and computes
        every diagnostic exactly by SVD; `"matfree"` uses `ds.top_eigenpairs`, `ds.trace` and
        `ds.effective_rank` on the operators; `"auto"`: dense for ≤ 512 parameters and
        ≤ 4·10⁶ entries of J.
    - `operator_method`, `num_steps`: how J (and so Θ, Θ_res) is applied, as `method` and
        `num_steps` of [`ds.jacobian_operator`][diffrax_sntk.jacobian_operator] (`"auto"`: replay
        outside `jit` where the solver allows it, else fresh solves).
    - `residual_tol`: `no_fixed_point` when ‖f(x*)‖ exceeds it (default √eps).
    - `gap_tol`: flag `far_from_critical` when `gap_ratio` exceeds it (default 0.5).
    - `rank_tol`: relative tolerance under which a direction counts as dependent (default √eps).
    - `channel_rank_tol`: `split.channel_rank` counts the eigenvalues of Θ_bif that are at least
        this fraction of its largest (default 0.1, i.e. singular values of J U within a factor
        ≈ 3.2 of the largest).
    - `filter_spec`: which model leaves are parameters (default inexact arrays).
    - `key`: PRNG key for the matrix-free estimators (default `PRNGKey(0)`).
    - `throw`: raise (with `eqx.error_if`, so also under `jit`) when `result` is not
        successful, instead of returning the result code.

    **Returns:**

    A [`BifurcationChannels`][diffrax_sntk.BifurcationChannels].
    """
    if directions not in _DIRECTIONS:
        raise ValueError(f"`directions` must be one of {_DIRECTIONS}, got {directions!r}.")
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}, got {method!r}.")
    if vector_field is not None:
        check_callable(vector_field, "vector_field", "vector_field(x, model)")
    if not gap_tol > 0:
        raise ValueError(f"`gap_tol` must be positive, got {gap_tol!r}.")
    if not 0 < channel_rank_tol < 1:
        raise ValueError(f"`channel_rank_tol` must lie in (0, 1), got {channel_rank_tol!r}.")
    if not isinstance(problem, TrajectoryProblem):
        raise TypeError(
            f"`problem` must be a `diffrax_sntk.TrajectoryProblem`, got {type(problem).__name__}."
        )
    dtype = problem.dtype
    x_star, target, found = _critical_state(critical, problem.state_size, dtype)
    J = jacobian_operator(
        model, problem, filter_spec=filter_spec, method=operator_method, num_steps=num_steps
    )
    eps = float(jnp.finfo(dtype).eps)
    res_tol = eps**0.5 if residual_tol is None else float(residual_tol)
    rk_tol = eps**0.5 if rank_tol is None else float(rank_tol)
    if not res_tol > 0:
        raise ValueError(f"`residual_tol` must be positive, got {residual_tol!r}.")
    if not rk_tol > 0:
        raise ValueError(f"`rank_tol` must be positive, got {rank_tol!r}.")
    key = jr.PRNGKey(0) if key is None else key
    params, static = eqx.partition(model, filter_spec)
    flat, unravel = jfu.ravel_pytree(params)
    n_out = problem.batch_size * problem.num_times * problem.state_size
    if method == "auto":
        method = "dense" if flat.size <= 512 and flat.size * n_out <= 4_000_000 else "matfree"
    if vector_field is None:
        u0 = (problem.input_at(problem.t0, problem.per_trial_inputs()[0])
              if input is _FROM_PROBLEM else input)
        vf = lambda x, m: m(problem.t0, x, u0)
    else:
        vf = vector_field
    check_vector_field(vf, x_star, model, "vector_field")

    def f(x, p):
        return vf(x, eqx.combine(unravel(p), static))

    to_tree = jax.vmap(unravel)
    mode, U, rank, g_hat = _critical_mode(f, x_star, flat, target, directions, rk_tol, to_tree)
    tangents = jnp.concatenate([U, g_hat[None]], axis=0)  # (5, P): the basis and ĝ_f
    theta = _gram_operator(J, to_tree(jnp.zeros_like(U)))
    residual = _gram_operator(J, to_tree(U))
    if method == "dense":
        spectra = _dense_spectra(J, tangents, U)
    else:
        spectra = _matfree_spectra(J, theta, residual, tangents, unravel, key)
    split = _make_split(spectra, J, theta, residual, U, rank, to_tree, float(channel_rank_tol))
    # Normal-form profile of the forcing direction: c = wᵀ(∂f/∂θ)ĝ_f.
    c = mode.left_eigenvector @ jax.jvp(lambda p: f(x_star, p), (flat,), (g_hat,))[1]
    predicted = _profile(problem, mode.eigenvalue, mode.right_eigenvector, mode.is_complex, c)
    diagnostics = _make_diagnostics(
        spectra, mode, U, split, predicted, rk_tol, res_tol, gap_tol, to_tree
    )
    result = _result_code(found, mode, spectra, split, res_tol)
    if throw:
        split, mode, diagnostics = result.error_if(
            (split, mode, diagnostics), result != RESULTS.successful
        )
    return BifurcationChannels(
        split=split, mode=mode, diagnostics=diagnostics, result=result,
        residual_tol=res_tol, gap_tol=float(gap_tol), channel_rank_tol=float(channel_rank_tol),
    )
