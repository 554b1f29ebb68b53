"""Shared internals: the failure enumeration, tolerance defaults, argument validators and the small
spectral helpers (participation ratio, realness test, eigenvalue signature, gauge fixing,
`spectrum_of_matrix`) that several modules need. One implementation of each lives here.

Nothing in this module imports another module of the package, so every module may import it.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Complex, Float, Int, PyTree

# ---------------------------------------------------------------------------------------------
# Failure reporting: one enumeration, extending optimistix's (which extends lineax's), so that a
# lineax or optimistix result promotes into it with `RESULTS.promote(result)`.


class RESULTS(optx.RESULTS):  # pyright: ignore
    """Why a computation of this package did not succeed.

    An equinox enumeration extending `optimistix.RESULTS` (itself extending `lineax.RESULTS`), so
    the codes of the solvers underneath carry through unchanged. Every result type of the package
    has a `result` field holding one item (an array under `jit`/`vmap`); `RESULTS[result]` gives
    the message and `result == RESULTS.successful` tests it.
    """

    successful = ""
    no_fixed_point = (
        "No initial state converged to a fixed point: the state reported is not a fixed point. "
        "Try more or different initial states, or a larger `max_steps`."
    )
    continuation_max_steps = (
        "Continuation reached `max_steps` before the end of the parameter interval; the branch is "
        "truncated. Increase `max_steps` or the step size."
    )
    continuation_step_too_small = (
        "The continuation step shrank below its minimum (Newton failed to converge at every "
        "retry); the branch is truncated there. The branch may end at a fold the parametrisation "
        "cannot pass, or the tolerances are too tight."
    )
    no_further_root = (
        "Deflation found no further root from the given starts: this root slot is empty (NaN "
        "state). It is padding, not a failure of the roots found."
    )
    no_periodic_orbit = (
        "No periodic orbit was found: shooting did not converge, or it converged to an "
        "equilibrium (the period collapsed or the start sits at a fixed point). Try a guess "
        "closer to the cycle, a `transient` onto it, or another period."
    )
    branch_switch_failed = (
        "Branch switching failed: the normal-form predictor is degenerate (b1 = 0 or "
        "b1² ≤ a2·b2), the recorded tangent matches neither predicted branch, the corrector did "
        "not converge, or it landed back on the old branch; the switched branch is not "
        "reliable. Try another `amplitude`."
    )
    localisation_failed = (
        "A change of stability was detected but the bifurcation could not be localised (the test "
        "function did not change sign on a refined bracket); its parameter value is approximate."
    )
    singular_linear_solve = (
        "A linear solve in a normal-form or localisation computation failed (a singular bordered "
        "system); the coefficients are not reliable. The point may be degenerate (codimension 2)."
    )
    not_a_bifurcation = (
        "The point is not a bifurcation of the requested kind (no critical eigenvalue of that "
        "type was found)."
    )
    refresh_failed = (
        "The eigenbasis refresh produced non-finite or unconverged eigenpairs; the previous basis "
        "was kept for this step."
    )
    eigensolver_max_restarts = (
        "The eigensolver reached its restart budget before every requested pair converged; check "
        "`converged` per pair."
    )


def result_where(pred, failure, result):
    """`failure` where `pred` holds and `result` is still successful, else `result` (first failure
    wins)."""
    return RESULTS.where(pred & (result == RESULTS.successful), failure, result)


def successful(result) -> Array:
    """Boolean array: which entries of a (possibly batched) result are `RESULTS.successful`."""
    return result == RESULTS.successful


# ---------------------------------------------------------------------------------------------
# Tolerances.


def default_tol(dtype) -> float:
    """Newton tolerance used when none is given: `eps^(2/3)` of the state dtype."""
    return float(jnp.finfo(dtype).eps) ** (2 / 3)


def default_symmetry_tol(dtype) -> float:
    """Relative size of `b2` below which a branch point counts as a pitchfork."""
    return 100 * float(jnp.finfo(dtype).eps) ** 0.5


def realness_tol(dtype) -> float:
    """Relative size of an imaginary part below which an eigenvalue counts as real."""
    return 1e3 * float(jnp.finfo(dtype).eps)


# ---------------------------------------------------------------------------------------------
# Validators. Structural checks raise at trace time; value checks use `eqx.error_if`, which fires
# under `jit` too, and must therefore be threaded into the data flow (they return their input).


def check_callable(fn, name: str, signature: str) -> None:
    if not callable(fn):
        raise TypeError(f"`{name}` must be callable as `{signature}`, got {type(fn).__name__}")


def _is_inexact(leaf) -> bool:
    return isinstance(leaf, (float, complex)) or (
        eqx.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.inexact)
    )


def error_if_nonfinite(tree: PyTree, name: str) -> PyTree:
    """Returns `tree` with an `eqx.error_if` on every inexact array leaf: a clear error naming
    `name` when it holds NaN or inf, also under `jax.jit`. Non-array leaves pass through."""

    def check(leaf):
        if eqx.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.inexact):
            message = f"`{name}` contains non-finite values (NaN or inf)"
            return eqx.error_if(leaf, ~jnp.all(jnp.isfinite(leaf)), message)
        return leaf

    return jtu.tree_map(check, tree)


def error_if_not(x: Array, pred, message: str) -> Array:
    """`eqx.error_if(x, ~pred, message)`: a value check that fires under `jit`."""
    return eqx.error_if(x, ~jnp.asarray(pred), message)


def check_vector_field(vector_field: Callable, x, params, name: str = "vector_field") -> None:
    """Raises `TypeError`/`ValueError` unless `vector_field(x, params)` returns an array of the
    shape of `x`. Uses `eqx.filter_eval_shape`, so `params` may be any pytree, including an
    `eqx.Module` with non-array leaves (activation functions, jitted callables)."""
    check_callable(vector_field, name, f"{name}(x, params)")
    out = eqx.filter_eval_shape(vector_field, x, params)
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(f"`{name}` must return a single array, got {type(out).__name__}")
    if out.shape != jnp.shape(x):
        raise ValueError(
            f"`{name}` returned shape {out.shape} for a state of shape {jnp.shape(x)}; "
            "it must return dx/dt with the shape of x"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"`{name}` must return a real floating array, got dtype {out.dtype}")


# ---------------------------------------------------------------------------------------------
# Spectral helpers. All work on jax arrays under jit/vmap; the realness test and the signature
# also accept NumPy arrays (host-side analysis) and then return NumPy values.


def participation_ratio(eigenvalues: Float[ArrayLike, "... n"], axis: int = -1) -> Array:
    """`(Σ λ)² / Σ λ²` of non-negative eigenvalues (pass squared singular values for a factor)."""
    xp = np if isinstance(eigenvalues, np.ndarray) else jnp
    lam = xp.asarray(eigenvalues)
    return xp.sum(lam, axis=axis) ** 2 / xp.sum(lam**2, axis=axis)


def real_mask(eigenvalues: Complex[ArrayLike, "... n"]):
    """Which eigenvalues are real, relative to the spectrum's scale `max(1, max |λ|)`."""
    xp = np if isinstance(eigenvalues, np.ndarray) else jnp
    ev = xp.asarray(eigenvalues)
    scale = xp.maximum(1.0, xp.max(xp.abs(ev), axis=-1, keepdims=True))
    return xp.abs(ev.imag) <= realness_tol(ev.real.dtype) * scale


def eigen_signature(eigenvalues: Complex[ArrayLike, " n"]) -> Int[Array, "4"]:
    """`(sign det A, # unstable, # complex unstable, # complex)` of a real matrix's spectrum.

    A change in the first entry marks a real eigenvalue crossing zero (fold or branch point); a
    change in the third with the first unchanged marks a complex pair crossing (Hopf)."""
    xp = np if isinstance(eigenvalues, np.ndarray) else jnp
    ev = xp.asarray(eigenvalues)
    real = real_mask(ev)
    neg = real & (ev.real < 0)
    zero = real & (ev.real == 0)
    det_sign = xp.where(xp.any(zero), 0, xp.where(xp.sum(neg) % 2 == 1, -1, 1))
    unstable = ev.real > 0
    sig = xp.stack([det_sign, xp.sum(unstable), xp.sum(unstable & ~real), xp.sum(~real)])
    return sig.astype(xp.int32)


def gauge_fix(v: Array, axis: int = 0) -> Array:
    """Fixes the phase (sign, for real vectors) of eigenvectors: the largest-modulus entry along
    `axis` becomes real and positive. Works for real and complex arrays; each slice along the
    other axes is fixed independently."""
    idx = jnp.argmax(jnp.abs(v), axis=axis, keepdims=True)
    pivot = jnp.take_along_axis(v, idx, axis=axis)
    mod = jnp.abs(pivot)
    phase = jnp.where(mod > 0, pivot / jnp.where(mod > 0, mod, 1), 1)
    if jnp.issubdtype(v.dtype, jnp.complexfloating):
        return v * jnp.conj(phase)
    return v * jnp.real(phase)


class Spectrum(eqx.Module):
    """Jacobian `A = ∂f/∂x` at a point and its eigen-decomposition.

    Eigenvalues are sorted by decreasing real part (then decreasing imaginary part). Column `i` of
    `right_eigenvectors` (unit norm) and of `left_eigenvectors` belong to `eigenvalues[i]`, with
    the biorthogonal normalisation `wᵢᵀ vⱼ = δᵢⱼ` (no complex conjugation).
    """

    jacobian: Float[Array, "*batch state state"]
    eigenvalues: Complex[Array, "*batch state"]
    right_eigenvectors: Complex[Array, "*batch state state"]
    left_eigenvectors: Complex[Array, "*batch state state"]


def spectrum_of_matrix(A: Float[Array, "n n"]) -> Spectrum:
    """Eigen-decomposition of a real square matrix with biorthonormal left vectors.

    Uses `jnp.linalg.eig` (host/CPU kernel; never differentiated through eigenvectors).
    """
    vals, vecs = jnp.linalg.eig(A)
    order = jnp.lexsort((-vals.imag, -vals.real))
    vals = vals[order]
    vecs = vecs[:, order]
    # Rows of V⁻¹ are the left eigenvectors with wᵢᵀ vⱼ = δᵢⱼ.
    left = jnp.linalg.solve(vecs, jnp.eye(A.shape[0], dtype=vecs.dtype)).T
    return Spectrum(jacobian=A, eigenvalues=vals, right_eigenvectors=vecs, left_eigenvectors=left)
