"""Why does C6 depend on the timed seed? Re-run the sweep's C6 timing loop (time_steps: SGD and
NG alternating, the group cfg's learning_rate) and record, before each step, the number of
accepted solver steps of the forward solve at that optimizer's parameters (max over trials)."""
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import equinox as eqx, jax.numpy as jnp, numpy as np
from diffrax_sntk.experiments import StudentTeacherConfig
from diffrax_sntk.experiments._run import (canonical, param_spec, setups, make_problem,
    make_optimizer, ng_name, _timed_step)
from diffrax_sntk._replay import record_steps

task, seed = sys.argv[1], int(sys.argv[2])
lr_override = float(sys.argv[3]) if len(sys.argv) > 3 else None
fields = dict(task="fold") if task == "fold" else dict(task="hopf", hopf_frequency=task.split("_")[1])
cfg = StudentTeacherConfig(hidden=32, learning_rates=(0.1, 0.3), **fields)
if lr_override is not None:
    import dataclasses; cfg = dataclasses.replace(cfg, learning_rate=lr_override)
batch = setups(cfg, [seed])
one = jax.tree_util.tree_map(lambda x: x[0], batch)
problem = make_problem(cfg, one.y0)
spec = param_spec(cfg, one.student)
params, static = eqx.partition(one.student, spec)
lr = jnp.asarray(cfg.learning_rate, dtype=jnp.result_type(float))
names = {"sgd": "sgd", "ng": ng_name(cfg)}
opts = {k: make_optimizer(n, lr, cfg, one.target.size) for k, n in names.items()}
state = {k: (params, opts[k].init(params)) for k in names}
steps_of = jax.jit(lambda p: jnp.max(record_steps(p, static, problem)[1]))
out = {k: {"time": [], "solver_steps": [], "loss": []} for k in names}
running = set(names)
for _ in range(cfg.steps + 1):
    for k in [x for x in names if x in running]:
        p, s = state[k]
        out[k]["solver_steps"].append(int(steps_of(p)))
        t = time.perf_counter()
        p2, s2, loss = _timed_step(canonical(cfg), names[k], lr, p, s, static, problem, one.target)
        jax.block_until_ready(loss)
        out[k]["time"].append(time.perf_counter() - t)
        out[k]["loss"].append(float(loss))
        if not np.isfinite(float(loss)) or any(bool(jnp.any(jnp.abs(x) > 1e6)) for x in jax.tree_util.tree_leaves(p2)):
            running.discard(k)
        else:
            state[k] = (p2, s2)
res = {"task": task, "seed": seed, "learning_rate": float(cfg.learning_rate), "steps": cfg.steps}
for k, d in out.items():
    t = np.array(d["time"][1:]); n = np.array(d["solver_steps"][1:])
    res[k] = {"mean_time": t.mean(), "median_time": float(np.median(t)), "n_timed": int(t.size),
              "solver_steps_median": float(np.median(n)), "solver_steps_min": int(n.min()), "solver_steps_max": int(n.max()),
              "loss_first": d["loss"][0], "loss_last": d["loss"][-1]}
res["ratio_mean"] = res["ng"]["mean_time"] / res["sgd"]["mean_time"]
res["ratio_median"] = res["ng"]["median_time"] / res["sgd"]["median_time"]
res["raw"] = out
print(json.dumps({k: v for k, v in res.items() if k != "raw"}))
json.dump(res, open(f"docs/results/c6_solver_cost/{task}_{seed}_{cfg.learning_rate}.json", "w"))
