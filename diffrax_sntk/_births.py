"""Births, deaths and ghosts along a sequence of parameter checkpoints: equilibria and slow
points seeded at every checkpoint, matched across consecutive checkpoints, and the folds where an
unmatched equilibrium appears or disappears localised by segment continuation. Used by
`track_bifurcations(..., seed_states=...)`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optimistix as optx
from jaxtyping import Array, Float, Int

from ._bifurcation import Bifurcation, bifurcations_from_events, continue_family
from ._continuation import ContinuationProblem
from ._fixed_points import newton_solve
from ._misc import RESULTS
from ._normal_forms import FoldNormalForm, LineFamily


class Ghosts(eqx.Module):
    """Slow points found from the seeds along a track: local minima of `½‖f‖²` that are not
    equilibria, with a small speed `‖f‖₂`. A ghost at checkpoint `k` near the state where a
    fold later creates equilibria is the bottleneck that precedes a saddle-node birth.

    **Fields:**

    - `checkpoint`: `(G,)` the checkpoint index of each ghost.
    - `state`: `(G, N)` the slow point.
    - `speed`: `(G,)` `‖f(state, params_k)‖₂`.
    - `birth`: `(G,)` the index into `BifurcationTrack.births` of the first later birth within
        `jump_tol·(1 + ‖state‖∞)` of the ghost, or `-1` when none follows.
    """

    checkpoint: Int[Array, " ghosts"]
    state: Float[Array, "ghosts state"]
    speed: Float[Array, " ghosts"]
    birth: Int[Array, " ghosts"]

    @property
    def num_ghosts(self) -> int:
        return self.checkpoint.shape[0]


@eqx.filter_jit
def _seed_search(vector_field, static, dyn_seq, seeds, opts, max_steps):
    """At every checkpoint (`lax.map`) and from every seed (`vmap`): Newton, and a BFGS
    minimisation of `½‖f‖²` whose minimum is polished by Newton. Returns, per checkpoint and seed,
    the Newton point and success, the polished point and success, the minimum, its speed and
    whether the minimisation succeeded."""

    def at_checkpoint(args):
        p_dyn, xs0 = args
        p = eqx.combine(p_dyn, static)

        def one(x0):
            x, res, _ = newton_solve(vector_field, x0, p, opts.rtol, opts.atol, max_steps)
            sol = optx.minimise(
                lambda y, q: 0.5 * jnp.sum(vector_field(y, q) ** 2),
                optx.BFGS(rtol=opts.rtol, atol=opts.atol),
                x0,
                args=p,
                max_steps=4 * max_steps,
                throw=False,
            )
            xm = sol.value
            speed = jnp.linalg.norm(vector_field(xm, p))
            okm = (RESULTS.promote(sol.result) == RESULTS.successful) & jnp.isfinite(speed)
            okm = okm & jnp.all(jnp.isfinite(xm))
            xr, resr, _ = newton_solve(vector_field, xm, p, opts.rtol, opts.atol, max_steps)
            return x, res == RESULTS.successful, xr, resr == RESULTS.successful, xm, speed, okm

        return jax.vmap(one)(xs0)

    return jax.lax.map(at_checkpoint, (dyn_seq, seeds))


@eqx.filter_jit
def _newton_at(vector_field, static, p_dyn, x, opts):
    p = eqx.combine(p_dyn, static)
    x, res, _ = newton_solve(vector_field, x, p, opts.rtol, opts.atol, opts.newton_max_steps)
    return x, res == RESULTS.successful


def _close(x, y, tol) -> bool:
    return bool(np.max(np.abs(x - y)) <= tol * (1 + np.max(np.abs(x))))


def _dedupe(points, tol) -> list:
    out: list = []
    for x in points:
        if np.all(np.isfinite(x)) and not any(_close(y, x, tol) for y in out):
            out.append(x)
    return out


def _unlocalised_fold(branch, k, dtype) -> Bifurcation:
    """A birth or death whose continuation found no fold event: reported at the last point
    reached, with `RESULTS.localisation_failed`."""
    last = branch.num_steps - 1
    x, s = branch.states[last], branch.parameters[last]
    ev = branch.eigenvalues[last]
    ev = jnp.where(jnp.isfinite(ev), ev, jnp.inf)
    lam = ev[jnp.argmin(jnp.abs(ev.real))][None]
    nan = jnp.full((), jnp.nan, dtype)
    failed = RESULTS.localisation_failed
    return Bifurcation(
        kind="fold",
        parameter=jnp.asarray(k + s, dtype),
        state=jnp.asarray(x, dtype),
        eigenvalues=lam,
        right_eigenvector=jnp.full(x.shape, jnp.nan, dtype),
        left_eigenvector=jnp.full(x.shape, jnp.nan, dtype),
        normal_form=FoldNormalForm(a=nan, a_f=nan, b1=nan, b2=nan, result=failed),
        direction=0,
        located=False,
        branch=-1,
        index=max(last - 1, 0),
        result=failed,
    )


def _continue_segment(vector_field, static, dyn_seq, opts, k, x, backwards):
    """Continues the equilibrium `x` of checkpoint `k + backwards` along the segment `[k, k+1]`
    towards the other end. Returns `(None, end_state)` when it reaches the other end, else
    `(fold, end_state)`: the fold where it turned back (or an unlocalised one)."""
    dtype = x.dtype
    h = lambda v: jnp.asarray(v, dtype)
    pa = jtu.tree_map(lambda a: a[k], dyn_seq)
    pb = jtu.tree_map(lambda a: a[k + 1], dyn_seq)
    direction = jtu.tree_map(
        lambda u, v: v - u if jnp.issubdtype(u.dtype, jnp.inexact) else u, pa, pb
    )
    problem = ContinuationProblem(LineFamily(vector_field, static), (pa, direction), opts)
    s0, s1 = (1.0, 0.0) if backwards else (0.0, 1.0)
    branch = continue_family(
        problem, jnp.asarray(x), h(s0), h(s1), h(0.05), h(0.25), h(1e-8), 200, True, 16
    )
    end = np.asarray(branch.states[-1]) if branch.num_steps > 0 else np.asarray(x)
    if branch.status == "completed":
        return None, end
    folds = [
        bf
        for bf in bifurcations_from_events(
            branch.events, dtype, parameter_map=lambda s: k + s, branch=-1
        )
        if bf.kind == "fold"
    ]
    fold = folds[0] if folds else _unlocalised_fold(branch, k, dtype)
    # Only a branch that turned back and left through its start has met its partner there.
    return fold, (end if branch.status == "left_range" else None)


def births_and_deaths(vector_field, static, dyn_seq, seeds, branches, opts, jump_tol, ghost_speed):
    """Seeds equilibria and slow points at every checkpoint and matches the equilibria across
    consecutive checkpoints (warm-started Newton and distance first, segment continuation for
    the rest). Returns `(births, deaths, equilibria, ghosts)`."""
    num = jtu.tree_leaves(dyn_seq)[0].shape[0]
    dtype = seeds.dtype
    n = seeds.shape[-1]
    xn, okn, xr, okr, xm, speed, okm = jax.device_get(
        _seed_search(vector_field, static, dyn_seq, seeds, opts, max(64, opts.newton_max_steps))
    )
    dedupe_tol = 1e3 * opts.atol
    match_tol = max(dedupe_tol, float(np.sqrt(opts.atol)))
    found, ghost_rows = [], []
    for k in range(num):
        pts = list(xn[k][okn[k]]) + list(xr[k][okr[k]]) + (list(branches) if k == 0 else [])
        found.append(_dedupe(pts, dedupe_tol))
        # A slow point: the minimisation succeeded and Newton from it does not land nearby.
        near_root = okr[k] & (
            np.max(np.abs(xr[k] - xm[k]), axis=-1) <= 1e-3 * (1 + np.max(np.abs(xm[k]), axis=-1))
        )
        slow = okm[k] & ~near_root & (speed[k] <= ghost_speed)
        for x in _dedupe(list(xm[k][slow]), dedupe_tol):
            i = int(np.argmin(np.max(np.abs(xm[k] - x), axis=-1)))
            ghost_rows.append((k, x, speed[k][i]))

    births: list[Bifurcation] = []
    deaths: list[Bifurcation] = []
    equilibria = [found[0]]
    for k in range(num - 1):
        p_next = jtu.tree_map(lambda a, k=k: a[k + 1], dyn_seq)
        current, nxt = equilibria[k], list(found[k + 1])
        images = []
        for x in current:
            y, ok = _newton_at(vector_field, static, p_next, jnp.asarray(x, dtype), opts)
            y = np.asarray(y)
            ok = bool(ok) and _close(x, y, jump_tol) and np.all(np.isfinite(y))
            images.append(y if ok else None)
        explained = []
        handled = [False] * len(current)
        for i, y in enumerate(images):
            collide = y is not None and any(
                j != i and z is not None and _close(y, z, match_tol) for j, z in enumerate(images)
            )
            if y is not None and not collide:
                explained.append(y)
                handled[i] = True
        for i, x in enumerate(current):
            if handled[i]:
                continue
            fold, end = _continue_segment(vector_field, static, dyn_seq, opts, k, x, False)
            handled[i] = True
            if fold is None:
                explained.append(end)
                continue
            deaths.append(fold)
            if end is not None:  # the partner at checkpoint k dies in the same fold
                for j, z in enumerate(current):
                    if not handled[j] and _close(z, end, match_tol):
                        handled[j] = True
        nxt = _dedupe(nxt + explained, dedupe_tol)
        claimed = [any(_close(e, z, match_tol) for z in explained) for e in nxt]
        for i, x in enumerate(nxt):
            if claimed[i]:
                continue
            fold, end = _continue_segment(vector_field, static, dyn_seq, opts, k, x, True)
            claimed[i] = True
            if fold is None:
                continue  # an equilibrium at k that no seed found there
            births.append(fold)
            if end is not None:
                for j, z in enumerate(nxt):
                    if not claimed[j] and _close(z, end, match_tol):
                        claimed[j] = True
        equilibria.append(nxt)

    births.sort(key=lambda bf: float(bf.parameter))
    deaths.sort(key=lambda bf: float(bf.parameter))
    link = []
    for k, x, _ in ghost_rows:
        later = [
            i
            for i, bf in enumerate(births)
            if float(bf.parameter) > k and _close(x, np.asarray(bf.state), jump_tol)
        ]
        link.append(later[0] if later else -1)
    ghosts = Ghosts(
        checkpoint=jnp.asarray([r[0] for r in ghost_rows], jnp.int32).reshape(-1),
        state=jnp.asarray(np.asarray([r[1] for r in ghost_rows], dtype).reshape(-1, n)),
        speed=jnp.asarray(np.asarray([r[2] for r in ghost_rows], dtype).reshape(-1)),
        birth=jnp.asarray(link, jnp.int32).reshape(-1),
    )
    as_array = lambda pts: jnp.asarray(np.asarray(pts, dtype).reshape(-1, n))
    return tuple(births), tuple(deaths), tuple(map(as_array, equilibria)), ghosts
