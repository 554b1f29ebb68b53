"""Tracking equilibria and their bifurcations along a sequence of parameter pytrees (e.g. the
checkpoints of a training run)."""

import dataclasses
from collections.abc import Callable
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Complex, Float, PyTree

from ._bifurcation import Bifurcation, bifurcations_from_events, continue_family
from ._births import Ghosts as Ghosts, births_and_deaths
from ._continuation import ContinuationProblem, make_options
from ._fixed_points import find_fixed_points, newton_solve
from ._misc import RESULTS, check_vector_field, eigen_signature, error_if_nonfinite
from ._normal_forms import LineFamily


class BifurcationTrack(eqx.Module):
    """Equilibria and bifurcations tracked along a sequence of `K` parameter checkpoints.

    **Fields:**

    - `states`: `(K, B, N)` the `B` tracked equilibria at each checkpoint.
    - `newton_result`: `(K, B)` the `RESULTS` of the Newton solve at that checkpoint
        (warm-started from the previous); `converged` is `newton_result == RESULTS.successful`.
    - `alive`: `(K, B)` the branch is still the one followed from checkpoint 0 (it is lost after a
        fold or a failed segment continuation). Where warm-started Newton jumps to another
        equilibrium or fails but the segment continuation reaches the next checkpoint, tracking
        restarts from the continuation's end, so the branch stays alive (with
        `detect_bifurcations=False` there is no continuation and a jump is not corrected).
    - `eigenvalues`: `(K, B, N)` Jacobian eigenvalues, matched across checkpoints by eigenvector
        overlap, so `eigenvalues[:, b, j]` is one eigenvalue's trajectory.
    - `bifurcations`: every detected bifurcation; `parameter` is the fractional checkpoint index
        `k + s` (parameters interpolated linearly between checkpoints `k` and `k + 1`), `branch`
        the branch index. Normal-form coefficients are with respect to that interpolation `s`.
        Ordered by segment `k`, then branch, then along the branch: for one branch, the order
        in which the followed equilibrium meets them (in an S-shaped segment the fold at the
        larger `s` comes first, and `parameter` is not monotone).
    - `segment_results`: `(K - 1, B)` the `RESULTS` of the segment continuation that
        re-examined `[k, k + 1]` on branch `b` (successful where none was needed).
    - `result`: `RESULTS.successful`, or `RESULTS.no_fixed_point` when no start converged at
        checkpoint 0; `status` is `"completed"` or `"no_fixed_points"`.
    - `births`, `deaths` (only with `seed_states`, else empty): saddle-node births (an
        equilibrium at checkpoint `k + 1` that is not continuable back to `k`) and deaths (one
        at `k` not continuable to `k + 1`), each a `Bifurcation` of kind `"fold"` with
        `parameter` the fractional index `k + s` of the fold and `branch = -1` (not a tracked
        branch). One that could not be localised has `result = RESULTS.localisation_failed`,
        `located = False` and the last point reached as an approximate `parameter`/`state`.
    - `equilibria` (only with `seed_states`, else empty): per checkpoint, the `(E_k, N)`
        distinct equilibria found from the seeds, the tracked branches and the matching.
    - `ghosts` (only with `seed_states`, else `None`): the slow points, a `Ghosts`.
    """

    states: Float[Array, "checkpoints branches state"]
    newton_result: RESULTS
    alive: Bool[Array, "checkpoints branches"]
    eigenvalues: Complex[Array, "checkpoints branches state"]
    bifurcations: tuple[Bifurcation, ...]
    segment_results: RESULTS
    result: RESULTS
    births: tuple[Bifurcation, ...] = ()
    deaths: tuple[Bifurcation, ...] = ()
    equilibria: tuple[Float[Array, "equilibria state"], ...] = ()
    ghosts: Ghosts | None = None

    @property
    def converged(self) -> Bool[Array, "checkpoints branches"]:
        return self.newton_result == RESULTS.successful

    @property
    def status(self) -> str:
        return "completed" if bool(self.result == RESULTS.successful) else "no_fixed_points"

    @property
    def num_branches(self) -> int:
        return self.states.shape[1]


def _results_array(item, shape):
    """An array of `RESULTS` with one code everywhere."""
    return jtu.tree_map(lambda a: jnp.broadcast_to(a, shape), item)


def _greedy_assignment(score):
    n = score.shape[0]

    def body(_, carry):
        score, perm = carry
        flat = jnp.argmax(score)
        i, j = flat // n, (flat % n).astype(jnp.int32)
        perm = perm.at[i].set(j)
        score = score.at[i, :].set(-jnp.inf).at[:, j].set(-jnp.inf)
        return score, perm

    return jax.lax.fori_loop(0, n, body, (score, jnp.zeros((n,), jnp.int32)))[1]


def _match(prev_vecs, prev_vals, vals, vecs):
    """Assigns new eigenpairs to the previous ones by eigenvector overlap (jittable): row-wise
    best match when that is already a permutation (the usual case between nearby checkpoints),
    else greedy global-maximum assignment."""
    n = vals.shape[0]
    overlap = jnp.abs(jnp.conj(prev_vecs).T @ vecs)
    scale = 1 + jnp.max(jnp.abs(prev_vals))
    score = overlap - 0.5 * jnp.abs(prev_vals[:, None] - vals[None, :]) / scale
    best = jnp.argmax(score, axis=1).astype(jnp.int32)
    is_perm = jnp.all(jnp.zeros((n,), jnp.int32).at[best].add(1) == 1)
    perm = jax.lax.cond(is_perm, lambda: best, lambda: _greedy_assignment(score))
    return vals[perm], vecs[:, perm]


@eqx.filter_jit
def _scan(vector_field, static, dyn_seq, x0, opts, match, restarts, restart_mask):
    """Warm-started Newton along the checkpoints. Where `restart_mask[k, b]`, Newton at checkpoint
    `k` starts from `restarts[k, b]` (the end of a segment continuation) instead of the state
    carried from `k - 1`."""
    p0 = eqx.combine(jtu.tree_map(lambda a: a[0], dyn_seq), static)

    def spectrum(x, p):
        A = jax.jacfwd(vector_field)(x, p)
        vals, vecs = jnp.linalg.eig(A)
        order = jnp.lexsort((-vals.imag, -vals.real))
        return vals[order], vecs[:, order]

    vals0, vecs0 = jax.vmap(lambda x: spectrum(x, p0))(x0)

    def body(carry, inputs):
        x_prev, vals_prev, vecs_prev = carry
        p_dyn, restart, mask = inputs
        x_prev = jnp.where(mask[:, None], restart, x_prev)
        p = eqx.combine(p_dyn, static)
        xs, results, _ = jax.vmap(
            lambda x: newton_solve(vector_field, x, p, opts.rtol, opts.atol, opts.newton_max_steps)
        )(x_prev)
        oks = results == RESULTS.successful
        x_carry = jnp.where(oks[:, None], xs, x_prev)
        vals, vecs = jax.vmap(lambda x: spectrum(x, p))(x_carry)
        sig = jax.vmap(eigen_signature)(vals)
        if match:
            if x0.shape[0] <= 8:
                # Unrolled over the few branches so `lax.cond` skips the greedy fallback.
                pairs = [
                    _match(vecs_prev[b], vals_prev[b], vals[b], vecs[b]) for b in range(x0.shape[0])
                ]
                vals = jnp.stack([v for v, _ in pairs])
                vecs = jnp.stack([v for _, v in pairs])
            else:
                vals, vecs = jax.vmap(_match)(vecs_prev, vals_prev, vals, vecs)
        return (x_carry, vals, vecs), (xs, results, vals, sig)

    _, out = jax.lax.scan(body, (x0, vals0, vecs0), (dyn_seq, restarts, restart_mask))
    return out


def _stack_sequence(params_sequence):
    if isinstance(params_sequence, list):
        if len(params_sequence) < 2:
            raise ValueError("`params_sequence` must hold at least two checkpoints")
        structures = {jtu.tree_structure(p) for p in params_sequence}
        if len(structures) != 1:
            raise ValueError("`params_sequence`: all checkpoints must share one pytree structure")
        dyn = [eqx.filter(p, eqx.is_array) for p in params_sequence]
        static = eqx.partition(params_sequence[0], eqx.is_array)[1]
        return jtu.tree_map(lambda *xs: jnp.stack(xs), *dyn), static
    dyn, static = eqx.partition(params_sequence, eqx.is_array)
    leaves = jtu.tree_leaves(dyn)
    if not leaves:
        raise ValueError("`params_sequence` has no array leaves with a leading checkpoint axis")
    sizes = {jnp.shape(a)[0] if jnp.ndim(a) > 0 else None for a in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "`params_sequence` must be a list of pytrees or a pytree whose array leaves share a "
            f"leading checkpoint axis; got leading sizes {sorted(map(str, sizes))}"
        )
    if next(iter(sizes)) < 2:  # pyright: ignore[reportOptionalOperand]
        raise ValueError("`params_sequence` must hold at least two checkpoints")
    return dyn, static


def track_bifurcations(
    vector_field: Callable,
    params_sequence: PyTree,
    initial_states: Float[ArrayLike, "points state"],
    *,
    rtol: float | None = None,
    atol: float | None = None,
    newton_max_steps: int = 20,
    jump_tol: float = 0.5,
    match_eigenvalues: bool = True,
    detect_bifurcations: bool = True,
    parameter_tol: float | None = None,
    symmetry_tol: float | None = None,
    seed_states: Float[ArrayLike, "*checkpoints points state"] | None = None,
    ghost_speed: float = 0.1,
) -> BifurcationTrack:
    """Tracks the equilibria of `vector_field(x, params_k)` along checkpoints `k = 0..K-1` and
    reports every bifurcation with its fractional checkpoint index.

    1. Multi-start Newton (`find_fixed_points`) at checkpoint 0; the distinct converged fixed
       points are the tracked branches.
    2. One jitted `lax.scan` over checkpoints (`vmap` over branches): Newton warm-started from the
       previous checkpoint, the Jacobian spectrum, and eigenvalue matching by eigenvector overlap.
    3. Every segment `[k, k+1]` where a test function changes (sign of `det A`, number of
       unstable or complex-unstable eigenvalues, the sign of a matched eigenvalue's real part),
       Newton fails, or the state jumps, is re-examined by pseudo-arclength continuation in
       `s ∈ [0, 1]` along `params(s) = (1 - s)·params_k + s·params_{k+1}` (inexact leaves), with
       the compiled kernel of `continuation`, which localises, classifies and computes normal
       forms. Every segment shares one compilation. A segment continuation that reaches
       `s = 1` away from warm-started Newton's state (a jump to another equilibrium) or where
       Newton failed restarts the scan from its end state; one that does not reach `s = 1` (a
       fold) ends the branch.
    4. With `seed_states`: births, deaths and ghosts. At every checkpoint, Newton and a
       minimisation of `½‖f‖²` (whose minimum Newton polishes) run from every seed; the distinct
       equilibria found are matched between `k` and `k + 1` by Newton warm-started from `k` and
       distance; an equilibrium left unmatched is continued along the same segment family (the
       same compiled continuation) towards the other checkpoint. One at `k + 1` whose branch
       turns back in a fold before `s = 0` is a **birth**, one at `k` whose branch turns back
       before `s = 1` a **death**; the fold is localised on that branch. Equilibria matched at
       `k + 1` are carried to the next segment, so a branch seeded once is followed after.
       Minima of `½‖f‖²` that are not equilibria and have speed `‖f‖₂ ≤ ghost_speed` are the
       **ghosts**.

    **Arguments:**

    - `vector_field`: `vector_field(x, params) -> dx/dt`.
    - `params_sequence`: a pytree whose array leaves have a leading checkpoint axis (e.g. stacked
        training checkpoints), or a `list` of pytrees (any `eqx.Module`; non-array leaves such as
        activation functions are held fixed).
    - `initial_states`: `(M, N)` starting guesses at checkpoint 0.
    - `rtol`, `atol`, `newton_max_steps`: Newton settings (default tolerance `eps^(2/3)`).
    - `jump_tol`: a segment is re-examined if `‖x_{k+1} - x_k‖∞ > jump_tol·(1 + ‖x_k‖∞)`; with
        `seed_states`, the same bound matches warm-started Newton images and links ghosts to
        births.
    - `match_eigenvalues`: match eigenvalues across checkpoints by eigenvector overlap.
    - `detect_bifurcations`: run the segment continuations.
    - `parameter_tol`, `symmetry_tol`: as for `continuation` (in units of `s`).
    - `seed_states`: `(M, N)` states (e.g. trajectory samples) used as seeds at every
        checkpoint, or `(K, M, N)` seeds per checkpoint; enables `births`, `deaths`,
        `equilibria` and `ghosts` (needs `detect_bifurcations=True`).
    - `ghost_speed`: largest speed `‖f‖₂` of a slow point reported as a ghost.

    **Returns:**

    A `BifurcationTrack`.
    """
    initial_states = jnp.asarray(initial_states)
    if initial_states.ndim != 2:
        raise ValueError(f"`initial_states` must have shape (M, N), got {initial_states.shape}")
    if not jnp.issubdtype(initial_states.dtype, jnp.floating):
        initial_states = initial_states.astype(jnp.result_type(float))
    initial_states = cast(Array, error_if_nonfinite(initial_states, "initial_states"))
    dyn_seq, static = _stack_sequence(params_sequence)
    dyn_seq = error_if_nonfinite(dyn_seq, "params_sequence")
    num = jtu.tree_leaves(dyn_seq)[0].shape[0]
    at = lambda k: eqx.combine(jtu.tree_map(lambda a: a[k], dyn_seq), static)
    p_first = at(0)
    check_vector_field(vector_field, initial_states[0], p_first)
    dtype = initial_states.dtype
    opts = make_options(dtype, rtol, atol, newton_max_steps, parameter_tol, symmetry_tol)
    n = initial_states.shape[1]
    if seed_states is not None:
        seed_states = jnp.asarray(seed_states)
        if not jnp.issubdtype(seed_states.dtype, jnp.floating):
            seed_states = seed_states.astype(dtype)
        if seed_states.ndim == 2:
            seed_states = jnp.broadcast_to(seed_states, (num, *seed_states.shape))
        if seed_states.ndim != 3 or seed_states.shape[0] != num or seed_states.shape[2] != n:
            raise ValueError(
                f"`seed_states` must have shape (M, {n}) or ({num}, M, {n}), got "
                f"{seed_states.shape}"
            )
        seed_states = cast(Array, error_if_nonfinite(seed_states.astype(dtype), "seed_states"))
        if not detect_bifurcations:
            raise ValueError(
                "`seed_states` needs `detect_bifurcations=True` (births and deaths are "
                "localised by the segment continuation)"
            )
        if not ghost_speed > 0:
            raise ValueError(f"`ghost_speed` must be positive, got {ghost_speed}")

    def with_births(track: BifurcationTrack, branches) -> BifurcationTrack:
        if seed_states is None:
            return track
        births, deaths, equilibria, ghosts = births_and_deaths(
            vector_field, static, dyn_seq, seed_states, branches, opts, jump_tol, ghost_speed
        )
        return dataclasses.replace(
            track, births=births, deaths=deaths, equilibria=equilibria, ghosts=ghosts
        )

    fps = find_fixed_points(
        vector_field,
        p_first,
        initial_states,
        rtol=opts.rtol,
        atol=opts.atol,
        max_steps=max(64, newton_max_steps),
        slow_points=False,
        spectra=False,
    )
    x0 = fps.states[np.asarray(fps.unique)]
    if x0.shape[0] == 0:
        track = BifurcationTrack(
            states=jnp.zeros((num, 0, n), dtype),
            newton_result=_results_array(RESULTS.no_fixed_point, (num, 0)),
            alive=jnp.zeros((num, 0), bool),
            eigenvalues=jnp.zeros((num, 0, n), jnp.result_type(dtype, jnp.complex64)),
            bifurcations=(),
            segment_results=_results_array(RESULTS.successful, (num - 1, 0)),
            result=RESULTS.no_fixed_point,
        )
        return with_births(track, [])
    nb = x0.shape[0]
    restarts = np.zeros((num, nb, n), np.asarray(x0).dtype)
    restart_mask = np.zeros((num, nb), bool)

    def scan():
        out = _scan(
            vector_field,
            static,
            dyn_seq,
            x0,
            opts,
            match_eigenvalues,
            jnp.asarray(restarts),
            jnp.asarray(restart_mask),
        )
        xs, results, vals, sig = out
        oks_np = np.asarray(results == RESULTS.successful)
        xs_np, vals_np, sig_np = np.asarray(xs), np.asarray(vals), np.asarray(sig)
        changed = np.any(sig_np[1:] != sig_np[:-1], axis=-1)
        re = np.sign(np.real(vals_np))
        changed |= np.any(re[1:] != re[:-1], axis=-1)
        changed |= ~oks_np[1:]
        step = np.max(np.abs(xs_np[1:] - xs_np[:-1]), axis=-1)
        changed |= step > jump_tol * (1 + np.max(np.abs(xs_np[:-1]), axis=-1))
        return out, oks_np, xs_np, changed

    (xs, results, vals, sig), oks_np, xs_np, changed = scan()
    # First checkpoint at which branch b is lost to a segment continuation that did not reach
    # `s = 1` (a fold, or a failure).
    lost_at = np.full(nb, num)
    segment = [[RESULTS.successful] * nb for _ in range(num - 1)]
    # (segment, branch, bifurcation), appended branch by branch and, within a branch, in the
    # order the followed equilibrium meets them (segments ascending, arclength within one).
    found: list[tuple[int, int, Bifurcation]] = []
    if detect_bifurcations:
        family = LineFamily(vector_field, static)
        h = lambda v: jnp.asarray(v, dtype)
        for b in range(nb):
            k = 0
            while True:
                pending = np.where(changed[k:, b])[0]
                if pending.size == 0:
                    break
                k += int(pending[0])
                if not oks_np[: k + 1, b].all():
                    break
                pa = jtu.tree_map(lambda a, k=k: a[k], dyn_seq)
                pb = jtu.tree_map(lambda a, k=k: a[k + 1], dyn_seq)
                direction = jtu.tree_map(
                    lambda u, v: v - u if jnp.issubdtype(u.dtype, jnp.inexact) else u, pa, pb
                )
                problem = ContinuationProblem(family, (pa, direction), opts)
                branch = continue_family(
                    problem, xs[k, b], h(0.0), h(1.0), h(0.05), h(0.25), h(1e-8), 200, True, 16
                )
                segment[k][b] = branch.result
                found += [
                    (int(k), b, bf)
                    for bf in bifurcations_from_events(
                        branch.events, dtype, parameter_map=lambda s, k=k: k + s, branch=b
                    )
                ]
                if branch.status != "completed":
                    lost_at[b] = k + 1
                    break
                x_end = np.asarray(branch.states[-1])
                gap = np.max(np.abs(x_end - xs_np[k + 1, b]))
                if not oks_np[k + 1, b] or gap > 1e3 * opts.atol * (1 + np.max(np.abs(x_end))):
                    # Warm-started Newton at k + 1 failed or jumped to another equilibrium, but
                    # the continuation followed the branch to s = 1: restart the warm-started
                    # Newton from the continuation's end and re-scan (the checkpoints before
                    # k + 1 and the other branches are unchanged).
                    restarts[k + 1, b] = x_end
                    restart_mask[k + 1, b] = True
                    (xs, results, vals, sig), oks_np, xs_np, changed = scan()
                k += 1
                if k >= num - 1:
                    break
    alive = np.logical_and.accumulate(oks_np, axis=0)
    alive &= np.arange(num)[:, None] < lost_at[None, :]
    # A bifurcation exactly at a checkpoint is seen by both adjacent segments: keep one.
    unique: list[tuple[int, int, Bifurcation]] = []
    for item in found:
        bf, last = item[2], unique[-1][2] if unique else None
        if (
            last is not None
            and last.branch == bf.branch
            and last.kind == bf.kind
            and abs(float(last.parameter) - float(bf.parameter)) <= 1e3 * opts.parameter_tol
        ):
            continue
        unique.append(item)
    # Path order, not parameter order: within one segment a branch can pass two folds (an S),
    # and the followed equilibrium meets the one at the larger `s` first.
    order = sorted(range(len(unique)), key=lambda i: (unique[i][0], unique[i][1], i))
    bifurcations = tuple(unique[i][2] for i in order)
    segment_results = jtu.tree_map(
        lambda *codes: jnp.stack(codes).reshape(num - 1, nb),
        *[code for row in segment for code in row],
    )
    track = BifurcationTrack(
        states=xs,
        newton_result=results,
        alive=jnp.asarray(alive),
        eigenvalues=vals,
        bifurcations=bifurcations,
        segment_results=segment_results,
        result=RESULTS.successful,
    )
    return with_births(track, list(np.asarray(x0)))
