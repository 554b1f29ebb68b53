"""Matplotlib views for analysing a trained RNN: fixed points among the trajectories (PCA),
Jacobian eigenvalues in the complex plane, and sNTK statistics over training checkpoints.

matplotlib is imported lazily inside each function (optional at import time of the package).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import ArrayLike, Float


def pca_projection(
    trajectories: Float[ArrayLike, "... state"], num_components: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Principal axes of the states in `trajectories` (state axis last).

    **Arguments:**

    - `trajectories`: e.g. `ds.simulate(model, problem)` of shape `(B, T, N)`.
    - `num_components`: number of principal components.

    **Returns:**

    `(mean, components)`: the mean state `(N,)` and the orthonormal principal axes as rows,
    `(num_components, N)`; project with `(x - mean) @ components.T`.
    """
    ys = np.asarray(trajectories, dtype=float)
    flat = ys.reshape(-1, ys.shape[-1])
    if not 1 <= num_components <= flat.shape[-1]:
        raise ValueError(
            f"`num_components` must be between 1 and the state size {flat.shape[-1]}, got "
            f"{num_components}"
        )
    mean = flat.mean(axis=0)
    # SVD of the centred samples: right singular vectors are the principal axes.
    _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
    return mean, vt[:num_components]


def _axes(ax, three_d=False, figsize=(5, 4)):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax
    fig = plt.figure(figsize=figsize)
    return fig.add_subplot(111, projection="3d" if three_d else None)


def plot_fixed_points(
    analysis: Any,
    trajectories: Float[ArrayLike, "... time state"],
    *,
    num_components: int = 2,
    mode_length: float | None = None,
    ax: Any = None,
    show_slow_points: bool = True,
    trajectory_color: Any = "0.75",
    title: str | None = None,
):
    """Fixed points of a `FixedPointAnalysis` in a PCA projection of trajectories.

    Stable points are filled black circles, unstable ones (saddles, repellers) open red circles,
    slow points crosses; a short segment through each unstable point along each of its unstable
    modes (real eigenvectors, or the real and imaginary parts of a complex one) shows where the
    dynamics leaves it.

    **Arguments:**

    - `analysis`: the result of `analyse_fixed_points` (only its kept points are drawn).
    - `trajectories`: `(B, T, N)` states (e.g. `ds.simulate(model, problem)`), drawn as thin
        lines and used for the PCA.
    - `num_components`: 2 or 3 (a 3-D axes).
    - `mode_length`: half-length of the unstable-mode segments in state units (default 8% of the
        trajectories' extent in the projection).
    - `ax`: a matplotlib `Axes` (`Axes3D` for three components); default a new figure.
    - `show_slow_points`: draw kept slow points.
    - `trajectory_color`: colour of the trajectories.
    - `title`: axes title.

    **Returns:**

    The matplotlib `Axes`.
    """
    if num_components not in (2, 3):
        raise ValueError(f"`num_components` must be 2 or 3, got {num_components}")
    ys = np.asarray(trajectories, dtype=float)
    if ys.ndim == 2:
        ys = ys[None]
    if ys.ndim != 3:
        raise ValueError(f"`trajectories` must have shape (B, T, N), got {ys.shape}")
    n = ys.shape[-1]
    n_fp = np.shape(analysis.states)[-1]
    if n_fp != n:
        raise ValueError(f"`trajectories` have state size {n} but the fixed points {n_fp}")
    mean, comps = pca_projection(ys, num_components)
    proj = lambda x: (np.asarray(x, dtype=float) - mean) @ comps.T
    three = num_components == 3
    ax = _axes(ax, three)
    for traj in ys:
        p = proj(traj)
        ax.plot(*p.T, color=trajectory_color, lw=0.6, zorder=1)
    if mode_length is None:
        extent = np.ptp(proj(ys.reshape(-1, n)), axis=0).max()
        mode_length = 0.08 * float(extent)
    kept = np.asarray(analysis.kept)
    slow = np.asarray(analysis.slow_point) & kept
    nu = np.asarray(analysis.num_unstable)
    states = np.asarray(analysis.states, dtype=float)
    stable_idx = np.where(kept & ~slow & (nu == 0))[0]
    unstable_idx = np.where(kept & ~slow & (nu > 0))[0]
    for i in unstable_idx:
        modes = analysis.unstable_modes(int(i))
        for j in range(modes.shape[1]):
            seg = states[i] + mode_length * np.outer([-1.0, 1.0], modes[:, j])
            ax.plot(*proj(seg).T, color="C3", lw=1.2, zorder=2)
    if stable_idx.size:
        ax.scatter(*proj(states[stable_idx]).T, s=36, c="k", zorder=3,
                   label=f"stable ({stable_idx.size})")
    if unstable_idx.size:
        ax.scatter(*proj(states[unstable_idx]).T, s=36, facecolors="white", edgecolors="C3",
                   linewidths=1.5, zorder=3, label=f"unstable ({unstable_idx.size})")
    if show_slow_points and slow.any():
        ax.scatter(*proj(states[slow]).T, s=36, marker="x", c="C0", zorder=3,
                   label=f"slow ({int(slow.sum())})")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    if three:
        ax.set_zlabel("PC 3")  # pyright: ignore[reportAttributeAccessIssue]
    if title is not None:
        ax.set_title(title)
    if stable_idx.size or unstable_idx.size or (show_slow_points and slow.any()):
        ax.legend(loc="best", fontsize=8)
    return ax


def plot_eigenvalues(
    eigenvalues: Any,
    *,
    ax: Any = None,
    points: Sequence[int] | None = None,
    title: str | None = None,
):
    """Jacobian eigenvalues in the complex plane, with the stability boundary `Re λ = 0`.

    **Arguments:**

    - `eigenvalues`: a `FixedPointAnalysis` (the eigenvalues of its kept points, coloured by
        point: stable black, unstable red), or an array of eigenvalues (any shape).
    - `ax`: a matplotlib `Axes` (default: a new figure).
    - `points`: with an analysis, the indices of the points to draw (default: the kept ones).
    - `title`: axes title.

    **Returns:**

    The matplotlib `Axes`.
    """
    ax = _axes(ax)
    if hasattr(eigenvalues, "eigenvalues") and hasattr(eigenvalues, "kept"):
        an = eigenvalues
        idx = np.where(np.asarray(an.kept))[0] if points is None else np.asarray(points)
        vals = np.asarray(an.eigenvalues)
        nu = np.asarray(an.num_unstable)
        for s, color, label in ((True, "k", "stable point"), (False, "C3", "unstable point")):
            sel = [i for i in idx if (nu[i] == 0) == s]
            if sel:
                v = vals[sel].ravel()
                ax.scatter(v.real, v.imag, s=12, c=color, alpha=0.7, label=label)
        if len(idx):
            ax.legend(loc="best", fontsize=8)
    else:
        v = np.asarray(eigenvalues).ravel()
        ax.scatter(v.real, v.imag, s=12, c="k", alpha=0.7)
    ax.axvline(0.0, color="C3", lw=1.0, ls="--")
    ax.axhline(0.0, color="0.8", lw=0.6)
    ax.set_xlabel("Re λ")
    ax.set_ylabel("Im λ")
    if title is not None:
        ax.set_title(title)
    return ax


def _bifurcation_steps(bifurcations, checkpoint_steps):
    """Training steps and kinds of bifurcations whose `parameter` is a fractional checkpoint
    index (as `ds.track_bifurcations` reports them)."""
    if bifurcations is None:
        return []
    if hasattr(bifurcations, "bifurcations"):  # a BifurcationTrack: its births/deaths too
        track = bifurcations
        bifurcations = (list(track.bifurcations) + list(getattr(track, "births", ()))
                        + list(getattr(track, "deaths", ())))
    ks = np.arange(len(checkpoint_steps), dtype=float)
    return [(float(np.interp(float(b.parameter), ks, checkpoint_steps)), b.kind)
            for b in bifurcations]


def plot_sntk_over_training(
    stats: Any,
    *,
    bifurcations: Any = None,
    axes: Sequence[Any] | None = None,
    xlabel: str = "training step",
):
    """sNTK statistics over training checkpoints (from `sntk_over_checkpoints`): effective rank
    with its ±2 SE band, the top-k eigenvalues (log scale), and the alignment of consecutive
    kernels; tracked bifurcations are marked by vertical lines on every panel.

    **Arguments:**

    - `stats`: an `SNTKCheckpoints`.
    - `bifurcations`: a `BifurcationTrack` from `ds.track_bifurcations` over the same checkpoints
        (its bifurcations, births and deaths), or a sequence of `Bifurcation`s whose `parameter`
        is a fractional checkpoint index; `None` for no markers.
    - `axes`: three matplotlib `Axes` (default: a new figure with three stacked panels).
    - `xlabel`: label of the shared x axis.

    **Returns:**

    The three `Axes` (effective rank, top eigenvalues, alignment).
    """
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(3, 1, figsize=(5.5, 6.5), sharex=True)
    if len(axes) != 3:
        raise ValueError(f"`axes` must hold three Axes, got {len(axes)}")
    ax_r, ax_e, ax_a = axes
    steps = np.asarray(stats.steps, dtype=float)
    er = np.asarray(stats.effective_rank, dtype=float)
    se = np.asarray(stats.effective_rank_se, dtype=float)
    ax_r.plot(steps, er, "o-", color="C0", ms=3)
    ax_r.fill_between(steps, er - 2 * se, er + 2 * se, color="C0", alpha=0.2, lw=0)
    ax_r.set_ylabel("effective rank")
    vals = np.asarray(stats.top_eigenvalues, dtype=float)
    for j in range(vals.shape[1]):
        ax_e.semilogy(steps, np.maximum(vals[:, j], np.finfo(float).tiny), "-", lw=1.2,
                      label=f"λ{j + 1}")
    ax_e.set_ylabel("top eigenvalues of Θ")
    ax_e.legend(loc="best", fontsize=7, ncol=min(4, vals.shape[1]))
    if steps.size > 1:
        mid = 0.5 * (steps[1:] + steps[:-1])
        ax_a.plot(mid, np.asarray(stats.alignment, dtype=float), "s-", color="C2", ms=3)
    ax_a.set_ylabel("alignment(Θ_k, Θ_k+1)")
    ax_a.set_xlabel(xlabel)
    marks = _bifurcation_steps(bifurcations, steps)
    colors = {"fold": "C3", "hopf": "C1", "pitchfork": "C4", "transcritical": "C5"}
    seen: set[str] = set()
    for step, kind in marks:
        for ax in axes:
            ax.axvline(step, color=colors.get(kind, "C7"), lw=1.0, ls=":",
                       label=(kind if (ax is ax_r and kind not in seen) else None))
        seen.add(kind)
    if seen:
        ax_r.legend(loc="best", fontsize=7)
    return ax_r, ax_e, ax_a
