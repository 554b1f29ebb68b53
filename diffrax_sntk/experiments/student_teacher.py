r"""The paper's student–teacher experiment (arXiv 2605.12763): one run, as a reusable function.

A *teacher* CTRNN τẋ = −x + W tanh(x) + U u(t) has passed a pitchfork along a direction q
(gain g_T > 1 along q, the rest stable), so input pulses along q send each trial into one of two
stable states. A *student* starts before the bifurcation (gain g_S < 1 along its q) and learns
from the teacher's outputs; to fit them it must cross the pitchfork. `run_student_teacher` is one
run of the pre-registered protocol (`docs/student_teacher_protocol.md`): one seed and one
learning rate, with the optimizer comparison over the configuration's learning-rate grid, the
criteria C1–C6, the loss landscape along the dominant direction (centre pinned at the crossing)
and figures. `run_sweep` runs many seeds and rates.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

from ._config import StudentTeacherConfig, require_x64
from ._sweep import run_group

__all__ = ["StudentTeacherConfig", "run_student_teacher", "REPORT_SCHEMA", "Interrupted"]

REPORT_SCHEMA: dict[str, str] = {
    "schema_version": "integer, currently 2",
    "config": "the StudentTeacherConfig of the run (all fields)",
    "criteria": "C1_localisation … C6_cost: {value, pass, note, …details} as defined in "
    "docs/student_teacher_protocol.md",
    "bifurcations": "every bifurcation of the tracked equilibrium along SGD: {kind, step "
    "(fractional), direction}",
    "first_bifurcation_kind": "kind of the first one, or null",
    "at_crossing": "at the weights interpolated to the first bifurcation: step, kind, PR, "
    "s1/s2, channel energy fraction, dominant overlap, alignment, normal-form and reduced "
    "coefficients, and the loss landscape along u1 with its pinned-centre check",
    "curves": "eval_steps, pr, lam_c, top (sNTK eigenvalues), loss_sgd, loss_ng, and the "
    "natural-gradient run's ng_eval_steps, ng_pr, ng_lam_c, ng_bifurcations, "
    "ng_refresh_failures (failed eigenbasis refreshes, each keeping the previous basis)",
    "optimizer_losses": "loss curve of every optimizer (sgd, sgd_clip, adam, ng1, ng2, ng4) at "
    "the run's learning rate",
    "branch_lost_step": "first evaluation step at which the followed equilibrium was lost "
    "before any crossing, or null (a diagnostic; the criteria are unchanged)",
    "error": "null, or the message of an analysis failure",
    "wall_time_seconds": "total wall time of the call",
}


class Interrupted(RuntimeError):
    """Raised when a run stops at `stop_after` (used to test `--resume`)."""


def run_student_teacher(
    config: StudentTeacherConfig | None = None,
    out_dir: str | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run one student–teacher run and return its report (also written to `out_dir`).

    **Arguments:**

    - `config`: a `StudentTeacherConfig` (default: the default preset). Its `learning_rate` is
        the run's; `learning_rates` is the grid of the optimizer comparison (the run's rate is
        added to it if missing).
    - `out_dir`: where `report.json`, `summary.md`, the figures and the training cache go
        (`None`: no files).
    - `resume`: reuse the training results saved in `out_dir` by an earlier call with the same
        config (the analysis reruns; the report is the same).
    - `progress`: print progress lines.
    - `figures`: write the PNG figures.
    - `stop_after`: `1` raises `Interrupted` once the training results are saved, to exercise
        `resume`.
    - `log`: where to print status lines.

    **Returns:**

    The report dictionary; its schema is `REPORT_SCHEMA`. Enable float64 (`jax_enable_x64`)
    before calling: the spectral quantities need it (the CLI does).
    """
    require_x64("run_student_teacher")
    cfg = StudentTeacherConfig() if config is None else config
    if cfg.learning_rate not in cfg.learning_rates:
        cfg = dataclasses.replace(
            cfg, learning_rates=tuple(sorted(cfg.learning_rates + (cfg.learning_rate,))))
    t_start = time.perf_counter()
    cache = None
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        cache = os.path.join(out_dir, f"training-{cfg.training_key()}-{cfg.seed}.npz")
        meta = os.path.join(out_dir, "checkpoint.json")
        if not resume and os.path.exists(cache):
            os.remove(cache)
        with open(meta, "w") as f:
            json.dump({"config": cfg.to_dict(), "training_cache": os.path.basename(cache)}, f)

    def interrupt():
        if stop_after is not None:
            raise Interrupted("stopped after the training phase (stop_after)")

    quiet = (lambda _: None) if not progress else log
    records = run_group(
        cfg, [cfg.seed], done=lambda c: c["learning_rate"] != cfg.learning_rate,
        landscape=True, cache=cache, after_training=interrupt, log=quiet,
    )
    report: dict[str, Any] = {"schema_version": 2, **records[0]}
    report["wall_time_seconds"] = time.perf_counter() - t_start
    report = {k: report.get(k) for k in REPORT_SCHEMA}
    if out_dir is not None:
        with open(os.path.join(out_dir, "report.json"), "w") as f:
            json.dump(report, f, indent=1, allow_nan=False)
        with open(os.path.join(out_dir, "summary.md"), "w") as f:
            f.write(_summary(report))
        if figures:
            from ._student_teacher_figures import write_figures

            write_figures(report, out_dir)
    return report


def _fmt(v, spec=".3g"):
    if v is None:
        return "n/a"
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _summary(r: dict) -> str:
    cfg = r["config"]
    lines = [
        "# Student–teacher run: criteria C1–C6",
        "",
        f"CTRNN N = {cfg['hidden']} ({cfg['student']} student), {cfg['trials']} trials × "
        f"{cfg['times']} times, {cfg['steps']} SGD steps at learning rate "
        f"{cfg['learning_rate']}, seed {cfg['seed']} (teacher gain {cfg['teacher_gain']}, "
        f"student gain {cfg['student_gain']}). Criteria as pre-registered in "
        "`docs/student_teacher_protocol.md`.",
        "",
    ]
    if r.get("error"):
        lines += [f"**The analysis failed:** {r['error']}", ""]
    lines += ["## Bifurcations of the tracked equilibrium along SGD", ""]
    if r["bifurcations"]:
        lines += [f"- {b['kind']} at step {b['step']:.2f} (direction {b['direction']:+d})"
                  for b in r["bifurcations"]]
    else:
        lines.append("- none detected")
    lines += ["", "## Criteria", "", "| criterion | value | pass | note |", "|---|---|---|---|"]
    for name, c in r["criteria"].items():
        verdict = {True: "yes", False: "NO", None: "n/a"}[c.get("pass")]
        lines.append(f"| {name} | {_fmt(c.get('value'))} | {verdict} | {c.get('note') or ''} |")
    c1, c5, c6 = (r["criteria"][k] for k in ("C1_localisation", "C5_optimizer", "C6_cost"))
    lines += [
        "",
        f"- C1 permutation p-value (crossings placed at random): {_fmt(c1.get('p_value'))}",
        f"- C5: natural gradient reached 1e-2·L0 in {_fmt(c5.get('value'))} steps; best baseline "
        f"{_fmt((c5.get('best_baseline') or {}).get('name'))} at lr "
        f"{_fmt((c5.get('best_baseline') or {}).get('lr'))} in "
        f"{_fmt((c5.get('best_baseline') or {}).get('steps'))} steps; NG spike "
        f"{_fmt(c5.get('ng_spike'))}; this rate is below 2/λ_max(GN) at the initial and the "
        f"teacher parameters: {c5.get('learning_rate_stable')}; SGD spikes at the crossing: "
        f"{c5.get('sgd_spikes_at_crossing')}",
        f"- C6: mean NG step / mean SGD step {_fmt(c6.get('value'))} (median "
        f"{_fmt(c6.get('median_ratio'))}), refresh steps included"
        + (f", timed at lr {_fmt(c6.get('timed_rate'))}" if c6.get("timed_rate") else "")
        + (f"; per accepted solver step {_fmt(c6.get('per_solver_step_ratio'))} (SGD median "
           f"{_fmt(c6.get('sgd_solver_steps_median'))}, NG median "
           f"{_fmt(c6.get('ng_solver_steps_median'))} solver steps)"
           if c6.get("per_solver_step_ratio") is not None else ""),
    ]
    at = r.get("at_crossing") or {}
    land = at.get("landscape")
    if land:
        chk = land["check"]
        lines.append(
            f"- Landscape along u1, centre pinned at the crossing: R² = {_fmt(chk.get('r2'))} "
            f"(straight line {_fmt(chk.get('r2_line'))}), check "
            f"{'passes' if chk.get('pass') else 'fails'}")
    lines += ["", "Figures: `training.png`, `spectra.png`, `landscape.png`, `optimizers.png`.", ""]
    return "\n".join(lines)
