r"""The human-readable side of a sweep: `summary.md` and the sweep figures.

Both read only `summary.json` (from `_sweep.summarise`) and the `runs.jsonl` records; missing
details (older records, errored runs with empty `curves`) are skipped, never guessed. The wording
reports numbers only; what they mean is argued on the results page, against the pre-registered
criteria of `docs/student_teacher_protocol.md`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["summary_markdown", "write_sweep_figures"]

_CRITERIA = (
    "C1_localisation",
    "C2_depth",
    "C3_channel",
    "C4_normal_form",
    "C5_optimizer",
    "C6_cost",
)
_SHORT = {name: name.split("_")[0] for name in _CRITERIA}


# ---------------------------------------------------------------------------------------------
# Helpers


def _trainable(config: dict) -> str:
    t = config.get("trainable")
    if t:
        return str(t)
    task = config.get("task", "pitchfork")
    if task == "hopf":
        trained = config.get("hopf_frequency") == "trained"
        return "gain,bulk,U" + (",omega" if trained else "")
    if task == "fold":
        return "W,b,U"
    return "W" if config.get("student", "shared") == "shared" else "W,b,U"


def _variant(config: dict) -> tuple:
    """The group's configuration without the learning rate (one line in `pass_rates.png`)."""
    return (
        config.get("student"),
        _trainable(config),
        config.get("hidden"),
        config.get("teacher_gain"),
    )


def _variant_label(variant: tuple) -> str:
    student, trainable, hidden, gain = variant
    return f"{student} [{trainable}] N={hidden} g={gain}"


def _group_key(config: dict) -> str:
    d = dict(config)
    d.pop("seed", None)
    return json.dumps(d, sort_keys=True)


def _records_by_group(summary: dict, records: Sequence[dict]) -> list[list[dict]]:
    """The records of each summary group, in the summary's order."""
    by_key: dict[str, list[dict]] = {}
    for r in records:
        by_key.setdefault(_group_key(r.get("config", {})), []).append(r)
    return [
        by_key.get(json.dumps(g.get("config", {}), sort_keys=True), [])
        for g in summary.get("groups", [])
    ]


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.0f}%"


def _finite(values: Sequence[Any]) -> list[float]:
    out = []
    for v in values:
        if v is None or isinstance(v, bool):
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def _median(values: Sequence[Any]) -> str:
    vals = _finite(values)
    return _fmt(float(np.median(vals))) if vals else "–"


def _fraction(flags: Sequence[Any]) -> str:
    """`k/n` over records where the flag is recorded (bool), `–` when none is."""
    known = [bool(f) for f in flags if isinstance(f, (bool, np.bool_))]
    if not known:
        return "–"
    return f"{sum(known)}/{len(known)}"


def _criterion(record: dict, name: str) -> dict:
    c = (record.get("criteria") or {}).get(name)
    return c if isinstance(c, dict) else {}


def _group_cells(config: dict, seeds: Sequence[Any]) -> list[str]:
    tracker = config.get("tracker")
    return [
        str(config.get("student", "–")) + (f" (tracker: {tracker})" if tracker else ""),
        _trainable(config),
        _fmt(config.get("hidden")),
        _fmt(config.get("teacher_gain")),
        _fmt(config.get("learning_rate")),
        str(len(seeds)),
    ]


_GROUP_HEAD = ["#", "student", "trainable", "N", "teacher gain", "lr", "seeds"]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _stat_cell(stats: dict | None) -> str:
    if not stats:
        return "–"
    cell = (
        f"{stats.get('passes', 0)}/{stats.get('runs', 0)} ({_pct(stats.get('rate'))}, "
        f"[{_pct(stats.get('wilson_low'))}, {_pct(stats.get('wilson_high'))}])"
    )
    if stats.get("not_assessable"):
        cell += f", n/a {stats['not_assessable']}"
    return cell


# ---------------------------------------------------------------------------------------------
# Markdown


def _task_section(tasks: list[dict]) -> list[str]:
    """Per task (and student, N, rate): the intended-kind rate, channel ranks and criteria."""
    if not tasks or all(t.get("task") == "pitchfork" and not t.get("tracker") for t in tasks):
        return []
    head = ["task", "student", "N", "lr", "runs", "first kind = intended", "channel rank"]
    head += [_SHORT[n] for n in _CRITERIA]
    rows = []
    for t in tasks:
        ranks = ", ".join(f"{k}: {v}" for k, v in sorted((t.get("channel_ranks") or {}).items()))
        task = str(t.get("task")) + (f" (tracker: {t['tracker']})" if t.get("tracker") else "")
        rows.append([task, str(t.get("student")), _fmt(t.get("hidden")),
                     _fmt(t.get("learning_rate")), str(t.get("runs")),
                     f"{t.get('intended_kind')}: {_stat_cell(t.get('intended_kind_first'))}",
                     ranks or "–"] + [_stat_cell((t.get("criteria") or {}).get(n))
                                      for n in _CRITERIA])
    return ["## By task", "", "The intended kind is the bifurcation the task is built to make "
            "training cross; `channel rank` counts runs by `channel_rank` at the first crossing "
            "(`none`: no crossing).", ""] + _table(head, rows) + [""]


def summary_markdown(summary: dict, records: list[dict]) -> str:
    """The Markdown report of a sweep (`summary.md`).

    **Arguments:**

    - `summary`: the output of `_sweep.summarise(records)`.
    - `records`: the `runs.jsonl` records (errored runs included).

    **Returns:** one table of pass counts per group and criterion (rate and Wilson 95% interval),
    then the notes per criterion, the C5 and C1 context per group, and the errored runs.
    """
    groups = summary.get("groups", [])
    recs_of = _records_by_group(summary, records)
    lines = [
        "# Sweep summary",
        "",
        f"{len(groups)} groups, {len(records)} runs. Cells: passes/runs (rate, [Wilson 95% "
        "interval]); `n/a k`: k runs not assessable (counted in runs, not in passes). "
        "Criteria as defined in `docs/student_teacher_protocol.md`.",
        "",
    ]

    # Main table.
    rows = []
    for i, g in enumerate(groups):
        cfg = g.get("config", {})
        crit = g.get("criteria", {})
        kinds = g.get("first_bifurcation_kinds", {}) or {}
        kind_str = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) or "–"
        rows.append(
            [str(i + 1), *_group_cells(cfg, g.get("seeds", []))]
            + [_stat_cell(crit.get(name)) for name in _CRITERIA]
            + [str(g.get("errors", 0)), kind_str]
        )
    head = _GROUP_HEAD + [_SHORT[n] for n in _CRITERIA] + ["errors", "first bifurcation"]
    lines += ["## Pass counts", ""] + _table(head, rows) + [""]
    timings = [(i + 1, g["c6_timings"]) for i, g in enumerate(groups)
               if (g.get("c6_timings") or {}).get("count")]
    if timings:
        lines += [
            "C6 is timed once per sweep invocation (and rate, since the session-9 amendment) and "
            "copied into each of its runs, so its "
            "pass count is over runs, not over independent timings. Distinct timings per group "
            "(NG mean step / SGD mean step): "
            + "; ".join(f"#{i}: {t['passes']} of {t['count']} pass "
                        f"({', '.join(_fmt(v) for v in t['values']) or '–'}"
                        + (f"; per solver step {', '.join(_fmt(v) for v in t['per_solver_step'])}"
                           if t.get("per_solver_step") else "") + ")"
                        for i, t in timings) + ".",
            "",
        ]
    lines += _task_section(summary.get("tasks") or [])

    # Notes per criterion.
    lines += [
        "## Notes per criterion",
        "",
        "Fraction of each group's runs with each `note` (runs without a note omitted).",
        "",
    ]
    for name in _CRITERIA:
        rows = []
        for i, recs in enumerate(recs_of):
            counts: dict[str, int] = {}
            for r in recs:
                note = _criterion(r, name).get("note")
                if note:
                    counts[str(note)] = counts.get(str(note), 0) + 1
            if counts:
                text = "; ".join(f"{note}: {k}/{len(recs)}" for note, k in sorted(counts.items()))
                rows.append([str(i + 1), text])
        lines.append(f"### {name}")
        lines.append("")
        lines += (_table(["#", "notes"], rows) if rows else ["No notes."]) + [""]

    # C5 context.
    rows = []
    for i, (g, recs) in enumerate(zip(groups, recs_of, strict=True)):
        c5 = [_criterion(r, "C5_optimizer") for r in recs]
        # Only runs that record a best baseline count as "never" (errored runs record none).
        base = [c["best_baseline"] for c in c5 if isinstance(c.get("best_baseline"), dict)]
        base_steps = [b.get("steps") for b in base]
        never = sum(1 for s in base_steps if s is None)
        rows.append(
            [
                str(i + 1),
                *_group_cells(g.get("config", {}), g.get("seeds", [])),
                _fraction([c.get("learning_rate_stable") for c in c5]),
                _fraction([c.get("sgd_spikes_at_crossing") for c in c5]),
                _median([c.get("value") for c in c5]),
                _median(base_steps),
                str(never),
            ]
        )
    lines += [
        "## C5 context",
        "",
        "`lr stable`: runs whose learning rate is below 2/λ_max at both the initial and the "
        "teacher parameters; `SGD spike`: runs where SGD spikes within ±3 steps of its "
        "first crossing (both as k/n over runs that record them); medians over finite "
        "values; `baseline never`: runs whose best baseline never reached the target.",
        "",
    ]
    lines += _table(
        _GROUP_HEAD
        + [
            "lr stable",
            "SGD spike",
            "median NG steps",
            "median best baseline steps",
            "baseline never",
        ],
        rows,
    ) + [""]

    # C1 context.
    rows = []
    for i, (g, recs) in enumerate(zip(groups, recs_of, strict=True)):
        c1 = [_criterion(r, "C1_localisation") for r in recs]
        p = [c.get("p_value") for c in c1]
        rows.append(
            [
                str(i + 1),
                *_group_cells(g.get("config", {}), g.get("seeds", [])),
                _median(p),
                str(len(_finite(p))),
                _median([c.get("value") for c in c1]),
            ]
        )
    lines += ["## C1 context", ""]
    lines += _table(_GROUP_HEAD + ["median p-value", "runs with p-value", "median ρ"], rows)
    lines.append("")

    # Errors.
    errored = [r for r in records if r.get("error") is not None]
    lines += ["## Errors", ""]
    if not errored:
        lines.append("No run raised an error.")
    else:
        rows = []
        for r in errored:
            cfg = r.get("config", {})
            rows.append(
                [
                    str(cfg.get("student", "–")),
                    _trainable(cfg),
                    _fmt(cfg.get("hidden")),
                    _fmt(cfg.get("teacher_gain")),
                    _fmt(cfg.get("seed")),
                    _fmt(cfg.get("learning_rate")),
                    " ".join(str(r["error"]).split()),
                ]
            )
        lines += _table(["student", "trainable", "N", "teacher gain", "seed", "lr", "error"], rows)
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Figures


def _pass_rates_figure(plt, summary: dict, path: str) -> None:
    by_variant: dict[tuple, list[dict]] = {}
    for g in summary.get("groups", []):
        by_variant.setdefault(_variant(g.get("config", {})), []).append(g)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharey=True)
    n = max(len(by_variant), 1)
    for j, name in enumerate(_CRITERIA):
        ax = axes.flat[j]
        for v_idx, (variant, groups) in enumerate(sorted(by_variant.items(), key=str)):
            pts = []
            for g in groups:
                lr = g.get("config", {}).get("learning_rate")
                st = (g.get("criteria") or {}).get(name) or {}
                rate = st.get("rate")
                if lr is None or rate is None or not float(lr) > 0:
                    continue
                lo = st.get("wilson_low")
                hi = st.get("wilson_high")
                lo = rate if lo is None else lo
                hi = rate if hi is None else hi
                pts.append((float(lr), float(rate), float(lo), float(hi)))
            if not pts:
                continue
            pts.sort()
            x, y, lo, hi = (np.array(a) for a in zip(*pts, strict=True))
            # A small multiplicative offset per variant keeps overlapping error bars readable.
            x = x * 10 ** (0.02 * (v_idx - (n - 1) / 2))
            yerr = np.stack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
            ax.errorbar(
                x, y, yerr=yerr, marker="o", ms=4, capsize=2, lw=1, label=_variant_label(variant)
            )
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(name)
        ax.set_xlabel("learning rate")
        if j % 3 == 0:
            ax.set_ylabel("pass rate (Wilson 95%)")
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat[1:]:
        if handles:
            break
        handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pr_lambda_points(record: dict) -> tuple[np.ndarray, np.ndarray]:
    curves = record.get("curves") or {}
    pr = curves.get("pr") or []
    lam = curves.get("lam_c") or []
    pairs = []
    for p, lc in zip(pr, lam, strict=False):
        if p is None or lc is None:
            continue
        try:
            p, lc = float(p), float(lc)
        except (TypeError, ValueError):
            continue
        if math.isfinite(p) and math.isfinite(lc) and p > 0:
            pairs.append((p, lc))
    if not pairs:
        return np.zeros(0), np.zeros(0)
    p_arr, l_arr = (np.array(a) for a in zip(*pairs, strict=True))
    return p_arr, l_arr


def _pr_lambda_figure(plt, records: Sequence[dict], path: str) -> None:
    by_student: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for r in records:
        pts = _pr_lambda_points(r)
        if pts[0].size:
            by_student.setdefault(str((r.get("config") or {}).get("student")), []).append(pts)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    plotted = False
    for k, (student, pts) in enumerate(sorted(by_student.items())):
        pr = np.concatenate([p for p, _ in pts])
        lam = np.concatenate([lc for _, lc in pts])
        color = colors[k % len(colors)]
        stable = lam < 0
        if stable.any():
            ax.scatter(
                np.abs(lam[stable]),
                pr[stable],
                s=8,
                alpha=0.4,
                color=color,
                label=f"{student}, λ_c < 0",
            )
        if (~stable).any():
            ax.scatter(
                np.abs(lam[~stable]),
                pr[~stable],
                s=8,
                alpha=0.4,
                facecolors="none",
                edgecolors=color,
                label=f"{student}, λ_c ≥ 0",
            )
        plotted = True
    ax.set_yscale("log")
    ax.set_xlabel("|λ_c|")
    ax.set_ylabel("PR")
    ax.set_title("PR against |λ_c|, all evaluations of all runs")
    if plotted:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finite (PR, λ_c) pair", transform=ax.transAxes, ha="center")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_sweep_figures(summary: dict, records: list[dict], out_dir: str) -> list[str]:
    """Writes the sweep figures as PNGs into `out_dir`.

    - `pass_rates.png`: one panel per criterion; pass rate with its Wilson 95% interval against
      the learning rate, one series per (student, trainable, hidden, teacher gain).
    - `pr_vs_lambda.png`: PR against |λ_c| over every evaluation of every run, coloured by
      student variant; filled markers on the stable side (λ_c < 0), hollow on the unstable side.

    **Arguments:** `summary` from `_sweep.summarise`, the `records` of `runs.jsonl`, and the
    output directory (created if missing).

    **Returns:** the paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "pass_rates.png"), os.path.join(out_dir, "pr_vs_lambda.png")]
    _pass_rates_figure(plt, summary, paths[0])
    _pr_lambda_figure(plt, records, paths[1])
    return paths
