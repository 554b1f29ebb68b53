"""`summary.md` and the sweep figures, on synthetic records (no training)."""

import os

import numpy as np
import pytest

from diffrax_sntk.experiments._sweep import CRITERIA, summarise
from diffrax_sntk.experiments._sweep_report import summary_markdown, write_sweep_figures


def _config(seed, lr, student="shared"):
    return {
        "seed": seed,
        "learning_rate": lr,
        "learning_rates": [0.1, 0.5],
        "student": student,
        "trainable": None,
        "hidden": 4,
        "teacher_gain": 1.6,
    }


def _record(seed, lr, passes, student="shared", note=None):
    criteria = {name: {"value": 0.5, "pass": passes, "note": note} for name in CRITERIA}
    criteria["C1_localisation"]["p_value"] = 0.01 * (seed + 1)
    criteria["C5_optimizer"].update(
        {
            "value": 10 + seed,
            "best_baseline": {"steps": 20, "name": "adam", "lr": 0.1},
            "learning_rate_stable": seed == 0,
            "sgd_spikes_at_crossing": True,
        }
    )
    return {
        "config": _config(seed, lr, student),
        "criteria": criteria,
        "bifurcations": [{"kind": "pitchfork", "step": 5.5, "direction": "stable_to_unstable"}],
        "first_bifurcation_kind": "pitchfork",
        "at_crossing": {},
        "curves": {
            "eval_steps": [0, 2, 4, 6],
            "pr": [3.0, None, 1.2, 1.5],
            "lam_c": [-0.8, -0.3, None, 0.1],
        },
        "error": None,
        "wall_time_seconds": 1.0,
    }


def _error_record(seed, lr):
    return {
        "config": _config(seed, lr),
        "criteria": {name: {"value": None, "pass": None, "note": "error"} for name in CRITERIA},
        "bifurcations": [],
        "first_bifurcation_kind": None,
        "at_crossing": {},
        "curves": {},
        "error": "FloatingPointError: boom",
        "wall_time_seconds": None,
    }


@pytest.fixture
def sweep():
    records = [
        _record(0, 0.1, True),
        _record(1, 0.1, True),
        _record(2, 0.1, False, note="no crossing"),
        _record(0, 0.5, False, note="no crossing"),
        _record(1, 0.5, True, student="independent"),
        _error_record(1, 0.5),
    ]
    return summarise(records), records


def test_markdown(sweep):
    summary, records = sweep
    md = summary_markdown(summary, records)
    for name in CRITERIA:
        assert name in md or name.split("_")[0] in md
        assert f"### {name}" in md
    # Group shared, lr 0.1: 2 of 3 pass; Wilson 95% interval of 2/3 is [20.8%, 93.9%].
    assert "2/3 (67%, [21%, 94%])" in md
    # Group shared, lr 0.5: 0/2 with one not assessable (the errored run).
    assert "0/2 (0%, [0%, 66%]), n/a 1" in md
    assert "no crossing: 1/3" in md
    # C5: 1 of 3 runs at lr 0.1 has a stable rate; median NG steps 11.
    assert "| 1/3 | 3/3 | 11 | 20 | 0 |" in md
    # C1 median p-value of seeds 0..2 at lr 0.1.
    assert "| 0.02 | 3 |" in md


def test_errors_listed(sweep):
    summary, records = sweep
    md = summary_markdown(summary, records)
    errors = md.split("## Errors")[1]
    assert "FloatingPointError: boom" in errors
    assert "| shared | W | 4 | 1.6 | 1 | 0.5 |" in errors
    clean = summary_markdown(summarise(records[:2]), records[:2])
    assert "No run raised an error." in clean


def test_figures(sweep, tmp_path):
    summary, records = sweep
    paths = write_sweep_figures(summary, records, str(tmp_path))
    assert sorted(os.path.basename(p) for p in paths) == ["pass_rates.png", "pr_vs_lambda.png"]
    for p in paths:
        assert os.path.getsize(p) > 1000


def test_figures_only_empty_curves(tmp_path):
    records = [_error_record(0, 0.1)]
    paths = write_sweep_figures(summarise(records), records, str(tmp_path / "out"))
    assert all(os.path.getsize(p) > 0 for p in paths)


def test_c6_counts_distinct_timings():
    # Three runs share one timing (one sweep invocation), a fourth has its own: two timings.
    records = [_record(s, 0.1, True) for s in range(4)]
    timings = [(1.1, 1.0, True)] * 3 + [(1.4, 1.0, False)]
    for r, (ng, sgd, ok) in zip(records, timings, strict=True):
        r["criteria"]["C6_cost"].update(value=ng / sgd, ng_mean=ng, sgd_mean=sgd, **{"pass": ok})
    summary = summarise(records)
    assert summary["groups"][0]["c6_timings"] == {"count": 2, "passes": 1, "values": [1.1, 1.4],
                                                "per_solver_step": []}
    assert summary["groups"][0]["criteria"]["C6_cost"]["passes"] == 3
    md = summary_markdown(summary, records)
    assert "#1: 1 of 2 pass (1.1, 1.4)" in md
    # Timed under the session-9 amendment: the per-solver-step ratio is listed too.
    records[3]["criteria"]["C6_cost"]["per_solver_step_ratio"] = 1.9
    summary = summarise(records)
    assert summary["groups"][0]["c6_timings"]["per_solver_step"] == [1.9]
    assert "#1: 1 of 2 pass (1.1, 1.4; per solver step 1.9)" in summary_markdown(summary, records)
    # Runs without timing details (an errored C6) count no timing.
    bare = summarise([_record(0, 0.1, True)])
    assert bare["groups"][0]["c6_timings"] == {"count": 0, "passes": 0, "values": [],
                                                 "per_solver_step": []}


def test_branch_lost_step():
    from diffrax_sntk.experiments._analysis import branch_lost_step

    steps = np.arange(0, 10, 2)
    nan = float("nan")
    # Lost at the third evaluation (step 4), no crossing: reported.
    assert branch_lost_step(steps, [-0.5, -0.3, nan, nan, nan], []) == 4.0
    # Never lost, never tracked, or lost only after a crossing: None.
    assert branch_lost_step(steps, [-0.5, -0.3, -0.1, 0.1, 0.2], []) is None
    assert branch_lost_step(steps, [nan] * 5, []) is None
    assert branch_lost_step(steps, [-0.5, -0.1, 0.2, nan, nan], [3.0]) is None
