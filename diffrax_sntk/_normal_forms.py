"""Normal-form coefficients of codimension-one bifurcations of equilibria.

All derivatives are taken by JAX (nested `jax.jvp`), never by finite differences. Every
coefficient is reported together with the convention it is defined in (see `docs/bifurcations.md`).
"""

import itertools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Complex, Float, PyTree

BRANCH_POINT_CONVENTION = (
    "zero eigenvalue of A = df/dx: q unit right null vector (largest-|entry| component positive), "
    "p left null vector with p^T q = 1; centre-manifold reduced equation "
    "dw/dt = a*dmu + b1*dmu*w + (b2/2)*w^2 + (b3/6)*w^3 with a = p^T f_mu, "
    "b1 = p^T(A_mu q + B(q, h_mu)), b2 = p^T B(q, q), b3 = p^T(C(q, q, q) + 3 B(q, h_2)), where "
    "A h_mu = -(f_mu - a q), A h_2 = -(B(q, q) - b2 q), p^T h = 0 (b3 exact when b2 = 0)"
)
FOLD_CONVENTION = BRANCH_POINT_CONVENTION + "; fold coefficient a_f = (1/2) p^T B(q, q) = b2/2"
HOPF_CONVENTION = (
    "MatCont/BifurcationKit: A q = i*omega*q with omega > 0 and ||q|| = 1, A^T p = -i*omega*p with "
    "<p, q> = conj(p)^T q = 1; c1 = (1/2)<p, C(q, q, conj q) - 2 B(q, A^-1 B(q, conj q)) "
    "+ B(conj q, (2 i omega I - A)^-1 B(q, q))>; l1 = Re c1 (negative => supercritical); "
    "Kuznetsov's l1 is Re(c1)/omega"
)


# ------------------------------------------------------------------------------------------------
# One-parameter families. Every internal routine works on `family(x, s, args)`, a line
# `params(s) = base + s * direction` through parameter space, so that a scalar sweep, a direction
# in a pytree of parameters and a segment between two training checkpoints share one set of
# compiled functions (the family is static, `args` is traced).


def _is_inexact(leaf) -> bool:
    return eqx.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.inexact)


class LineFamily(eqx.Module):
    """`x, s, (base, direction) -> vector_field(x, base + s * direction)` (private helper).

    Only the inexact array leaves of the parameters move; everything else is held at `base`.
    """

    vector_field: Callable
    static: Any

    def __call__(self, x, s, args):
        base, direction = args

        def _move(b, d):
            if _is_inexact(b):
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
    if np.all(coeffs.imag == 0):
        return jnp.sum(terms, axis=0)
    ctype = jnp.result_type(terms.dtype, jnp.complex64)
    return jnp.einsum("k,kn->n", jnp.asarray(coeffs, ctype), terms.astype(ctype))


@eqx.filter_jit
def zero_eigenvalue_coefficients(family, args, x, s, q, p):
    """`(a, b1, b2, b3)` at a simple zero eigenvalue with right/left vectors `q`, `p` (pᵀq = 1)."""
    fn = lambda y: family(y, s, args)
    n = x.shape[0]
    A = jax.jacfwd(fn)(x)
    bordered = jnp.block([[A, q[:, None]], [p[None, :], jnp.zeros((1, 1), A.dtype)]])
    op = lx.MatrixLinearOperator(bordered)

    def solve(rhs):
        # [[A, q], [pᵀ, 0]] [h; σ] = [rhs; 0]: h solves A h = rhs - (pᵀ rhs) q with pᵀ h = 0.
        full = jnp.concatenate([rhs, jnp.zeros((1,), rhs.dtype)])
        return lx.linear_solve(op, full, throw=False).value[:n]

    f_mu = jax.jvp(lambda t: family(x, t, args), (s,), (jnp.ones_like(s),))[1]
    a_mu_q = jax.jvp(
        lambda t: jax.jvp(lambda y: family(y, t, args), (x,), (q,))[1], (s,), (jnp.ones_like(s),)
    )[1]
    a = p @ f_mu
    h_mu = solve(-f_mu)
    bqq = _b(fn, x, q, q)
    b2 = p @ bqq
    h2 = solve(-bqq)
    b1 = p @ (a_mu_q + _b(fn, x, q, h_mu))
    b3 = p @ (_c(fn, x, q, q, q) + 3 * _b(fn, x, q, h2))
    return a, b1, b2, b3


@eqx.filter_jit
def hopf_coefficients(family, args, x, s, q, w):
    """`(omega, c1, dRe λ/ds)` at a Hopf point; `q` right eigenvector of iω, `w` left, wᵀq = 1."""
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
    r1 = lx.linear_solve(lx.MatrixLinearOperator(A), b_q_qbar, throw=False).value
    b_qq = _complex_multilinear(_b, fn, x, q, q)
    shifted = 2j * omega * jnp.eye(n, dtype=q.dtype) - A.astype(q.dtype)
    r2 = lx.linear_solve(lx.MatrixLinearOperator(shifted), b_qq, throw=False).value
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
    x_s = -lx.linear_solve(lx.MatrixLinearOperator(A), f_s, throw=False).value

    def a_times(v):
        jac_dir = jax.jvp(
            lambda t: jax.jvp(lambda y: family(y, t, args), (x,), (v,))[1], (s,), (ones,)
        )[1]
        return jac_dir + _b(fn, x, v, x_s)

    dA_q = a_times(jnp.real(q)) + 1j * a_times(jnp.imag(q))
    dlam = w @ dA_q
    return omega, c1, jnp.real(dlam)


# ------------------------------------------------------------------------------------------------
# Result types.


class AbstractNormalForm(eqx.Module):
    """Normal-form coefficients of a codimension-one bifurcation, with their convention."""

    @property
    def convention(self) -> str:
        raise NotImplementedError

    @property
    def criticality(self) -> str | None:
        """`"supercritical"`, `"subcritical"`, or `None` where the notion does not apply."""
        return None


class FoldNormalForm(AbstractNormalForm):
    """Fold (saddle-node): `ẇ = a·δμ + a_f·w² + …`, with `a_f = ½ pᵀB(q, q)`.

    **Fields:** `a = pᵀ f_μ`, `a_f`, `b1`, `b2 = 2 a_f` (see `convention`).
    """

    a: Float[Array, ""]
    a_f: Float[Array, ""]
    b1: Float[Array, ""]
    b2: Float[Array, ""]

    @property
    def convention(self) -> str:
        return FOLD_CONVENTION


class BranchPointNormalForm(AbstractNormalForm):
    """Branch point (transcritical, pitchfork): `ẇ = a·δμ + b1·δμ·w + (b2/2)·w² + (b3/6)·w³`.

    `criticality` is that of a pitchfork (`b3 < 0` ⇒ supercritical); `None` when `b2 ≠ 0`.
    """

    a: Float[Array, ""]
    b1: Float[Array, ""]
    b2: Float[Array, ""]
    b3: Float[Array, ""]
    symmetric: bool = eqx.field(static=True, default=False)

    @property
    def convention(self) -> str:
        return BRANCH_POINT_CONVENTION

    @property
    def criticality(self) -> str | None:
        if not self.symmetric:
            return None
        b3 = float(self.b3)
        if not np.isfinite(b3):
            return None
        return "supercritical" if b3 < 0 else "subcritical"


class HopfNormalForm(AbstractNormalForm):
    """Hopf: frequency `omega`, complex `c1`, first Lyapunov coefficient `l1 = Re c1`
    (MatCont/BifurcationKit convention; negative ⇒ supercritical) and the transversality
    coefficient `transversality = dRe λ/dμ` along the equilibrium branch.
    """

    omega: Float[Array, ""]
    c1: Complex[Array, ""]
    l1: Float[Array, ""]
    transversality: Float[Array, ""]

    @property
    def convention(self) -> str:
        return HOPF_CONVENTION

    @property
    def criticality(self) -> str | None:
        l1 = float(self.l1)
        if not np.isfinite(l1) or l1 == 0:
            return None
        return "supercritical" if l1 < 0 else "subcritical"


def default_symmetry_tol(dtype) -> float:
    return 100 * float(jnp.finfo(dtype).eps) ** 0.5


def is_symmetric(b1, b2, b3, symmetry_tol) -> bool:
    """Pitchfork when `b2` vanishes relative to the other coefficients."""
    scale = max(1.0, abs(float(b1)) if np.isfinite(float(b1)) else 1.0, abs(float(b3)))
    return abs(float(b2)) <= symmetry_tol * scale


def critical_vectors(eigenvalues, right, left, kind: str):
    """Index of the critical eigenvalue and its vectors (host helper; numpy inputs)."""
    eigenvalues = np.asarray(eigenvalues)
    scale = max(1.0, float(np.max(np.abs(eigenvalues))))
    is_complex = np.abs(eigenvalues.imag) > 1e3 * np.finfo(eigenvalues.real.dtype).eps * scale
    if kind == "hopf":
        candidates = np.where(is_complex & (eigenvalues.imag > 0))[0]
        if candidates.size == 0:
            raise ValueError("no complex eigenvalue pair: not a Hopf point")
        i = candidates[np.argmin(np.abs(eigenvalues.real[candidates]))]
        return i, np.asarray(right[:, i]), np.asarray(left[:, i])
    candidates = np.where(~is_complex)[0]
    if candidates.size == 0:
        raise ValueError("no real eigenvalue: not a zero-eigenvalue bifurcation")
    i = candidates[np.argmin(np.abs(eigenvalues.real[candidates]))]
    return i, np.real(np.asarray(right[:, i])), np.real(np.asarray(left[:, i]))


def compute_normal_form(
    family, args, x, s, eigenvalues, right, left, kind: str, symmetry_tol: float
) -> tuple[str, AbstractNormalForm, Any, Any, Any]:
    """Host driver: picks the critical vectors and returns `(kind, normal form, λ, q, w)`.

    `kind` is `"hopf"`, `"fold"` or `"branch_point"` (resolved here to transcritical/pitchfork).
    """
    dtype = x.dtype
    i, q, w = critical_vectors(eigenvalues, right, left, kind)
    lam = np.asarray(eigenvalues)[i]
    if kind == "hopf":
        omega, c1, dlam = hopf_coefficients(family, args, x, s, np.asarray(q), np.asarray(w))
        nf = HopfNormalForm(omega=omega, c1=c1, l1=jnp.real(c1), transversality=dlam)
        return "hopf", nf, np.array([lam, np.conj(lam)]), q, w
    q = np.asarray(q, dtype)
    w = np.asarray(w, dtype)
    nq = np.linalg.norm(q)
    q, w = q / nq, w * nq
    if q[np.argmax(np.abs(q))] < 0:
        q, w = -q, -w
    w = w / (w @ q)
    a, b1, b2, b3 = zero_eigenvalue_coefficients(family, args, x, s, q, w)
    if kind == "fold":
        nf = FoldNormalForm(a=a, a_f=b2 / 2, b1=b1, b2=b2)
        return "fold", nf, np.array([lam]), q, w
    symmetric = is_symmetric(b1, b2, b3, symmetry_tol)
    nf = BranchPointNormalForm(a=a, b1=b1, b2=b2, b3=b3, symmetric=symmetric)
    return ("pitchfork" if symmetric else "transcritical"), nf, np.array([lam]), q, w


# ------------------------------------------------------------------------------------------------
# Public entry points.


def _family_for(vector_field, x, params, parameter_direction):
    leaves, treedef = jtu.tree_flatten(params)
    if parameter_direction is None and len(leaves) == 1 and jnp.ndim(leaves[0]) == 0:
        # A scalar parameter: it is the one that moves.
        base = jtu.tree_unflatten(treedef, [jnp.asarray(leaves[0], x.dtype)])
        direction = jtu.tree_unflatten(treedef, [jnp.ones((), x.dtype)])
        family, args = make_family(vector_field, base, direction)
        return family, args, True
    family, args = make_family(vector_field, params, parameter_direction)
    return family, args, parameter_direction is not None


@eqx.filter_jit
def _family_spectrum(family, args, x, s):
    from ._fixed_points import spectrum_of_matrix

    return spectrum_of_matrix(jax.jacfwd(lambda y: family(y, s, args))(x))


def normal_form_coefficients(
    vector_field: Callable,
    x: Float[ArrayLike, " state"],
    params: PyTree,
    *,
    kind: str | None = None,
    parameter_direction: PyTree | None = None,
    symmetry_tol: float | None = None,
) -> AbstractNormalForm:
    """Normal-form coefficients at a (located) codimension-one equilibrium bifurcation.

    **Arguments:**

    - `vector_field`: `vector_field(x, params) -> dx/dt`.
    - `x`: the equilibrium at the bifurcation.
    - `params`: a scalar parameter (then `μ = params`) or any pytree.
    - `kind`: `"fold"`, `"branch_point"` (resolved to `"transcritical"`/`"pitchfork"`), `"hopf"`,
        or `None` to infer it: Hopf when the eigenvalue nearest the imaginary axis is complex,
        else fold when `a = pᵀf_μ ≠ 0`, else a branch point.
    - `parameter_direction`: for pytree `params`, the direction `δμ` moves along (same structure).
        Without it, the parameter-dependent coefficients (`a`, `b1`, transversality) are zero.
    - `symmetry_tol`: relative tolerance on `b2` below which a branch point is a pitchfork.

    **Returns:**

    A `FoldNormalForm`, `BranchPointNormalForm` or `HopfNormalForm`; `.convention` states the
    normalisation (see `docs/bifurcations.md`).
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim != 1:
        raise ValueError(f"`x` must be a 1-D state, got shape {x.shape}")
    if kind not in (None, "fold", "branch_point", "transcritical", "pitchfork", "hopf"):
        raise ValueError(
            f"`kind` must be fold/branch_point/transcritical/pitchfork/hopf, got {kind!r}"
        )
    family, args, _ = _family_for(vector_field, x, params, parameter_direction)
    s = jnp.zeros((), x.dtype)
    out = jax.eval_shape(lambda: family(x, s, args))
    if out.shape != x.shape:
        raise ValueError(f"`vector_field` returned shape {out.shape}, expected {x.shape}")
    spec = _family_spectrum(family, args, x, s)
    tol = default_symmetry_tol(x.dtype) if symmetry_tol is None else symmetry_tol
    if kind in ("transcritical", "pitchfork"):
        kind = "branch_point"
    if kind is None:
        ev = np.asarray(spec.eigenvalues)
        i = np.argmin(np.abs(ev.real))
        if abs(ev[i].imag) > 1e3 * np.finfo(ev.real.dtype).eps * max(1.0, np.max(np.abs(ev))):
            kind = "hopf"
        else:
            _, nf, _, _, _ = compute_normal_form(
                family, args, x, s, spec.eigenvalues, spec.right_eigenvectors,
                spec.left_eigenvectors, "branch_point", tol,
            )
            scale = max(1.0, abs(float(nf.b1)), abs(float(nf.b2)))
            kind = "fold" if abs(float(nf.a)) > tol * scale else "branch_point"
    _, nf, _, _, _ = compute_normal_form(
        family, args, x, s, spec.eigenvalues, spec.right_eigenvectors, spec.left_eigenvectors,
        kind, tol,
    )
    return nf


def lyapunov_coefficient(
    vector_field: Callable, x: Float[ArrayLike, " state"], params: PyTree
) -> Float[Array, ""]:
    """First Lyapunov coefficient `l1 = Re c1` at a Hopf point (MatCont/BifurcationKit
    convention: `‖q‖ = 1`, `<p, q> = 1`; negative ⇒ supercritical).

    **Arguments:** `vector_field(x, params)`, the Hopf equilibrium `x`, and `params` there.

    **Returns:** the scalar `l1`.
    """
    nf = normal_form_coefficients(vector_field, x, params, kind="hopf")
    assert isinstance(nf, HopfNormalForm)
    return nf.l1
