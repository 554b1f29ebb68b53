"""The per-run criteria of docs/student_teacher_protocol.md on synthetic data (NumPy only).

Each criterion is checked on a case built to pass and on negative controls built to fail.
"""

import json
import math

import numpy as np
import pytest

from diffrax_sntk.experiments import _criteria as cr


def _dumps(result):
    return json.dumps(result, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# Statistics


def test_spearman_with_ties_matches_hand_computation():
    # Ranks x = (1, 2.5, 2.5, 4), y = (1, 3, 2, 4): ρ = 4.5 / sqrt(4.5 · 5) = 3/sqrt(10).
    assert cr.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10), abs=1e-12)
    assert cr.spearman([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    # Non-finite pairs are dropped; too few or constant ranks give None.
    assert cr.spearman([1, 2, np.nan, 3], [1, 2, 5, 3]) == pytest.approx(1.0)
    assert cr.spearman([1, 2], [1, 2]) is None
    assert cr.spearman([1, 1, 1, 1], [1, 2, 3, 4]) is None
    with pytest.raises(ValueError, match="`y`"):
        cr.spearman([1, 2, 3], [1, 2])


def test_wilson_interval_known_values():
    low, high = cr.wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    low, high = cr.wilson_interval(0, 20)
    assert low == 0.0 and round(high, 3) == 0.161
    assert cr.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="`passes`"):
        cr.wilson_interval(3, 2)


def test_criterion_stats_counts_not_assessable_as_runs():
    stats = cr.criterion_stats([True, False, None, True])
    assert stats["passes"] == 2 and stats["runs"] == 4 and stats["not_assessable"] == 1
    assert stats["rate"] == 0.5
    assert (stats["wilson_low"], stats["wilson_high"]) == pytest.approx(cr.wilson_interval(2, 4))
    empty = cr.criterion_stats([])
    assert empty["rate"] is None and (empty["wilson_low"], empty["wilson_high"]) == (0.0, 1.0)
    _dumps(stats), _dumps(empty)
    with pytest.raises(ValueError, match="`passes_list`"):
        cr.criterion_stats([True, 0.5])


# ---------------------------------------------------------------------------------------------
# C1


def _c1_run():
    """21 evaluations every 10 steps; lam_c crosses 0 at step 100 where PR has a V-shaped dip."""
    eval_steps = np.arange(0, 201, 10.0)
    lam_c = np.linspace(-1.0, 1.0, 21)
    pr = 1.0 + 5.0 * np.abs(lam_c)
    return dict(eval_steps=eval_steps, pr=pr, lam_c=lam_c, eval_every=10, steps=200)


def test_local_minima_ends_and_nan():
    got = cr.local_minima([1.0, 2.0, 0.5, 0.5, 3.0, np.nan, 4.0, 2.0])
    assert got.tolist() == [True, False, True, True, False, False, False, True]
    assert cr.local_minima([np.nan]).tolist() == [False]


def test_c1_dip_at_crossing_passes():
    res = cr.c1_localisation(crossings=[101.3], **_c1_run())
    assert res["pass"] is True and res["note"] is None
    assert res["rho"] == pytest.approx(1.0) and res["value"] == res["rho"]
    assert res["localised"] == [True] and res["num_crossings"] == 1
    assert res["stable_evaluations"] == 10
    # One minimum on [0, 200] with a ±10 window: a random crossing is localised ~10% of the time.
    assert 0.05 < res["p_value"] < 0.2
    _dumps(res)


def test_c1_crossing_away_from_dip_fails():
    res = cr.c1_localisation(crossings=[101.3, 30.0], **_c1_run())
    assert res["pass"] is False and res["localised"] == [True, False]
    res = cr.c1_localisation(crossings=[30.0], **_c1_run())
    assert res["pass"] is False


def test_c1_no_crossing_fails_with_note():
    res = cr.c1_localisation(crossings=[], **_c1_run())
    assert res["pass"] is False and res["note"] == "no crossing"
    assert res["value"] == pytest.approx(1.0) and res["p_value"] is None
    _dumps(res)


def test_c1_low_rho_fails():
    run = _c1_run()
    run["pr"] = 1.0 + 5.0 * np.abs(run["lam_c"])
    run["pr"][:10] = run["pr"][:10][::-1]  # PR falls with |lam_c| on the stable side
    run["pr"][10] = 0.5  # keep the dip at the crossing
    res = cr.c1_localisation(crossings=[100.0], **run)
    assert res["localised"] == [True] and res["rho"] < 0 and res["pass"] is False


def test_c1_period_two_pr_localises_trivially_and_the_p_value_shows_it():
    run = _c1_run()
    run["pr"] = 3.0 + 0.5 * (-1.0) ** np.arange(21)  # every other evaluation a local minimum
    res = cr.c1_localisation(crossings=[37.0, 150.0], **run)
    assert res["localised"] == [True, True]
    assert res["p_value"] > 0.3


def test_c1_validates_shapes():
    run = _c1_run()
    run["pr"] = run["pr"][:-1]
    with pytest.raises(ValueError, match="`pr`"):
        cr.c1_localisation(crossings=[100.0], **run)


# ---------------------------------------------------------------------------------------------
# C2


def _c2_run(pr_at_crossing, lam_c=None):
    lam_c = np.linspace(-1.0, 1.0, 21) if lam_c is None else lam_c
    pr = 10.0 - 9.0 * np.exp(-((lam_c / 0.1) ** 2))
    s = np.stack([np.full_like(lam_c, 2.0), np.ones_like(lam_c), np.full_like(lam_c, 0.5)], 1)
    return dict(pr=pr, lam_c=lam_c, top_eigenvalues=s, pr_at_crossing=pr_at_crossing)


def test_c2_deep_dip_passes():
    res = cr.c2_depth(gap_at_crossing=50.0, has_crossing=True, **_c2_run(1.0))
    assert res["pass"] is True
    assert res["reference"] == pytest.approx(10.0) and res["value"] == pytest.approx(0.1)
    assert res["gap_far"] == pytest.approx(2.0) and res["gap_at_crossing"] == 50.0
    _dumps(res)


def test_c2_shallow_dip_or_no_gap_fails():
    res = cr.c2_depth(gap_at_crossing=50.0, has_crossing=True, **_c2_run(5.0))
    assert res["value"] == pytest.approx(0.5) and res["pass"] is False
    res = cr.c2_depth(gap_at_crossing=2.0, has_crossing=True, **_c2_run(1.0))
    assert res["pass"] is False


def test_c2_not_assessable_and_no_crossing():
    # No evaluation with |lam_c| >= 0.5: gap_far undecidable.
    near = cr.c2_depth(
        gap_at_crossing=50.0, has_crossing=True, **_c2_run(1.0, np.linspace(-0.45, 0.45, 19))
    )
    assert near["gap_far"] is None and near["reference"] is not None and near["pass"] is None
    # Fewer than 3 evaluations with |lam_c| >= 0.3: no reference.
    few = cr.c2_depth(
        gap_at_crossing=50.0, has_crossing=True, **_c2_run(1.0, np.linspace(-0.35, 0.35, 8))
    )
    assert few["reference"] is None and few["value"] is None and few["pass"] is None
    none = cr.c2_depth(
        pr=None,
        lam_c=None,
        top_eigenvalues=None,
        pr_at_crossing=None,
        gap_at_crossing=None,
        has_crossing=False,
    )
    assert none["pass"] is False and none["note"] == "no crossing"
    _dumps(near), _dumps(few), _dumps(none)
    with pytest.raises(ValueError, match="`top_eigenvalues`"):
        run = _c2_run(1.0)
        run["top_eigenvalues"] = run["top_eigenvalues"][:, :1]
        cr.c2_depth(gap_at_crossing=50.0, has_crossing=True, **run)


# ---------------------------------------------------------------------------------------------
# C3


def test_choose_channel_evaluations():
    lam_c = np.linspace(-1.0, 0.5, 31)  # stable side: indices 0..19
    got = cr.choose_channel_evaluations(lam_c)
    assert len(got) == 6 and got[0] == 0 and got[-1] == 19 and got == sorted(got)
    assert all(lam_c[i] < 0 for i in got)
    # Nearest to each target, duplicates dropped.
    assert cr.choose_channel_evaluations(np.array([-0.1, -0.1, -0.9, 0.3])) == [0, 2]
    assert cr.choose_channel_evaluations(np.array([0.1, 0.2])) == []


_C3 = dict(
    energy_at_crossing=0.95,
    overlap_at_crossing=0.995,
    lam_c_points=np.array([-0.1, -0.3, -0.5, -0.8]),
    energy_points=np.array([0.8, 0.6, 0.4, 0.2]),
    overlap_points=np.array([0.99, 0.9, 0.5, 0.3]),
    has_crossing=True,
)


def test_c3_channel_passes():
    res = cr.c3_channel(**_C3)
    assert res["pass"] is True and res["value"] == 0.95
    assert res["decreasing_rho"] == pytest.approx(-1.0) and res["overlap_far_min"] == 0.3
    assert res["points"] == 5
    _dumps(res)


def test_c3_not_diagnostic_increasing_and_no_crossing():
    res = cr.c3_channel(**{**_C3, "overlap_points": np.full(4, 0.95)})
    assert res["pass"] is None and res["note"] == "not diagnostic"
    res = cr.c3_channel(**{**_C3, "energy_points": np.array([0.96, 0.97, 0.98, 0.99])})
    assert res["decreasing_rho"] > 0 and res["pass"] is False
    res = cr.c3_channel(**{**_C3, "energy_at_crossing": 0.5})
    assert res["pass"] is False
    res = cr.c3_channel(
        energy_at_crossing=None,
        overlap_at_crossing=None,
        lam_c_points=None,
        energy_points=None,
        overlap_points=None,
        has_crossing=False,
    )
    assert res["pass"] is False and res["note"] == "no crossing"
    _dumps(res)


# ---------------------------------------------------------------------------------------------
# C4


_COEFFS = dict(lam_c=-0.05, b2=1.5, b3=-6.0, a_u=0.2, b1_u=1.0)


def _c4_data(form, coeffs=_COEFFS):
    """R = 3.7 q ⊗ δw_form (+1e-3 relative noise) from w_b(t) = A_b e^{-0.3 t}."""
    rng = np.random.default_rng(0)
    t_fine = np.linspace(0.0, 8.0, 321)  # 40 points per unit time
    amp = rng.uniform(0.5, 2.0, 6) * np.array([1, -1, 1, -1, 1, -1])
    w = amp[:, None] * np.exp(-0.3 * t_fine)[None]
    q = np.array([0.6, 0.8, 0.0])
    t_obs = t_fine[::20][1:] + 0.004  # off-grid by less than half a fine step
    dw = cr.normal_form_response(form, w=w, t_fine=t_fine, **coeffs)
    idx = np.rint(t_obs / 0.025).astype(int)
    response = 3.7 * dw[:, idx, None] * q
    noise = rng.standard_normal(response.shape)
    response = response + 1e-3 * np.linalg.norm(response) / np.linalg.norm(noise) * noise
    return dict(
        response=response, q=q, w=w, t_fine=t_fine, t_obs=t_obs, has_crossing=True, **coeffs
    )


def test_normal_form_response_heun_matches_closed_form():
    # Linear form with w = 0: δw = (a_u/λ)(e^{λt} − 1).
    t = np.linspace(0.0, 4.0, 161)
    dw = cr.normal_form_response(
        "linear", w=np.zeros((1, 161)), t_fine=t, lam_c=-0.5, b2=0.0, b3=0.0, a_u=0.3, b1_u=1.0
    )
    np.testing.assert_allclose(dw[0], 0.3 / -0.5 * (np.exp(-0.5 * t) - 1), rtol=1e-4)
    # Constant w = w0: each form is linear with constant coefficients, rate r and forcing g,
    # δw = (g/r)(e^{rt} − 1).
    w0 = 0.4
    coeffs = dict(lam_c=-0.5, b2=1.5, b3=-6.0, a_u=0.3, b1_u=1.0)
    expected = {
        "pitchfork": (-0.5 - 3.0 * w0**2, 0.3 + w0),
        "transcritical": (-0.5 + 1.5 * w0, 0.3 + w0),
        "fold": (-0.5 + 1.5 * w0, 0.3),
        "linear": (-0.5, 0.3 + w0),
    }
    for form, (r, g) in expected.items():
        dw = cr.normal_form_response(form, w=np.full((1, 161), w0), t_fine=t, **coeffs)
        np.testing.assert_allclose(dw[0], g / r * np.expm1(r * t), rtol=1e-3, err_msg=form)
    with pytest.raises(ValueError, match="`form`"):
        cr.normal_form_response("hopf", w=np.zeros((1, 161)), t_fine=t, **_COEFFS)


@pytest.mark.parametrize("form", cr.FORMS)
def test_c4_generating_form_wins_and_rivals_fail(form):
    data = _c4_data(form)
    res = cr.c4_normal_form(kind=form, **data)
    errors = res["errors"]
    assert res["pass"] is True and res["value"] == errors[form] < 0.01
    assert res["scale"] == pytest.approx(3.7, rel=1e-2)
    # The four forms are distinct for these parameters: every rival is off by > 5%.
    assert min(e for f, e in errors.items() if f != form) > 0.05
    assert res["best_rival"] == pytest.approx(min(e for f, e in errors.items() if f != form))
    _dumps(res)
    for wrong in cr.FORMS:
        if wrong != form:
            assert cr.c4_normal_form(kind=wrong, **data)["pass"] is False


def test_c4_sign_of_q_is_absorbed_by_the_scale():
    data = _c4_data("pitchfork")
    data["q"] = -data["q"]
    res = cr.c4_normal_form(kind="pitchfork", **data)
    assert res["pass"] is True and res["scale"] == pytest.approx(-3.7, rel=1e-2)


def test_c4_degenerate_cases():
    data = _c4_data("pitchfork")
    zero = cr.c4_normal_form(kind="fold", **{**data, "a_u": 0.0, "b1_u": 0.0})
    assert zero["value"] == 1.0 and zero["pass"] is False
    assert cr.fit_one_scale(np.ones(3), np.zeros(3)) == (0.0, 1.0)
    hopf = cr.c4_normal_form(kind="hopf", **data)
    assert hopf["pass"] is None and hopf["value"] is None and hopf["note"]
    none = cr.c4_normal_form(
        kind="pitchfork",
        response=None,
        q=None,
        w=None,
        t_fine=None,
        t_obs=None,
        lam_c=None,
        b2=None,
        b3=None,
        a_u=None,
        b1_u=None,
        has_crossing=False,
    )
    assert none["pass"] is False and none["note"] == "no crossing"
    _dumps(zero), _dumps(hopf), _dumps(none)
    with pytest.raises(ValueError, match="`kind`"):
        cr.c4_normal_form(kind="branch_point", **data)
    with pytest.raises(ValueError, match="`t_obs`"):
        cr.c4_normal_form(kind="pitchfork", **{**data, "t_obs": data["t_obs"] + 0.01})
    with pytest.raises(ValueError, match="`q`"):
        cr.c4_normal_form(kind="pitchfork", **{**data, "q": np.ones(2)})


S = np.linspace(-1.0, 1.0, 21)


def test_landscape_check_pitchfork_potential_passes():
    res = cr.landscape_check(S, 1.0 - 0.5 * S**2 + 0.3 * S**4)
    assert res["pass"] is True and res["r2"] == pytest.approx(1.0)
    assert len(res["prediction"]) == 21
    _dumps(res)


def test_landscape_check_line_and_sigmoid_fail():
    line = 1.0 + 0.5 * S
    res = cr.landscape_check(S, line)
    assert res["pass"] is False and res["r2_line"] == pytest.approx(1.0)
    # The retired free-centre fit (centre s0 = 5) would have called the line a near-perfect fit.
    design = np.stack([np.ones_like(S), (S - 5) ** 2, (S - 5) ** 4], 1)
    fit = design @ np.linalg.lstsq(design, line, rcond=None)[0]
    assert 1 - np.sum((line - fit) ** 2) / np.sum((line - line.mean()) ** 2) > 0.99
    res = cr.landscape_check(S, np.tanh(3 * S))
    assert res["pass"] is False and res["r2"] < 0.5
    # On a one-sided grid the even monomials fit a line too; comparing with the line rejects it.
    one_sided = np.linspace(0.5, 1.0, 21)
    res = cr.landscape_check(one_sided, 1.0 + 0.5 * one_sided)
    assert res["r2"] > 0.95 and res["pass"] is False
    const = cr.landscape_check(S, np.ones_like(S))
    assert const["pass"] is None
    _dumps(res), _dumps(const)


# ---------------------------------------------------------------------------------------------
# C5


def test_spike_factor_and_steps_to_target():
    assert cr.spike_factor([1.0, np.nan, 0.1]) == math.inf
    assert cr.spike_factor([1.0, 0.5, 0.5, 0.1]) <= 1.0
    assert cr.spike_factor([1.0, 0.5, 0.6, 0.1]) == pytest.approx(1.2)
    assert cr.steps_to_target([1.0, 0.5, 0.009, 0.001]) == 2.0
    assert cr.steps_to_target([1.0, 0.5, 0.009, np.inf]) == math.inf  # diverged after the hit
    assert cr.steps_to_target([1.0, 0.5, 0.1]) == math.inf


_K = np.arange(30.0)
_BASELINES = {"sgd": {0.1: 0.8**_K, 0.3: 0.75**_K}, "adam": {0.01: 0.7**_K}}


def test_c5_faster_ng_passes():
    res = cr.c5_optimizer(ng_losses=0.5**_K, baseline_losses=_BASELINES)
    assert res["pass"] is True and res["value"] == 7.0  # 0.5**7 < 1e-2
    assert res["best_baseline"] == {"steps": 13.0, "name": "adam", "lr": 0.01}
    assert res["ng_spike"] <= 1.0 and res["diverged"] is False
    _dumps(res)


def test_c5_negative_controls():
    diverged = 0.5**_K
    diverged[20] = np.nan
    res = cr.c5_optimizer(ng_losses=diverged, baseline_losses=_BASELINES)
    assert res["pass"] is False and res["diverged"] is True and res["value"] is None
    assert res["ng_spike"] is None  # inf, stored as null
    _dumps(res)
    spiky = 0.5**_K
    spiky[2] = 1.2 * spiky[1]
    assert cr.c5_optimizer(ng_losses=spiky, baseline_losses=_BASELINES)["pass"] is False
    tie = {**_BASELINES, "clip": {0.1: 0.5**_K}}
    assert cr.c5_optimizer(ng_losses=0.5**_K, baseline_losses=tie)["pass"] is False
    slow = {"sgd": {0.1: np.ones(30)}}
    both_inf = cr.c5_optimizer(ng_losses=np.ones(30), baseline_losses=slow)
    assert both_inf["pass"] is False and both_inf["best_baseline"]["steps"] is None
    _dumps(both_inf)
    with pytest.raises(ValueError, match="`baseline_losses`"):
        cr.c5_optimizer(ng_losses=0.5**_K, baseline_losses={})


# ---------------------------------------------------------------------------------------------
# C6


def test_c6_cost():
    sgd = np.full(10, 0.01)
    res = cr.c6_cost(sgd_times=sgd, ng_times=1.2 * sgd)
    assert res["pass"] is True and res["value"] == pytest.approx(1.2)
    assert res["median_ratio"] == pytest.approx(1.2) and res["sgd_mean"] == pytest.approx(0.01)
    _dumps(res)
    assert cr.c6_cost(sgd_times=sgd, ng_times=1.5 * sgd)["pass"] is False
    with pytest.raises(ValueError, match="`ng_times`"):
        cr.c6_cost(sgd_times=sgd, ng_times=np.array([]))
    assert "per_solver_step_ratio" not in res and "timed_rate" not in res


def test_c6_per_solver_step_ratio():
    # NG steps 1.5x as slow as SGD's, but SGD's trajectory needs twice the solver steps: the
    # raw ratio passes (0.75) while per solver step NG costs 3x SGD (reported, not scored).
    sgd, ng = np.full(4, 0.02), np.full(4, 0.015)
    res = cr.c6_cost(sgd_times=sgd, ng_times=ng, sgd_solver_steps=[200] * 4,
                     ng_solver_steps=[50] * 4, timed_rate=0.3)
    assert res["pass"] is True and res["value"] == pytest.approx(0.75)
    assert res["per_solver_step_ratio"] == pytest.approx(3.0)
    assert res["sgd_solver_steps_median"] == 200 and res["ng_solver_steps_median"] == 50
    assert res["timed_rate"] == 0.3
    _dumps(res)
    with pytest.raises(ValueError, match="together"):
        cr.c6_cost(sgd_times=sgd, ng_times=ng, sgd_solver_steps=[200] * 4)
    with pytest.raises(ValueError, match="`ng_solver_steps`.*as long as the times"):
        cr.c6_cost(sgd_times=sgd, ng_times=ng, sgd_solver_steps=[200] * 4,
                   ng_solver_steps=[50] * 3)
    with pytest.raises(ValueError, match="`sgd_solver_steps`"):
        cr.c6_cost(sgd_times=sgd, ng_times=ng, sgd_solver_steps=[0] * 4,
                   ng_solver_steps=[50] * 4)


def test_c6_timing_interleaves_the_optimizers(monkeypatch):
    # The step is replaced by a recorder (nothing compiles): SGD and NG steps must alternate, so
    # that both see the same machine load, and a diverged optimizer stops while the other goes on.
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from diffrax_sntk.experiments import StudentTeacherConfig, _run

    cfg = StudentTeacherConfig.preset("quick", steps=6)
    calls = []

    def step(cfg_, name, lr, p, s, static, problem, target):
        calls.append(name)
        diverged = name.startswith("ng") and calls.count(name) == 4
        return p, s, jnp.asarray(jnp.inf if diverged else 1.0)

    monkeypatch.setattr(_run, "_timed_step", step)
    # A stand-in batch of one seed (no teacher simulation to compile): the recorder never reads
    # the target's values, only its size.
    student = _run._template(cfg)
    batch = _run.Setup(student, student, jnp.zeros((cfg.trials, cfg.hidden)),
                       jnp.zeros((cfg.trials, cfg.times, cfg.outputs)))
    batch = jax.tree_util.tree_map(lambda x: x[None] if eqx.is_array(x) else x, batch)
    times = _run.time_steps(cfg, batch)
    ng = _run.ng_name(cfg)
    assert calls[:8] == ["sgd", ng] * 4 and calls[8:] == ["sgd"] * 3
    assert len(times["sgd"]) == cfg.steps and len(times["ng"]) == 3  # the compiling call dropped
    assert all(t > 0 for t in times["sgd"] + times["ng"])
    assert set(times) == {"sgd", "ng", "learning_rate"}
    assert times["learning_rate"] == cfg.learning_rate  # the configuration's rate by default


def test_c6_timing_rate_and_solver_steps(monkeypatch):
    # The rate to time at reaches every step (not the configuration's default), and the solver
    # steps are counted at the parameters each step starts from, aligned with the times.
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from diffrax_sntk.experiments import StudentTeacherConfig, _run

    cfg = StudentTeacherConfig.preset("quick", steps=3)
    rates = []

    def step(cfg_, name, lr, p, s, static, problem, target):
        rates.append(float(lr))  # each step moves every parameter by +1 (SGD) or +2 (NG)
        return jax.tree_util.tree_map(lambda x: x + (1 if name == "sgd" else 2), p), s, \
            jnp.asarray(1.0)

    student = _run._template(cfg)
    batch = _run.Setup(student, student, jnp.zeros((cfg.trials, cfg.hidden)),
                       jnp.zeros((cfg.trials, cfg.times, cfg.outputs)))
    batch = jax.tree_util.tree_map(lambda x: x[None] if eqx.is_array(x) else x, batch)
    first = jax.tree_util.tree_leaves(eqx.filter(student, _run.param_spec(cfg, student)))[0]

    def solver_steps(p, static, problem):  # how far the parameters have moved: 0, 1, 2, ...
        return jnp.round(jax.tree_util.tree_leaves(p)[0].ravel()[0] - first.ravel()[0])

    monkeypatch.setattr(_run, "_timed_step", step)
    monkeypatch.setattr(_run, "_solver_steps", solver_steps)
    out = _run.time_steps(cfg, batch, learning_rate=0.3, solver_steps=True)
    assert cfg.learning_rate != 0.3 and set(rates) == {0.3} and out["learning_rate"] == 0.3
    # Counted before steps 1, 2, 3 (step 0 compiles and is dropped): SGD has moved 1, 2, 3 units.
    assert out["sgd_solver_steps"] == [1, 2, 3] and out["ng_solver_steps"] == [2, 4, 6]
    assert len(out["sgd"]) == len(out["sgd_solver_steps"]) == cfg.steps
    # Negative control: without `solver_steps` nothing is counted.
    assert set(_run.time_steps(cfg, batch, learning_rate=0.3)) == {"sgd", "ng", "learning_rate"}
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="`learning_rate`"):
            _run.time_steps(cfg, batch, learning_rate=bad)


def test_sweep_times_each_needed_rate(monkeypatch):
    # run_group's timing: one `time_steps` call per rate that lacks a timing, at that rate; a
    # pre-amendment timing (one, at the default rate) is dropped; a failed timing is kept as an
    # error that still names its rate.
    from diffrax_sntk.experiments import _sweep

    calls = []

    def fake(cfg, batch, seed_index=0, *, learning_rate=None, solver_steps=False):
        calls.append((learning_rate, solver_steps))
        if learning_rate == 0.5:
            raise RuntimeError("solve failed")
        return {"sgd": [1.0], "ng": [1.0], "sgd_solver_steps": [1], "ng_solver_steps": [1],
                "learning_rate": learning_rate}

    monkeypatch.setattr(_sweep, "time_steps", fake)
    have = {0.1: {"sgd": [2.0], "learning_rate": 0.1}}
    timings, timed = _sweep._time_rates(None, None, [0.1, 0.3, 0.5], have, lambda m: None)
    assert calls == [(0.3, True), (0.5, True)] and timed
    assert timings[0.1] is have[0.1] and timings[0.3]["learning_rate"] == 0.3
    assert timings[0.5]["learning_rate"] == 0.5 and "solve failed" in timings[0.5]["error"]
    calls.clear()
    legacy = {"sgd": [1.0], "ng": [1.2]}
    timings, _ = _sweep._time_rates(None, None, [0.1], legacy, lambda m: None)
    assert calls == [(0.1, True)] and set(timings) == {0.1}
    calls.clear()
    assert _sweep._time_rates(None, None, [0.1], timings, lambda m: None)[1] is False
    assert not calls


def test_training_cache_keeps_timings_per_rate(tmp_path):
    # The sweep's cache round-trips one timing per rate; a cache written before the session-9
    # amendment (one timing, at no recorded rate) reads back in its old form.
    import jax
    import jax.numpy as jnp

    from diffrax_sntk.experiments import _sweep

    treedef = jax.tree_util.tree_structure({"W": 0})
    hist = {"sgd": {"W": jnp.ones((1, 1, 3, 2))}}
    args = ({"sgd": np.ones((1, 1, 3))}, hist, {"sgd": np.zeros((1, 1))}, np.ones((1, 1, 2)),
            np.ones((1, 1, 2, 3)), np.ones((1, 1, 1)))
    timings = {lr: {"sgd": [0.1, 0.2], "ng": [0.3, 0.3], "sgd_solver_steps": [100, 120],
                    "ng_solver_steps": [90, 95], "learning_rate": lr} for lr in (0.1, 0.3)}
    timings[0.5] = {"error": "timing failed"}  # not cached: timed again on resume
    path = str(tmp_path / "c.npz")
    _sweep._save_training(path, *args, timings)
    loaded = _sweep._load_training(path, treedef)[-1]
    assert loaded == {lr: timings[lr] for lr in (0.1, 0.3)}
    with np.load(path) as z:
        arrays = dict(z)
    for k in [k for k in arrays if k.startswith("time")]:
        del arrays[k]
    np.savez(path, time_sgd=np.array([0.1]), time_ng=np.array([0.2]), **arrays)
    assert _sweep._load_training(path, treedef)[-1] == {"sgd": [0.1], "ng": [0.2]}
