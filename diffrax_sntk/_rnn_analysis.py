"""Fixed points, slow points and their stability for a trained continuous-time RNN: the
FixedPointFinder workflow (Sussillo & Barak 2013; Golub & Sussillo 2018) on any model
`model(t, x, u)` with a constant input.

Built on the public `find_fixed_points(model, x0s, inputs=u)`: its multi-start Newton solves and
its BFGS minimisation of `q = ½‖f‖²` where Newton fails give the candidate points; this module adds
FixedPointFinder's post-processing (a `q` threshold that keeps slow points, deduplication of
near-identical points under the same input, removal of outliers far from the initial states) and
the quantities read off the Jacobian (stability, unstable modes).
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Complex, Float, Int, PRNGKeyArray, PyTree

from ._fixed_points import find_fixed_points
from ._misc import RESULTS, Spectrum, default_tol, successful


class FixedPointAnalysis(eqx.Module):
    """Result of `analyse_fixed_points`: one entry per initial state (leading axis `P`).

    Arrays keep one entry per start so that the result has a fixed shape under `jit`/`vmap`;
    `kept` says which entries are the distinct fixed and slow points, and `.kept_points()`
    (host-side) selects them.

    **Fields:**

    - `states`: the point reached from each start (FixedPointFinder's `xstar`).
    - `q`: `½‖f(x)‖²` there (`qstar`): 0 up to the tolerance at a fixed point, the speed² / 2 of a
        slow point.
    - `inputs`: the constant input of each start (leading axis `P`), or `None`.
    - `initial_states`: the starts.
    - `result`: a `RESULTS` item per start: `successful` where a fixed point was found, else why
        Newton failed (a slow point keeps that code; see `slow_point`).
    - `slow_point`: a local minimum of `q` that is not a fixed point.
    - `outlier`: farther from the starts' centroid than `outlier_distance_scale` times their
        mean distance from it.
    - `unique`: the representative (lowest `q`) of its group of coinciding points.
    - `representative`: index of the point each entry coincides with (itself if none).
    - `kept`: the analysed points: a fixed point, or a slow point with `q ≤ q_threshold`, not an
        outlier, and unique.
    - `spectrum`: the Jacobian `∂f/∂x` at each point and its eigen-decomposition (eigenvalues
        sorted by decreasing real part; see `Spectrum`).
    - `num_unstable`: eigenvalues with positive real part.
    - `num_steps`: Newton iterations per start.

    **Properties:** `jacobians` (`J_xstar`), `eigenvalues` (`eigval_J_xstar`), `stable`
    (`is_stable`: kept with no unstable eigenvalue), `saddle` (kept with both stable and unstable
    eigenvalues), `unstable_mask`, `num_stable`, `num_saddles`, `num_kept`.
    """

    states: Float[Array, "points state"]
    q: Float[Array, " points"]
    inputs: PyTree | None
    initial_states: Float[Array, "points state"]
    result: RESULTS
    slow_point: Bool[Array, " points"]
    outlier: Bool[Array, " points"]
    unique: Bool[Array, " points"]
    representative: Int[Array, " points"]
    kept: Bool[Array, " points"]
    spectrum: Spectrum
    num_unstable: Int[Array, " points"]
    num_steps: Int[Array, " points"]

    @property
    def converged(self) -> Bool[Array, " points"]:
        """A fixed point was found from this start (`result == RESULTS.successful`)."""
        return successful(self.result)

    @property
    def jacobians(self) -> Float[Array, "points state state"]:
        return self.spectrum.jacobian

    @property
    def eigenvalues(self) -> Complex[Array, "points state"]:
        return self.spectrum.eigenvalues

    @property
    def unstable_mask(self) -> Bool[Array, "points state"]:
        """Which eigenvalues (columns of `spectrum.right_eigenvectors`) have `Re λ > 0`."""
        return self.spectrum.eigenvalues.real > 0

    @property
    def stable(self) -> Bool[Array, " points"]:
        """Kept points with no eigenvalue of positive real part (`Re λ ≤ 0`, as
        `find_fixed_points` counts them)."""
        return self.kept & (self.num_unstable == 0)

    @property
    def saddle(self) -> Bool[Array, " points"]:
        """Kept points with at least one unstable and at least one stable eigenvalue."""
        n = self.states.shape[-1]
        return self.kept & (self.num_unstable > 0) & (self.num_unstable < n)

    @property
    def num_kept(self) -> Int[Array, ""]:
        return jnp.sum(self.kept)

    @property
    def num_stable(self) -> Int[Array, ""]:
        return jnp.sum(self.stable)

    @property
    def num_saddles(self) -> Int[Array, ""]:
        return jnp.sum(self.saddle)

    def messages(self) -> list[str]:
        """`RESULTS` message of each start (`""` where a fixed point was found; host-side)."""
        pick = lambda i: jtu.tree_map(lambda a: a[i], self.result)
        return [RESULTS[pick(i)] for i in range(self.states.shape[0])]

    def kept_points(self) -> "FixedPointAnalysis":
        """Only the kept entries (host-side; not jittable). `representative` is reset to the
        identity, as every kept point is its own representative."""
        idx = np.where(np.asarray(self.kept))[0]
        out = jtu.tree_map(lambda a: a[idx] if eqx.is_array(a) else a, self)
        return eqx.tree_at(lambda r: r.representative, out, jnp.arange(idx.shape[0]))

    def unstable_modes(self, i: int) -> Float[np.ndarray, "state modes"]:
        """Real unit directions spanning the unstable eigenspace at point `i` (host-side).

        A real eigenvalue contributes its eigenvector, a complex pair the real and imaginary
        parts of its eigenvector (each normalised). Shape `(N, r)` with `r` the number of
        eigenvalues with `Re λ > 0`.
        """
        vals = np.asarray(self.spectrum.eigenvalues[i])
        vecs = np.asarray(self.spectrum.right_eigenvectors[i])
        cols: list[np.ndarray] = []
        for j in np.where(vals.real > 0)[0]:
            if vals[j].imag < 0:
                continue  # the conjugate's vector already gave both real directions
            parts = [vecs[:, j].real] + ([vecs[:, j].imag] if vals[j].imag > 0 else [])
            cols += [p / np.linalg.norm(p) for p in parts if np.linalg.norm(p) > 0]
        n = vals.shape[0]
        return np.stack(cols, axis=1) if cols else np.zeros((n, 0), vals.real.dtype)


# ---------------------------------------------------------------------------------------------


def _flat_inputs(inputs, num: int, dtype) -> Array:
    """One row per start of the flattened inputs (for comparing inputs in deduplication)."""
    leaves = [jnp.reshape(leaf, (num, -1)) for leaf in jtu.tree_leaves(inputs)]
    if not leaves:
        return jnp.zeros((num, 0), dtype)
    return jnp.concatenate([leaf.astype(dtype) for leaf in leaves], axis=1)


@eqx.filter_jit
def _post_process(fps, x0s, flat_u, q_threshold, dedupe_tol, outlier_scale):
    xs = fps.states
    ok = successful(fps.result)
    q = 0.5 * fps.residuals**2
    # A converged Newton point is a fixed point whatever its q; BFGS minima count as slow
    # points only below the threshold (FixedPointFinder's `tol_q`).
    accepted = ok | (fps.slow_point & (q <= q_threshold))
    finite = jnp.all(jnp.isfinite(xs), axis=-1)
    accepted = accepted & finite
    if outlier_scale is None:
        outlier = jnp.zeros(xs.shape[0], bool)
    else:
        centre = jnp.mean(x0s, axis=0)
        spread = jnp.mean(jnp.linalg.norm(x0s - centre, axis=-1))
        dist = jnp.linalg.norm(jnp.where(finite[:, None], xs, jnp.inf) - centre, axis=-1)
        # A single start (zero spread) gives no scale to call anything an outlier.
        outlier = (spread > 0) & (dist > outlier_scale * spread)
    candidate = accepted & ~outlier
    # Deduplicate among candidates under the same input; the lowest q (then the lowest index)
    # represents each group, as FixedPointFinder keeps the best of coinciding points.
    safe = jnp.where(finite[:, None], xs, 0)
    scale = 1 + jnp.max(jnp.abs(safe), axis=-1)
    dist = jnp.max(jnp.abs(safe[:, None, :] - safe[None, :, :]), axis=-1)
    same_u = jnp.all(flat_u[:, None, :] == flat_u[None, :, :], axis=-1)
    close = (dist <= dedupe_tol * jnp.maximum(scale[:, None], scale[None, :])) & same_u
    close = close & candidate[:, None] & candidate[None, :]
    m = xs.shape[0]
    idx = jnp.arange(m)
    # Rank by (q, index): a stable sort of q with non-candidates last.
    rank = jnp.argsort(jnp.argsort(jnp.where(candidate, q, jnp.inf), stable=True), stable=True)
    rep = jnp.where(candidate, jnp.argmin(jnp.where(close, rank[None, :], m), axis=-1), idx)
    unique = candidate & (rep == idx)
    return q, outlier, unique, rep


def analyse_fixed_points(
    model: Any,
    initial_states: Float[ArrayLike, "points state"],
    *,
    inputs: PyTree = None,
    inputs_per_start: bool | None = None,
    q_threshold: float | None = None,
    dedupe_tol: float | None = None,
    outlier_distance_scale: float | None = 10.0,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 64,
    throw: bool = False,
) -> FixedPointAnalysis:
    """Fixed points and slow points of a model under constant inputs, with their stability and
    unstable modes: the FixedPointFinder workflow for continuous-time models.

    For each start `x0ᵢ` (typically states sampled from trajectories, see `sample_states`) and
    its constant input `uᵢ`, `ds.find_fixed_points(model, x0ᵢ, inputs=uᵢ)` runs Newton on
    `f(x) = model(0, x, uᵢ)` and, where Newton fails, minimises `q(x) = ½‖f(x)‖²` (BFGS). Then:

    1. a point is accepted if it is a fixed point, or a slow point (a local minimum of `q`) with
       `q ≤ q_threshold`;
    2. points farther from the starts' centroid than `outlier_distance_scale` times the starts'
       mean distance from it are outliers (as in FixedPointFinder);
    3. accepted points within `dedupe_tol` of each other under the same input are merged (the
       lowest `q` represents them);
    4. the Jacobian `∂f/∂x`, its eigenvalues and left/right eigenvectors give the stability and
       the unstable modes (eigenvectors with `Re λ > 0`).

    Works with any `model(t, x, u)` (an `eqx.Module`, a `ds.CTRNN`, a `ds.VectorField`), under
    `eqx.filter_jit` and `jax.vmap` (e.g. over inputs or stacked models).

    **Arguments:**

    - `model`: `model(t, x, u) -> dx/dt`; evaluated at `t = 0`.
    - `initial_states`: `(P, N)` starts.
    - `inputs`: the constant input: one input shared by every start (any pytree, `None` for an
        autonomous model), or one per start with a leading axis of size `P`.
    - `inputs_per_start`: whether `inputs` has that leading axis. Default (`None`): `True` for a
        2-D array (FixedPointFinder's `(P, M)` convention), `False` otherwise.
    - `q_threshold`: largest `q` of a slow point that is kept. Default `None`: no slow points,
        only fixed points (FixedPointFinder's default `tol_q` is likewise tiny).
    - `dedupe_tol`: points with `‖x − y‖∞ ≤ dedupe_tol·(1 + max(‖x‖∞, ‖y‖∞))` under the same input
        coincide (default `1e3·atol`).
    - `outlier_distance_scale`: outlier threshold (default 10, FixedPointFinder's); `None` keeps
        every point.
    - `rtol`, `atol`, `max_steps`: Newton settings of `find_fixed_points` (default tolerance
        `eps^(2/3)` of the state dtype; BFGS gets `4·max_steps`).
    - `throw`: raise `RESULTS.no_fixed_point`'s message when no point is kept (also under
        `jit`). By default that is only reported (`kept` all `False`, `result` per start).

    **Returns:**

    A `FixedPointAnalysis`. Non-finite starts, inputs or parameters raise, also under `jit`.
    """
    x0s = jnp.asarray(initial_states)
    if not jnp.issubdtype(x0s.dtype, jnp.floating):
        x0s = x0s.astype(jnp.result_type(float))
    if x0s.ndim != 2:
        raise ValueError(
            f"`initial_states` must have shape (P, N), got {x0s.shape}; use `x[None]` for one start"
        )
    p = x0s.shape[0]
    if inputs_per_start is None:
        inputs_per_start = eqx.is_array_like(inputs) and jnp.ndim(inputs) == 2
    if inputs_per_start:
        sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jtu.tree_leaves(inputs)}
        if sizes != {p}:
            raise ValueError(
                f"`inputs` per start must have a leading axis of size {p} (the number of "
                f"`initial_states`) on every leaf, got leading sizes {sorted(map(str, sizes))}"
            )
    for name, value in (("q_threshold", q_threshold), ("dedupe_tol", dedupe_tol),
                        ("outlier_distance_scale", outlier_distance_scale)):
        if value is not None and not (isinstance(value, (int, float)) and value >= 0):
            raise ValueError(f"`{name}` must be a non-negative number or None, got {value!r}")
    tol = default_tol(x0s.dtype)
    atol_ = tol if atol is None else atol
    dedupe = 1e3 * atol_ if dedupe_tol is None else dedupe_tol
    opts = dict(rtol=rtol, atol=atol, max_steps=max_steps, slow_points=True, spectra=True)
    if inputs_per_start:
        fps = jax.vmap(
            lambda x, u: find_fixed_points(model, x[None], inputs=u, **opts),
        )(x0s, inputs)
        fps = jtu.tree_map(lambda a: a[:, 0] if eqx.is_array(a) else a, fps)
        flat_u = _flat_inputs(inputs, p, x0s.dtype)
        stored_inputs = inputs
    else:
        fps = find_fixed_points(model, x0s, inputs=inputs, **opts)
        flat_u = jnp.zeros((p, 0), x0s.dtype)
        stored_inputs = jtu.tree_map(
            lambda leaf: jnp.broadcast_to(jnp.asarray(leaf), (p, *jnp.shape(leaf))), inputs
        )
    q_thr = -1.0 if q_threshold is None else float(q_threshold)
    q, outlier, unique, rep = _post_process(
        fps, x0s, flat_u, jnp.asarray(q_thr, x0s.dtype), jnp.asarray(dedupe, x0s.dtype),
        outlier_distance_scale,
    )
    kept = unique
    out = FixedPointAnalysis(
        states=fps.states,
        q=q,
        inputs=stored_inputs,
        initial_states=x0s,
        result=fps.result,
        slow_point=fps.slow_point,
        outlier=outlier,
        unique=unique,
        representative=rep,
        kept=kept,
        spectrum=fps.spectrum,  # pyright: ignore[reportArgumentType]
        num_unstable=fps.num_unstable,  # pyright: ignore[reportArgumentType]
        num_steps=fps.num_steps,
    )
    if throw:
        overall = RESULTS.where(jnp.any(kept), RESULTS.successful, RESULTS.no_fixed_point)
        out = overall.error_if(out, overall != RESULTS.successful)
    return out


def sample_states(
    trajectories: Float[ArrayLike, "... state"],
    num_samples: int,
    *,
    key: PRNGKeyArray,
    noise_scale: float = 0.0,
) -> Float[Array, "samples state"]:
    """Random states from trajectories, optionally jittered: starts for `analyse_fixed_points`
    (FixedPointFinder's `sample_states`).

    **Arguments:**

    - `trajectories`: states with the state axis last, e.g. `ds.simulate(model, problem)`
        of shape `(B, T, N)`.
    - `num_samples`: number of states drawn (with replacement).
    - `key`: PRNG key.
    - `noise_scale`: standard deviation of Gaussian noise added to each sample.

    **Returns:**

    An array `(num_samples, N)`.
    """
    ys = jnp.asarray(trajectories)
    if ys.ndim < 1:
        raise ValueError("`trajectories` must have the state axis last, got a scalar")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive int, got {num_samples!r}")
    flat = ys.reshape(-1, ys.shape[-1])
    ikey, nkey = jr.split(key)
    idx = jr.randint(ikey, (num_samples,), 0, flat.shape[0])
    out = flat[idx]
    return out + noise_scale * jr.normal(nkey, out.shape, out.dtype)
