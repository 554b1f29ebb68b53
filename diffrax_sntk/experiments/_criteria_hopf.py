"""Criterion C4 at a Hopf crossing: the restricted response against the complex normal form.

The specification is `docs/student_teacher_protocol.md` ("Per-kind criteria (fold and Hopf
tasks)"). At a Hopf point x* with critical eigenvalue λ = μ + iω, right vector v (unit) and
left vector ℓ (ℓᵀv = 1, ℓᵀv̄ = 0), the reduced equation of x = x* + z v + z̄ v̄ is

    ż = λ z + c₁ |z|² z        (amplitude ṙ = μ r + l₁ r³, l₁ = Re c₁; phase θ̇ = ω + Im c₁ r²).

A parameter perturbation δθ = u moves λ by δλ = ℓᵀ(∂_θA·u)v and forces z by a = ℓᵀ ∂_θf·u, so
the response of z along a trajectory z(t) solves the variational equation

    δż = (λ + 2 c₁ |z|²) δz + c₁ z² δz̄ + δλ z + a,    δz(0) = 0,

and the predicted state response is 2 Re(δz v).
"""

from __future__ import annotations

import math

import numpy as np
from jaxtyping import Complex, Float

from ._criteria import _result, _vector, fit_one_scale

__all__ = ["HOPF_FORMS", "hopf_response", "c4_hopf"]

# The detected kind's form first, then its rivals: without the cubic term, and without the
# rotation (every coefficient replaced by its real part: an amplitude equation that does not
# turn the perturbation with the phase).
HOPF_FORMS = ("hopf", "linear", "no_rotation")


def hopf_response(
    form: str,
    *,
    z: Complex[np.ndarray, "trials fine"],
    t_fine: Float[np.ndarray, " fine"],
    lam: complex,
    c1: complex,
    dlam: complex,
    a_u: complex,
) -> Complex[np.ndarray, "trials fine"]:
    """δz of one form along the projected trajectories `z`, by Heun's method from δz(0) = 0.

    **Arguments:** `form` in `HOPF_FORMS`; `z` the projected trajectory ℓᵀ(x(t) − x*) on the grid
    `t_fine`; the critical eigenvalue `lam`, `c1`, and the perturbation's `dlam` and `a_u`.

    **Returns:** δz with the shape of `z`.
    """
    if form not in HOPF_FORMS:
        raise ValueError(f"`form` must be one of {HOPF_FORMS}, got {form!r}.")
    z = np.asarray(z, dtype=complex)
    if z.ndim != 2:
        raise ValueError(f"`z` must have shape (trials, fine), got {z.shape}.")
    t = _vector(t_fine, "t_fine", z.shape[1])
    if len(t) < 2 or np.any(np.diff(t) <= 0):
        raise ValueError("`t_fine` must be strictly increasing with at least 2 points.")
    lam, c1, dlam, a_u = complex(lam), complex(c1), complex(dlam), complex(a_u)
    if form == "linear":
        c1 = 0.0
    elif form == "no_rotation":
        lam, c1, dlam, a_u = lam.real, c1.real, dlam.real, a_u.real
    diag = lam + 2 * c1 * np.abs(z) ** 2
    conj = c1 * z**2
    forcing = dlam * z + a_u

    def rhs(n, dz):
        return diag[:, n] * dz + conj[:, n] * np.conj(dz) + forcing[:, n]

    dz = np.zeros_like(z)
    for n in range(len(t) - 1):
        h = t[n + 1] - t[n]
        k1 = rhs(n, dz[:, n])
        k2 = rhs(n + 1, dz[:, n] + h * k1)
        dz[:, n + 1] = dz[:, n] + 0.5 * h * (k1 + k2)
    return dz


def c4_hopf(
    *,
    response: Float[np.ndarray, "trials time state"],
    v: Complex[np.ndarray, " state"],
    z: Complex[np.ndarray, "trials fine"],
    t_fine: Float[np.ndarray, " fine"],
    t_obs: Float[np.ndarray, " time"],
    lam: complex,
    c1: complex,
    dlam: complex,
    a_u: complex,
) -> dict:
    """C4 at a Hopf crossing: R = J u₁ against 2 Re(δz v) of the Hopf form, one fitted scale.

    Pass: error ≤ 0.25 and ≤ 0.5 × the best rival's (`HOPF_FORMS[1:]`).

    **Returns:** the criterion dict, details `errors` (form → error), `best_rival`, `scale`.
    """
    r = np.asarray(response, dtype=float)
    if r.ndim != 3:
        raise ValueError(f"`response` must have shape (trials, time, state), got {r.shape}.")
    v = np.asarray(v, dtype=complex)
    if v.shape != (r.shape[2],):
        raise ValueError(f"`v` must have shape ({r.shape[2]},), got {v.shape}.")
    z = np.asarray(z, dtype=complex)
    if z.ndim != 2 or z.shape[0] != r.shape[0]:
        raise ValueError(f"`z` must have shape ({r.shape[0]}, fine), got {z.shape}.")
    t_fine = _vector(t_fine, "t_fine", z.shape[1])
    t_obs = _vector(t_obs, "t_obs", r.shape[1])
    idx = np.abs(t_obs[:, None] - t_fine[None, :]).argmin(axis=1)
    if np.any(np.abs(t_fine[idx] - t_obs) > 0.5 * np.max(np.diff(t_fine)) * (1 + 1e-9)):
        raise ValueError("`t_obs` must lie within half a fine step of points of `t_fine`.")
    coeffs = {"lam": lam, "c1": c1, "dlam": dlam, "a_u": a_u}
    if not all(np.isfinite(complex(c)) for c in coeffs.values()) or not np.all(np.isfinite(v)):
        return _result(None, None, "non-finite Hopf coefficients", errors={}, best_rival=None,
                       scale=None)
    errors, scales = {}, {}
    for form in HOPF_FORMS:
        dz = hopf_response(form, z=z, t_fine=t_fine, **coeffs)
        prediction = 2.0 * np.real(dz[:, idx, None] * v[None, None, :])
        scales[form], errors[form] = fit_one_scale(r, prediction)
    value = errors["hopf"]
    rivals = [errors[f] for f in HOPF_FORMS[1:] if math.isfinite(errors[f])]
    best_rival = min(rivals) if rivals else math.nan
    if not math.isfinite(value):
        return _result(None, False, "zero response", errors=errors, best_rival=best_rival,
                       scale=None)
    passed = value <= 0.25 and (not math.isfinite(best_rival) or value <= 0.5 * best_rival)
    return _result(value, passed, None, errors=errors, best_rival=best_rival,
                   scale=scales["hopf"])
