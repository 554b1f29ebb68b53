"""Pseudo-arclength continuation with detection, localisation and classification of
codimension-one bifurcations of equilibria (fold, transcritical, pitchfork, Hopf)."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Complex, Float, Shaped

from ._fixed_points import (
    check_vector_field,
    default_tol,
    newton_root,
    spectrum_of_matrix,
)
from ._normal_forms import (
    AbstractNormalForm,
    compute_normal_form,
    default_symmetry_tol,
    make_family,
)

KINDS = ("fold", "transcritical", "pitchfork", "hopf")


class Bifurcation(eqx.Module):
    """One detected, localised and classified codimension-one bifurcation of an equilibrium.

    **Fields:**

    - `kind`: `"fold"`, `"transcritical"`, `"pitchfork"` or `"hopf"`.
    - `parameter`: the parameter value (continuation), or the fractional checkpoint index
        `k + s` (tracking; the parameters are interpolated linearly between checkpoints k, k+1).
    - `state`: the equilibrium at the bifurcation.
    - `eigenvalues`: the critical eigenvalue (`(1,)`), or the Hopf pair `(λ, λ̄)` with `Im λ > 0`.
    - `right_eigenvector`, `left_eigenvector`: `v` (unit norm) and `w` with `wᵀv = 1` (real for a
        zero eigenvalue, with the largest-|entry| component of `v` positive; complex for Hopf).
    - `normal_form`: the coefficients; `normal_form.convention` states their convention.
    - `direction`: `+1` if the critical eigenvalue's real part goes from negative to positive in
        the direction of travel (increasing arclength/checkpoint index; stability lost), else `-1`.
    - `located`: the localisation met its tolerance.
    - `branch`: which tracked equilibrium branch (tracking), `0` for a continuation.
    - `index`: the step of the branch after which the bifurcation lies.
    """

    kind: str = eqx.field(static=True)
    parameter: Float[Array, ""]
    state: Float[Array, " state"]
    eigenvalues: Complex[Array, " k"]
    right_eigenvector: Shaped[Array, " state"]
    left_eigenvector: Shaped[Array, " state"]
    normal_form: AbstractNormalForm
    direction: int = eqx.field(static=True)
    located: bool = eqx.field(static=True)
    branch: int = eqx.field(static=True, default=0)
    index: int = eqx.field(static=True, default=0)

    @property
    def convention(self) -> str:
        return self.normal_form.convention

    @property
    def criticality(self) -> str | None:
        return self.normal_form.criticality


class Branch(eqx.Module):
    """A branch of equilibria from `continuation`.

    **Fields:** `parameters (S,)`, `states (S, N)`, `eigenvalues (S, N)` (sorted by decreasing real
    part), `stable (S,)`, `bifurcations` (tuple of `Bifurcation`, in order along the branch),
    `status` (`"completed"`: reached `p1`; `"left_range"`: turned back and left through `p0`;
    `"max_steps"`; `"step_size_too_small"`; `"initial_point_not_converged"`) and `num_steps`.
    """

    parameters: Float[Array, " steps"]
    states: Float[Array, "steps state"]
    eigenvalues: Complex[Array, "steps state"]
    stable: Bool[Array, " steps"]
    bifurcations: tuple[Bifurcation, ...]
    status: str = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)

    @property
    def successful(self) -> bool:
        return self.status == "completed"


# ------------------------------------------------------------------------------------------------
# Jitted kernels. `family(x, s, args)` is static (hashed by identity), `args` traced, so every
# continuation and every tracked segment with the same vector field shares these compilations.


@eqx.filter_jit
def _analyse(family, args, y, tau_prev):
    """Unit tangent of the branch at `y = (x, s)` (oriented along `tau_prev`) and the spectrum."""
    x, s = y[:-1], y[-1]
    fx = jax.jacfwd(lambda z: family(z, s, args))(x)
    fs = jax.jvp(lambda t: family(x, t, args), (s,), (jnp.ones_like(s),))[1]
    m = jnp.concatenate([jnp.concatenate([fx, fs[:, None]], axis=1), tau_prev[None, :]], axis=0)
    rhs = jnp.zeros_like(y).at[-1].set(1)
    # [[f_x, f_s], [τ_prevᵀ]] t = e: t spans the kernel of [f_x, f_s] with τ_prevᵀ t = 1 > 0.
    t = lx.linear_solve(lx.MatrixLinearOperator(m), rhs, throw=False).value
    t = t / jnp.linalg.norm(t)
    return t, spectrum_of_matrix(fx)


@eqx.filter_jit
def _step(family, args, y, tau, h, rtol, atol, max_steps):
    """Pseudo-arclength predictor-corrector: solve f(x, s) = 0, τᵀ(y - y - hτ) = 0."""
    y_pred = y + h * tau

    def fn(z, a):
        return jnp.concatenate([family(z[:-1], z[-1], a), (tau @ (z - y_pred))[None]])

    y_new, ok, nsteps = newton_root(fn, y_pred, args, rtol, atol, max_steps)
    tau_new, spec = _analyse(family, args, jnp.where(ok, y_new, y), tau)
    return y_new, ok, nsteps, tau_new, spec


def _host_step(family, args, y, tau, h, opts):
    """`_step` on numpy inputs/outputs (host bookkeeping in numpy avoids eager-op compiles)."""
    dtype = y.dtype
    out = _step(
        family, args, y, tau, np.asarray(h, dtype), opts.rtol, opts.atol, opts.newton_max_steps
    )
    y_new, ok, nsteps, tau_new, spec = jax.device_get(out)
    return np.asarray(y_new), bool(ok), int(nsteps), np.asarray(tau_new), spec


# ------------------------------------------------------------------------------------------------
# Host-side test functions on a spectrum.


def _real_mask(ev: np.ndarray) -> np.ndarray:
    scale = max(1.0, float(np.max(np.abs(ev))))
    return np.abs(ev.imag) <= 1e3 * np.finfo(ev.real.dtype).eps * scale


def _signature(ev: np.ndarray) -> tuple[int, int, int, int]:
    """(sign of det A, # unstable eigenvalues, # complex unstable, # complex)."""
    real = _real_mask(ev)
    det_sign = int(np.prod(np.sign(ev.real[real]))) if real.any() else 1
    unstable = ev.real > 0
    return det_sign, int(np.sum(unstable)), int(np.sum(unstable & ~real)), int(np.sum(~real))


def _psi_real(ev: np.ndarray) -> float:
    real = _real_mask(ev)
    if not real.any():
        return np.nan
    r = ev.real[real]
    return float(r[np.argmin(np.abs(r))])


def _psi_hopf(ev: np.ndarray) -> float:
    cplx = ~_real_mask(ev)
    if not cplx.any():
        return np.nan
    r = ev.real[cplx]
    return float(r[np.argmin(np.abs(r))])


class _Options(eqx.Module):
    rtol: float
    atol: float
    newton_max_steps: int
    parameter_tol: float
    symmetry_tol: float


def _localise(family, args, y, tau, h, psi, f0, f1, opts):
    """Illinois regula falsi on `psi` along the predictor-corrector arc `h' ∈ [0, h]` from `y`."""
    lo, hi, flo, fhi = 0.0, float(h), f0, f1
    side = 0
    best = None
    located = False
    for it in range(100):
        if it % 4 == 3 or not np.isfinite(flo) or not np.isfinite(fhi) or fhi == flo:
            c = 0.5 * (lo + hi)
        else:
            c = (lo * fhi - hi * flo) / (fhi - flo)
            if not lo < c < hi:
                c = 0.5 * (lo + hi)
        out = _host_step(family, args, y, tau, c, opts)
        if not out[1]:
            # The corrector failed inside a bracket it already crossed: shrink by bisection.
            hi, fhi = c, fhi
            continue
        fc = psi(np.asarray(out[4].eigenvalues))
        best = (c, out)
        if fc == 0:
            located = True
            break
        if np.sign(fc) == np.sign(fhi):
            hi, fhi = c, fc
            if side == -1:
                flo /= 2
            side = -1
        else:
            lo, flo = c, fc
            if side == 1:
                fhi /= 2
            side = 1
        if hi - lo <= opts.parameter_tol:
            located = True
            break
    return best, located


def _events(ev0: np.ndarray, ev1: np.ndarray) -> list[str]:
    d0, n0, c0, m0 = _signature(ev0)
    d1, n1, c1, m1 = _signature(ev1)
    out = []
    # det f_x changes sign iff an odd number of real eigenvalues crossed zero (complex pairs
    # contribute |λ|² > 0), which is robust to real pairs colliding into complex ones.
    if d0 != d1:
        out.append("real")
        if c0 != c1 and m0 == m1:
            out.append("hopf")
    elif n0 != n1:
        out.append("hopf")
    return out


def _classify(family, args, y, tau0, tau1, spec, event, opts):
    x, s = np.asarray(y[:-1]), np.asarray(y[-1])
    if event == "hopf":
        kind = "hopf"
    elif np.sign(float(tau0[-1])) != np.sign(float(tau1[-1])):
        kind = "fold"
    else:
        kind = "branch_point"
    return compute_normal_form(
        family,
        args,
        x,
        s,
        spec.eigenvalues,
        spec.right_eigenvectors,
        spec.left_eigenvectors,
        kind,
        opts.symmetry_tol,
    )


def _detect(family, args, y0, tau0, spec0, y1, tau1, spec1, h, opts, lo, hi, index):
    """Bifurcations between two accepted consecutive points (within parameter range [lo, hi])."""
    found = []
    ev0 = np.asarray(spec0.eigenvalues)
    ev1 = np.asarray(spec1.eigenvalues)
    for event in _events(ev0, ev1):
        psi = _psi_real if event == "real" else _psi_hopf
        f0, f1 = psi(ev0), psi(ev1)
        if np.isfinite(f0) and np.isfinite(f1) and np.sign(f0) != np.sign(f1):
            best, located = _localise(family, args, y0, tau0, h, psi, f0, f1, opts)
        else:
            best, located = None, False
        if best is None:
            # Could not bracket the test function: report at the far end, flagged unlocated.
            yb, spec_b = y1, spec1
        else:
            yb, spec_b = best[1][0], best[1][4]
        s = float(yb[-1])
        if not lo - opts.parameter_tol <= s <= hi + opts.parameter_tol:
            continue
        try:
            kind, nf, lam, q, w = _classify(
                family, args, np.asarray(yb), tau0, tau1, spec_b, event, opts
            )
        except ValueError:
            # The critical eigenvalue is not of the expected type: a spurious event.
            continue
        direction = 1 if f1 > f0 or (not np.isfinite(f0 - f1) and event == "hopf") else -1
        found.append(
            dict(
                kind=kind,
                s=s,
                state=np.asarray(yb[:-1]),
                eigenvalues=jnp.asarray(lam),
                right=jnp.asarray(q),
                left=jnp.asarray(w),
                normal_form=nf,
                direction=direction,
                located=located,
                index=index,
            )
        )
    return found


def continue_family(
    family,
    args,
    x0,
    s0: float,
    s1: float,
    *,
    step_size: float | None,
    max_step_size: float | None,
    min_step_size: float | None,
    max_steps: int,
    detect: bool,
    opts: _Options,
):
    """Host driver of the pseudo-arclength continuation (Python loop around jitted kernels: the
    adaptive step control and event handling are data dependent). Returns a dict of results."""
    dtype = x0.dtype
    span = abs(s1 - s0)
    sign = 1.0 if s1 > s0 else -1.0
    lo, hi = min(s0, s1), max(s0, s1)
    h = span / 50 if step_size is None else float(step_size)
    h_max = span / 10 if max_step_size is None else float(max_step_size)
    h_min = 1e-8 * span if min_step_size is None else float(min_step_size)
    n = x0.shape[0]

    e_last = np.zeros((n + 1,), dtype)
    e_last[-1] = 1

    def solve_at(x, s):
        # Newton at fixed s is the arclength corrector with τ = e_s and h = 0; reusing `_step`
        # keeps to one compilation per vector field. Returns (y, ok, spectrum).
        y = np.concatenate([np.asarray(x, dtype), np.asarray([s], dtype)])
        y, ok, _, _, spec = _host_step(family, args, y, e_last, 0.0, opts)
        return y, ok, spec

    y, ok, spec = solve_at(x0, s0)
    result: dict[str, Any] = dict(ys=[], evs=[], found=[], status="initial_point_not_converged")
    if not bool(ok):
        result["ys"] = [np.concatenate([np.asarray(x0), [s0]])]
        result["evs"] = [np.full((n,), np.nan + 0j)]
        return result
    tau_guess = sign * e_last
    _, _, _, tau, spec = _host_step(family, args, y, tau_guess, 0.0, opts)
    ys, evs, found = [np.asarray(y)], [np.asarray(spec.eigenvalues)], []
    status = "max_steps"
    for _ in range(max_steps):
        y_new, ok, nsteps, tau_new, spec_new = _host_step(family, args, y, tau, h, opts)
        accept = (
            ok
            and float(np.linalg.norm(y_new - (y + h * tau))) <= 0.5 * h
            and float(tau_new @ tau) >= 0.9
        )
        if not accept:
            h *= 0.5
            if h < h_min:
                status = "step_size_too_small"
                break
            continue
        s_new = float(y_new[-1])
        if detect:
            found += _detect(
                family, args, y, tau, spec, y_new, tau_new, spec_new, h, opts, lo, hi, len(ys) - 1
            )
        if lo <= s_new <= hi:
            y, tau, spec = y_new, tau_new, spec_new
            ys.append(np.asarray(y))
            evs.append(np.asarray(spec.eigenvalues))
            if nsteps <= 3:
                h = min(1.5 * h, h_max)
            continue
        # Left [lo, hi]: finish on the boundary that was crossed.
        beyond_end = (sign > 0 and s_new > hi) or (sign < 0 and s_new < lo)
        boundary = s1 if beyond_end else s0
        status = "completed" if boundary == s1 else "left_range"
        s_prev = float(y[-1])
        frac = (boundary - s_prev) / (s_new - s_prev) if s_new != s_prev else 1.0
        x_guess = y[:-1] + frac * (y_new[:-1] - y[:-1])
        yb, okb, spec_b = solve_at(x_guess, boundary)
        if okb:
            ys.append(np.asarray(yb))
            evs.append(np.asarray(spec_b.eigenvalues))
        break
    result.update(ys=ys, evs=evs, found=found, status=status)
    return result


def make_options(dtype, rtol, atol, newton_max_steps, parameter_tol, symmetry_tol) -> _Options:
    tol = default_tol(dtype)
    eps = float(jnp.finfo(dtype).eps)
    return _Options(
        rtol=tol if rtol is None else float(rtol),
        atol=tol if atol is None else float(atol),
        newton_max_steps=int(newton_max_steps),
        parameter_tol=max(1e-10, 10 * eps) if parameter_tol is None else float(parameter_tol),
        symmetry_tol=default_symmetry_tol(dtype) if symmetry_tol is None else float(symmetry_tol),
    )


def make_bifurcation(d: dict, parameter, branch: int = 0) -> Bifurcation:
    return Bifurcation(
        kind=d["kind"],
        parameter=jnp.asarray(parameter),
        state=d["state"],
        eigenvalues=d["eigenvalues"],
        right_eigenvector=d["right"],
        left_eigenvector=d["left"],
        normal_form=d["normal_form"],
        direction=d["direction"],
        located=d["located"],
        branch=branch,
        index=d["index"],
    )


def continuation(
    vector_field: Callable,
    x0: Float[ArrayLike, " state"],
    p0: float | Float[ArrayLike, ""],
    p1: float | Float[ArrayLike, ""],
    *,
    step_size: float | None = None,
    max_step_size: float | None = None,
    min_step_size: float | None = None,
    max_steps: int = 1000,
    detect_bifurcations: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
    newton_max_steps: int = 20,
    parameter_tol: float | None = None,
    symmetry_tol: float | None = None,
) -> Branch:
    """Pseudo-arclength continuation of an equilibrium branch in a scalar parameter, with
    detection, localisation and classification of codimension-one bifurcations.

    The branch `{(x, μ): f(x, μ) = 0}` is followed from near `(x0, p0)` towards `μ = p1` with a
    tangent predictor and a Newton corrector on the arclength condition, so it passes folds. Between
    accepted points, a sign change of `det f_x` (a real eigenvalue through zero) or a change in the
    number of unstable eigenvalues not explained by it (a complex pair through the imaginary axis)
    is localised by regula falsi on the critical eigenvalue's real part, to `parameter_tol` in
    arclength (hence in `μ`). A real crossing where `dμ/ds` changes sign is a fold; otherwise a
    branch point, classified as a pitchfork when `b2 = 0` (Z2 symmetry) and a transcritical
    otherwise. Normal-form coefficients follow the conventions in `docs/bifurcations.md`.

    **Arguments:**

    - `vector_field`: `vector_field(x, mu) -> dx/dt`, `mu` a scalar.
    - `x0`: an (approximate) equilibrium at `mu = p0`; it is corrected by Newton first.
    - `p0`, `p1`: start and end of the parameter range (either order).
    - `step_size`, `max_step_size`, `min_step_size`: arclength steps (defaults `|p1 - p0|` over
        50, 10 and 1e8).
    - `max_steps`: maximum number of continuation steps (accepted or rejected).
    - `detect_bifurcations`: detect, localise and classify bifurcations.
    - `rtol`, `atol`, `newton_max_steps`: corrector settings (default tolerance `eps^(2/3)`).
    - `parameter_tol`: localisation tolerance (default `1e-10` in float64).
    - `symmetry_tol`: relative size of `b2` below which a branch point is a pitchfork.

    **Returns:**

    A `Branch`; `branch.status` says how it ended and `branch.bifurcations` lists what was found.
    The loop is a Python loop around jitted step functions (step control is data dependent).
    """
    x0 = jnp.asarray(x0)
    if x0.ndim != 1:
        raise ValueError(f"`x0` must have shape (N,), got {x0.shape}")
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(jnp.result_type(float))
    for name, p in (("p0", p0), ("p1", p1)):
        if jnp.ndim(p) != 0:
            raise ValueError(f"`{name}` must be a scalar, got shape {jnp.shape(p)}")
        if not np.isfinite(float(p)):
            raise ValueError(f"`{name}` must be finite, got {float(p)}")
    if not bool(np.all(np.isfinite(np.asarray(x0)))):
        raise ValueError("`x0` contains non-finite values")
    s0, s1 = float(p0), float(p1)
    if s0 == s1:
        raise ValueError("`p0` and `p1` must differ")
    dtype = x0.dtype
    check_vector_field(vector_field, x0, jnp.asarray(s0, dtype))
    family, args = make_family(vector_field, jnp.zeros((), dtype), jnp.ones((), dtype))
    opts = make_options(dtype, rtol, atol, newton_max_steps, parameter_tol, symmetry_tol)
    res = continue_family(
        family,
        args,
        x0,
        s0,
        s1,
        step_size=step_size,
        max_step_size=max_step_size,
        min_step_size=min_step_size,
        max_steps=max_steps,
        detect=detect_bifurcations,
        opts=opts,
    )
    return branch_from_result(res, dtype)


def branch_from_result(res: dict, dtype, parameter_map=lambda s: s, branch: int = 0) -> Branch:
    ys = np.stack(res["ys"])
    evs = np.stack(res["evs"])
    return Branch(
        parameters=jnp.asarray(parameter_map(ys[:, -1]), dtype),
        states=jnp.asarray(ys[:, :-1], dtype),
        eigenvalues=jnp.asarray(evs),
        stable=jnp.asarray(np.all(evs.real < 0, axis=-1)),
        bifurcations=tuple(
            make_bifurcation(d, parameter_map(d["s"]), branch) for d in res["found"]
        ),
        status=res["status"],
        num_steps=len(res["ys"]),
    )

