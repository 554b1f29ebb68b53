"""Deflated Newton: every root reachable from a few starts, not one root per start.

Farrell, Birkisson & Funke (2015), "Deflation techniques for finding distinct solutions of
nonlinear partial differential equations", SIAM J. Sci. Comput. 37(4). Once roots `r_1 … r_k` of
`f` are known, Newton is run on the deflated residual

    G(x) = M(x) f(x),    M(x) = Π_i (‖x − r_i‖^(−p) + σ),

which has the roots of `f` except the `r_i` (`M` blows up there faster than `f` vanishes, for
`p ≥ 1` at a simple root) and no new ones (`M ≥ σᵏ > 0`); the shift `σ > 0` keeps `G` from
vanishing at infinity. Restarting from the same initial guess after each success walks through
the roots one by one: the saddles and isolated branches that multi-start Newton, whose starts
are drawn where the dynamics go, tends to miss.

Every root found this way is re-verified by an undeflated Newton polish from the deflated
solution (its result code is the slot's code, so an unconfirmed point is never reported as a
root), and a polish that lands on a root already found is dropped. The search is one
`lax.while_loop` over a fixed number of root slots (padded), so it runs under `jax.jit` and
`jax.vmap`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Float, Int

from ._misc import RESULTS, result_where, successful


class Deflation(eqx.Module):
    """Configuration of deflated Newton in `find_fixed_points(..., deflation=...)`.

    **Fields:**

    - `max_roots`: number of root slots (the result has this many entries, padded with
        `RESULTS.no_further_root` where no further root was found).
    - `power`: the exponent `p` of `M(x) = Π_i (‖x − r_i‖^(−p) + σ)` (`p ≥ 1`; `2` as in
        Farrell, Birkisson & Funke).
    - `shift`: the shift `σ > 0` (`1` by default): with `σ ≥ 1`, `‖f‖ ≤ ‖G‖`, so a small
        deflated residual means a small residual.
    - `max_steps`: Newton iterations of each deflated solve (the undeflated polish uses
        `find_fixed_points`' own `max_steps`).
    - `start_offset`: when a start lies on a root already found (`M` is infinite there), the
        next deflated solve starts at `x0 + start_offset·(1 + ‖x0‖∞)·u` instead, `u` a fixed
        unit direction.
    """

    max_roots: int = eqx.field(static=True, default=16)
    power: float = eqx.field(static=True, default=2.0)
    shift: float = eqx.field(static=True, default=1.0)
    max_steps: int = eqx.field(static=True, default=128)
    start_offset: float = eqx.field(static=True, default=1e-2)


def as_deflation(deflation) -> Deflation | None:
    """`None`/`False` → no deflation; `True` → defaults; an int → that many root slots; a
    `Deflation` as is. Anything else raises."""
    if deflation is None or deflation is False:
        return None
    if deflation is True:
        return Deflation()
    if isinstance(deflation, Deflation):
        d = deflation
    elif isinstance(deflation, int):
        d = Deflation(max_roots=deflation)
    else:
        raise TypeError(
            "`deflation` must be None, True, an int (the maximum number of roots) or a "
            f"`Deflation`, got {type(deflation).__name__}"
        )
    if int(d.max_roots) < 1:
        raise ValueError(f"`deflation.max_roots` must be a positive integer, got {d.max_roots}")
    if not float(d.power) >= 1:
        raise ValueError(f"`deflation.power` must be >= 1, got {d.power}")
    if not float(d.shift) > 0:
        raise ValueError(f"`deflation.shift` must be > 0, got {d.shift}")
    if int(d.max_steps) < 1:
        raise ValueError(f"`deflation.max_steps` must be a positive integer, got {d.max_steps}")
    return d


def deflation_factor(x: Array, roots: Array, active: Array, power: float, shift: float) -> Array:
    """`M(x) = Π_{i active} (‖x − r_i‖^(−p) + σ)`; inactive slots contribute a factor 1."""
    d2 = jnp.sum((x[None, :] - roots) ** 2, axis=-1)
    # The floor keeps M finite (and its derivative defined) on a root itself; starts there are
    # moved off it before solving.
    tiny = jnp.finfo(x.dtype).tiny ** 0.5
    factors = jnp.maximum(d2, tiny) ** (-0.5 * power) + shift
    return jnp.prod(jnp.where(active, factors, 1.0))


class _Search(eqx.Module):
    roots: Float[Array, "slots state"]
    result: RESULTS
    num_steps: Int[Array, " slots"]
    count: Int[Array, ""]
    start: Int[Array, ""]
    iterations: Int[Array, ""]


def _newton(fn, y0, args, rtol, atol, max_steps):
    sol = optx.root_find(
        fn, optx.Newton(rtol=rtol, atol=atol), y0, args=args, max_steps=max_steps, throw=False
    )
    result = result_where(
        ~jnp.all(jnp.isfinite(sol.value)), RESULTS.nonfinite, RESULTS.promote(sol.result)
    )
    return sol.value, result, sol.stats["num_steps"]


def deflated_roots(
    vector_field, params, initial_states, deflation: Deflation, rtol, atol, max_steps, dedupe_tol
):
    """Deflated Newton from `initial_states` in turn: `(states, result, num_steps)` with
    `deflation.max_roots` slots.

    From the current start, solve `G = M f = 0` (deflating every slot filled so far), polish
    the solution with undeflated Newton and file it in the next slot (its code is the polish's
    result) unless it coincides with a root already found. When the deflated solve fails or
    only re-finds a known root, move on to the next start. Stops when the slots are full or the
    starts are used up; empty slots hold NaN and `RESULTS.no_further_root`.
    """
    num_starts, n = initial_states.shape
    slots = deflation.max_roots
    dtype = initial_states.dtype
    p, sigma = deflation.power, deflation.shift
    # A fixed direction with entries of both signs (a start on a symmetry axis leaves it).
    u = jnp.where(jnp.arange(n) % 2 == 0, 1.0, -0.5).astype(dtype)
    u = u / jnp.linalg.norm(u)

    def deflated(x, args):
        params, roots, active = args
        return deflation_factor(x, roots, active, p, sigma) * vector_field(x, params)

    def same_point(x, roots, ok):
        scale = 1 + jnp.max(jnp.abs(x))
        return ok & (jnp.max(jnp.abs(roots - x[None, :]), axis=-1) <= dedupe_tol * scale)

    def body(st: _Search) -> _Search:
        active = jnp.arange(slots) < st.count
        x0 = initial_states[jnp.minimum(st.start, num_starts - 1)]
        on_root = jnp.any(same_point(x0, st.roots, active))
        x0 = jnp.where(on_root, x0 + deflation.start_offset * (1 + jnp.max(jnp.abs(x0))) * u, x0)
        xd, res_d, steps_d = _newton(
            deflated, x0, (params, st.roots, active), rtol, atol, deflation.max_steps
        )
        x, res_p, steps_p = _newton(vector_field, xd, params, rtol, atol, max_steps)
        found = successful(res_d)
        polished = successful(res_p)
        known = jnp.any(same_point(x, st.roots, active & successful(st.result)))
        # A polish that did not converge is filed with its code (and deflated, so the search
        # does not return to it); a polish onto a known root only ends this start.
        file = found & ~(polished & known)
        slot = jnp.minimum(st.count, slots - 1)
        state = jnp.where(polished, x, xd)
        roots = st.roots.at[slot].set(jnp.where(file, state, st.roots[slot]))
        # `RESULTS.where` takes a scalar predicate; the codes are arrays underneath.
        result = jtu.tree_map(
            lambda new, old: jnp.where((jnp.arange(slots) == slot) & file, new, old),
            res_p,
            st.result,
        )
        num_steps = st.num_steps.at[slot].set(
            jnp.where(file, steps_d + steps_p, st.num_steps[slot])
        )
        return _Search(
            roots=roots,
            result=result,
            num_steps=num_steps,
            count=st.count + file,
            start=st.start + ~file,
            iterations=st.iterations + 1,
        )

    def cond(st: _Search):
        # Each iteration fills a slot or moves to the next start.
        return (st.count < slots) & (st.start < num_starts) & (st.iterations < slots + num_starts)

    init = _Search(
        roots=jnp.zeros((slots, n), dtype),
        result=jtu.tree_map(lambda v: jnp.full((slots,), v), RESULTS.no_further_root),
        num_steps=jnp.zeros((slots,), jnp.int32),
        count=jnp.array(0, jnp.int32),
        start=jnp.array(0, jnp.int32),
        iterations=jnp.array(0, jnp.int32),
    )
    final = jax.lax.while_loop(cond, body, init)
    filled = (jnp.arange(slots) < final.count)[:, None]
    return jnp.where(filled, final.roots, jnp.nan), final.result, final.num_steps
