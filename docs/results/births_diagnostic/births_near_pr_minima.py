"""Exploratory diagnostic (not a pre-registered criterion): do the sNTK's participation-ratio
minima along SGD training sit at saddle-node births or deaths of *any* equilibrium?

The pitchfork protocol follows only the student's initial equilibrium. This script re-tracks
every SGD run of a finished `diffrax-sntk sweep` directory with the fold task's tracker
(`ds.track_bifurcations(..., seed_states=...)`, seeds = trajectory samples at every checkpoint),
which also reports births and deaths of other equilibria. For each run it prints the step of the
PR minimum, the distance to the nearest fold event, and two references:

- *uniform*: the share of evaluation steps within ±1 step of one of the run's own events (the
  chance that a step placed at random is "near an event"); the probability of at least the
  observed number of hits under it (Poisson binomial over runs);
- *mismatched*: each run's PR minimum against the events of every other seed at the same rate
  (events and PR minima may both cluster at some steps, which a uniform placement misses).

Usage (needs the sweep's `cache/` of training results, i.e. run it where the sweep ran):

    python docs/results/births_diagnostic/births_near_pr_minima.py SWEEP_DIR > out.txt
"""

import glob
import json
import sys
import time

import equinox as eqx
import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from diffrax_sntk.experiments._config import StudentTeacherConfig  # noqa: E402
from diffrax_sntk.experiments._run import make_problem, param_spec, setups  # noqa: E402
from diffrax_sntk.experiments._task_analysis import task_events  # noqa: E402


def _config(d):
    return StudentTeacherConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def main(out):
    runs = {}
    for line in open(f"{out}/runs.jsonl"):
        r = json.loads(line)
        runs[(r["config"]["seed"], r["config"]["learning_rate"])] = r
    rows = []
    for cache in sorted(glob.glob(f"{out}/cache/*-seeds-*.npz")):
        seeds = [int(s) for s in cache.rsplit("-seeds-", 1)[1][: -len(".npz")].split("_")]
        z = np.load(cache)
        cfg = _config(runs[(seeds[0], next(lr for s, lr in runs if s == seeds[0]))]["config"])
        batch = setups(cfg, seeds)
        for i, s in enumerate(seeds):
            setup = jax.tree_util.tree_map(lambda x, i=i: x[i], batch)
            problem = make_problem(cfg, setup.y0)
            spec = param_spec(cfg, setup.student)
            treedef = jax.tree_util.tree_structure(eqx.filter(setup.student, spec))
            for j, lr in enumerate(cfg.learning_rates):
                if (s, lr) not in runs:
                    continue
                leaves = [z[f"history/sgd/{k}"][i, j] for k in range(treedef.num_leaves)]
                history = jax.tree_util.tree_unflatten(treedef, leaves)
                t0 = time.perf_counter()
                checkpoints = np.arange(leaves[0].shape[0])
                ev = task_events(history, setup.student, spec, checkpoints, problem)
                r = runs[(s, lr)]
                pr = np.asarray([np.nan if x is None else x for x in r["curves"]["pr"]], float)
                steps = np.asarray(r["curves"]["eval_steps"], float)
                k = int(np.nanargmin(pr))
                events = np.asarray([float(b.parameter) for b in ev.crossings])
                kinds = [
                    "birth"
                    if any(b is x for x in ev.track.births)
                    else "death"
                    if b.branch < 0
                    else "branch"
                    for b in ev.crossings
                ]
                near = lambda x, e=events: bool(e.size and np.min(np.abs(e - x)) <= 1.0)
                uniform = float(np.mean([near(x) for x in steps]))
                dist = float(np.min(np.abs(events - steps[k]))) if events.size else np.inf
                rows.append(
                    dict(
                        seed=s,
                        lr=lr,
                        events=events,
                        steps=steps,
                        k=steps[k],
                        dist=dist,
                        uniform=uniform,
                        initial_crossing=bool(r["bifurcations"]),
                    )
                )
                print(
                    f"seed {s} lr {lr}: min PR {pr[k]:.2f} at step {steps[k]:g}; nearest fold "
                    f"event {dist:.2f} steps away; {len(events)} events "
                    f"({', '.join(f'{x} {e:.2f}' for x, e in zip(kinds, events, strict=True))}); "
                    f"uniform chance {uniform:.2f}; {time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
    hits = np.asarray([r["dist"] <= 1.0 for r in rows])
    p = np.zeros(len(rows) + 1)
    p[0] = 1.0
    for r in rows:
        p = np.convolve(p[:-1], [1 - r["uniform"], r["uniform"]])
    mism = [
        bool(o["events"].size and np.min(np.abs(o["events"] - r["k"])) <= 1.0)
        for r in rows
        for o in rows
        if o["lr"] == r["lr"] and o["seed"] != r["seed"]
    ]
    none = [r for r in rows if not r["initial_crossing"]]
    print(
        f"\nPR minimum within ±1 step of a fold event: {hits.sum()}/{len(rows)} runs "
        f"(median distance {np.median([r['dist'] for r in rows]):.2f} steps)"
    )
    print(
        f"uniform reference: expected {sum(r['uniform'] for r in rows):.1f} hits; "
        f"P(>= {hits.sum()} by chance) = {p[hits.sum() :].sum():.2g}"
    )
    print(
        f"mismatched reference: hit rate {np.mean(mism):.3f} over {len(mism)} pairs "
        f"(observed {hits.mean():.3f})"
    )
    print(
        f"runs without a crossing of the initial equilibrium: {len(none)}; with a birth or "
        f"death: {sum(1 for r in none if r['events'].size)}; PR minimum within ±1 step of one: "
        f"{sum(1 for r in none if r['dist'] <= 1.0)}"
    )


if __name__ == "__main__":
    main(sys.argv[1])
