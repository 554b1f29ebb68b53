"""Exploratory (chosen after C2 had failed for the rank-two channels, and after reading the gaps at
the two evaluation steps around each crossing, a first script since removed because the gap at
the crossing can be far from both neighbours; not a criterion): the exact sNTK spectrum at each
run's first crossing, from the sweep's training cache, as the run's own analysis computed it
(the parameters interpolated at the fractional crossing step, the dense Jacobian's singular
values squared). It reports s1/s2 (C2's gap, which must match the recorded `gap_at_crossing`:
the check that the reconstruction is the run's own) and s_r/s_{r+1} for r = the run's
`channel_rank`; and C2r, the rank-r variant of C2 pre-registered in session 9
(docs/student_teacher_protocol.md): `value` = C2's PR ratio, `gap_r` = s_r/s_{r+1} at the
crossing, `gap_r_far` = the median of s_r/s_{r+1} over the evaluations with |lam_c| >= 0.5
(`curves.top`, `curves.lam_c`); pass = value <= 0.35 and gap_r >= 10 and gap_r_far <= 3, three-
valued as C2 (False if a condition fails; else not assessable if one cannot be decided: no far
evaluation or no PR reference).

    python docs/results/channel_gap/at_crossing.py RUNS_JSONL CACHE_NPZ [CACHE_NPZ ...]

Prints one line per crossing run and a summary line."""
import dataclasses
import json
import sys

import jax

jax.config.update("jax_enable_x64", True)
import equinox as eqx  # noqa: E402
import numpy as np  # noqa: E402

from diffrax_sntk.experiments import StudentTeacherConfig  # noqa: E402
from diffrax_sntk.experiments._analysis import _gram, _interpolate  # noqa: E402
from diffrax_sntk.experiments._run import make_problem, param_spec, setups  # noqa: E402
from diffrax_sntk.experiments._sweep import _load_training, _seed_slice  # noqa: E402

runs_path, caches = sys.argv[1], sys.argv[2:]
runs = [json.loads(line) for line in open(runs_path)]
fields = {f.name for f in dataclasses.fields(StudentTeacherConfig)}
base = StudentTeacherConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                               for k, v in runs[0]["config"].items() if k in fields})
lrs = tuple(base.learning_rates)
eval_steps = np.arange(0, base.steps + 1, base.eval_every)
rows = []
for cache in caches:
    seeds = [int(x) for x in cache.rsplit("seeds-", 1)[1].removesuffix(".npz").split("_")]
    batch = setups(base, seeds)
    spec = param_spec(base, batch.student)
    treedef = jax.tree_util.tree_structure(eqx.filter(batch.student, spec))
    _, histories, *_ = _load_training(cache, treedef)
    for r in runs:
        c, at = r["config"], r.get("at_crossing") or {}
        if c["seed"] not in seeds or at.get("step") is None or r.get("channel_rank") is None:
            continue
        i, j = seeds.index(c["seed"]), lrs.index(c["learning_rate"])
        ss = _seed_slice(batch, i)
        _, static = eqx.partition(ss.student, spec)
        hist = _seed_slice(_seed_slice(histories["sgd"], i), j)
        theta, step = _interpolate(hist, at["step"] / base.eval_every, eval_steps)
        model = eqx.combine(theta, static)
        problem = make_problem(base, ss.y0)
        s = np.asarray(_gram(model, problem, spec)[1][1]) ** 2
        k = int(r["channel_rank"])
        recorded = r["criteria"]["C2_depth"].get("gap_at_crossing")
        row = {"seed": c["seed"], "lr": c["learning_rate"], "step": step, "rank": k,
               "s1/s2": s[0] / s[1], "recorded s1/s2": recorded,
               "s_r/s_r+1": s[k - 1] / s[k], "s_r+1/s_r+2": s[k] / s[k + 1],
               "top5": (s[:5] / s[0]).round(5).tolist()}
        top = np.asarray(r["curves"]["top"], dtype=float)
        far = np.abs(np.asarray(r["curves"]["lam_c"], dtype=float)) >= 0.5
        gaps = top[far, k - 1] / top[far, k]
        gaps = gaps[np.isfinite(gaps)]
        value = r["criteria"]["C2_depth"].get("value")
        row["C2r"] = {"value": value, "gap_r": row["s_r/s_r+1"],
                      "gap_r_far": float(np.median(gaps)) if gaps.size else None,
                      "far_evaluations": int(gaps.size)}
        # Three-valued, as C2: False if a decidable condition fails, else None if one is
        # undecidable (no PR reference, no far evaluation), else True.
        conds = [None if value is None else value <= 0.35, bool(row["s_r/s_r+1"] >= 10),
                 None if not gaps.size else row["C2r"]["gap_r_far"] <= 3]
        row["C2r"]["pass"] = (False if any(c is False for c in conds)
                              else None if any(c is None for c in conds) else True)
        row["C2"] = r["criteria"]["C2_depth"].get("pass")
        rows.append(row)
        print(json.dumps(row), flush=True)
if rows:
    g1 = np.array([x["s1/s2"] for x in rows])
    gr = np.array([x["s_r/s_r+1"] for x in rows])
    rec = np.array([x["recorded s1/s2"] for x in rows], dtype=float)
    print(f"== {runs_path}: {len(rows)} crossings; reconstruction: max |s1/s2 / recorded - 1| = "
          f"{np.nanmax(np.abs(g1 / rec - 1)):.1e}; s1/s2 median {np.median(g1):.2f} "
          f"({g1.min():.2f}-{g1.max():.2f}), >= 10 in {(g1 >= 10).sum()}; s_r/s_r+1 median "
          f"{np.median(gr):.2f} ({gr.min():.2f}-{gr.max():.2f}), >= 10 in {(gr >= 10).sum()}")
    verdicts = [x["C2r"]["pass"] for x in rows]
    print(f"== C2r: pass {sum(v is True for v in verdicts)}, fail "
          f"{sum(v is False for v in verdicts)}, n/a {sum(v is None for v in verdicts)} "
          f"(C2 as recorded: pass {sum(x['C2'] is True for x in rows)}) of {len(rows)} "
          "crossing runs")
