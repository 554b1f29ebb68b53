"""Pre-registered fold-channel probe (docs/fold_hopf_tasks.md, session 7).

Probes O, P, H, A as pre-registered; P0 and A0 (the same starts without input pulses) were added
after the first run of O, P, H, A (exploratory). Run from the repository root on a sweep's
`runs.jsonl` and its training cache (`DIR/cache/*.npz`; the cache's seeds are in its name):

    python docs/results/fold_channel_probe/probe.py RUNS_JSONL CACHE_NPZ OUT_JSON
    python docs/results/fold_channel_probe/verdict.py OUT_JSON

With `--amplitude` after OUT_JSON it runs the exploratory follow-up instead, chosen after the
pre-registered probe had been run: the trials' own start (O), the same without input (O0), and
trials started at the fold point with the input pulses scaled by 1, 0.3, 0.1, 0.03, 0.01 (P,
P0.3, ...).
"""
import dataclasses, json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import equinox as eqx, jax.numpy as jnp, numpy as np
from diffrax_sntk.experiments import StudentTeacherConfig
from diffrax_sntk.experiments._run import param_spec, setups, make_problem
from diffrax_sntk.experiments._sweep import _load_training, _seed_slice
from diffrax_sntk.experiments._task_analysis import task_events
from diffrax_sntk.experiments._analysis import _interpolate, _split, _simulate

runs_path, cache_path, out_path = sys.argv[1:4]
AMPLITUDE = "--amplitude" in sys.argv[4:]
runs = [json.loads(l) for l in open(runs_path)]
seeds = [int(x) for x in cache_path.rsplit("seeds-", 1)[1].removesuffix(".npz").split("_")]
c0 = runs[0]["config"]
fields = {f.name for f in dataclasses.fields(StudentTeacherConfig)}
base = StudentTeacherConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in c0.items() if k in fields})
lrs = tuple(base.learning_rates)
batch = setups(base, seeds)
spec = param_spec(base, batch.student)
treedef = jax.tree_util.tree_structure(eqx.filter(batch.student, spec))
losses, histories, *_ = _load_training(cache_path, treedef)
eval_steps = np.arange(0, base.steps + 1, base.eval_every)
out = []
for r in runs:
    cfg = dataclasses.replace(base, seed=r["config"]["seed"], learning_rate=r["config"]["learning_rate"])
    if cfg.seed not in seeds:
        continue
    i, j = seeds.index(cfg.seed), lrs.index(cfg.learning_rate)
    t0 = time.perf_counter()
    ss = _seed_slice(batch, i)
    student = ss.student
    _, static = eqx.partition(student, spec)
    hist = _seed_slice(_seed_slice(histories["sgd"], i), j)
    L = np.asarray(losses["sgd"][i, j], float)
    bad = np.flatnonzero(~np.isfinite(L))
    es = eval_steps if not bad.size else eval_steps[eval_steps < int(bad[0])]
    problem = make_problem(cfg, ss.y0)
    ev = task_events(hist, student, spec, es, problem)
    rec = {"seed": cfg.seed, "lr": cfg.learning_rate, "recorded_rank": r["channel_rank"]}
    if not ev.crossings:
        rec["first"] = None; out.append(rec); print(rec, flush=True); continue
    first = ev.crossings[0]
    births = list(ev.track.births)
    rec["first"] = str(first.kind); rec["birth"] = any(first is b for b in births)
    rec["step"] = float(first.parameter) * cfg.eval_every
    theta_c, _ = _interpolate(hist, float(first.parameter), es)
    model_c = eqx.combine(theta_c, static)
    crit = dataclasses.replace(first, branch=0, index=0, direction=1, located=True)
    x_star = np.asarray(first.state)
    xs = np.asarray(_simulate(model_c, problem))  # (B, T, N)
    x_a = xs[0, -1]
    rec["min_dist_original"] = float(np.min(np.linalg.norm(xs - x_star, axis=-1)))
    rec["init_dist_original"] = float(np.min(np.linalg.norm(np.asarray(ss.y0) - x_star, axis=-1)))
    rec["dist_attractor"] = float(np.linalg.norm(x_a - x_star))
    probes = {"O": np.asarray(ss.y0), "P": np.tile(x_star, (cfg.trials, 1)),
              "H": np.tile(x_star + 0.5 * (x_a - x_star), (cfg.trials, 1)),
              "A": np.tile(x_a, (cfg.trials, 1))}
    if AMPLITUDE:
        variants = [("O", probes["O"], 1.0), ("O0", probes["O"], 0.0)] + [
            (f"P{eps}" if eps != 1.0 else "P", probes["P"], eps) for eps in (1.0, 0.3, 0.1, 0.03, 0.01)]
    else:
        variants = [(k, y0, 1.0) for k, y0 in probes.items()] + [
            ("P0", probes["P"], 0.0), ("A0", probes["A"], 0.0)]
    for name, y0, eps in variants:
        pr_ = make_problem(cfg, jnp.asarray(y0))
        pr_ = eqx.tree_at(lambda q: q.inputs, pr_, eps * pr_.inputs)
        sp = _split(model_c, pr_, crit, spec)
        ev_ = np.asarray(sp.channel_eigenvalues)
        rec[name] = {"rank": int(sp.channel_rank), "ratio": float(ev_[1] / ev_[0]) if ev_[0] > 0 else None,
                     "energy": float(sp.energy_fraction), "amplification": float(sp.amplification)}
    rec["seconds"] = time.perf_counter() - t0
    out.append(rec)
    print(json.dumps(rec), flush=True)
json.dump(out, open(out_path, "w"), indent=1)
