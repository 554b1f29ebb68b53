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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, ArrayLike, Bool, Complex, Float, Int, PRNGKeyArray, PyTree

from ._bifurcation import Bifurcation
from ._fixed_points import FixedPoints, spectrum_of_matrix
from ._operators import PairedLinearOperator, _jvp, _prepare, _theta_mv, _vjp
from ._problem import TrajectoryProblem
from ._spectral import top_eigenpairs
from ._trace_estimators import effective_rank, trace

__all__ = ["BifurcationChannels", "bifurcation_channels"]

_DIRECTIONS = ("auto", "forcing", "eigenvalue", "both")
_METHODS = ("auto", "dense", "matfree")

class _FromProblem:
    def __repr__(self):
        return "<input of trial 0 at problem.t0>"


_FROM_PROBLEM = _FromProblem()


class BifurcationChannels(eqx.Module):
    r"""Result of [`bifurcation_channels`][diffrax_sntk.bifurcation_channels].

    All state-space arrays have the sNTK's shape `(batch, time, state)`; parameter-space directions
    are pytrees shaped like the model's parameters (`eqx.filter(model, eqx.is_inexact_array)`) with
    a leading axis.

    **Fields:**

    - `bifurcation`, `residual`, `sntk`: Θ_bif = J Π_U Jᵀ, Θ_res = J (I − Π_U) Jᵀ and Θ = J Jᵀ as
        lineax operators (symmetric, PSD); `bifurcation + residual = sntk` exactly.
    - `basis`: U, leading axis 4, orthonormal; the first `rank` rows span the channel, the others
        are zero.
    - `rank`: the number of independent channel directions.
    - `forcing_direction`: g_f = (∂f/∂θ)ᵀ w, leading axis 2 (real part, imaginary part; the
        imaginary part is zero for a real critical eigenvalue).
    - `eigenvalue_direction`: g_λ = ∇_θ λ_c = wᵀ(∂_θ A)v, leading axis 2 (∇ Re λ_c, ∇ Im λ_c).
    - `state`, `critical_eigenvalue`, `right_eigenvector`, `left_eigenvector`: x*, λ_c, v (unit
        norm), w (wᵀv = 1) of the model's Jacobian at x*.
    - `fixed_point_residual`: ‖f(x*)‖₂.
    - `gap_ratio`: |Re λ_c| / min |Re λ_j| over the non-critical eigenvalues (0 when there are
        none); small means the mode is well separated from the rest of the spectrum.
    - `energy_fraction`: tr Θ_bif / tr Θ.
    - `amplification`: λ_max(Θ_bif) / λ_max(Θ_res) (`inf` when Θ_res = 0).
    - `top_eigenvalue`, `top_eigenvector`: the top eigenpair of Θ.
    - `channel_eigenvalues`: the eigenvalues of Θ_bif (descending, 4 of them, zeros past `rank`);
        `channel_eigenvector`: its top eigenvector.
    - `residual_top_eigenvalue`: λ_max(Θ_res).
    - `alignment`: |cos| between the top eigenvectors of Θ and of Θ_bif.
    - `subspace_alignment`: the norm of the projection of Θ's top eigenvector onto the range of
        Θ_bif (1 when it lies in the channel).
    - `dominant_direction`: u1, the top eigenvector of JᵀJ (u1 ∝ Jᵀ v1), leading axis 1;
        `dominant_overlap`: ‖Π_U u1‖ (1 when u1 lies in the channel).
    - `restricted`: the restricted sNTK (J u1)(J u1)ᵀ (a lineax operator).
    - `effective_rank`: participation ratio (tr Θ)² / tr Θ² of Θ (exact with `method="dense"`).
    - `profile_computed`: J ĝ_f, the response to the unit forcing direction ĝ_f = Re g_f/‖Re g_f‖.
    - `profile_predicted`: the normal-form prediction c·e(t)·v with c = wᵀ(∂f/∂θ)ĝ_f and
        e(t) = (e^{λ_c (t − t0)} − 1)/λ_c (= (1 − e^{λ_c t})/|λ_c| for λ_c < 0, t0 = 0); twice the
        real part for a complex pair. It assumes every trial starts at x*.
    - `profile_error`: ‖profile_computed − profile_predicted‖ / ‖profile_computed‖.
    - `residual_too_large`, `far_from_critical`: flags behind `warnings`.
    - `residual_tol`, `gap_tol`: the thresholds used for the flags.

    `warnings` (a property) is a tuple of human-readable strings, empty when the interpretation
    of the split as "the bifurcation channel" is justified. The split itself is always exact.
    """

    bifurcation: PairedLinearOperator
    residual: PairedLinearOperator
    sntk: PairedLinearOperator
    basis: PyTree
    rank: Int[Array, ""]
    forcing_direction: PyTree
    eigenvalue_direction: PyTree
    state: Float[Array, " state"]
    critical_eigenvalue: Complex[Array, ""]
    right_eigenvector: Complex[Array, " state"]
    left_eigenvector: Complex[Array, " state"]
    fixed_point_residual: Float[Array, ""]
    gap_ratio: Float[Array, ""]
    energy_fraction: Float[Array, ""]
    amplification: Float[Array, ""]
    top_eigenvalue: Float[Array, ""]
    top_eigenvector: Float[Array, "batch time state"]
    channel_eigenvalues: Float[Array, " 4"]
    channel_eigenvector: Float[Array, "batch time state"]
    residual_top_eigenvalue: Float[Array, ""]
    alignment: Float[Array, ""]
    subspace_alignment: Float[Array, ""]
    dominant_direction: PyTree
    dominant_overlap: Float[Array, ""]
    restricted: PairedLinearOperator
    effective_rank: Float[Array, ""]
    profile_computed: Float[Array, "batch time state"]
    profile_predicted: Float[Array, "batch time state"]
    profile_error: Float[Array, ""]
    residual_too_large: Bool[Array, ""]
    far_from_critical: Bool[Array, ""]
    residual_tol: float = eqx.field(static=True)
    gap_tol: float = eqx.field(static=True)

    @property
    def warnings(self) -> tuple[str, ...]:
        """Why the split may not mean what its name says (host-side; call outside `jit`)."""
        out = []
        if bool(self.residual_too_large):
            out.append(
                f"critical point is not a fixed point of the model: ‖f(x*)‖ = "
                f"{float(self.fixed_point_residual):.3g} > residual_tol = {self.residual_tol:.3g}. "
                "The channel directions are those of the linearisation at this state, which is not "
                "an equilibrium; pass a converged fixed point (ds.find_fixed_points)."
            )
        if bool(self.far_from_critical):
            lam = complex(self.critical_eigenvalue)
            out.append(
                f"leading eigenvalue λ_c = {lam.real:.3g}{lam.imag:+.3g}i is far from the "
                "imaginary axis relative to the rest of the spectrum: "
                f"|Re λ_c| / min|Re λ_other| = {float(self.gap_ratio):.3g} > gap_tol = "
                f"{self.gap_tol:.3g}. The split is exact, "
                "but Θ need not be dominated by the bifurcation channel here."
            )
        return tuple(out)


# ---------------------------------------------------------------------------------------------
# Small pytree helpers (parameter pytrees carry None at non-parameter leaves).


def _stack_dot(stack: PyTree, tree: PyTree) -> Array:
    """⟨stack[j], tree⟩ for every j of a leading-axis stack."""
    parts = jtu.tree_map(
        lambda s, t: jnp.tensordot(s, t, axes=t.ndim), stack, tree
    )
    return sum(jtu.tree_leaves(parts))


def _stack_combine(stack: PyTree, coeffs: Array) -> PyTree:
    return jtu.tree_map(lambda s: jnp.tensordot(coeffs, s, axes=1), stack)


def _lowrank_mv(factors, vector):
    # factors: (r, *out); Θ_bif v = Σ_j f_j ⟨f_j, v⟩.
    return jnp.tensordot(jnp.tensordot(factors, vector, axes=vector.ndim), factors, axes=1)


def _residual_mv(params, static, problem, space, basis, vector):
    g = _vjp(params, static, problem, space, vector)
    g = jtu.tree_map(lambda a, b: a - b, g, _stack_combine(basis, _stack_dot(basis, g)))
    return _jvp(params, static, problem, space, g)


def _lowrank_operator(factors, struct) -> PairedLinearOperator:
    fn = eqx.Partial(_lowrank_mv, factors)
    return PairedLinearOperator(
        fn, fn, struct, struct, (lx.symmetric_tag, lx.positive_semidefinite_tag)
    )


# ---------------------------------------------------------------------------------------------
# The critical mode and its parameter directions.


def _critical_state(critical, n: int, dtype):
    """(x*, target eigenvalue or None) from the accepted kinds of `critical`."""
    if isinstance(critical, Bifurcation):
        return jnp.asarray(critical.state, dtype), critical.eigenvalues[0]
    if isinstance(critical, FixedPoints):
        if critical.states.ndim != 2:
            raise ValueError("`critical` (FixedPoints) must hold states of shape (points, state).")
        idx = jnp.argmax(critical.converged)
        return jnp.asarray(critical.states[idx], dtype), None
    if isinstance(critical, (jax.Array, list, tuple, float, int)) or hasattr(critical, "__array__"):
        x = jnp.asarray(critical)
        if x.shape != (n,):
            raise ValueError(
                f"`critical` as a state must have shape ({n},) (the problem's state size), got "
                f"{x.shape}."
            )
        return x.astype(dtype), None
    raise TypeError(
        "`critical` must be a `ds.Bifurcation`, a `ds.FixedPoints` result or a state array of "
        f"shape (state,), got {type(critical).__name__}."
    )


def _mode(A, target):
    """Index-0 mode (largest real part) or the one nearest `target`, gauge-fixed."""
    spec = spectrum_of_matrix(A)
    vals = spec.eigenvalues
    if target is None:
        i = 0
    else:
        i = jnp.argmin(jnp.abs(vals - jnp.asarray(target, vals.dtype)))
    lam = vals[i]
    v = spec.right_eigenvectors[:, i]
    w = spec.left_eigenvectors[:, i]
    # Gauge: largest entry of v real positive (keeps wᵀv = 1; makes real modes real).
    k = jnp.argmax(jnp.abs(v))
    phase = v[k] / jnp.abs(v[k])
    v, w = v / phase, w * phase
    v_norm = jnp.linalg.norm(v)
    v, w = v / v_norm, w * v_norm
    # Non-critical modes: all but λ_c and (for a complex pair) its conjugate.
    scale = jnp.maximum(1.0, jnp.max(jnp.abs(vals)))
    eps = jnp.finfo(A.dtype).eps
    is_complex = jnp.abs(lam.imag) > 1e3 * eps * scale
    n = vals.shape[0]
    others = jnp.ones((n,), bool).at[i].set(False)
    conj = jnp.argmin(jnp.where(others, jnp.abs(vals - jnp.conj(lam)), jnp.inf))
    others = jnp.where(is_complex & (n > 1), others.at[conj].set(False), others)
    min_other = jnp.min(jnp.where(others, jnp.abs(vals.real), jnp.inf))
    gap = jnp.where(jnp.isfinite(min_other), jnp.abs(lam.real) / min_other, 0.0)
    return lam, v, w, is_complex, gap


def _directions(f, x, flat, lam, v, w):
    """g_f and g_λ (flat, real and imaginary parts) for f(x, flat_params)."""
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


def _gram_eigen(factors):
    """Eigen-decomposition of Σ_j f_j f_jᵀ from the (r, n) factors: values and top vector."""
    gram = factors @ factors.T
    vals, vecs = jnp.linalg.eigh(gram)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    top = factors.T @ vecs[:, 0]
    top = top / jnp.maximum(jnp.linalg.norm(top), jnp.finfo(factors.dtype).tiny)
    return jnp.maximum(vals, 0.0), top, vecs


def _range_projection_norm(factors, vector, rank_tol):
    """‖Π_range(factorsᵀ) vector‖ via an SVD of the factors."""
    _, s, vt = jnp.linalg.svd(factors, full_matrices=False)
    keep = s > rank_tol * jnp.maximum(s[0], jnp.finfo(factors.dtype).tiny)
    coeffs = jnp.where(keep, vt @ vector, 0.0)
    return jnp.linalg.norm(coeffs)


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
    residual_tol: float | None = None,
    gap_tol: float = 0.5,
    rank_tol: float | None = None,
    filter_spec: Any = eqx.is_inexact_array,
    key: PRNGKeyArray | None = None,
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
    `vector_field(x, model) -> dx/dt` to replace it entirely.

    Jittable with `eqx.filter_jit` (pass the model as an argument so that different parameter
    values share one compilation); `warnings` is then read from the returned result.

    **Arguments:**

    - `model`: the model (`model(t, x, u) -> dx/dt`).
    - `problem`: a `TrajectoryProblem` (state space; the split concerns Θ = J Jᵀ of the states).
    - `critical`: a `ds.Bifurcation` (its `state`; the model's eigenvalue nearest the recorded
        critical one is used), a `ds.FixedPoints` result (its first converged entry) or a state
        `(N,)`; for the last two the leading mode (largest real part; for a complex pair the one
        with positive imaginary part) is used.
    - `vector_field`: optional `vector_field(x, model) -> dx/dt`.
    - `input`: the frozen input `u` for the default vector field.
    - `directions`: `"auto"` (default): g_f and g_λ for a real λ_c, (∇Re λ_c, ∇Im λ_c) for a
        complex pair (the Hopf case: growth rate and frequency); `"forcing"`: Re/Im g_f;
        `"eigenvalue"`: Re/Im g_λ; `"both"`: all four.
    - `method`: `"dense"` materialises J by forward-mode solves (one per parameter) and computes
        every diagnostic exactly by SVD; `"matfree"` uses `ds.top_eigenpairs`, `ds.trace` and
        `ds.effective_rank` on the operators; `"auto"`: dense for ≤ 512 parameters and
        ≤ 4·10⁶ entries of J.
    - `residual_tol`: flag `residual_too_large` when ‖f(x*)‖ exceeds it (default √eps).
    - `gap_tol`: flag `far_from_critical` when `gap_ratio` exceeds it (default 0.5).
    - `rank_tol`: relative tolerance under which a direction counts as dependent (default √eps).
    - `filter_spec`: which model leaves are parameters (default inexact arrays).
    - `key`: PRNG key for the matrix-free estimators (default `PRNGKey(0)`).

    **Returns:**

    A [`BifurcationChannels`][diffrax_sntk.BifurcationChannels].
    """
    if directions not in _DIRECTIONS:
        raise ValueError(f"`directions` must be one of {_DIRECTIONS}, got {directions!r}.")
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}, got {method!r}.")
    if vector_field is not None and not callable(vector_field):
        raise TypeError("`vector_field` must be callable as `vector_field(x, model)`.")
    if not gap_tol > 0:
        raise ValueError(f"`gap_tol` must be positive, got {gap_tol!r}.")
    params, static, out_struct = _prepare(model, problem, "state", filter_spec)
    dtype = problem.dtype
    eps = float(jnp.finfo(dtype).eps)
    residual_tol = eps**0.5 if residual_tol is None else float(residual_tol)
    rank_tol = eps**0.5 if rank_tol is None else float(rank_tol)
    if not residual_tol > 0 or not rank_tol > 0:
        raise ValueError("`residual_tol` and `rank_tol` must be positive.")
    key = jr.PRNGKey(0) if key is None else key

    flat, unravel = jfu.ravel_pytree(params)
    num_params = flat.size
    n_out = problem.batch_size * problem.num_times * problem.state_size
    if method == "auto":
        method = "dense" if num_params <= 512 and num_params * n_out <= 4_000_000 else "matfree"

    if vector_field is None:
        if input is _FROM_PROBLEM:
            u0 = problem.input_at(problem.t0, problem.per_trial_inputs()[0])
        else:
            u0 = input
        vf = lambda x, m: m(problem.t0, x, u0)
    else:
        vf = vector_field

    def f(x, p):
        return vf(x, eqx.combine(unravel(p), static))

    x_star, target = _critical_state(critical, problem.state_size, dtype)
    fx = f(x_star, flat)
    if fx.shape != x_star.shape:
        raise ValueError(
            f"The vector field must return dx/dt of shape {x_star.shape}, got {fx.shape}."
        )
    resid = jnp.linalg.norm(fx)
    A = jax.jacfwd(f)(x_star, flat)
    lam, v, w, is_complex, gap = _mode(A, target)
    gf_re, gf_im, gl_re, gl_im = _directions(f, x_star, flat, lam, v, w)

    cands = jnp.stack([gf_re, gl_re, gl_im, gf_im])
    real_mask = {
        "auto": (True, True, False, False), "forcing": (True, False, False, True),
        "eigenvalue": (False, True, True, False), "both": (True, True, True, True),
    }[directions]
    cplx_mask = (False, True, True, False) if directions == "auto" else real_mask
    mask = jnp.where(is_complex, jnp.array(cplx_mask), jnp.array(real_mask))
    U, rank = _orthonormal_basis(cands, mask, rank_tol)

    J = PairedLinearOperator(
        eqx.Partial(_jvp, params, static, problem, "state"),
        eqx.Partial(_vjp, params, static, problem, "state"),
        params,
        out_struct,
    )
    gf_norm = jnp.linalg.norm(gf_re)
    g_hat = gf_re / jnp.where(gf_norm > 0, gf_norm, 1.0)
    tangents = jnp.concatenate([U, g_hat[None]], axis=0)  # (5, P)

    if method == "dense":
        Jm = J.as_matrix()  # (n_out, P), forward-mode solves only
        JU_flat = (Jm @ tangents.T).T  # (5, n_out)
        JU, Jg = JU_flat[:4], JU_flat[4]
        W_, s, Vt = jnp.linalg.svd(Jm, full_matrices=False)
        top_val = s[0] ** 2
        v1 = W_[:, 0]
        u1 = Vt[0]
        tr = jnp.sum(s**2)
        eff_rank = tr**2 / jnp.sum(s**4)
        J_perp = Jm - JU.T @ U
        res_top = jnp.linalg.norm(J_perp, ord=2) ** 2 if J_perp.size else jnp.array(0.0, dtype)
    else:
        cols = jax.vmap(lambda t: J.mv(unravel(t)))(tangents)
        JU_flat = cols.reshape(5, -1)
        JU, Jg = JU_flat[:4], JU_flat[4]
        k1, k2, k3, k4 = jr.split(key, 4)
        theta_op = _theta(params, static, problem, out_struct)
        pairs = top_eigenpairs(theta_op, 1, key=k1)
        top_val = pairs.values[0]
        v1 = pairs.vectors[0].reshape(-1)
        u1_tree = J.transpose().mv(pairs.vectors[0])
        u1 = jfu.ravel_pytree(u1_tree)[0]
        u1 = u1 / jnp.maximum(jnp.linalg.norm(u1), jnp.finfo(dtype).tiny)
        tr = trace(theta_op, key=k2).estimate
        eff_rank = effective_rank(theta_op, key=k3).estimate
        res_op = _residual_operator(params, static, problem, out_struct, unravel, U)
        res_top = top_eigenpairs(res_op, 1, key=k4).values[0]

    shape = out_struct.shape
    chan_vals, chan_vec, _ = _gram_eigen(JU)
    tr_bif = jnp.sum(JU**2)
    tiny = jnp.finfo(dtype).tiny
    fraction = tr_bif / jnp.maximum(tr, tiny)
    amplification = jnp.where(res_top > 0, chan_vals[0] / jnp.where(res_top > 0, res_top, 1.0),
                              jnp.inf)
    alignment = jnp.abs(v1 @ chan_vec)
    sub_alignment = _range_projection_norm(JU, v1, rank_tol)
    dom_overlap = jnp.linalg.norm(U @ u1)
    # Restricted sNTK (J u1)(J u1)ᵀ = λ1 v1 v1ᵀ (J u1 = σ1 v1).
    Ju1 = (jnp.sqrt(jnp.maximum(top_val, 0.0)) * v1).reshape(shape)
    restricted = _lowrank_operator(Ju1[None], out_struct)

    # Normal-form time profile of the forcing direction.
    c = w @ jax.jvp(lambda p: f(x_star, p), (flat,), (g_hat.astype(flat.dtype),))[1]
    predicted = _profile(problem, lam, v, is_complex, c)
    computed = Jg.reshape(shape)
    profile_error = jnp.linalg.norm(computed - predicted) / jnp.maximum(
        jnp.linalg.norm(computed), tiny
    )

    to_tree = jax.vmap(unravel)
    return BifurcationChannels(
        bifurcation=_lowrank_operator(JU.reshape((4,) + shape), out_struct),
        residual=_residual_operator(params, static, problem, out_struct, unravel, U),
        sntk=_theta(params, static, problem, out_struct),
        basis=to_tree(U),
        rank=rank,
        forcing_direction=to_tree(jnp.stack([gf_re, gf_im])),
        eigenvalue_direction=to_tree(jnp.stack([gl_re, gl_im])),
        state=x_star,
        critical_eigenvalue=lam,
        right_eigenvector=v,
        left_eigenvector=w,
        fixed_point_residual=resid,
        gap_ratio=gap,
        energy_fraction=fraction,
        amplification=amplification,
        top_eigenvalue=top_val,
        top_eigenvector=v1.reshape(shape),
        channel_eigenvalues=chan_vals,
        channel_eigenvector=chan_vec.reshape(shape),
        residual_top_eigenvalue=res_top,
        alignment=alignment,
        subspace_alignment=sub_alignment,
        dominant_direction=to_tree(u1[None]),
        dominant_overlap=dom_overlap,
        restricted=restricted,
        effective_rank=eff_rank,
        profile_computed=computed,
        profile_predicted=predicted,
        profile_error=profile_error,
        residual_too_large=resid > residual_tol,
        far_from_critical=gap > gap_tol,
        residual_tol=residual_tol,
        gap_tol=float(gap_tol),
    )


def _theta(params, static, problem, out_struct) -> PairedLinearOperator:
    fn = eqx.Partial(_theta_mv, params, static, problem, "state")
    return PairedLinearOperator(
        fn, fn, out_struct, out_struct, (lx.symmetric_tag, lx.positive_semidefinite_tag)
    )


def _residual_operator(params, static, problem, out_struct, unravel, U) -> PairedLinearOperator:
    basis = jax.vmap(unravel)(U)
    fn = eqx.Partial(_residual_mv, params, static, problem, "state", basis)
    return PairedLinearOperator(
        fn, fn, out_struct, out_struct, (lx.symmetric_tag, lx.positive_semidefinite_tag)
    )
