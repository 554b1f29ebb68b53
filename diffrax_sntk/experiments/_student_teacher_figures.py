"""Figures of one student–teacher run (matplotlib, Agg backend)."""

from __future__ import annotations

import os

import numpy as np


def _arr(x):
    return np.array([np.nan if v is None else v for v in (x or [])], dtype=float)


def write_figures(report: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    cur = report.get("curves") or {}
    ev = _arr(cur.get("eval_steps"))
    loss_sgd = _arr(cur.get("loss_sgd"))
    steps = np.arange(loss_sgd.size)
    crossings = [b["step"] for b in report.get("bifurcations") or []]

    def mark(ax):
        for i, c in enumerate(crossings):
            ax.axvline(c, color="crimson", ls="--", lw=1,
                       label="detected bifurcation" if i == 0 else None)

    def save(fig, name):
        fig.tight_layout()
        paths.append(os.path.join(out_dir, name))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    # 1. loss, participation ratio, critical eigenvalue along SGD.
    fig, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    axes[0].semilogy(steps, loss_sgd, label="SGD")
    axes[0].set_ylabel("loss")
    axes[1].semilogy(ev, _arr(cur.get("pr")), "o-", ms=3)
    axes[1].set_ylabel("sNTK participation ratio")
    axes[2].plot(ev, _arr(cur.get("lam_c")), "o-", ms=3)
    axes[2].axhline(0, color="k", lw=0.5)
    axes[2].set_ylabel("critical Re λ (tracked equilibrium)")
    axes[2].set_xlabel("training step")
    for ax in axes:
        mark(ax)
    axes[0].legend()
    save(fig, "training.png")

    # 2. the top of the sNTK spectrum before / at / after the first crossing.
    top = np.array([_arr(row) for row in cur.get("top") or []])
    fig, ax = plt.subplots(figsize=(6, 4))
    if top.size and ev.size:
        i_at = int(np.argmin(np.abs(ev - crossings[0]))) if crossings else len(ev) // 2
        d = max(len(ev) // 5, 1)
        for name, i in {"before": max(i_at - d, 0), "at": i_at,
                        "after": min(i_at + d, len(ev) - 1)}.items():
            ax.semilogy(np.arange(1, top.shape[1] + 1), top[i], "o-",
                        label=f"{name} (step {int(ev[i])})")
        ax.legend()
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("sNTK eigenvalue")
    save(fig, "spectra.png")

    # 3. the loss along u1, centre pinned at the crossing, with the pitchfork fit.
    land = (report.get("at_crossing") or {}).get("landscape")
    fig, ax = plt.subplots(figsize=(6, 4))
    if land:
        chk = land["check"]
        ax.plot(_arr(land["s"]), _arr(land["loss"]), "o", label="L(θ_c + s u₁)")
        r2 = chk.get("r2")
        ax.plot(_arr(land["s"]), _arr(chk.get("prediction")), "-",
                label="1, s², s⁴ fit, centre pinned"
                + ("" if r2 is None else f" (R² = {r2:.3f})"))
        ax.legend()
    ax.set_xlabel("s (along the dominant direction u₁, 0 = the crossing)")
    ax.set_ylabel("loss")
    save(fig, "landscape.png")

    # 4. every optimizer of C5 at the run's learning rate.
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in (report.get("optimizer_losses") or {}).items():
        ax.semilogy(np.arange(len(curve)), _arr(curve), label=name)
    mark(ax)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title(f"learning rate {report['config']['learning_rate']}")
    ax.legend(fontsize=8)
    save(fig, "optimizers.png")
    return paths
