"""The student–teacher experiment end to end at a tiny size: the `reproduce` report, figures and
summary; an interrupted run resumed to the same report; the `sweep` command's files, its
`--resume`; and (slow) the negative control at the real size.

The reproduce and sweep runs share one configuration shape (quick preset, one seed, the quick
rate grid), so they share the compiled programs. Those three end-to-end tests run with
`-m slow`: their one fixture compiles every program of the experiment (six optimizers' training
scans, the sNTK evaluation, the step timings, the analysis), about 240 s of the default suite's
budget on 2 cores; the pieces are covered by default in test_criteria, test_sweep_report and
test_tasks."""

import json
import os

import pytest

from diffrax_sntk import cli
from diffrax_sntk.experiments import (
    CRITERIA,
    REPORT_SCHEMA,
    Interrupted,
    StudentTeacherConfig,
    run_student_teacher,
    run_sweep,
)

STEPS = 4
_TIMING = {"wall_time_seconds"}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli"))
    code = cli.main(["reproduce", "--quick", "--steps", str(STEPS), "--no-progress", "--out", out])
    assert code == 0
    with open(os.path.join(out, "report.json")) as f:
        return out, json.load(f)


@pytest.mark.slow
def test_report_files_and_schema(cli_run):
    out, report = cli_run
    for name in ["report.json", "summary.md", "training.png", "spectra.png", "landscape.png",
                 "optimizers.png"]:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert set(REPORT_SCHEMA) == set(report)
    assert report["schema_version"] == 2 and report["error"] is None
    assert set(report["criteria"]) == set(CRITERIA)
    for c in report["criteria"].values():
        assert {"value", "pass", "note"} <= set(c)
    curves = report["curves"]
    assert len(curves["loss_sgd"]) == STEPS + 1 and len(curves["loss_ng"]) == STEPS + 1
    assert all(v is not None and v > 0 for v in curves["pr"])
    assert set(report["optimizer_losses"]) == {"sgd", "sgd_clip", "adam", "ng1", "ng2", "ng4"}
    # The natural gradient's failed refreshes are reported with the run (none here).
    assert curves["ng_refresh_failures"] == 0
    with open(os.path.join(out, "summary.md")) as f:
        text = f.read()
    assert "C4_normal_form" in text and "p-value" in text


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_report(cli_run, tmp_path):
    _, reference = cli_run
    cfg = StudentTeacherConfig.preset("quick", steps=STEPS)
    out = str(tmp_path)
    with pytest.raises(Interrupted):
        run_student_teacher(cfg, out, progress=False, figures=False, stop_after=1)
    assert any(name.startswith("training-") for name in os.listdir(out))
    resumed = run_student_teacher(cfg, out, resume=True, progress=False, figures=False)
    resumed = json.loads(json.dumps(resumed))
    for key in set(reference) - _TIMING - {"criteria"}:
        assert resumed[key] == reference[key], key
    # C6 is a wall-time ratio measured in each process; every other criterion is identical.
    for name in set(CRITERIA) - {"C6_cost"}:
        assert resumed["criteria"][name] == reference["criteria"][name], name


@pytest.mark.slow
def test_sweep_cli_files_and_resume(cli_run, tmp_path, capsys):
    out = str(tmp_path / "sweep")
    args = ["sweep", "--out", out, "--quick", "--seeds", "1", "--steps", str(STEPS),
            "--no-progress"]
    assert cli.main(args) == 0
    with open(os.path.join(out, "runs.jsonl")) as f:
        lines = f.read().splitlines()
    runs = [json.loads(line) for line in lines]
    rates = StudentTeacherConfig.preset("quick").learning_rates
    assert sorted(r["config"]["learning_rate"] for r in runs) == sorted(rates)
    for r in runs:
        assert {"config", "criteria", "bifurcations", "error"} <= set(r)
        assert r["error"] is None
        assert set(r["criteria"]) == set(CRITERIA)
        for c in r["criteria"].values():
            assert c["pass"] in (True, False, None)
            assert c["value"] is None or isinstance(c["value"], (int, float))
        for b in r["bifurcations"]:
            assert {"kind", "step"} <= set(b)
        # C6 timed at the run's own rate, with solver steps (protocol amendment, session 9).
        c6 = r["criteria"]["C6_cost"]
        assert c6["timed_rate"] == r["config"]["learning_rate"]
        assert c6["per_solver_step_ratio"] > 0 and c6["sgd_solver_steps_median"] >= 1
    assert len({r["criteria"]["C6_cost"]["sgd_mean"] for r in runs}) == len(rates)
    # The quick reproduce run is the sweep's run at rate 0.5, seed 0: the same analysis.
    _, reference = cli_run
    same = next(r for r in runs if r["config"]["learning_rate"] == 0.5)
    assert same["bifurcations"] == reference["bifurcations"]
    assert same["curves"]["pr"] == reference["curves"]["pr"]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert len(summary["groups"]) == len(rates)
    for g in summary["groups"]:
        for name in CRITERIA:
            stats = g["criteria"][name]
            assert {"passes", "runs", "rate", "wilson_low", "wilson_high"} <= set(stats)
            assert stats["runs"] == 1
            assert 0 <= stats["wilson_low"] <= stats["rate"] <= stats["wilson_high"] <= 1
    for name in ["summary.md", "pass_rates.png", "pr_vs_lambda.png"]:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    # --resume finds every run finished: nothing is retrained or appended.
    assert cli.main(args + ["--resume"]) == 0
    with open(os.path.join(out, "runs.jsonl")) as f:
        assert f.read().splitlines() == lines
    # The births-aware variant re-analyses the same training (the cache), as new runs.
    capsys.readouterr()
    assert cli.main(args + ["--resume", "--tracker", "births"]) == 0
    log = capsys.readouterr().out
    assert "loaded the training results" in log and "trained sgd" not in log
    with open(os.path.join(out, "runs.jsonl")) as f:
        after = f.read().splitlines()
    assert after[: len(lines)] == lines and len(after) == 2 * len(lines)
    for r in map(json.loads, after[len(lines):]):
        assert r["config"]["tracker"] == "births" and r["error"] is None
        assert {"births", "deaths", "followed_equilibrium"} <= set(r["curves"])
        assert all(b["event"] in ("branch", "birth", "death") for b in r["bifurcations"])
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert len(summary["groups"]) == 2 * len(rates)
    assert {t.get("tracker") for t in summary["tasks"]} == {None, "births"}
    assert cli.main(["sweep", "--out", out, "--task", "fold", "--tracker", "initial"]) == 2


def test_config_validation():
    assert StudentTeacherConfig.preset("full").hidden > StudentTeacherConfig.preset("quick").hidden
    with pytest.raises(ValueError, match="preset"):
        StudentTeacherConfig.preset("huge")
    with pytest.raises(ValueError, match="`student`"):
        StudentTeacherConfig(student="twin")
    with pytest.raises(ValueError, match="`learning_rates`"):
        StudentTeacherConfig(learning_rates=(0.1, -1.0))
    assert StudentTeacherConfig(student="independent").trained == ("W", "b", "U")
    assert StudentTeacherConfig().trained == ("W",)


def test_needs_float64_and_leaves_the_global_config_alone(tmp_path):
    # The experiment checks for float64 and raises; it never turns it on itself (library code
    # must not change global JAX configuration; the CLI does it).
    import jax

    cfg = StudentTeacherConfig.preset("quick", steps=STEPS)
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="`run_student_teacher` needs float64"):
            run_student_teacher(cfg, None, progress=False, figures=False)
        with pytest.raises(ValueError, match="`run_sweep` needs float64"):
            run_sweep(str(tmp_path), [cfg], [0], progress=False, figures=False)
        assert not jax.config.read("jax_enable_x64")
    assert not os.listdir(tmp_path)  # nothing was started


@pytest.mark.slow
def test_negative_control_never_passes(tmp_path):
    # A teacher below the bifurcation: the student has nothing to cross. C1–C4 must not pass.
    cfg = StudentTeacherConfig(teacher_gain=0.8, learning_rates=(0.1, 0.5))
    summary = run_sweep(str(tmp_path), [cfg], [0, 1], progress=False, figures=False)
    for g in summary["groups"]:
        for name in ("C1_localisation", "C2_depth", "C3_channel", "C4_normal_form"):
            assert g["criteria"][name]["passes"] == 0, (g["config"]["learning_rate"], name)


# Slow (about 40 s of compiles of its own): the matrix-free estimators it relies on are checked
# by default in test_spectral; run it with `-m slow` before a sweep at N >= 64.
@pytest.mark.slow
def test_matrix_free_path_agrees_with_exact():
    # The N >= 64 path (matrix-free PR, top eigenpairs, u1 = Jᵀv1/‖·‖) on a tiny model, against
    # the exact path; the response J u1 is defined up to the sign of u1.
    import dataclasses

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from diffrax_sntk.experiments import _analysis, _run

    cfg = StudentTeacherConfig.preset("quick", steps=STEPS)
    one = jax.tree_util.tree_map(lambda x: x[0], _run.setups(cfg, [0]))
    spec = _run.param_spec(cfg, one.student)
    params = eqx.filter(one.student, spec)
    key = jax.random.PRNGKey(3)
    evaluate = eqx.filter_jit(_run._evaluate_one)
    exact_pr, exact_top = evaluate(dataclasses.replace(cfg, pr_method="exact"), params,
                                   one.student, one.y0, 2, key)
    free_pr, free_top = evaluate(dataclasses.replace(cfg, pr_method="matfree"), params,
                                 one.student, one.y0, 2, key)
    assert np.all(np.isfinite(exact_top)) and np.all(np.isnan(free_top))
    assert abs(float(free_pr) / float(exact_pr) - 1) < 0.1
    problem = _run.make_problem(cfg, one.y0)
    pr_e, gap_e, _, resp_e = _analysis._state_response(cfg, one.student, problem, spec, True)
    pr_f, gap_f, _, resp_f = _analysis._state_response(cfg, one.student, problem, spec, False)
    assert abs(pr_f / pr_e - 1) < 0.1 and abs(gap_f / gap_e - 1) < 1e-3
    sign = np.sign(np.sum(resp_e * resp_f))
    assert np.allclose(sign * resp_f, resp_e, rtol=1e-4, atol=1e-6 * np.abs(resp_e).max())
    assert jnp.asarray(resp_f).shape == (cfg.trials, cfg.times, cfg.hidden)
