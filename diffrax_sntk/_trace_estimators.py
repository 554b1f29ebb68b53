"""Trace, squared Frobenius norm, effective rank and kernel alignment of symmetric lineax operators.

Every estimator returns an [`Estimate`][diffrax_sntk.Estimate] (value, standard error, matvecs
spent) and has an exact path through the dense matrix that is taken automatically when forming the
matrix costs no more matvecs than the stochastic estimator would.
"""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import lineax as lx
from jaxtyping import Array, Float, Int, PRNGKeyArray
from matfree import decomp, stochtrace

from ._misc import RESULTS, participation_ratio, result_where
from ._spectral import _check_operator, _dense_matrix, _flatten_operator


class Estimate(eqx.Module):
    """A scalar estimate with its standard error.

    Unpacks (and indexes) as the three numbers `estimate, standard_error, num_matvecs =
    ds.trace(...)`; `result` is an attribute.

    **Fields:**

    - `estimate`: the estimated value.
    - `standard_error`: estimated standard deviation of `estimate` (0 for exact paths up to a
        floating-point floor). `estimate ± 2·standard_error` is a ≈95% interval.
    - `num_matvecs`: matvecs spent (per operator, for two-operator quantities).
    - `result`: a `ds.RESULTS` item: `RESULTS.successful`, or `RESULTS.nonfinite` when the
        estimate or its standard error is NaN or inf although every matvec was finite: the
        quantity is undefined for this operator (e.g. the effective rank or the alignment of a
        zero operator, 0/0). A non-finite matvec raises instead (`eqx.error_if`, also under
        `jit`).
    """

    estimate: Float[Array, ""]
    standard_error: Float[Array, ""]
    num_matvecs: Int[Array, ""]
    result: RESULTS

    def __iter__(self):
        # The three-name unpacking of the former NamedTuple keeps working.
        return iter((self.estimate, self.standard_error, self.num_matvecs))

    def __getitem__(self, i):
        return (self.estimate, self.standard_error, self.num_matvecs)[i]


def _estimate(value, se, num_matvecs) -> Estimate:
    finite = jnp.isfinite(value) & jnp.isfinite(se)
    result = result_where(~finite, RESULTS.nonfinite, RESULTS.successful)
    return Estimate(value, se, jnp.asarray(num_matvecs), result)


def _mean_and_cov(samples: Float[Array, "m p"]):
    """Mean and covariance of the mean of `m` exchangeable estimates of `p` quantities."""
    m = samples.shape[0]
    mean = jnp.mean(samples, axis=0)
    centred = samples - mean
    cov = centred.T @ centred / (m * (m - 1))
    return mean, cov


def _round_off(value, dtype, n):
    # Floor for the standard error: even an exact path carries floating-point error.
    return 10 * n**0.5 * jnp.finfo(dtype).eps * jnp.abs(value)


def _replayed(Omega, Y):
    """A flat "matvec" that returns the recorded `Y[:, i]` for `Omega[:, i]` (exact on span Ω).

    matfree's XNysTrace integrand insists on computing ΘΩ itself; replaying stored products lets
    the trace and tr Θ² (and thus the participation ratio) share one sketch instead of paying for
    ΘΩ twice.
    """
    Qo, Ro = jnp.linalg.qr(Omega)

    def mv(v):
        return Y @ jsl.solve_triangular(Ro, Qo.T @ v)

    return mv


def _xnystrace_loo(Omega, Y):
    """Leave-one-out XNysTrace estimates (Epperly, Tropp & Webber 2024) of tr A from Y = AΩ.

    A zero sketch (A = 0 on span Ω, e.g. the zero operator) makes the Nyström core matrix zero
    and the estimator 0/0; its trace estimate is 0, so that case is answered directly (and the
    estimator runs on a harmless stand-in, which keeps NaN out of gradients too)."""
    integrand = stochtrace.leave_one_out_xnystrace()
    zero = jnp.all(Y == 0)
    loo = integrand(_replayed(Omega, jnp.where(zero, Omega, Y)), Omega.T)
    return jnp.where(zero, jnp.zeros_like(loo), loo)


def _xnystrace(Omega, Y):
    return jnp.mean(_xnystrace_loo(Omega, Y))


def _jackknife(statistic, m):
    """Delete-one jackknife standard error of `statistic(idx)` over `m` probe columns.

    The spread of XNysTrace's own leave-one-out estimates underestimates its error (they share
    m − 1 probes; measured coverage of ±2 SE was 65% on a CTRNN sNTK). Recomputing the whole
    estimator without probe j reuses the stored products (no matvecs) and gives a conservative
    error bar (Efron-Stein): ±1 SE covered the error in 78-99% of runs in our checks.
    """
    full = statistic(jnp.arange(m))

    def drop(j):
        idx = jnp.arange(m - 1)
        return statistic(idx + (idx >= j))

    # lax.map, not vmap: m copies of an (n, m) sketch would not fit for large operators.
    reps = jax.lax.map(drop, jnp.arange(m))
    var = (m - 1) / m * jnp.sum((reps - jnp.mean(reps, axis=0)) ** 2, axis=0)
    return full, jnp.sqrt(var)


def _probes(key, n, m, dtype):
    # Gaussian probes: XNysTrace's resphering step needs a rotation-invariant distribution.
    return jr.normal(key, (n, m), dtype)


def _check_probes(num_matvecs, name="num_matvecs", minimum=2):
    if isinstance(num_matvecs, bool) or not isinstance(num_matvecs, int):
        raise TypeError(f"`{name}` must be a Python int, got {type(num_matvecs).__name__}.")
    if num_matvecs < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {num_matvecs}.")


# ----------------------------------------------------------------------------------------------
# Trace and squared Frobenius norm
# ----------------------------------------------------------------------------------------------


@eqx.filter_jit
def _trace_impl(operator, key, m, exact):
    flat = _flatten_operator(operator)
    n = flat.size
    if exact:
        M = _dense_matrix(flat)
        t = jnp.trace(M)
        return _estimate(t, _round_off(t, flat.dtype, n), jnp.array(n))
    Omega = _probes(key, n, m, flat.dtype)
    Y = flat.block_mv(Omega)
    if lx.is_positive_semidefinite(operator):
        t, se = _jackknife(lambda i: _xnystrace(Omega[:, i], Y[:, i]), m)
    else:
        # Symmetric but indefinite: Nyström does not apply; Girard-Hutchinson with iid probes.
        (t,), var = _mean_and_cov(jnp.sum(Omega * Y, axis=0)[:, None])
        se = jnp.sqrt(var[0, 0])
    se = jnp.sqrt(se**2 + _round_off(t, flat.dtype, n) ** 2)
    return _estimate(t, se, jnp.array(m))


def trace(
    operator: lx.AbstractLinearOperator,
    *,
    key: PRNGKeyArray,
    num_matvecs: int = 32,
    exact: bool | None = None,
) -> Estimate:
    r"""Trace of a symmetric lineax operator, matrix-free, with a standard error.

    For a PSD operator (the sNTK) this is XNysTrace (Epperly, Tropp & Webber 2024, via matfree): a
    Nyström approximation from the sketch $Y = ΘΩ$ captures the dominant eigenvalues exactly and
    only the remainder is estimated stochastically, with the leave-one-out trick so that every
    probe serves both purposes. It is exact when rank Θ < `num_matvecs`, and its variance decays
    much faster than Hutch++'s for decaying spectra. The standard error is the spread of the `m`
    leave-one-out estimates, $\mathrm{sd}/\sqrt{m}$. A symmetric operator without the PSD tag uses
    the Girard-Hutchinson estimator with Gaussian probes.

    **Arguments:**

    - `operator`: symmetric lineax operator (`lineax.symmetric_tag`; PSD tag for XNysTrace).
    - `key`: PRNG key for the probes.
    - `num_matvecs`: matvec budget (= number of probes), `2 <= num_matvecs`.
    - `exact`: `True` forms the dense matrix (`dimension` matvecs); `None` (default) does so only
        when the dimension is at most `num_matvecs`.

    **Returns:**

    An [`Estimate`][diffrax_sntk.Estimate] `(estimate, standard_error, num_matvecs)`.
    """
    _check_operator(operator)
    _check_probes(num_matvecs)
    n = operator.in_size()
    if exact is None:
        exact = n <= num_matvecs
    return _trace_impl(operator, key, min(num_matvecs, n), bool(exact))


def _sketch_two_powers(flat, key, m):
    Omega = _probes(key, flat.size, m, flat.dtype)
    Y1 = flat.block_mv(Omega)
    Y2 = flat.block_mv(Y1)
    return Omega, Y1, Y2


@eqx.filter_jit
def _trace_and_frobenius(operator, key, m, combine):
    """`combine(tr Θ, tr Θ²)` and its jackknife standard error from one sketch (2m matvecs)."""
    flat = _flatten_operator(operator)
    Omega, Y1, Y2 = _sketch_two_powers(flat, key, m)
    psd = lx.is_positive_semidefinite(operator)

    def statistic(i):
        omega_i = Omega[:, i]
        if psd:
            t = _xnystrace(omega_i, Y1[:, i])
        else:
            t = jnp.mean(jnp.sum(omega_i * Y1[:, i], axis=0))
        # Θ² is PSD for any symmetric Θ, so XNysTrace always applies to tr Θ² = ‖Θ‖_F².
        f = _xnystrace(omega_i, Y2[:, i])
        return combine(t, f)

    value, se = _jackknife(statistic, m)
    se = jnp.sqrt(se**2 + _round_off(value, flat.dtype, flat.size) ** 2)
    return _estimate(value, se, jnp.array(2 * m))


@eqx.filter_jit
def _dense_spectrum(operator):
    flat = _flatten_operator(operator)
    return jnp.linalg.eigvalsh(_dense_matrix(flat)), flat.size


@eqx.filter_jit
def _frobenius_impl(operator, key, m, exact):
    if exact:
        lam, n = _dense_spectrum(operator)
        f = jnp.sum(lam**2)
        return _estimate(f, _round_off(f, lam.dtype, n), jnp.array(n))
    return _trace_and_frobenius(operator, key, m, lambda t, f: f)


def frobenius_norm_squared(
    operator: lx.AbstractLinearOperator,
    *,
    key: PRNGKeyArray,
    num_matvecs: int = 64,
    exact: bool | None = None,
) -> Estimate:
    r"""Squared Frobenius norm $\|Θ\|_F^2 = \operatorname{tr} Θ^2$ of a symmetric operator.

    XNysTrace applied to the PSD operator $Θ^2$: probes $Ω$, sketch $Θ^2Ω = Θ(ΘΩ)$, so each probe
    costs two matvecs and `num_matvecs // 2` probes are used. Exact when rank Θ < the number of
    probes; standard error from the leave-one-out spread.

    **Arguments:**

    - `operator`: symmetric lineax operator.
    - `key`: PRNG key for the probes.
    - `num_matvecs`: matvec budget (two per probe), at least 4.
    - `exact`: `True` uses the dense matrix; `None` (default) does so when the dimension is at most
        `num_matvecs`.

    **Returns:**

    An [`Estimate`][diffrax_sntk.Estimate].
    """
    _check_operator(operator)
    _check_probes(num_matvecs, minimum=4)
    n = operator.in_size()
    if exact is None:
        exact = n <= num_matvecs
    return _frobenius_impl(operator, key, min(num_matvecs // 2, n), bool(exact))


# ----------------------------------------------------------------------------------------------
# Effective rank
# ----------------------------------------------------------------------------------------------


def _xlogx(x):
    safe = jnp.where(x > 0, x, 1.0)
    return jnp.where(x > 0, x * jnp.log(safe), 0.0)


def _slq_moments(flat, key, num_probes, depth):
    """Per-probe Lanczos-quadrature estimates of (tr Θ, tr Θ log Θ) (Ubaru, Chen & Saad 2017)."""
    tridiag = decomp.tridiag_sym(depth, reortho="full", custom_vjp=False)
    Omega = jr.rademacher(key, (num_probes, flat.size), flat.dtype)

    def mv(v):
        return flat.block_mv(v[:, None])[:, 0]

    def one(v):
        _, T, *_ = tridiag(mv, v)
        nodes, vecs = jnp.linalg.eigh(0.5 * (T + T.T))
        nodes = jnp.maximum(nodes, 0.0)  # Θ is PSD; Ritz values may round below zero
        weights = vecs[0, :] ** 2 * flat.size  # ‖v‖² = n for Rademacher probes
        return jnp.stack([weights @ nodes, weights @ _xlogx(nodes)])

    # Sequential Lanczos per probe, probes batched: each step is one block matvec.
    return jax.vmap(one)(Omega)


@eqx.filter_jit
def _effective_rank_impl(operator, key, method, m, depth, exact):
    if exact:
        lam, n = _dense_spectrum(operator)
        lam = jnp.maximum(lam, 0.0)
        t = jnp.sum(lam)
        if method == "participation":
            value = participation_ratio(lam)
        else:
            p = lam / t
            value = jnp.exp(-jnp.sum(_xlogx(p)))
        return _estimate(value, _round_off(value, lam.dtype, n), jnp.array(n))
    n = operator.in_size()
    if method == "participation":
        return _trace_and_frobenius(operator, key, m, lambda t, f: t**2 / f)
    flat = _flatten_operator(operator)
    samples = _slq_moments(flat, key, m, depth)
    (t, s), cov = _mean_and_cov(samples)
    # H = −Σ p log p with p = λ/t equals log t − tr(Θ log Θ)/t.
    entropy = jnp.log(t) - s / t
    value = jnp.exp(entropy)
    grad = value * jnp.stack([1 / t + s / t**2, -1 / t])
    spent = m * depth
    # Delta method: the two estimates share probes, so their covariance enters.
    se = jnp.sqrt(jnp.maximum(grad @ cov @ grad, 0.0) + _round_off(value, samples.dtype, n) ** 2)
    return _estimate(value, se, jnp.array(spent))


def effective_rank(
    operator: lx.AbstractLinearOperator,
    *,
    key: PRNGKeyArray,
    method: Literal["participation", "entropy"] = "participation",
    num_matvecs: int | None = None,
    lanczos_depth: int = 16,
    exact: bool | None = None,
) -> Estimate:
    r"""Effective rank of a symmetric PSD operator such as the sNTK.

    - `"participation"` (default): $\mathrm{PR} = (\operatorname{tr} Θ)^2 / \operatorname{tr} Θ^2$,
        between 1 (rank one) and the dimension (Θ ∝ I). Both traces come from one sketch
        $Ω, ΘΩ, Θ^2Ω$ (XNysTrace leave-one-out estimates, `num_matvecs // 2` probes); the standard
        error is the delta method on the paired leave-one-out estimates.
    - `"entropy"`: $\exp(-\sum_i p_i \log p_i)$ with $p_i = λ_i / \operatorname{tr} Θ$, via
        $H = \log \operatorname{tr} Θ - \operatorname{tr}(Θ \log Θ)/\operatorname{tr} Θ$ and
        stochastic Lanczos quadrature (Rademacher probes, `lanczos_depth` Lanczos steps each, so
        `num_matvecs // lanczos_depth` probes). The standard error covers the probe noise, not the
        quadrature bias, which is small once `lanczos_depth` exceeds the number of dominant
        eigenvalues.

    **Arguments:**

    - `operator`: lineax operator with `symmetric_tag` and `positive_semidefinite_tag`.
    - `key`: PRNG key for the probes.
    - `method`: `"participation"` or `"entropy"`.
    - `num_matvecs`: matvec budget; default 64 (participation) or `8 * lanczos_depth` (entropy).
    - `lanczos_depth`: Lanczos steps per probe for `"entropy"`.
    - `exact`: `True` computes the eigenvalues of the dense matrix (`dimension` matvecs); `None`
        (default) does so when that is no more expensive than the estimator.

    **Returns:**

    An [`Estimate`][diffrax_sntk.Estimate].
    """
    _check_operator(operator, psd=True)
    if method not in ("participation", "entropy"):
        raise ValueError(
            f"`method` must be 'participation' or 'entropy', got {method!r}."
        )
    n = operator.in_size()
    # Checked first: the entropy default budget is derived from it.
    _check_probes(lanczos_depth, "lanczos_depth", minimum=1)
    if num_matvecs is None:
        num_matvecs = 64 if method == "participation" else 8 * lanczos_depth
    _check_probes(num_matvecs, minimum=4)
    if exact is None:
        exact = n <= num_matvecs
    if method == "participation":
        m = min(num_matvecs // 2, n)
    else:
        depth = min(lanczos_depth, n)
        m = num_matvecs // depth
        if m < 2 and not exact:  # (the exact path draws no probes)
            raise ValueError(
                f"`num_matvecs` ({num_matvecs}) must allow at least two probes of depth "
                f"`lanczos_depth` ({lanczos_depth})."
            )
        lanczos_depth = depth
    return _effective_rank_impl(operator, key, method, m, lanczos_depth, bool(exact))


# ----------------------------------------------------------------------------------------------
# Kernel alignment
# ----------------------------------------------------------------------------------------------


@eqx.filter_jit
def _alignment_impl(A, B, key, m, exact):
    fa, fb = _flatten_operator(A, "A"), _flatten_operator(B, "B")
    n = fa.size
    if exact:
        MA, MB = _dense_matrix(fa), _dense_matrix(fb)
        value = jnp.vdot(MA, MB) / (jnp.linalg.norm(MA) * jnp.linalg.norm(MB))
        return _estimate(value, _round_off(value, fa.dtype, n), jnp.array(n))
    # Girard-Hutchinson with shared probes: E[(Aω)ᵀ(Bω)] = tr(AB) = ⟨A,B⟩_F for symmetric A;
    # sharing ω makes the errors of numerator and denominators correlate and largely cancel.
    Omega = jr.rademacher(key, (n, m), fa.dtype)
    YA, YB = fa.block_mv(Omega), fb.block_mv(Omega)
    samples = jnp.stack(
        [jnp.sum(YA * YB, axis=0), jnp.sum(YA**2, axis=0), jnp.sum(YB**2, axis=0)], axis=1
    )
    (c, a, b), cov = _mean_and_cov(samples)
    value = c / jnp.sqrt(a * b)
    grad = jnp.stack([1 / jnp.sqrt(a * b), -0.5 * value / a, -0.5 * value / b])
    se = jnp.sqrt(jnp.maximum(grad @ cov @ grad, 0.0) + _round_off(value, fa.dtype, n) ** 2)
    return _estimate(value, se, jnp.array(m))


def alignment(
    A: lx.AbstractLinearOperator,
    B: lx.AbstractLinearOperator,
    *,
    key: PRNGKeyArray,
    num_matvecs: int = 64,
    exact: bool | None = None,
) -> Estimate:
    r"""Kernel alignment $⟨A, B⟩_F / (\|A\|_F \|B\|_F)$ of two symmetric operators.

    Girard-Hutchinson estimates of $\operatorname{tr}(AB)$, $\|A\|_F^2$ and $\|B\|_F^2$ from the
    same Rademacher probes (`num_matvecs` matvecs of each operator), combined by the delta method
    for the standard error. Alignment 1 means the kernels are proportional.

    **Arguments:**

    - `A`, `B`: symmetric lineax operators with the same input structure.
    - `key`: PRNG key for the probes.
    - `num_matvecs`: matvecs per operator (= probes).
    - `exact`: `True` forms both dense matrices; `None` (default) does so when the dimension is at
        most `num_matvecs`.

    **Returns:**

    An [`Estimate`][diffrax_sntk.Estimate]; `num_matvecs` counts matvecs per operator.
    """
    _check_operator(A, "A")
    _check_operator(B, "B")
    if A.in_structure() != B.in_structure():
        raise ValueError(
            "`A` and `B` must have the same input structure, got "
            f"{A.in_structure()} and {B.in_structure()}."
        )
    _check_probes(num_matvecs)
    n = A.in_size()
    if exact is None:
        exact = n <= num_matvecs
    return _alignment_impl(A, B, key, min(num_matvecs, n), bool(exact))
