"""Figures of the student–teacher report (matplotlib, Agg backend)."""

from __future__ import annotations

import os

import numpy as np


def _arr(x):
    return np.array([np.nan if v is None else v for v in x], dtype=float)


def write_figures(report: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    steps = np.asarray(report["steps"])
    ev = np.asarray(report["eval_steps"])
    bif = report["first_bifurcation_step"]

    def mark(ax):
        if bif is not None:
            ax.axvline(bif, color="crimson", ls="--", lw=1, label="detected bifurcation")

    # 1. loss, effective rank, leading eigenvalue.
    fig, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    axes[0].semilogy(steps, _arr(report["loss_sgd"]), label="SGD")
    axes[0].set_ylabel("loss")
    axes[1].plot(ev, _arr(report["effective_rank"]), "o-", ms=3)
    axes[1].set_ylabel("sNTK participation ratio")
    axes[2].plot(ev, _arr(report["leading_eigenvalue"]), "o-", ms=3)
    axes[2].axhline(0, color="k", lw=0.5)
    axes[2].set_ylabel("leading Re λ(A) at x = 0")
    axes[2].set_xlabel("training step")
    for ax in axes:
        mark(ax)
    axes[0].legend()
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "training.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    # 2. spectrum before / at / after the bifurcation.
    top = np.array([_arr(row) for row in report["top_eigenvalues"]])
    fig, ax = plt.subplots(figsize=(6, 4))
    if bif is not None:
        i_at = int(np.argmin(np.abs(ev - bif)))
    else:
        i_at = len(ev) // 2
    picks = {"before": max(i_at - max(len(ev) // 5, 1), 0), "at": i_at,
             "after": min(i_at + max(len(ev) // 5, 1), len(ev) - 1)}
    for name, i in picks.items():
        ax.semilogy(np.arange(1, top.shape[1] + 1), top[i], "o-", label=f"{name} (step {ev[i]})")
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("sNTK eigenvalue")
    ax.legend()
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "spectra.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    # 3. restricted landscape vs the normal form.
    land = report.get("landscape")
    fig, ax = plt.subplots(figsize=(6, 4))
    if land:
        ax.plot(_arr(land["s"]), _arr(land["loss"]), "o", label="L(θ + s u₁)")
        ax.plot(_arr(land["s"]), _arr(land["prediction"]), "-",
                label=f"pitchfork normal form (R² = {land['r2']:.3f})")
        ax.legend()
    ax.set_xlabel("s (along the dominant direction u₁)")
    ax.set_ylabel("loss")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "landscape.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    # 4. SGD vs natural gradient.
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(steps, _arr(report["loss_sgd"]), label="SGD")
    ax.semilogy(steps, _arr(report["loss_natgrad"]), label="low-rank natural gradient")
    mark(ax)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title(f"same learning rate ({report['config']['learning_rate']})")
    ax.legend()
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "optimizers.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
