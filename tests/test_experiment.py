"""The student–teacher experiment end to end at a tiny size: report, figures, summary, CLI and
an interrupted run resumed to the same report."""

import json
import os

import pytest

from diffrax_sntk import cli
from diffrax_sntk.experiments import (
    REPORT_SCHEMA,
    Interrupted,
    StudentTeacherConfig,
    run_student_teacher,
)

STEPS = 4
_TIMING = {"step_time_seconds", "wall_time_seconds"}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli"))
    code = cli.main(["reproduce", "--quick", "--steps", str(STEPS), "--no-progress", "--out", out])
    assert code == 0
    with open(os.path.join(out, "report.json")) as f:
        return out, json.load(f)


def test_report_files_and_schema(cli_run):
    out, report = cli_run
    for name in ["report.json", "summary.md", "training.png", "spectra.png", "landscape.png",
                 "optimizers.png"]:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert set(REPORT_SCHEMA) == set(report)
    assert len(report["loss_sgd"]) == STEPS + 1 and len(report["loss_natgrad"]) == STEPS + 1
    assert all(v is not None and v > 0 for v in report["effective_rank"])
    assert set(report["targets"]) >= {"rank_drop", "landscape_r2", "natgrad_max_increase"}
    with open(os.path.join(out, "summary.md")) as f:
        assert "Targets (measured)" in f.read()


def test_interrupted_run_resumes_to_the_same_report(cli_run, tmp_path):
    _, reference = cli_run
    cfg = StudentTeacherConfig.preset("quick", steps=STEPS)
    out = str(tmp_path)
    with pytest.raises(Interrupted):
        run_student_teacher(cfg, out, progress=False, figures=False, stop_after=3)
    with open(os.path.join(out, "checkpoint.json")) as f:
        assert json.load(f)["sgd_done"] == 3
    resumed = run_student_teacher(cfg, out, resume=True, progress=False, figures=False)
    resumed = json.loads(json.dumps(resumed))
    for key in set(reference) - _TIMING:
        assert resumed[key] == reference[key], key


def test_config_presets():
    assert StudentTeacherConfig.preset("full").hidden > StudentTeacherConfig.preset("quick").hidden
    with pytest.raises(ValueError, match="preset"):
        StudentTeacherConfig.preset("huge")
