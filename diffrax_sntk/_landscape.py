r"""The loss landscape restricted to one parameter direction, next to a normal-form fit.

Near a codimension-one bifurcation the loss along the dominant direction u1 of JᵀJ is expected to
look like the potential of the scalar normal form, ẋ = f_nf(x; μ) = −V′(x):

| normal form    | f_nf         | V(x)                 | fitted monomials in x = s − s0 |
|----------------|--------------|----------------------|--------------------------------|
| pitchfork      | μx − x³      | −μx²/2 + x⁴/4        | 1, x², x⁴                      |
| fold           | μ − x²       | −μx + x³/3           | 1, x, x³                       |
| transcritical  | μx − x²      | −μx²/2 + x³/3        | 1, x², x³                      |
| hopf           | μr − r³      | −μr²/2 + r⁴/4        | 1, x², x⁴                      |

The Hopf row is the amplitude equation ṙ = μr + l₁r³ of a supercritical Hopf (l₁ scaled to −1,
r = |x|): its potential is even, so it has the pitchfork's monomials and the same fit; μ is then
read as the growth rate of the oscillation's amplitude. (A landscape cannot tell the two kinds
apart; the Hopf's phase does not enter a potential.)

The prediction is L̂(s) = a + β V(s − s0; μ): linear least squares in (a, β·μ, β) for each
centre s0 on a grid, keeping the centre of largest R².

A fit that cannot be made is reported in `RestrictedLandscape.result`, never papered over:
non-finite samples (a diverging loss), a constant landscape (R² undefined) or a vanishing top-order
coefficient β (μ undefined) give `RESULTS.nonfinite` with the undefined values set to NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, PyTree

from ._misc import RESULTS, check_callable, error_if_nonfinite, result_where

__all__ = ["RestrictedLandscape", "restricted_landscape", "fit_normal_form_landscape"]

_FORMS = ("pitchfork", "fold", "transcritical", "hopf")
_POWERS = {"pitchfork": (0, 2, 4), "fold": (0, 1, 3), "transcritical": (0, 2, 3),
           "hopf": (0, 2, 4)}


class RestrictedLandscape(eqx.Module):
    """Result of [`restricted_landscape`][diffrax_sntk.restricted_landscape].

    **Fields:**

    - `s_values`, `loss`: the evaluated landscape L(θ + s·u).
    - `predicted`: the fitted normal-form landscape a + β V(s − s0; μ) at `s_values`.
    - `r_squared`: 1 − Σ(L − L̂)² / Σ(L − mean L)².
    - `centre` (s0), `offset` (a), `scale` (β), `unfolding` (μ): the fitted coefficients.
    - `normal_form`: `"pitchfork"`, `"fold"`, `"transcritical"` or `"hopf"` (amplitude).
    - `result`: a [`ds.RESULTS`][diffrax_sntk.RESULTS] item: `successful`, or `nonfinite` when a
        loss sample is NaN/inf, the landscape is constant (`r_squared` is then NaN) or the fitted
        β is zero (`unfolding` is then NaN).
    """

    s_values: Float[Array, " s"]
    loss: Float[Array, " s"]
    predicted: Float[Array, " s"]
    r_squared: Float[Array, ""]
    centre: Float[Array, ""]
    offset: Float[Array, ""]
    scale: Float[Array, ""]
    unfolding: Float[Array, ""]
    result: RESULTS
    normal_form: str = eqx.field(static=True)

    @property
    def successful(self):
        """`result == RESULTS.successful` (an array; batched under `vmap`)."""
        return self.result == RESULTS.successful


def _fit_at(s, loss, s0, powers):
    x = s - s0
    X = jnp.stack([x**p for p in powers], axis=1)
    coef, *_ = jnp.linalg.lstsq(X, loss)
    pred = X @ coef
    ss_res = jnp.sum((loss - pred) ** 2)
    return coef, pred, ss_res


def fit_normal_form_landscape(
    s_values: Float[ArrayLike, " s"],
    loss: Float[ArrayLike, " s"],
    normal_form: Literal["pitchfork", "fold", "transcritical", "hopf"] = "pitchfork",
    *,
    num_centres: int = 201,
    throw: bool = False,
) -> RestrictedLandscape:
    """Fit a + β V(s − s0; μ) (the normal form's potential) to a sampled 1-D landscape.

    **Arguments:**

    - `s_values`, `loss`: the samples, shape `(S,)` each (S ≥ 4).
    - `normal_form`: `"pitchfork"` (V = −μx²/2 + x⁴/4), `"fold"` (V = −μx + x³/3),
        `"transcritical"` (V = −μx²/2 + x³/3) or `"hopf"` (the amplitude potential
        V = −μr²/2 + r⁴/4 of ṙ = μr − r³, r = |x|: the pitchfork's monomials).
    - `num_centres`: the centre s0 is scanned over this many equispaced points in
        `[min s, max s]`; a, β and μ are linear least squares at each.
    - `throw`: raise (with `eqx.error_if`, also under `jit`) when the fit fails, instead of
        returning `result = RESULTS.nonfinite`.

    **Returns:**

    A [`RestrictedLandscape`][diffrax_sntk.RestrictedLandscape].
    """
    if normal_form not in _FORMS:
        raise ValueError(f"`normal_form` must be one of {_FORMS}, got {normal_form!r}.")
    if not isinstance(num_centres, int) or num_centres < 1:
        raise ValueError(f"`num_centres` must be a positive int, got {num_centres!r}.")
    s = jnp.asarray(s_values)
    loss = jnp.asarray(loss)
    if s.ndim != 1 or s.shape[0] < 4:
        raise ValueError(f"`s_values` must be 1-D with at least 4 points, got shape {s.shape}.")
    if loss.shape != s.shape:
        raise ValueError(f"`loss` must have the shape of `s_values` {s.shape}, got {loss.shape}.")
    dtype = jnp.result_type(s.dtype, loss.dtype, float)  # float32 stays float32; ints → float
    s, loss = error_if_nonfinite(s.astype(dtype), "s_values"), loss.astype(dtype)
    land = _fit_impl(s, loss, normal_form, num_centres)
    if throw:
        land = land.result.error_if(land, land.result != RESULTS.successful)
    return land


@eqx.filter_jit
def _fit_impl(s, loss, normal_form, num_centres):
    powers = _POWERS[normal_form]
    centres = jnp.linspace(jnp.min(s), jnp.max(s), num_centres)
    _, _, ss = jax.vmap(lambda c: _fit_at(s, loss, c, powers))(centres)
    best = jnp.argmin(jnp.where(jnp.isfinite(ss), ss, jnp.inf))
    s0 = centres[best]
    coef, pred, ss_res = _fit_at(s, loss, s0, powers)
    ss_tot = jnp.sum((loss - jnp.mean(loss)) ** 2)
    r2 = jnp.where(ss_tot > 0, 1 - ss_res / jnp.where(ss_tot > 0, ss_tot, 1), jnp.nan)
    a, c_lin, c_top = coef
    # pitchfork and hopf: c2 = −βμ/2, c4 = β/4; fold: c1 = −βμ, c3 = β/3; transcritical:
    # c2 = −βμ/2, c3 = β/3.
    beta = (4 if normal_form in ("pitchfork", "hopf") else 3) * c_top
    mu = (-1 if normal_form == "fold" else -2) * c_lin / jnp.where(beta != 0, beta, 1)
    mu = jnp.where(beta != 0, mu, jnp.nan)
    ok = jnp.all(jnp.isfinite(loss)) & jnp.isfinite(r2) & jnp.isfinite(mu)
    ok = ok & jnp.all(jnp.isfinite(coef))
    return RestrictedLandscape(
        s_values=s, loss=loss, predicted=pred, r_squared=r2, centre=s0, offset=a, scale=beta,
        unfolding=mu, result=result_where(~ok, RESULTS.nonfinite, RESULTS.successful),
        normal_form=normal_form,
    )


def restricted_landscape(
    loss_fn: Callable[[Any], Float[Array, ""]],
    model: Any,
    direction: PyTree,
    s_values: Float[ArrayLike, " s"],
    normal_form: Literal["pitchfork", "fold", "transcritical", "hopf"] = "pitchfork",
    *,
    filter_spec: Any = eqx.is_inexact_array,
    num_centres: int = 201,
    throw: bool = False,
) -> RestrictedLandscape:
    r"""Evaluate s ↦ L(θ + s·u) and fit the scalar normal form's landscape to it.

    Typically `direction = split.dominant_direction` (u1, the top eigenvector of JᵀJ) from
    [`bifurcation_channels`][diffrax_sntk.bifurcation_channels]. The loss is evaluated with
    `jax.lax.map` (one compilation, sequential evaluations), then
    [`fit_normal_form_landscape`][diffrax_sntk.fit_normal_form_landscape] fits
    L̂(s) = a + β V(s − s0; μ), V the normal form's potential (ẋ = −V′(x)).

    **Arguments:**

    - `loss_fn`: `loss_fn(model) -> scalar`.
    - `model`: the model at θ.
    - `direction`: a parameter pytree shaped like `eqx.filter(model, filter_spec)` (a leading axis
        of size 1, as in `dominant_direction`, is accepted).
    - `s_values`: step sizes, shape `(S,)`, S ≥ 4.
    - `normal_form`: `"pitchfork"`, `"fold"`, `"transcritical"` or `"hopf"`.
    - `filter_spec`: which model leaves are parameters.
    - `num_centres`: grid size of the centre scan.
    - `throw`: raise when the fit fails (see `fit_normal_form_landscape`).

    **Returns:**

    A [`RestrictedLandscape`][diffrax_sntk.RestrictedLandscape] with the samples, the fitted
    prediction and R².
    """
    check_callable(loss_fn, "loss_fn", "loss_fn(model) -> scalar")
    if normal_form not in _FORMS:
        raise ValueError(f"`normal_form` must be one of {_FORMS}, got {normal_form!r}.")
    params, static = eqx.partition(model, filter_spec)
    if jtu.tree_structure(direction) != jtu.tree_structure(params):
        raise ValueError(
            "`direction` must have the structure of the model's parameters "
            f"{jtu.tree_structure(params)}, got {jtu.tree_structure(direction)}."
        )

    def _squeeze(d, p):
        d = jnp.asarray(d)
        if d.shape == p.shape:
            return d.astype(p.dtype)
        if d.shape == (1,) + p.shape:
            return d[0].astype(p.dtype)
        raise ValueError(
            f"`direction` has a leaf of shape {d.shape}; the parameter has shape {p.shape}."
        )

    direction = error_if_nonfinite(jtu.tree_map(_squeeze, direction, params), "direction")
    s = jnp.asarray(s_values)
    if s.ndim != 1 or s.shape[0] < 4:
        raise ValueError(f"`s_values` must be 1-D with at least 4 points, got shape {s.shape}.")
    loss = _evaluate(loss_fn, params, static, direction, s)
    if loss.shape != s.shape:
        raise ValueError(f"`loss_fn` must return a scalar, got shape {loss.shape[1:]}.")
    return fit_normal_form_landscape(s, loss, normal_form, num_centres=num_centres, throw=throw)


@eqx.filter_jit
def _evaluate(loss_fn, params, static, direction, s):
    def one(si):
        p = jtu.tree_map(lambda a, d: a + si.astype(a.dtype) * d, params, direction)
        return jnp.asarray(loss_fn(eqx.combine(p, static)))

    return jax.lax.map(one, s)
