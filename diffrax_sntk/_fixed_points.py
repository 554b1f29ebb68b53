"""Fixed points: batched multi-start Newton, slow points, deduplication and Jacobian spectra.

Two call forms share one implementation (see `docs/dynamics_signatures.md`):

- `find_fixed_points(vector_field, params, initial_states)` with `vector_field(x, params)`;
- `find_fixed_points(model, initial_states, inputs=u)` with `model(t, x, u)` at `t = 0`.
"""

import inspect
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

from ._deflation import Deflation, as_deflation, deflated_roots
from ._misc import (
    RESULTS,
    Spectrum as Spectrum,
    check_callable,
    check_vector_field as check_vector_field,
    default_tol as default_tol,
    error_if_nonfinite,
    result_where,
    spectrum_of_matrix as spectrum_of_matrix,
    successful,
)

# Marks an argument that was not passed, so that `None` stays a valid `params`.
_MISSING: Any = object()


def _scalars_to_arrays(tree: PyTree) -> PyTree:
    # Python floats are static under `filter_jit` (a recompile per value, and no value check);
    # as weakly typed arrays they are traced and keep the state's dtype.
    return jtu.tree_map(
        lambda leaf: jnp.asarray(leaf) if isinstance(leaf, (float, complex)) else leaf, tree
    )


def check_params(params: PyTree, name: str = "params") -> PyTree:
    """Returns `params` (Python float leaves as arrays) with a check that every inexact leaf is
    finite: an error naming `name`, eagerly and under `jax.jit`. Thread the return value into
    the computation, or the check is dropped under `jit`."""
    return error_if_nonfinite(_scalars_to_arrays(params), name)


# ---------------------------------------------------------------------------------------------
# The two call forms.


def _model_vector_field(x, model_and_inputs):
    """A model `model(t, x, u)` with a constant input, as a `vector_field(x, params)`."""
    model, inputs = model_and_inputs
    return model(0.0, x, inputs)


def _check_arity(fn, name: str, args: tuple, expected: str, hint: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # No signature to inspect (a C function): the shape check still runs.
    try:
        sig.bind(*args)
    except TypeError as e:
        raise TypeError(f"`{name}` must be callable as `{expected}` ({e}). {hint}") from None


def resolve_dynamics(
    fn: Callable, params, x: Array, inputs, function: str, x_name: str
) -> tuple[Callable, PyTree]:
    """`(vector_field, params)` for either call form; structural checks only.

    `params is _MISSING` selects the model form `fn(t, x, inputs)`; otherwise `fn(x, params)`
    and `inputs` must be `None`.
    """
    if params is _MISSING:
        check_callable(fn, "model", "model(t, x, u)")
        _check_arity(
            fn, "model", (0.0, x, inputs), "model(t, x, u)",
            f"With two positional arguments `{function}` takes a model `model(t, x, u)`; for "
            f"a `vector_field(x, params)` pass the parameters: `{function}(vector_field, "
            f"params, {x_name})`.",
        )
        params = (fn, _scalars_to_arrays(inputs))
        check_vector_field(_model_vector_field, x, params, name="model")
        return _model_vector_field, params
    if inputs is not None:
        raise TypeError(
            f"`inputs` is used only with a model: `{function}(model, {x_name}, inputs=u)`; a "
            f"`vector_field(x, params)` gets everything through `params`."
        )
    check_callable(fn, "vector_field", "vector_field(x, params)")
    hint = (
        f"If it is a model `model(t, x, u)`, pass it without parameters: `{function}(model, "
        f"{x_name}, inputs=u)`."
    )
    _check_arity(fn, "vector_field", (x, params), "vector_field(x, params)", hint)
    try:
        check_vector_field(fn, x, params)
    except (TypeError, ValueError) as e:
        kind = TypeError if isinstance(e, TypeError) else ValueError
        raise kind(f"{e}\n(`vector_field(x, params)` failed. {hint})") from e
    return fn, _scalars_to_arrays(params)


def _check_values(params, vector_field, x: Array, x_name: str) -> tuple[PyTree, Array]:
    # Value checks (they fire under `jit`): name the model and its input separately.
    if vector_field is _model_vector_field:
        model, inputs = params
        params = (error_if_nonfinite(model, "model"), error_if_nonfinite(inputs, "inputs"))
    else:
        params = error_if_nonfinite(params, "params")
    return params, error_if_nonfinite(x, x_name)


def _as_float(x: ArrayLike, name: str) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            raise TypeError(f"`{name}` must be real, got dtype {x.dtype}")
        x = x.astype(jnp.result_type(float))
    return x


# ---------------------------------------------------------------------------------------------
# Jacobian spectra.


def jacobian_spectrum(
    vector_field: Callable,
    x: Float[ArrayLike, " state"],
    params: PyTree = _MISSING,
    *,
    inputs: PyTree = None,
) -> Spectrum:
    """The Jacobian `∂f/∂x` at `(x, params)` and its eigen-decomposition.

    Two call forms: `jacobian_spectrum(vector_field, x, params)` with `vector_field(x, params)`,
    or `jacobian_spectrum(model, x, inputs=u)` with `model(t, x, u)` evaluated at `t = 0`.

    **Arguments:**

    - `vector_field`: `vector_field(x, params) -> dx/dt`, or a model `model(t, x, u)`.
    - `x`: a state of shape `(N,)`.
    - `params`: a scalar or any pytree (an `eqx.Module` included). Omit it for a model.
    - `inputs`: the model form's constant input `u` (`None` allowed).

    **Returns:**

    A `Spectrum` (eigenvalues sorted by decreasing real part; right vectors of unit norm; left
    vectors with `wᵢᵀ vᵢ = 1`). Works under `jax.jit`/`vmap` on CPU (nonsymmetric `eig` runs on
    the host). A non-finite `x` or parameter raises, also under `jit`.
    """
    x = _as_float(x, "x")
    if x.ndim != 1:
        raise ValueError(f"`x` must have shape (N,), got {x.shape}")
    vector_field, params = resolve_dynamics(
        vector_field, params, x, inputs, "jacobian_spectrum", "x"
    )
    return _spectrum_impl(vector_field, x, params)


@eqx.filter_jit
def _spectrum_impl(vector_field, x, params):
    params, x = _check_values(params, vector_field, x, "x")
    return spectrum_of_matrix(jax.jacfwd(vector_field)(x, params))


# ---------------------------------------------------------------------------------------------
# Newton.


def newton_solve(fn, y0, args, rtol, atol, max_steps):
    """optimistix Newton with `throw=False`; returns `(y, result, num_steps)`.

    `result` is the optimistix result promoted to `RESULTS`, with `RESULTS.nonfinite` where the
    solver reported success on a non-finite iterate.
    """
    sol = optx.root_find(
        fn,
        optx.Newton(rtol=rtol, atol=atol),
        y0,
        args=args,
        max_steps=max_steps,
        throw=False,
    )
    result = result_where(~jnp.all(jnp.isfinite(sol.value)), RESULTS.nonfinite,
                          RESULTS.promote(sol.result))
    return sol.value, result, sol.stats["num_steps"]


def newton_root(fn, y0, args, rtol, atol, max_steps):
    """As `newton_solve`, with the result as a boolean: `(y, converged, num_steps)`.

    Kept for callers that only branch on success; prefer `newton_solve`, whose result says why.
    """
    y, result, steps = newton_solve(fn, y0, args, rtol, atol, max_steps)
    return y, successful(result), steps


# ---------------------------------------------------------------------------------------------
# Multi-start search.


class FixedPoints(eqx.Module):
    """Result of `find_fixed_points`: one entry per initial state (shape `(M, ...)`), or with
    `deflation=` one entry per root slot (shape `(max_roots, ...)`: the roots in the order
    found, then empty slots with NaN states and `RESULTS.no_further_root`).

    **Fields:**

    - `states`: the point reached from each initial state (a fixed point where `converged`, a slow
        point where `slow_point`, else the last iterate).
    - `residuals`: `‖f(x)‖₂` at each point (the "speed" of a slow point).
    - `result`: a `RESULTS` item per start: `successful`, or why Newton failed there
        (`nonlinear_max_steps_reached`, `nonlinear_divergence`, `nonfinite`, ... as reported by
        optimistix). A slow point keeps Newton's failure code.
    - `slow_point`: Newton failed but a local minimum of `½‖f‖²` was found (Sussillo & Barak).
    - `num_steps`: Newton iterations used.
    - `unique`: first occurrence of each distinct converged fixed point (deduplication).
    - `representative`: index of the unique point each entry coincides with (itself if none).
    - `spectrum`: the Jacobian and its eigen-decomposition at each point (see `Spectrum`); for
        an entry that did not converge it describes the reported state, or the origin where
        that state is not finite: read it together with `result`.
    - `num_unstable`: number of eigenvalues with positive real part; `stable` ⇔ it is zero and
        the point converged.

    **Properties:** `converged` (`result == RESULTS.successful`), `num_converged`;
    `messages()` gives the `RESULTS` message per start.
    """

    states: Float[Array, "points state"]
    residuals: Float[Array, " points"]
    result: RESULTS
    slow_point: Bool[Array, " points"]
    num_steps: Int[Array, " points"]
    unique: Bool[Array, " points"]
    representative: Int[Array, " points"]
    spectrum: Spectrum | None
    num_unstable: Int[Array, " points"] | None
    stable: Bool[Array, " points"] | None

    @property
    def converged(self) -> Bool[Array, " points"]:
        """Newton (or the slow-point search) reached a fixed point, `‖f‖` within tolerance."""
        return successful(self.result)

    @property
    def num_converged(self) -> Int[Array, ""]:
        return jnp.sum(self.converged)

    def messages(self) -> list[str]:
        """`RESULTS` message of each start (`""` where it converged; host-side)."""
        pick = lambda i: jtu.tree_map(lambda a: a[i], self.result)
        return [RESULTS[pick(i)] for i in range(self.states.shape[0])]

    def deduplicated(self) -> "FixedPoints":
        """The distinct converged fixed points only (host-side; not jittable)."""
        idx = np.where(np.asarray(self.unique))[0]
        return jtu.tree_map(lambda a: a[idx] if eqx.is_array(a) else a, self)


@eqx.filter_jit
def _find_impl(
    vector_field, params, initial_states, rtol, atol, max_steps, slow_points, dedupe_tol, spectra,
    throw, deflation=None,
):
    params, initial_states = _check_values(params, vector_field, initial_states, "initial_states")
    n = initial_states.shape[-1]

    def one_start(x0):
        x, result, steps = newton_solve(vector_field, x0, params, rtol, atol, max_steps)
        fx = vector_field(x, params)
        resid = jnp.linalg.norm(jnp.where(jnp.isfinite(fx), fx, jnp.inf))
        result = result_where(~jnp.isfinite(resid), RESULTS.nonfinite, result)
        slow = jnp.zeros((), bool)
        if slow_points:
            sol = optx.minimise(
                lambda y, p: 0.5 * jnp.sum(vector_field(y, p) ** 2),
                optx.BFGS(rtol=rtol, atol=atol),
                x0,
                args=params,
                max_steps=4 * max_steps,
                throw=False,
            )
            xm = sol.value
            rm = jnp.linalg.norm(vector_field(xm, params))
            okm = successful(RESULTS.promote(sol.result))
            okm = okm & jnp.isfinite(rm) & jnp.all(jnp.isfinite(xm))
            # A minimiser of ½‖f‖² that is in fact a root counts as a fixed point.
            root = okm & (rm <= atol * jnp.sqrt(n))
            use_m = ~successful(result) & okm
            x = jnp.where(use_m, xm, x)
            resid = jnp.where(use_m, rm, resid)
            slow = use_m & ~root
            result = RESULTS.where(use_m & root, RESULTS.successful, result)
        return x, resid, result, slow, steps

    if deflation is None:
        xs, resid, result, slow, steps = jax.vmap(one_start)(initial_states)
    else:
        xs, result, steps = deflated_roots(
            vector_field, params, initial_states, deflation, rtol, atol, max_steps, dedupe_tol
        )

        def check(x, res):
            fx = vector_field(x, params)
            r = jnp.linalg.norm(jnp.where(jnp.isfinite(fx), fx, jnp.inf))
            return r, result_where(~jnp.isfinite(r), RESULTS.nonfinite, res)

        resid, result = jax.vmap(check)(xs, result)
        slow = jnp.zeros(resid.shape, bool)
    ok = successful(result)
    # Deduplicate (fixed size under jit): i is unique if no earlier converged j lies within tol.
    scale = 1 + jnp.max(jnp.abs(jnp.where(ok[:, None], xs, 0)), axis=-1)
    dist = jnp.max(jnp.abs(xs[:, None, :] - xs[None, :, :]), axis=-1)
    close = (dist <= dedupe_tol * scale[:, None]) & ok[None, :] & ok[:, None]
    m = xs.shape[0]
    earlier = jnp.tril(jnp.ones((m, m), bool), k=-1)
    unique = ok & ~jnp.any(close & earlier, axis=-1)
    rep = jnp.where(ok, jnp.argmax(close, axis=-1), jnp.arange(m))
    if spectra:
        # `eig` of a non-finite matrix is undefined; such entries are failures in `result`.
        safe = jnp.where(jnp.isfinite(xs), xs, 0)
        A = jax.vmap(lambda x: jax.jacfwd(vector_field)(x, params))(safe)
        spec = jax.vmap(spectrum_of_matrix)(A)
        nu = jnp.sum(spec.eigenvalues.real > 0, axis=-1)
        stable = ok & (nu == 0)
    else:
        spec, nu, stable = None, None, None
    out = FixedPoints(
        states=xs,
        residuals=resid,
        result=result,
        slow_point=slow,
        num_steps=steps,
        unique=unique,
        representative=rep,
        spectrum=spec,
        num_unstable=nu,
        stable=stable,
    )
    if throw:
        overall = RESULTS.where(jnp.any(ok), RESULTS.successful, RESULTS.no_fixed_point)
        out = overall.error_if(out, overall != RESULTS.successful)
    return out


def find_fixed_points(
    vector_field: Callable,
    params: PyTree = _MISSING,
    initial_states: Float[ArrayLike, "points state"] = _MISSING,
    *,
    inputs: PyTree = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 64,
    slow_points: bool = True,
    dedupe_tol: float | None = None,
    spectra: bool = True,
    throw: bool = False,
    deflation: "Deflation | int | bool | None" = None,
) -> FixedPoints:
    """Batched multi-start Newton for the equilibria of `dx/dt = f(x)`.

    Two call forms (the number of arguments decides, never their values):

    - `find_fixed_points(vector_field, params, initial_states)`: `f(x) = vector_field(x, params)`;
    - `find_fixed_points(model, initial_states, inputs=u)`: `f(x) = model(0.0, x, u)` for a
        model or a diffrax vector field `model(t, x, u)` with a constant input (or `args`) `u`.

    Each initial state (e.g. states sampled along trajectories) starts an optimistix Newton solve;
    where Newton fails, a BFGS minimisation of `½‖f(x)‖²` looks for a slow point instead. Converged
    points are deduplicated and, optionally, their Jacobian spectra computed. Jittable with
    `jax.jit`/`eqx.filter_jit` and `vmap`-able over `params` (or over the model).

    **Arguments:**

    - `vector_field`: `vector_field(x, params) -> dx/dt` with `x` of shape `(N,)`; or a model
        `model(t, x, u)` (then omit `params`).
    - `params`: a scalar or any pytree (a model, a training checkpoint, an `eqx.Module` holding
        functions). Omit it for a model.
    - `initial_states`: `(M, N)` starting guesses.
    - `inputs`: the model form's constant input `u` (`None` allowed).
    - `rtol`, `atol`: Newton tolerances (default `eps^(2/3)` of the state dtype).
    - `max_steps`: Newton iterations per start (BFGS gets four times as many).
    - `slow_points`: run the `½‖f‖²` minimisation where Newton fails.
    - `dedupe_tol`: two converged points are the same if `‖x - y‖∞ ≤ dedupe_tol·(1 + ‖x‖∞)`
        (default `1e3·atol`).
    - `spectra`: compute Jacobians, eigenvalues and left/right eigenvectors.
    - `throw`: raise `RESULTS.no_fixed_point`'s message when no start converged (also under
        `jit`). By default failures are only reported in `result`.
    - `deflation`: `None` (multi-start Newton), or deflated Newton (Farrell, Birkisson & Funke
        2015): `True`, an int (the maximum number of roots) or a `Deflation` (power `p`, shift
        `σ`, ...). The starts are then used in turn: from each, Newton on
        `M(x) f(x)`, `M(x) = Π_i (‖x − r_i‖^(−p) + σ)` over the roots `r_i` found so far, is
        repeated until it fails; each root is re-verified by undeflated Newton (its code is that
        polish's result) and duplicates are dropped. The result then has one entry per root
        slot (`deflation.max_roots`) instead of one per start; unused slots are NaN with
        `RESULTS.no_fixed_point`. `slow_points` is not used. See
        `docs/deflation_and_bifurcation_points.md`.

    **Returns:**

    A `FixedPoints` with a `RESULTS` code per start (never silently wrong: non-converged
    entries have `converged = False` and say why); `.deduplicated()` keeps the distinct fixed
    points. Non-finite `initial_states` or parameters raise, also under `jit`.
    """
    if params is _MISSING and initial_states is _MISSING:
        raise TypeError("`find_fixed_points` needs `initial_states`")
    if initial_states is _MISSING:
        # Two positional arguments: the model form.
        params, initial_states = _MISSING, params
    initial_states = _as_float(initial_states, "initial_states")
    if initial_states.ndim != 2:
        raise ValueError(
            f"`initial_states` must have shape (M, N), got {initial_states.shape}; "
            "use `x[None]` for a single start"
        )
    vector_field, params = resolve_dynamics(
        vector_field, params, initial_states[0], inputs, "find_fixed_points", "initial_states"
    )
    tol = default_tol(initial_states.dtype)
    rtol = tol if rtol is None else rtol
    atol = tol if atol is None else atol
    dedupe_tol = 1e3 * atol if dedupe_tol is None else dedupe_tol
    return _find_impl(
        vector_field, params, initial_states, rtol, atol, max_steps, slow_points, dedupe_tol,
        spectra, throw, as_deflation(deflation),
    )
