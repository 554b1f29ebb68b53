"""C6 under the session-9 amendment (docs/student_teacher_protocol.md): for each fold and Hopf
configuration of docs/fold_hopf_tasks.md, seed 0, time SGD and the natural gradient at each of
the runs' rates (0.1, 0.3) with the sweep's own `time_steps`, recording the accepted solver
steps before each step, and score it with the sweep's `c6_cost`.

    python docs/results/c6_amended/rescore.py [N ...]      # default: 10 32

Writes docs/results/c6_amended/{task}_n{N}_{rate}.json (the criterion dict, the raw per-step
times and solver steps, the load average before and after) and prints one line per timing."""
import json
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

from diffrax_sntk.experiments import StudentTeacherConfig  # noqa: E402
from diffrax_sntk.experiments._criteria import c6_cost  # noqa: E402
from diffrax_sntk.experiments._run import setups, time_steps  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = {"fold": dict(task="fold"), "hopf_trained": dict(task="hopf", hopf_frequency="trained"),
         "hopf_fixed": dict(task="hopf", hopf_frequency="fixed")}

for hidden in [int(a) for a in sys.argv[1:]] or [10, 32]:
    for label, fields in TASKS.items():
        cfg = StudentTeacherConfig(hidden=hidden, learning_rates=(0.1, 0.3), **fields)
        batch = setups(cfg, [0])
        for lr in cfg.learning_rates:
            load0, t0 = os.getloadavg()[0], time.time()
            out = time_steps(cfg, batch, learning_rate=lr, solver_steps=True)
            c6 = c6_cost(sgd_times=out["sgd"], ng_times=out["ng"],
                         sgd_solver_steps=out["sgd_solver_steps"],
                         ng_solver_steps=out["ng_solver_steps"], timed_rate=lr)
            rec = {"task": label, "hidden": hidden, "seed": 0, "learning_rate": lr,
                   "C6_cost": c6, "raw": out, "wall_seconds": time.time() - t0,
                   "load_before": load0, "load_after": os.getloadavg()[0]}
            with open(os.path.join(HERE, f"{label}_n{hidden}_{lr}.json"), "w") as f:
                json.dump(rec, f, indent=1)
            print(f"{label} N={hidden} lr={lr}: mean {c6['value']:.3f} median "
                  f"{c6['median_ratio']:.3f} per solver step {c6['per_solver_step_ratio']:.3f} "
                  f"solver steps SGD {c6['sgd_solver_steps_median']:.0f} NG "
                  f"{c6['ng_solver_steps_median']:.0f} pass {c6['pass']} "
                  f"({rec['wall_seconds']:.0f} s, load {load0:.2f} -> {rec['load_after']:.2f})",
                  flush=True)
