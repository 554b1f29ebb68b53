"""Normal-form coefficients of codimension-one bifurcations of equilibria.

All derivatives are taken by JAX (nested `jax.jvp`), never by finite differences. Every
coefficient is reported together with the convention it is defined in (see `docs/bifurcations.md`)
and with a `RESULTS` code: the linear solves' results are propagated, and a point without a
critical eigenvalue of the requested type reports `RESULTS.not_a_bifurcation`. The kernels are
jittable and vmappable; only the inference of the kind (`kind=None`) needs concrete values.
"""

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Complex, Float, PyTree

from ._fixed_points import (
    _MISSING,
    _as_float,
    _check_values,
    _model_vector_field,
    resolve_dynamics,
)
from ._misc import (
    RESULTS,
    default_symmetry_tol as default_symmetry_tol,
    error_if_nonfinite,
    gauge_fix,
    real_mask,
    result_where,
    spectrum_of_matrix,
    successful,
)
from ._normal_form_types import (
    BRANCH_POINT_CONVENTION as BRANCH_POINT_CONVENTION,
    FOLD_CONVENTION as FOLD_CONVENTION,
    HOPF_CONVENTION as HOPF_CONVENTION,
    AbstractNormalForm as AbstractNormalForm,
    BranchPointNormalForm as BranchPointNormalForm,
    FoldNormalForm as FoldNormalForm,
    HopfNormalForm as HopfNormalForm,
)

# ------------------------------------------------------------------------------------------------
# One-parameter families. Every internal routine works on `family(x, s, args)`, a line
# `params(s) = base + s * direction` through parameter space, so that a scalar sweep, a direction
# in a pytree of parameters and a segment between two training checkpoints share one set of
# compiled functions (the family is static, `args` is traced).


class LineFamily(eqx.Module):
    """`x, s, (base, direction) -> vector_field(x, base + s * direction)` (private helper).

    Only the inexact array leaves of the parameters move; everything else is held at `base`.
    """

    vector_field: Callable
    static: Any

    def __call__(self, x, s, args):
        base, direction = args

        def _move(b, d):
            if eqx.is_inexact_array(b):
                return b + jnp.asarray(s, b.dtype) * d
            return b

        params = jtu.tree_map(_move, base, direction)
        return self.vector_field(x, eqx.combine(params, self.static))


def make_family(vector_field: Callable, base: PyTree, direction: PyTree | None):
    """Splits `base` into traced arrays and static leaves; returns `(family, args)`."""
    dynamic, static = eqx.partition(base, eqx.is_array)
    if direction is None:
        direction = jtu.tree_map(jnp.zeros_like, dynamic)
    else:
        direction = eqx.filter(direction, eqx.is_array)
        if jtu.tree_structure(direction) != jtu.tree_structure(dynamic):
            raise ValueError(
                "`parameter_direction` must have the structure of the parameters' arrays (for a "
                "model: of `eqx.filter(model, eqx.is_array)`); got "
                f"{jtu.tree_structure(direction)}, expected {jtu.tree_structure(dynamic)}"
            )
    return LineFamily(vector_field, static), (dynamic, direction)


# ------------------------------------------------------------------------------------------------
# Derivatives by nested forward mode.


def _b(fn, x, u, v):
    """Second derivative B(u, v) = d²f/dx²[u, v] for real u, v."""
    return jax.jvp(lambda y: jax.jvp(fn, (y,), (u,))[1], (x,), (v,))[1]


def _c(fn, x, u, v, w):
    """Third derivative C(u, v, w) for real u, v, w."""
    return jax.jvp(lambda y: _b(fn, y, u, v), (x,), (w,))[1]


def _complex_multilinear(form, fn, x, *vecs):
    # A real symmetric multilinear form extended complex-multilinearly: expand every complex
    # argument into real and imaginary parts (JAX tangents must share the primal's real dtype).
    # The real terms are stacked and evaluated by one vmapped derivative (one trace, not 2^k).
    parts = []
    for v in vecs:
        if jnp.iscomplexobj(v):
            parts.append(((1.0, jnp.real(v)), (1j, jnp.imag(v))))
        else:
            parts.append(((1.0, v),))
    combos = list(itertools.product(*parts))
    coeffs = np.asarray([complex(np.prod([c for c, _ in combo])) for combo in combos])
    stacked = [jnp.stack([combo[i][1] for combo in combos]) for i in range(len(vecs))]
    terms = jax.vmap(lambda *us: form(fn, x, *us))(*stacked)
    if np.all(np.imag(coeffs) == 0):
        return jnp.sum(terms, axis=0)
    ctype = jnp.result_type(terms.dtype, jnp.complex64)
    return jnp.einsum("k,kn->n", jnp.asarray(coeffs, ctype), terms.astype(ctype))


def _solve(matrix, rhs):
    """`matrix⁻¹ rhs` and the solve's result, promoted to `RESULTS`."""
    sol = lx.linear_solve(lx.MatrixLinearOperator(matrix), rhs, throw=False)
    return sol.value, RESULTS.promote(sol.result)


def _first_failure(*results):
    out = results[0]
    for r in results[1:]:
        out = RESULTS.where(successful(out), r, out)
    return out


def _all_finite(*values):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in values]))


class ZeroEigenvalueTerms(NamedTuple):
    """Coefficients of the reduced equation at a simple zero eigenvalue, and their result."""

    a: Array
    b1: Array
    b2: Array
    b3: Array
    result: RESULTS


class HopfTerms(NamedTuple):
    """Frequency, `c1`, transversality `dRe λ/ds` at a Hopf point, and their result."""

    omega: Array
    c1: Array
    transversality: Array
    result: RESULTS


@eqx.filter_jit
def zero_eigenvalue_terms(family, args, x, s, q, p) -> ZeroEigenvalueTerms:
    """`(a, b1, b2, b3, result)` at a simple zero eigenvalue with right/left vectors `q`, `p`
    (pᵀq = 1). `result` carries the bordered solves' results; non-finite coefficients after
    successful solves are `RESULTS.singular_linear_solve`."""
    fn = lambda y: family(y, s, args)
    n = x.shape[0]
    A = jax.jacfwd(fn)(x)
    bordered = jnp.block([[A, q[:, None]], [p[None, :], jnp.zeros((1, 1), A.dtype)]])

    def solve(rhs):
        # [[A, q], [pᵀ, 0]] [h; σ] = [rhs; 0]: h solves A h = rhs - (pᵀ rhs) q with pᵀ h = 0.
        full = jnp.concatenate([rhs, jnp.zeros((1,), rhs.dtype)])
        h, result = _solve(bordered, full)
        return h[:n], result

    f_mu = jax.jvp(lambda t: family(x, t, args), (s,), (jnp.ones_like(s),))[1]
    a_mu_q = jax.jvp(
        lambda t: jax.jvp(lambda y: family(y, t, args), (x,), (q,))[1], (s,), (jnp.ones_like(s),)
    )[1]
    a = p @ f_mu
    h_mu, r_mu = solve(-f_mu)
    bqq = _b(fn, x, q, q)
    b2 = p @ bqq
    h2, r_2 = solve(-bqq)
    b1 = p @ (a_mu_q + _b(fn, x, q, h_mu))
    b3 = p @ (_c(fn, x, q, q, q) + 3 * _b(fn, x, q, h2))
    result = _first_failure(r_mu, r_2)
    result = result_where(~_all_finite(a, b1, b2, b3), RESULTS.singular_linear_solve, result)
    return ZeroEigenvalueTerms(a, b1, b2, b3, result)


def _nan_unless(ok, values):
    return tuple(jnp.where(ok, v, jnp.nan) for v in values)


def zero_eigenvalue_coefficients(family, args, x, s, q, p):
    """`(a, b1, b2, b3)`, NaN where a linear solve failed. Kept for old callers; prefer
    `zero_eigenvalue_terms`, which returns the `RESULTS` code instead."""
    terms = zero_eigenvalue_terms(family, args, x, s, q, p)
    return _nan_unless(successful(terms.result), terms[:4])


@eqx.filter_jit
def hopf_terms(family, args, x, s, q, w) -> HopfTerms:
    """`(omega, c1, dRe λ/ds, result)` at a Hopf point; `q` right eigenvector of iω, `w` left,
    wᵀq = 1. `result` carries the three linear solves' results; non-finite values after
    successful solves are `RESULTS.singular_linear_solve`."""
    fn = lambda y: family(y, s, args)
    n = x.shape[0]
    A = jax.jacfwd(fn)(x)
    q = q / jnp.linalg.norm(q)
    w = w / (w @ q)
    omega = jnp.imag(w @ (A.astype(q.dtype) @ q))
    # Choose the eigenvalue with positive frequency (q̄ belongs to -iω).
    flip = omega < 0
    q = jnp.where(flip, jnp.conj(q), q)
    w = jnp.where(flip, jnp.conj(w), w)
    omega = jnp.abs(omega)
    qbar = jnp.conj(q)
    b_q_qbar = jnp.real(_complex_multilinear(_b, fn, x, q, qbar))
    r1, res1 = _solve(A, b_q_qbar)
    b_qq = _complex_multilinear(_b, fn, x, q, q)
    shifted = 2j * omega * jnp.eye(n, dtype=q.dtype) - A.astype(q.dtype)
    r2, res2 = _solve(shifted, b_qq)
    g = (
        _complex_multilinear(_c, fn, x, q, q, qbar)
        - 2 * _complex_multilinear(_b, fn, x, q, r1)
        + _complex_multilinear(_b, fn, x, qbar, r2)
    )
    # <p, y> = conj(p)ᵀ y with conj(p) = w, so that <p, q> = wᵀ q = 1.
    c1 = 0.5 * (w @ g)
    # Transversality: total derivative of the critical eigenvalue along the equilibrium branch,
    # dλ/ds = wᵀ (A_s + B(·, x_s)) q with x_s = -A⁻¹ f_s. Never differentiates eigenvectors.
    ones = jnp.ones_like(s)
    f_s = jax.jvp(lambda t: family(x, t, args), (s,), (ones,))[1]
    x_s, res3 = _solve(A, -f_s)

    def a_times(v):
        jac_dir = jax.jvp(
            lambda t: jax.jvp(lambda y: family(y, t, args), (x,), (v,))[1], (s,), (ones,)
        )[1]
        return jac_dir + _b(fn, x, v, x_s)

    dA_q = a_times(jnp.real(q)) + 1j * a_times(jnp.imag(q))
    dlam = jnp.real(w @ dA_q)
    result = _first_failure(res1, res2, res3)
    result = result_where(~_all_finite(omega, c1, dlam), RESULTS.singular_linear_solve, result)
    return HopfTerms(omega, c1, dlam, result)


def hopf_coefficients(family, args, x, s, q, w):
    """`(omega, c1, dRe λ/ds)`, NaN where a linear solve failed. Kept for old callers; prefer
    `hopf_terms`, which returns the `RESULTS` code instead."""
    terms = hopf_terms(family, args, x, s, q, w)
    return _nan_unless(successful(terms.result), terms[:3])


# ------------------------------------------------------------------------------------------------
# Critical vectors and the jittable normal-form kernel.


def symmetric_mask(b1, b2, b3, symmetry_tol) -> Bool[Array, "*batch"]:
    """Pitchfork when `b2` vanishes relative to `1`, `|b1|`, `|b3|` (non-finite ones ignored)."""
    finite_abs = lambda c: jnp.where(jnp.isfinite(c), jnp.abs(c), 1.0)
    scale = jnp.maximum(1.0, jnp.maximum(finite_abs(b1), finite_abs(b3)))
    return jnp.abs(b2) <= symmetry_tol * scale


def is_symmetric(b1, b2, b3, symmetry_tol) -> bool:
    """Host version of `symmetric_mask` (concrete values)."""
    return bool(symmetric_mask(b1, b2, b3, symmetry_tol))


def critical_index(eigenvalues: Complex[Array, " n"], kind: str):
    """`(i, found)`: the eigenvalue nearest the imaginary axis among the complex ones with
    `Im λ > 0` (`kind == "hopf"`) or the real ones (otherwise); `found` is false when there is
    none (then `i` is meaningless). Jittable."""
    eigenvalues = jnp.asarray(eigenvalues)
    real = real_mask(eigenvalues)
    cand = (~real & (eigenvalues.imag > 0)) if kind == "hopf" else real
    i = jnp.argmin(jnp.where(cand, jnp.abs(eigenvalues.real), jnp.inf))
    return i, jnp.any(cand)


def critical_vectors(eigenvalues, right, left, kind: str):
    """Index of the critical eigenvalue and its vectors (host helper; raises `ValueError` when
    there is no eigenvalue of the requested type). The jittable path is `critical_index`."""
    i, found = critical_index(jnp.asarray(eigenvalues), kind)
    i = int(i)
    if not bool(found):
        if kind == "hopf":
            raise ValueError("no complex eigenvalue pair: not a Hopf point")
        raise ValueError("no real eigenvalue: not a zero-eigenvalue bifurcation")
    if kind == "hopf":
        return i, np.asarray(right[:, i]), np.asarray(left[:, i])
    return i, np.real(np.asarray(right[:, i])), np.real(np.asarray(left[:, i]))


@eqx.filter_jit
def normal_form_at(family, args, x, s, eigenvalues, right, left, kind: str, symmetry_tol):
    """Jittable: `(normal form, λ, q, w)` at `(x, s)` for a static `kind` in `"fold"`,
    `"branch_point"`, `"hopf"`.

    Picks the critical eigenvalue (`critical_index`), fixes the gauge of its vectors (largest
    entry of `q` real positive, `‖q‖ = 1`, `wᵀq = 1`) and computes the coefficients. The normal
    form's `result` is `RESULTS.not_a_bifurcation` when the spectrum has no eigenvalue of the
    requested type, else the linear solves' result. `λ` is `(λ, λ̄)` for a Hopf point.
    """
    eigenvalues = jnp.asarray(eigenvalues)
    i, found = critical_index(eigenvalues, kind)
    lam = eigenvalues[i]
    q = jnp.asarray(right)[:, i]
    w = jnp.asarray(left)[:, i]
    if kind != "hopf":
        q, w = jnp.real(q).astype(x.dtype), jnp.real(w).astype(x.dtype)
    q = gauge_fix(q / jnp.linalg.norm(q))
    w = w / (w @ q)
    if kind == "hopf":
        terms = hopf_terms(family, args, x, s, q, w)
        result = RESULTS.where(found, terms.result, RESULTS.not_a_bifurcation)
        nf = HopfNormalForm(
            omega=terms.omega, c1=terms.c1, l1=jnp.real(terms.c1),
            transversality=terms.transversality, result=result,
        )
        return nf, jnp.stack([lam, jnp.conj(lam)]), q, w
    terms = zero_eigenvalue_terms(family, args, x, s, q, w)
    result = RESULTS.where(found, terms.result, RESULTS.not_a_bifurcation)
    if kind == "fold":
        nf = FoldNormalForm(a=terms.a, a_f=terms.b2 / 2, b1=terms.b1, b2=terms.b2, result=result)
    else:
        symmetric = symmetric_mask(terms.b1, terms.b2, terms.b3, symmetry_tol)
        nf = BranchPointNormalForm(
            a=terms.a, b1=terms.b1, b2=terms.b2, b3=terms.b3, symmetric=symmetric, result=result
        )
    return nf, lam[None], q, w


def compute_normal_form(
    family, args, x, s, eigenvalues, right, left, kind: str, symmetry_tol: float
) -> tuple[str, AbstractNormalForm, Any, Any, Any]:
    """Host driver: `(kind, normal form, λ, q, w)` with `kind` resolved to a name.

    `kind` is `"hopf"`, `"fold"` or `"branch_point"` (resolved here to transcritical/pitchfork).
    Raises `ValueError` when the spectrum has no eigenvalue of the requested type (a spurious
    event for its caller); every other failure is in the normal form's `result`. The jittable
    kernel, which reports that case as `RESULTS.not_a_bifurcation`, is `normal_form_at`.
    """
    nf, lam, q, w = normal_form_at(
        family, args, jnp.asarray(x), jnp.asarray(s), eigenvalues, right, left, kind,
        symmetry_tol,
    )
    if nf.result == RESULTS.not_a_bifurcation:
        raise ValueError(RESULTS[nf.result])
    if isinstance(nf, BranchPointNormalForm):
        kind = "pitchfork" if bool(nf.symmetric) else "transcritical"
    return kind, nf, np.asarray(lam), np.asarray(q), np.asarray(w)


# ------------------------------------------------------------------------------------------------
# Public entry points.


def _family_for(vector_field, x, params, parameter_direction):
    leaves, treedef = jtu.tree_flatten(params)
    if parameter_direction is None and len(leaves) == 1 and jnp.ndim(leaves[0]) == 0:
        # A scalar parameter: it is the one that moves.
        base = jtu.tree_unflatten(treedef, [jnp.asarray(leaves[0], x.dtype)])
        direction = jtu.tree_unflatten(treedef, [jnp.ones((), x.dtype)])
        return make_family(vector_field, base, direction)
    return make_family(vector_field, params, parameter_direction)


@eqx.filter_jit
def _family_spectrum(family, args, x, s):
    return spectrum_of_matrix(jax.jacfwd(lambda y: family(y, s, args))(x))


_KINDS = (None, "fold", "branch_point", "transcritical", "pitchfork", "hopf")


def _infer_kind(family, args, x, s, spec, tol):
    """Hopf when the eigenvalue nearest the imaginary axis is complex, else fold when
    `a = pᵀf_μ ≠ 0`, else a branch point. Needs concrete values (the result type depends on
    them). Returns the kind and, for a branch point, its normal form."""
    ev = spec.eigenvalues
    try:
        i = jnp.argmin(jnp.abs(ev.real))
        if not bool(real_mask(ev)[i]):
            return "hopf", None
        nf, *_ = normal_form_at(
            family, args, x, s, ev, spec.right_eigenvectors, spec.left_eigenvectors,
            "branch_point", tol,
        )
        nf = cast(BranchPointNormalForm, nf)
        scale = jnp.maximum(1.0, jnp.maximum(jnp.abs(nf.b1), jnp.abs(nf.b2)))
        if bool(jnp.abs(nf.a) > tol * scale):
            return "fold", None
        return "branch_point", nf
    except jax.errors.ConcretizationTypeError:
        raise TypeError(
            "`kind=None` infers the kind from the values, which is not possible under "
            "`jax.jit`/`vmap` (the result type depends on it): pass `kind=` "
            "(\"fold\", \"branch_point\" or \"hopf\")"
        ) from None


def normal_form_coefficients(
    vector_field: Callable,
    x: Float[ArrayLike, " state"],
    params: PyTree = _MISSING,
    *,
    inputs: PyTree = None,
    kind: str | None = None,
    parameter_direction: PyTree | None = None,
    symmetry_tol: float | None = None,
    throw: bool = False,
) -> AbstractNormalForm:
    """Normal-form coefficients at a (located) codimension-one equilibrium bifurcation.

    Two call forms: `normal_form_coefficients(vector_field, x, params)` with
    `vector_field(x, params)`, or `normal_form_coefficients(model, x, inputs=u)` with a model
    `model(t, x, u)` evaluated at `t = 0` (then `parameter_direction` is a direction in the
    model's arrays).

    **Arguments:**

    - `vector_field`: `vector_field(x, params) -> dx/dt`, or a model `model(t, x, u)`.
    - `x`: the equilibrium at the bifurcation.
    - `params`: a scalar parameter (then `μ = params`) or any pytree (an `eqx.Module` holding
        functions included). Omit it for a model.
    - `inputs`: the model form's constant input `u` (`None` allowed).
    - `kind`: `"fold"`, `"branch_point"` (resolved to `"transcritical"`/`"pitchfork"`), `"hopf"`,
        or `None` to infer it: Hopf when the eigenvalue nearest the imaginary axis is complex,
        else fold when `a = pᵀf_μ ≠ 0`, else a branch point. Under `jax.jit`/`vmap` pass it.
    - `parameter_direction`: for pytree `params` (or a model), the direction `δμ` moves along
        (same structure as the parameters' arrays). Without it, the parameter-dependent
        coefficients (`a`, `b1`, transversality) are zero.
    - `symmetry_tol`: relative tolerance on `b2` below which a branch point is a pitchfork.
    - `throw`: raise the result's message when it is not successful (also under `jit`). By
        default the failure is only reported in `result`.

    **Returns:**

    A `FoldNormalForm`, `BranchPointNormalForm` or `HopfNormalForm` with a `result`;
    `.convention` states the normalisation (see `docs/bifurcations.md`). Non-finite `x` or
    parameters raise, also under `jit`.
    """
    x = _as_float(x, "x")
    if x.ndim != 1:
        raise ValueError(f"`x` must be a 1-D state, got shape {x.shape}")
    if kind not in _KINDS:
        raise ValueError(
            f"`kind` must be fold/branch_point/transcritical/pitchfork/hopf, got {kind!r}"
        )
    vector_field, params = resolve_dynamics(
        vector_field, params, x, inputs, "normal_form_coefficients", "x"
    )
    params, x = _check_values(params, vector_field, x, "x")
    if parameter_direction is not None:
        parameter_direction = error_if_nonfinite(parameter_direction, "parameter_direction")
        if vector_field is _model_vector_field:
            # The direction moves the model; the input stays where it is.
            inputs_dynamic = eqx.filter(params[1], eqx.is_array)
            parameter_direction = (
                eqx.filter(parameter_direction, eqx.is_array),
                jtu.tree_map(jnp.zeros_like, inputs_dynamic),
            )
    family, args = _family_for(vector_field, x, params, parameter_direction)
    s = jnp.zeros((), x.dtype)
    spec = _family_spectrum(family, args, x, s)
    tol = default_symmetry_tol(x.dtype) if symmetry_tol is None else symmetry_tol
    if kind in ("transcritical", "pitchfork"):
        kind = "branch_point"
    nf = None
    if kind is None:
        kind, nf = _infer_kind(family, args, x, s, spec, tol)
    if nf is None:
        nf, *_ = normal_form_at(
            family, args, x, s, spec.eigenvalues, spec.right_eigenvectors,
            spec.left_eigenvectors, kind, tol,
        )
    if throw:
        nf = nf.result.error_if(nf, ~successful(nf.result))
    return nf


def lyapunov_coefficient(
    vector_field: Callable,
    x: Float[ArrayLike, " state"],
    params: PyTree = _MISSING,
    *,
    inputs: PyTree = None,
    throw: bool = True,
) -> Float[Array, ""]:
    """First Lyapunov coefficient `l1 = Re c1` at a Hopf point (MatCont/BifurcationKit
    convention: `‖q‖ = 1`, `<p, q> = 1`; negative ⇒ supercritical).

    **Arguments:** `vector_field(x, params)`, the Hopf equilibrium `x`, and `params` there; or a
    model `model(t, x, u)`, `x` and `inputs=u`. `throw`: a bare scalar has no room for a result
    code, so by default a failure (no complex pair: `RESULTS.not_a_bifurcation`; a singular
    solve) raises, also under `jit`. With `throw=False` the value is NaN where it failed; use
    `normal_form_coefficients(..., kind="hopf")` for the code.

    **Returns:** the scalar `l1`.
    """
    nf = normal_form_coefficients(
        vector_field, x, params, inputs=inputs, kind="hopf", throw=throw
    )
    nf = cast(HopfNormalForm, nf)
    return jnp.where(successful(nf.result), nf.l1, jnp.nan)
