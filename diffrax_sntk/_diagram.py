"""Automatic bifurcation diagrams: continue a primary branch, switch at every branch point it
finds, and recurse (`bifurcation_diagram`).

The diagram is assembled on the host: how many branches there are, and where they start, is only
known from the values, so the recursion is a Python loop over compiled continuations (each
`continuation`/`switch_branch` call is one compiled program, shared by every branch of the same
vector field). It does not run under `jax.jit` or `jax.vmap`; its branches do.
"""

from collections import deque
from collections.abc import Callable
from typing import Any

import equinox as eqx
import numpy as np
from jaxtyping import ArrayLike, Float, PyTree

from ._bifurcation import Bifurcation, Branch, continuation
from ._branch_switching import SWITCH_FAILED, switch_branch
from ._misc import RESULTS, default_tol

_BRANCH_POINTS = ("transcritical", "pitchfork")
# A switched branch is a copy of a known one when its first points lie on that branch's
# polyline. The polyline's chords miss the curve by at most ~h/8 for the steps the
# continuation accepts (corrector distance ≤ h/2), hence the allowance per segment length.
_CHORD_ALLOWANCE = 0.15
_NUM_CHECKED = 6


class FailedSwitch(eqx.Module):
    """A branch switch that did not produce a new branch: which branch (`parent`, an index
    into `BifurcationDiagram.branches`), at which `bifurcation`, which `side` (`-1`/`+1`), the
    `result` and the failed `branch` itself (for inspection)."""

    parent: int = eqx.field(static=True)
    side: int = eqx.field(static=True)
    bifurcation: Bifurcation
    branch: Branch
    result: RESULTS


class BifurcationDiagram(eqx.Module):
    """The branches of equilibria reached from one starting point by continuation and branch
    switching (`bifurcation_diagram`).

    **Fields:**

    - `branches`: the `Branch`es; `branches[0]` is the primary branch.
    - `parents`: for each branch, the index of the branch it was switched from (`-1` for the
        primary).
    - `origins`: for each branch, the `Bifurcation` (on its parent) it emanates from (`None`
        for the primary).
    - `sides`: `-1`/`+1`, the side of the emanating branch (`0` for the primary).
    - `depths`: number of switches from the primary.
    - `failed`: the switches that did not produce a new branch (`FailedSwitch`).
    - `num_duplicates`: switched branches dropped because they retrace a known branch.
    - `num_skipped`: branches not followed because `max_branches` was reached.
    - `result`: `RESULTS.successful`, or the first failure: a branch's (e.g.
        `RESULTS.continuation_max_steps`) or a failed switch's.
    """

    branches: tuple[Branch, ...]
    parents: tuple[int, ...] = eqx.field(static=True)
    origins: tuple[Bifurcation | None, ...]
    sides: tuple[int, ...] = eqx.field(static=True)
    depths: tuple[int, ...] = eqx.field(static=True)
    failed: tuple[FailedSwitch, ...]
    num_duplicates: int = eqx.field(static=True)
    num_skipped: int = eqx.field(static=True)
    result: RESULTS

    @property
    def primary(self) -> Branch:
        return self.branches[0]

    @property
    def successful(self) -> bool:
        return bool(self.result == RESULTS.successful)

    @property
    def bifurcations(self) -> tuple[tuple[int, Bifurcation], ...]:
        """`(branch index, Bifurcation)` for every bifurcation of every branch."""
        return tuple((i, b) for i, br in enumerate(self.branches) for b in br.bifurcations)


def _points(branch: Branch) -> np.ndarray:
    return np.concatenate(
        [np.asarray(branch.states), np.asarray(branch.parameters)[:, None]], axis=1
    )


def _on_polyline(points: np.ndarray, line: np.ndarray, atol: float) -> np.ndarray:
    """Which `points (K, D)` lie on the polyline `line (M, D)`, up to the chord allowance."""
    if len(line) == 1:
        return np.linalg.norm(points - line[0], axis=-1) <= atol
    a, b = line[:-1], line[1:]
    ab = b - a
    length2 = np.sum(ab**2, axis=-1)
    t = np.einsum("kmd,md->km", points[:, None, :] - a[None], ab) / np.where(
        length2 > 0, length2, 1
    )
    t = np.clip(t, 0, 1)
    nearest = a[None] + t[..., None] * ab[None]
    dist = np.linalg.norm(points[:, None, :] - nearest, axis=-1)
    slack = _CHORD_ALLOWANCE * np.sqrt(length2)[None] + atol
    return np.any(dist <= slack, axis=1)


def _is_duplicate(branch: Branch, known: list[Branch], atol: float) -> bool:
    points = _points(branch)[:_NUM_CHECKED]
    return any(bool(np.all(_on_polyline(points, _points(k), atol))) for k in known)


def bifurcation_diagram(
    vector_field: Callable,
    x0: Float[ArrayLike, " state"],
    p0: float | Float[ArrayLike, ""],
    p1: float | Float[ArrayLike, ""],
    max_depth: int = 2,
    *,
    args: PyTree = None,
    max_branches: int = 32,
    amplitude: float | None = None,
    step_size: float | None = None,
    max_step_size: float | None = None,
    min_step_size: float | None = None,
    max_steps: int = 1000,
    max_bifurcations: int = 16,
    rtol: float | None = None,
    atol: float | None = None,
    newton_max_steps: int = 20,
    parameter_tol: float | None = None,
    symmetry_tol: float | None = None,
) -> BifurcationDiagram:
    """The bifurcation diagram reached from `(x0, p0)`: continuation, then branch switching
    at every transcritical and pitchfork point found, recursively.

    The primary branch is `continuation(vector_field, x0, p0, p1, ...)`. At each branch point
    of a branch of depth `< max_depth` (breadth first), `switch_branch` gives the two sides of
    the emanating branch over `[p0, p1]`; they get depth `+1`. A branch point already switched
    at (from another branch) is not switched again, and a switched branch whose first points
    lie on a known branch is dropped as a duplicate (`num_duplicates`). Folds and Hopf points
    are reported on their branches but not switched at.

    Assembled on the host (a Python loop: the number of branches depends on the values), so
    not jittable; every continuation in it is one compiled program, shared by all branches.

    **Arguments:**

    - `vector_field`: `vector_field(x, mu) -> dx/dt`; with `args`, `vector_field(x, mu, args)`.
    - `x0`: an (approximate) equilibrium at `mu = p0`.
    - `p0`, `p1`: the parameter range of every branch.
    - `max_depth`: how many switches deep to go (`0`: the primary branch only).
    - `args`: a pytree passed to the vector field.
    - `max_branches`: stop adding branches beyond this many (`num_skipped` counts the rest).
    - `amplitude`: distance of a switched branch's first point from its branch point (default:
        the first continuation step, `|p1 − p0|/50`).
    - the other keywords: as for `continuation`.

    **Returns:**

    A `BifurcationDiagram`.
    """
    kw: dict[str, Any] = dict(
        step_size=step_size,
        max_step_size=max_step_size,
        min_step_size=min_step_size,
        max_steps=max_steps,
        max_bifurcations=max_bifurcations,
        rtol=rtol,
        atol=atol,
        newton_max_steps=newton_max_steps,
        parameter_tol=parameter_tol,
        symmetry_tol=symmetry_tol,
    )
    if int(max_depth) < 0:
        raise ValueError(f"`max_depth` must be a non-negative integer, got {max_depth}")
    if int(max_branches) < 1:
        raise ValueError(f"`max_branches` must be a positive integer, got {max_branches}")
    primary = continuation(vector_field, x0, p0, p1, args=args, **kw)
    dtype = primary.state_buffer.dtype
    # Two detections of one branch point agree to the localisation tolerance; this is far
    # looser and far below the spacing of distinct branch points.
    tol = default_tol(dtype) ** 0.5
    branches, parents, sides, depths = [primary], [-1], [0], [0]
    origins: list[Bifurcation | None] = [None]
    failed: list[FailedSwitch] = []
    seen: list[np.ndarray] = []
    num_duplicates = num_skipped = 0
    queue = deque([0])
    while queue:
        i = queue.popleft()
        if depths[i] >= max_depth:
            continue
        for bif in branches[i].bifurcations:
            if bif.kind not in _BRANCH_POINTS:
                continue
            z = np.append(np.asarray(bif.state), float(bif.parameter))
            scale = tol * (1 + np.linalg.norm(z))
            if any(np.linalg.norm(z - w) <= scale for w in seen):
                continue
            seen.append(z)
            pair = switch_branch(vector_field, bif, p0, p1, args=args, amplitude=amplitude, **kw)
            for side, child in zip((-1, 1), pair, strict=True):
                if child.result == SWITCH_FAILED:
                    failed.append(FailedSwitch(i, side, bif, child, child.result))
                    continue
                if _is_duplicate(child, branches, scale):
                    num_duplicates += 1
                    continue
                if len(branches) >= max_branches:
                    num_skipped += 1
                    continue
                branches.append(child)
                parents.append(i)
                origins.append(bif)
                sides.append(side)
                depths.append(depths[i] + 1)
                queue.append(len(branches) - 1)
    result = RESULTS.successful
    for r in [b.result for b in branches] + [f.result for f in failed]:
        if result == RESULTS.successful and r != RESULTS.successful:
            result = r
    return BifurcationDiagram(
        branches=tuple(branches),
        parents=tuple(parents),
        origins=tuple(origins),
        sides=tuple(sides),
        depths=tuple(depths),
        failed=tuple(failed),
        num_duplicates=num_duplicates,
        num_skipped=num_skipped,
        result=result,
    )
