"""The fold and Hopf tasks of the sweep (issue 17): configuration, set-ups, C4 at a Hopf crossing
on synthetic data, the per-task summary, and (slow) one seed of each task end to end."""

import dataclasses
import json

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import diffrax_sntk as ds
from diffrax_sntk.experiments import StudentTeacherConfig
from diffrax_sntk.experiments._criteria_hopf import HOPF_FORMS, c4_hopf, hopf_response
from diffrax_sntk.experiments._run import param_spec, setups
from diffrax_sntk.experiments._sweep import summarise
from diffrax_sntk.experiments._tasks import autonomous_field

# ---------------------------------------------------------------------------------------------
# Configuration


def test_config_tasks_and_backward_compatible_dict():
    pitch = StudentTeacherConfig()
    # The pitchfork run's configuration (run id, cache key) is what it was before the new tasks.
    assert not {"hopf_frequency", "teacher_bias", "teacher_frequency",
                "student_frequency"} & set(pitch.to_dict())
    assert pitch.task_label == "pitchfork" and pitch.trained == ("W",)
    fold = StudentTeacherConfig(task="fold")
    assert fold.trained == ("W", "b", "U") and fold.bias == 0.15
    fixed = StudentTeacherConfig(task="hopf", hopf_frequency="fixed")
    trained = StudentTeacherConfig(task="hopf", hopf_frequency="trained")
    assert fixed.trained == ("gain", "bulk", "U") and fixed.omega_student == 1.0
    assert trained.trained == ("gain", "bulk", "U", "omega") and trained.omega_student == 0.7
    assert (fixed.task_label, trained.task_label) == ("hopf_fixed", "hopf_trained")
    assert trained.to_dict()["hopf_frequency"] == "trained"
    with pytest.raises(ValueError, match="`hopf_frequency`"):
        StudentTeacherConfig(hopf_frequency="trained")
    with pytest.raises(ValueError, match="`teacher_bias`"):
        StudentTeacherConfig(task="hopf", teacher_bias=0.1)
    with pytest.raises(ValueError, match="`trainable`"):
        StudentTeacherConfig(task="hopf", trainable="W")
    with pytest.raises(ValueError, match="`task`"):
        StudentTeacherConfig(task="flip")


def test_config_tracker_is_analysis_only():
    pitch = StudentTeacherConfig(student="independent")
    births = dataclasses.replace(pitch, tracker="births")
    assert "tracker" not in pitch.to_dict() and births.to_dict()["tracker"] == "births"
    assert not pitch.tracks_births and births.tracks_births
    assert StudentTeacherConfig(task="fold").tracks_births
    # A different run and group, the same training (cache key); old cache keys are unchanged.
    assert births.group_key() != pitch.group_key()
    assert births.training_key() == pitch.training_key() == pitch.group_key()
    with pytest.raises(ValueError, match="`tracker`"):
        StudentTeacherConfig(tracker="all")
    with pytest.raises(ValueError, match="`tracker`"):
        StudentTeacherConfig(task="fold", tracker="initial")


# ---------------------------------------------------------------------------------------------
# Set-ups: the teacher is past the bifurcation, the student before it.


def _rightmost(model, x):
    import jax

    A = jax.jacfwd(autonomous_field)(jnp.asarray(x), model)
    return np.linalg.eigvals(np.asarray(A))


@pytest.mark.slow
def test_fold_setup_second_attractor_only_in_teacher():
    cfg = StudentTeacherConfig.preset("quick", task="fold")
    batch = setups(cfg, [0])
    pick = lambda m: __import__("jax").tree_util.tree_map(lambda a: a[0], m)
    T, S = pick(batch.teacher), pick(batch.student)
    starts = jnp.asarray(np.linspace(-3, 3, 13)[:, None] * np.asarray(T.b)[None] / 0.15)
    stable = {}
    for name, m in (("teacher", T), ("student", S)):
        fps = ds.find_fixed_points(autonomous_field, m, starts)
        pts = np.asarray(fps.states)[np.asarray(fps.unique)]
        stable[name] = [x for x in pts if np.max(_rightmost(m, x).real) < 0]
    assert len(stable["teacher"]) == 2 and len(stable["student"]) == 1
    spec = param_spec(cfg, S)
    assert spec.W and spec.b and spec.U and not spec.C


@pytest.mark.slow
def test_hopf_setup_rotation_block():
    cfg = StudentTeacherConfig.preset("quick", task="hopf", hopf_frequency="trained")
    batch = setups(cfg, [0])
    pick = lambda m: __import__("jax").tree_util.tree_map(lambda a: a[0], m)
    T, S = pick(batch.teacher), pick(batch.student)
    n = cfg.hidden
    for m, gain, omega in ((T, 1.6, 1.0), (S, 0.5, 0.7)):
        ev = _rightmost(m, np.zeros(n))
        top = ev[np.argmax(ev.real)]
        assert abs(top.real - (gain - 1)) < 1e-12 and abs(abs(top.imag) - omega) < 1e-12
    spec = param_spec(cfg, S)
    assert spec.gain and spec.omega and spec.bulk and spec.U and not spec.basis and not spec.b
    fixed = param_spec(dataclasses.replace(cfg, hopf_frequency="fixed"), S)
    assert not fixed.omega and fixed.gain


# ---------------------------------------------------------------------------------------------
# C4 at a Hopf crossing, on responses generated from each form


def _hopf_data(form, lam=0.02 + 1.0j, c1=-0.8 - 0.3j, dlam=0.4 + 0.7j, a_u=0.0):
    rng = np.random.default_rng(0)
    t_fine = np.linspace(0.0, 12.0, 481)
    z0 = rng.normal(size=3) + 1j * rng.normal(size=3)
    # z(t) from ż = λz + c1|z|²z (Heun on the same grid).
    z = np.zeros((3, t_fine.size), complex)
    z[:, 0] = 0.6 * z0 / np.abs(z0)
    f = lambda w: lam * w + c1 * np.abs(w) ** 2 * w
    for i in range(t_fine.size - 1):
        h = t_fine[i + 1] - t_fine[i]
        k1 = f(z[:, i])
        k2 = f(z[:, i] + h * k1)
        z[:, i + 1] = z[:, i] + 0.5 * h * (k1 + k2)
    v = np.array([1.0, 0.5j, 0.2 - 0.1j]) / np.linalg.norm([1.0, 0.5j, 0.2 - 0.1j])
    t_obs = t_fine[40::40]
    idx = np.searchsorted(t_fine, t_obs)
    dz = hopf_response(form, z=z, t_fine=t_fine, lam=lam, c1=c1, dlam=dlam, a_u=a_u)
    response = 2.0 * np.real(dz[:, idx, None] * v[None, None, :]) * 3.7
    return dict(response=response, v=v, z=z, t_fine=t_fine, t_obs=t_obs, lam=lam, c1=c1,
                dlam=dlam, a_u=a_u)


@pytest.mark.parametrize("form", HOPF_FORMS)
def test_c4_hopf_generating_form_wins(form):
    out = c4_hopf(**_hopf_data(form))
    errors = out["errors"]
    assert errors[form] < 1e-10
    if form == "hopf":
        assert abs(out["scale"] - 3.7) < 1e-8
    assert min(errors, key=errors.get) == form
    # Only data of the Hopf form pass; a rival's data fail the criterion (negative controls).
    assert out["pass"] is (form == "hopf")
    json.dumps(out, allow_nan=False)


def test_c4_hopf_degenerate():
    data = _hopf_data("hopf")
    out = c4_hopf(**{**data, "c1": complex(np.nan)})
    assert out["pass"] is None and out["note"] == "non-finite Hopf coefficients"
    out = c4_hopf(**{**data, "dlam": 0.0, "a_u": 0.0})
    # No perturbation: every form predicts zero, error 1 (fails).
    assert out["pass"] is False and out["value"] == 1.0
    with pytest.raises(ValueError, match="`v`"):
        c4_hopf(**{**data, "v": data["v"][:2]})


# ---------------------------------------------------------------------------------------------
# Summary by task


def test_summary_groups_by_task_with_intended_kind():
    def rec(task, freq, seed, kind, rank, c1):
        config = StudentTeacherConfig(task=task, hopf_frequency=freq, seed=seed).to_dict()
        crit = {"C1_localisation": {"pass": c1}}
        return {"config": config, "criteria": crit, "first_bifurcation_kind": kind,
                "channel_rank": rank, "error": None}

    records = [rec("fold", None, 0, "fold", 1, True), rec("fold", None, 1, "hopf", 2, False),
               rec("hopf", "trained", 0, "hopf", 2, None), rec("hopf", "fixed", 0, None, None,
                                                               False)]
    summary = summarise(records)
    tasks = {t["task"]: t for t in summary["tasks"]}
    from diffrax_sntk.experiments._sweep_report import summary_markdown

    text = summary_markdown(summary, records)
    assert "## By task" in text and "| fold | shared | 10 | 0.5 | 2 | fold: 1/2" in text
    assert set(tasks) == {"fold", "hopf_trained", "hopf_fixed"}
    assert tasks["fold"]["intended_kind_first"]["passes"] == 1
    assert tasks["fold"]["intended_kind_first"]["runs"] == 2
    assert tasks["fold"]["channel_ranks"] == {"1": 1, "2": 1}
    assert tasks["fold"]["criteria"]["C1_localisation"]["passes"] == 1
    assert tasks["hopf_fixed"]["channel_ranks"] == {"none": 1}
    assert tasks["hopf_trained"]["criteria"]["C1_localisation"]["not_assessable"] == 1


# ---------------------------------------------------------------------------------------------
# End to end, one seed of each task (slow)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["fold", "hopf_fixed", "hopf_trained"])
def test_task_end_to_end(task, tmp_path):
    from diffrax_sntk.cli import main

    args = ["sweep", "--out", str(tmp_path), "--quick", "--seeds", "1", "--learning-rates",
            "0.5", "--no-progress", "--no-figures", "--task", task.split("_")[0]]
    if task.startswith("hopf"):
        args += ["--hopf-frequency", task.split("_")[1]]
    assert main(args) == 0
    lines = [json.loads(x) for x in open(tmp_path / "runs.jsonl")]
    assert len(lines) == 1
    r = lines[0]
    assert r["error"] is None, r["error"]
    assert r["task"] == task and r["channel_rank_tol"] == 0.1
    assert set(r["criteria"]) >= {"C1_localisation", "C4_normal_form"}
    summary = json.load(open(tmp_path / "summary.json"))
    assert [t["task"] for t in summary["tasks"]] == [task]
    print(task, r["first_bifurcation_kind"], r["channel_rank"], r["bifurcations"],
          {k: (v["value"], v["pass"]) for k, v in r["criteria"].items()})


@pytest.mark.slow
def test_rotation_ctrnn_is_a_ctrnn_with_structured_weights():
    cfg = StudentTeacherConfig.preset("quick", task="hopf", hopf_frequency="fixed")
    batch = setups(cfg, [1])
    import jax

    m = jax.tree_util.tree_map(lambda a: a[0], batch.student)
    x = jr.normal(jr.PRNGKey(3), (cfg.hidden,))
    u = jnp.array([0.3])
    W = np.asarray(m.W)
    expected = -np.asarray(x) + W @ np.tanh(np.asarray(x)) + np.asarray(m.U) @ np.asarray(u)
    np.testing.assert_allclose(np.asarray(m(0.0, x, u)), expected, atol=1e-12)
    np.testing.assert_allclose(np.asarray(m.basis).T @ np.asarray(m.basis), np.eye(cfg.hidden),
                               atol=1e-12)


def _interpolated_run(task):
    """`analyse_run` on a synthetic path: the student's parameters moved linearly to the
    teacher's over 20 steps (PR values random): checks the analysis, not the claim."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from diffrax_sntk.experiments import _criteria as C
    from diffrax_sntk.experiments._analysis import analyse_run

    name, _, freq = task.partition("_")
    cfg = StudentTeacherConfig.preset("quick", task=name, learning_rates=(0.5,),
                                      learning_rate=0.5, steps=20,
                                      **({"hopf_frequency": freq} if freq else {}))
    one = jax.tree_util.tree_map(lambda a: a[0], setups(cfg, [0]))
    spec = param_spec(cfg, one.student)
    ps, pt = eqx.filter(one.student, spec), eqx.filter(one.teacher, spec)
    s = np.linspace(0, 1, cfg.steps + 1)
    hist = jax.tree_util.tree_map(lambda a, b: jnp.stack([(1 - x) * a + x * b for x in s]),
                                  ps, pt)
    losses = np.linspace(1, 1e-3, cfg.steps + 1)
    evals = np.arange(0, cfg.steps + 1, cfg.eval_every)
    rng = np.random.default_rng(0)
    top = np.sort(rng.random((len(evals), cfg.top_k)), axis=1)[:, ::-1]
    sgd = {"losses": losses, "pr": 1 + 5 * rng.random(len(evals)), "top": top, "history": hist}
    ng = {"losses": losses, "pr": sgd["pr"][::4], "eval_idx": np.arange(0, len(evals), 4),
          "history": hist}
    base = {n: {0.5: losses} for n in ("sgd", "sgd_clip", "adam")}
    rec = analyse_run(cfg, one, sgd, ng, base, {"sgd": [1.0, 1.0], "ng": [1.1, 1.2]},
                      {"initial": 1.0, "teacher": 1.0})
    return json.loads(json.dumps(C._clean(rec), allow_nan=False))


@pytest.mark.slow
@pytest.mark.parametrize(("task", "kind", "event", "rank"), [
    ("fold", "fold", "birth", 1), ("hopf_fixed", "hopf", "branch", 1),
    ("hopf_trained", "hopf", "branch", 2)])
def test_analysis_on_interpolated_path(task, kind, event, rank):
    rec = _interpolated_run(task)
    assert rec["task"] == task and rec["first_bifurcation_kind"] == kind
    assert rec["bifurcations"][0]["event"] == event and rec["channel_rank"] == rank
    if kind == "fold":
        # λ_c follows the newborn attractor: undefined before the birth, stable after it.
        lam = rec["curves"]["lam_c"]
        k = int(rec["bifurcations"][0]["step"] // 2)
        assert all(v is None for v in lam[: k + 1]) and all(v < 0 for v in lam[k + 1:])
        assert rec["curves"]["followed_equilibrium"] == "newborn"
    else:
        # g = 0.5 → 1.6 linearly: the Hopf at g = 1 lies at step 20·0.5/1.1.
        assert abs(rec["bifurcations"][0]["step"] - 20 * 0.5 / 1.1) < 1e-6
        assert set(rec["criteria"]["C4_normal_form"]["errors"]) == {"hopf", "linear",
                                                                    "no_rotation"}
    print(task, {k: (v["value"], v["pass"]) for k, v in rec["criteria"].items()})
