"""Matplotlib figures (optional; matplotlib is imported lazily inside each function)."""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._plotting_rnn import (
    pca_projection as pca_projection,
    plot_eigenvalues as plot_eigenvalues,
    plot_fixed_points as plot_fixed_points,
    plot_sntk_over_training as plot_sntk_over_training,
)

_MARKERS = {
    "fold": ("s", "LP"),
    "transcritical": ("D", "BP"),
    "pitchfork": ("D", "BP"),
    "hopf": ("o", "H"),
}


def _segments(stable: np.ndarray, boundary: np.ndarray):
    """Runs `[i, j]` of polyline segments with one stability (a boundary point — a bifurcation —
    takes the stability of the segment on its other side)."""
    n = len(stable)
    seg = [bool(stable[j + 1] if boundary[j] else stable[j]) for j in range(n - 1)]
    start = 0
    for j in range(1, len(seg) + 1):
        if j == len(seg) or seg[j] != seg[start]:
            yield start, j, seg[start]
            start = j


def _plot_branch(ax, br, obs, col, label, annotate, origin=None, marked=None):
    """One branch: stable solid, unstable dashed, bifurcation markers; `origin` (a
    `Bifurcation`) is the branch point a switched branch emanates from, joined to its start."""
    mu = list(np.asarray(br.parameters, dtype=float))
    ys = [float(obs(np.asarray(x))) for x in np.asarray(br.states)]
    stable = list(np.asarray(br.stable))
    boundary = [False] * len(mu)
    # Insert each bifurcation into the polyline so that the line style switches there.
    for bif in sorted(br.bifurcations, key=lambda b: -b.index):
        j = min(bif.index + 1, len(mu))
        mu.insert(j, float(bif.parameter))
        ys.insert(j, float(obs(np.asarray(bif.state))))
        stable.insert(j, False)
        boundary.insert(j, True)
    if origin is not None and len(mu) > 0:
        mu.insert(0, float(origin.parameter))
        ys.insert(0, float(obs(np.asarray(origin.state))))
        stable.insert(0, False)
        boundary.insert(0, True)
    mu_a, ys_a = np.asarray(mu), np.asarray(ys)
    if len(mu_a) == 1:
        ax.plot(mu_a, ys_a, "o", color=col)
    for a, b, st in _segments(np.asarray(stable), np.asarray(boundary)):
        ax.plot(
            mu_a[a : b + 1], ys_a[a : b + 1], color=col, linestyle="-" if st else "--", lw=1.6,
            label=(label if a == 0 else None),
        )
    for bif in br.bifurcations:
        marker, text = _MARKERS.get(bif.kind, ("x", bif.kind))
        y = obs(np.asarray(bif.state))
        p = float(bif.parameter)
        # A point detected on several branches of a diagram is marked once.
        key = (bif.kind, round(p, 6), round(float(y), 6))
        if marked is not None:
            if key in marked:
                continue
            marked.add(key)
        ax.plot([p], [y], marker=marker, color=_KIND_COLORS.get(bif.kind, "C3"), ms=7,
                linestyle="none")
        if annotate:
            ax.annotate(text, (p, y), textcoords="offset points", xytext=(5, 5), fontsize=9)


_KIND_COLORS = {"fold": "C3", "transcritical": "C2", "pitchfork": "C2", "hopf": "C4"}


def plot_bifurcation_diagram(
    branch: Any | Sequence[Any],
    *,
    component: int = 0,
    observable: Callable[[np.ndarray], float] | None = None,
    ax: Any = None,
    color: Any = None,
    label: str | None = None,
    annotate: bool = True,
    xlabel: str = "parameter",
    ylabel: str | None = None,
    legend: bool | None = None,
):
    """Bifurcation diagram of one or more `Branch`es from `ds.continuation`, or of a
    `BifurcationDiagram` from `bifurcation_diagram`.

    Stable parts are drawn solid, unstable parts dashed; each detected bifurcation is marked by
    kind (square: fold "LP", red; diamond: branch point "BP", green; circle: Hopf "H",
    purple). A diagram's switched branches are joined to the branch point they emanate from
    and coloured by depth (primary black, then `C0`, `C1`, ...).

    **Arguments:**

    - `branch`: a `Branch`, a sequence of them, or a `BifurcationDiagram`.
    - `component`: the state component plotted (ignored when `observable` is given).
    - `observable`: maps a state `(N,)` to the plotted scalar, e.g. `np.linalg.norm`.
    - `ax`: a matplotlib `Axes` (default: a new figure).
    - `color`, `label`: line colour (all branches) and legend label (the first branch).
    - `annotate`: write the bifurcation labels next to the markers.
    - `xlabel`, `ylabel`: axis labels.
    - `legend`: draw a legend of line styles and marker kinds (default: for a diagram).

    **Returns:**

    The matplotlib `Axes`.
    """
    import matplotlib.pyplot as plt

    diagram: Any = branch if hasattr(branch, "branches") and hasattr(branch, "origins") else None
    branches: list[Any]
    if diagram is not None:
        branches = list(diagram.branches)
        origins = list(diagram.origins)
        depths = list(diagram.depths)
    else:
        branches = [branch] if hasattr(branch, "parameters") else list(branch)
        origins: list[Any] = [None] * len(branches)
        depths = [0 if i == 0 else i + 1 for i in range(len(branches))]
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    obs = observable if observable is not None else (lambda x: x[component])
    marked: set | None = set() if diagram is not None else None
    for i, (br, origin, depth) in enumerate(zip(branches, origins, depths, strict=True)):
        col = color if color is not None else ("k" if depth == 0 else f"C{(depth - 1) % 10}")
        _plot_branch(ax, br, obs, col, label if i == 0 else None, annotate, origin, marked)
    ax.set_xlabel(xlabel)
    if ylabel is None:
        ylabel = "observable" if observable is not None else f"x[{component}]"
    ax.set_ylabel(ylabel)
    if legend if legend is not None else diagram is not None:
        from matplotlib.lines import Line2D

        kinds = sorted({b.kind for br in branches for b in br.bifurcations})
        handles = [
            Line2D([], [], color="0.3", linestyle="-", label="stable"),
            Line2D([], [], color="0.3", linestyle="--", label="unstable"),
        ] + [
            Line2D([], [], color=_KIND_COLORS.get(k, "C3"), marker=_MARKERS[k][0],
                   linestyle="none", label=f"{k} ({_MARKERS[k][1]})")
            for k in kinds if k in _MARKERS
        ]
        ax.legend(handles=handles, fontsize=8, loc="best")
    return ax


def plot_channel_collapse(
    distances: Sequence[float] | np.ndarray,
    splits: Sequence[Any],
    *,
    ax: Any = None,
    xlabel: str = "distance to the bifurcation",
    log_x: bool = True,
):
    """Channel energy fraction and sNTK effective rank against the distance to a bifurcation.

    **Arguments:**

    - `distances`: one distance per split, e.g. `|μ - μ_c|` or `|Re λ_c|`.
    - `splits`: the matching `BifurcationChannels` results of `ds.bifurcation_channels`.
    - `ax`: a matplotlib `Axes` (default: a new figure). The effective rank goes on a twin axis.
    - `xlabel`: the x-axis label.
    - `log_x`: logarithmic distance axis.

    **Returns:**

    `(ax, ax_rank)`: the fraction axes and the twin effective-rank axes.
    """
    import matplotlib.pyplot as plt

    d = np.asarray(distances, dtype=float)
    splits = list(splits)
    if d.ndim != 1 or d.shape[0] != len(splits):
        raise ValueError(
            f"`distances` must be 1-D with one entry per split ({len(splits)}), got shape "
            f"{d.shape}."
        )
    frac = np.array([float(s.energy_fraction) for s in splits])
    rank = np.array([float(s.effective_rank) for s in splits])
    order = np.argsort(d)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(d[order], frac[order], "o-", color="C0", label="channel fraction tr Θ_bif / tr Θ")
    ax.set_ylabel("channel fraction", color="C0")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(xlabel)
    ax_rank = ax.twinx()
    ax_rank.plot(d[order], rank[order], "s--", color="C3", label="effective rank (PR)")
    ax_rank.set_ylabel("effective rank (participation ratio)", color="C3")
    if log_x:
        ax.set_xscale("log")
    return ax, ax_rank
