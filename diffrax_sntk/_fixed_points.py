"""Fixed points: batched multi-start Newton, slow points, deduplication and Jacobian spectra."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Bool, Complex, Float, Int, PyTree


def default_tol(dtype) -> float:
    """Newton tolerance used when none is given: `eps^(2/3)` of the state dtype."""
    return float(jnp.finfo(dtype).eps) ** (2 / 3)


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_params(params: PyTree, name: str = "params") -> None:
    """Raises `ValueError` on concrete non-finite inexact leaves (traced ones are not checked)."""
    for leaf in jtu.tree_leaves(params):
        if isinstance(leaf, (float, complex)) or (
            eqx.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.inexact)
        ):
            if is_concrete(leaf) and not bool(np.all(np.isfinite(np.asarray(leaf)))):
                raise ValueError(f"`{name}` contains non-finite values (NaN or inf)")


def check_vector_field(vector_field: Callable, x, params, name: str = "vector_field") -> None:
    """Raises `TypeError`/`ValueError` unless `vector_field(x, params)` has the shape of `x`."""
    if not callable(vector_field):
        raise TypeError(f"`{name}` must be callable as `{name}(x, params)`")
    out = jax.eval_shape(vector_field, x, params)
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(f"`{name}` must return a single array, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(
            f"`{name}` returned shape {out.shape} for a state of shape {x.shape}; "
            "it must return dx/dt with the shape of x"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"`{name}` must return a real floating array, got dtype {out.dtype}")


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


def jacobian_spectrum(
    vector_field: Callable, x: Float[ArrayLike, " state"], params: PyTree
) -> Spectrum:
    """The Jacobian `∂f/∂x` of `vector_field` at `(x, params)` and its eigen-decomposition.

    **Arguments:**

    - `vector_field`: `vector_field(x, params) -> dx/dt`.
    - `x`: a state of shape `(N,)`.
    - `params`: a scalar or any pytree.

    **Returns:**

    A `Spectrum` (eigenvalues sorted by decreasing real part; right vectors of unit norm; left
    vectors with `wᵢᵀ vᵢ = 1`). Works under `jax.jit`/`vmap` on CPU (nonsymmetric `eig` runs on
    the host).
    """
    x = jnp.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"`x` must have shape (N,), got {x.shape}")
    check_vector_field(vector_field, x, params)
    return _spectrum_impl(vector_field, x, params)


@eqx.filter_jit
def _spectrum_impl(vector_field, x, params):
    return spectrum_of_matrix(jax.jacfwd(vector_field)(x, params))


def newton_root(fn, y0, args, rtol, atol, max_steps):
    """optimistix Newton with `throw=False`; returns `(y, converged, num_steps)`."""
    sol = optx.root_find(
        fn,
        optx.Newton(rtol=rtol, atol=atol),
        y0,
        args=args,
        max_steps=max_steps,
        throw=False,
    )
    y = sol.value
    ok = (sol.result == optx.RESULTS.successful) & jnp.all(jnp.isfinite(y))
    return y, ok, sol.stats["num_steps"]


class FixedPoints(eqx.Module):
    """Result of `find_fixed_points`: one entry per initial state (shape `(M, ...)`).

    **Fields:**

    - `states`: the point reached from each initial state (a fixed point where `converged`, a slow
        point where `slow_point`, else the last iterate).
    - `residuals`: `‖f(x)‖₂` at each point (the "speed" of a slow point).
    - `converged`: Newton converged to a fixed point (`‖f‖` within tolerance).
    - `slow_point`: Newton failed but a local minimum of `½‖f‖²` was found (Sussillo & Barak).
    - `num_steps`: Newton iterations used.
    - `unique`: first occurrence of each distinct converged fixed point (deduplication).
    - `representative`: index of the unique point each entry coincides with (itself if none).
    - `spectrum`: the Jacobian and its eigen-decomposition at each point (see `Spectrum`).
    - `num_unstable`: number of eigenvalues with positive real part; `stable` ⇔ it is zero and
        the point converged.
    """

    states: Float[Array, "points state"]
    residuals: Float[Array, " points"]
    converged: Bool[Array, " points"]
    slow_point: Bool[Array, " points"]
    num_steps: Int[Array, " points"]
    unique: Bool[Array, " points"]
    representative: Int[Array, " points"]
    spectrum: Spectrum | None
    num_unstable: Int[Array, " points"] | None
    stable: Bool[Array, " points"] | None

    @property
    def num_converged(self) -> Int[Array, ""]:
        return jnp.sum(self.converged)

    def deduplicated(self) -> "FixedPoints":
        """The distinct converged fixed points only (host-side; not jittable)."""
        idx = np.where(np.asarray(self.unique))[0]
        return jtu.tree_map(lambda a: a[idx] if eqx.is_array(a) else a, self)


@eqx.filter_jit
def _find_impl(
    vector_field, params, initial_states, rtol, atol, max_steps, slow_points, dedupe_tol, spectra
):
    fn = lambda x, p: vector_field(x, p)
    newton = jax.vmap(lambda x0: newton_root(fn, x0, params, rtol, atol, max_steps))
    xs, ok, steps = newton(initial_states)
    fx = jax.vmap(lambda x: vector_field(x, params))(xs)
    resid = jnp.linalg.norm(jnp.where(jnp.isfinite(fx), fx, jnp.inf), axis=-1)
    ok = ok & jnp.isfinite(resid)
    slow = jnp.zeros_like(ok)
    if slow_points:
        def minimise(x0):
            sol = optx.minimise(
                lambda x, p: 0.5 * jnp.sum(vector_field(x, p) ** 2),
                optx.BFGS(rtol=rtol, atol=atol),
                x0,
                args=params,
                max_steps=4 * max_steps,
                throw=False,
            )
            return sol.value, sol.result == optx.RESULTS.successful

        xm, okm = jax.vmap(minimise)(initial_states)
        fm = jax.vmap(lambda x: vector_field(x, params))(xm)
        rm = jnp.linalg.norm(fm, axis=-1)
        okm = okm & jnp.isfinite(rm) & jnp.all(jnp.isfinite(xm), axis=-1)
        # A minimiser of ½‖f‖² that is in fact a root counts as a fixed point.
        root = okm & (rm <= atol * jnp.sqrt(xs.shape[-1]))
        use_m = ~ok & okm
        xs = jnp.where(use_m[:, None], xm, xs)
        resid = jnp.where(use_m, rm, resid)
        slow = use_m & ~root
        ok = ok | (use_m & root)
    # Deduplicate (fixed size under jit): i is unique if no earlier converged j lies within tol.
    scale = 1 + jnp.max(jnp.abs(jnp.where(ok[:, None], xs, 0)), axis=-1)
    dist = jnp.max(jnp.abs(xs[:, None, :] - xs[None, :, :]), axis=-1)
    close = (dist <= dedupe_tol * scale[:, None]) & ok[None, :] & ok[:, None]
    m = xs.shape[0]
    earlier = jnp.tril(jnp.ones((m, m), bool), k=-1)
    unique = ok & ~jnp.any(close & earlier, axis=-1)
    rep = jnp.where(ok, jnp.argmax(close, axis=-1), jnp.arange(m))
    if spectra:
        safe = jnp.where(jnp.isfinite(xs), xs, 0)
        A = jax.vmap(lambda x: jax.jacfwd(vector_field)(x, params))(safe)
        spec = jax.vmap(spectrum_of_matrix)(A)
        nu = jnp.sum(spec.eigenvalues.real > 0, axis=-1)
        stable = ok & (nu == 0)
    else:
        spec, nu, stable = None, None, None
    return FixedPoints(
        states=xs,
        residuals=resid,
        converged=ok,
        slow_point=slow,
        num_steps=steps,
        unique=unique,
        representative=rep,
        spectrum=spec,
        num_unstable=nu,
        stable=stable,
    )


def find_fixed_points(
    vector_field: Callable,
    params: PyTree,
    initial_states: Float[ArrayLike, "points state"],
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 64,
    slow_points: bool = True,
    dedupe_tol: float | None = None,
    spectra: bool = True,
) -> FixedPoints:
    """Batched multi-start Newton for the equilibria of `dx/dt = vector_field(x, params)`.

    Each initial state (e.g. states sampled along trajectories) starts an optimistix Newton solve;
    where Newton fails, a BFGS minimisation of `½‖f(x)‖²` looks for a slow point instead. Converged
    points are deduplicated and, optionally, their Jacobian spectra computed. Jittable with
    `eqx.filter_jit` and `vmap`-able over `params`.

    **Arguments:**

    - `vector_field`: `vector_field(x, params) -> dx/dt` with `x` of shape `(N,)`.
    - `params`: a scalar or any pytree (a model, a training checkpoint).
    - `initial_states`: `(M, N)` starting guesses.
    - `rtol`, `atol`: Newton tolerances (default `eps^(2/3)` of the state dtype).
    - `max_steps`: Newton iterations per start (BFGS gets four times as many).
    - `slow_points`: run the `½‖f‖²` minimisation where Newton fails.
    - `dedupe_tol`: two converged points are the same if `‖x - y‖∞ ≤ dedupe_tol·(1 + ‖x‖∞)`
        (default `1e3·atol`).
    - `spectra`: compute Jacobians, eigenvalues and left/right eigenvectors.

    **Returns:**

    A `FixedPoints` with per-start convergence flags (never silently wrong: non-converged
    entries have `converged = False`); `.deduplicated()` keeps the distinct fixed points.
    """
    initial_states = jnp.asarray(initial_states)
    if initial_states.ndim != 2:
        raise ValueError(
            f"`initial_states` must have shape (M, N), got {initial_states.shape}; "
            "use `x[None]` for a single start"
        )
    if not jnp.issubdtype(initial_states.dtype, jnp.floating):
        initial_states = initial_states.astype(jnp.result_type(float))
    if is_concrete(initial_states) and not np.all(np.isfinite(np.asarray(initial_states))):
        raise ValueError("`initial_states` contains non-finite values")
    check_params(params)
    check_vector_field(vector_field, initial_states[0], params)
    dtype = initial_states.dtype
    tol = default_tol(dtype)
    rtol = tol if rtol is None else rtol
    atol = tol if atol is None else atol
    dedupe_tol = 1e3 * atol if dedupe_tol is None else dedupe_tol
    return _find_impl(
        vector_field, params, initial_states, rtol, atol, max_steps, slow_points, dedupe_tol,
        spectra,
    )
