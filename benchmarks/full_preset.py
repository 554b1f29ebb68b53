"""Cost of the pieces of `diffrax-sntk reproduce --full` (issue 19, item 5), and its projection.

At the full preset (N = 32, 32 trials × 50 times, 600 steps, evaluation every 5 steps, rank-4
natural gradient refreshed every 10 steps), float64, seed 0, learning rate 0.1, in one
process:

- one compiled training step of SGD and of the rank-4 natural gradient: `--steps` consecutive
  steps each (the state advances, so refreshes happen as in training), median and mean (the
  mean includes the refresh steps);
- one sNTK evaluation along training, exact (the dense J, one tangent per parameter) and
  matrix-free (`ds.effective_rank`, its default budget), with the two participation ratios.

It then projects the whole `--full` run from these figures: the preset's six optimizers ×
its learning-rate grid × 600 steps, then the SGD run's evaluations and the natural-gradient
run's (every fourth). Nothing here runs `--full` itself.

    python benchmarks/full_preset.py [--steps 10]
"""

import argparse
import dataclasses
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10,
                        help="timed steps after the compiling one (default 10: one of them "
                             "refreshes, as in training with refresh_every=10)")
    args = parser.parse_args()

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    jax.config.update("jax_enable_x64", True)
    from diffrax_sntk.experiments import StudentTeacherConfig, _run
    from diffrax_sntk.experiments._sweep import _NG_EVAL_STRIDE

    cfg = StudentTeacherConfig.preset("full")
    one = jax.tree_util.tree_map(lambda x: x[0], _run.setups(cfg, [0]))
    problem = _run.make_problem(cfg, one.y0)
    spec = _run.param_spec(cfg, one.student)
    params, static = eqx.partition(one.student, spec)
    lr = jnp.asarray(0.1)
    print(f"full preset: N={cfg.hidden}, {cfg.trials} trials × {cfg.times} times, "
          f"{cfg.steps} steps, eval every {cfg.eval_every}, rates {cfg.learning_rates}, "
          f"{jax.devices()[0].platform}, float64", flush=True)

    step_cost = {}
    for name in ("sgd", _run.ng_name(cfg)):
        opt = _run.make_optimizer(name, lr, cfg, one.target.size)
        p, s = params, opt.init(params)
        times = []
        for _ in range(args.steps + 1):
            t = time.perf_counter()
            p, s, loss = _run._timed_step(_run.canonical(cfg), name, lr, p, s, static, problem,
                                          one.target)
            jax.block_until_ready(loss)
            times.append(time.perf_counter() - t)
        first, rest = times[0], np.asarray(times[1:])
        step_cost[name] = float(np.mean(rest))
        print(f"{name:5s} step: first call {first:6.2f} s; then median {np.median(rest):.3f} s, "
              f"mean {np.mean(rest):.3f} s, max {np.max(rest):.3f} s over {len(rest)} steps",
              flush=True)

    eval_cost = {}
    for method in ("exact", "matfree"):
        c = dataclasses.replace(cfg, pr_method=method)
        f = jax.jit(lambda p, key, c=c: _run._evaluate_one(_run.canonical(c), p, one.student,
                                                           one.y0, c.top_k, key))
        t = time.perf_counter()
        pr = float(jax.block_until_ready(f(params, jr.PRNGKey(0)))[0])
        first = time.perf_counter() - t
        t = time.perf_counter()
        jax.block_until_ready(f(params, jr.PRNGKey(1)))
        eval_cost[method] = time.perf_counter() - t
        print(f"{method:7s} evaluation: first call {first:6.2f} s, compiled "
              f"{eval_cost[method]:.2f} s, PR {pr:.2f}", flush=True)

    rates = len(cfg.learning_rates)
    evals = len(range(0, cfg.steps + 1, cfg.eval_every))
    ng_evals = len(range(0, evals, _NG_EVAL_STRIDE))
    baseline = 3 * rates * cfg.steps * step_cost["sgd"]
    natural = 3 * rates * cfg.steps * step_cost[_run.ng_name(cfg)]
    print("\nprojection of --full (compiled costs only, no compile, no analysis):")
    print(f"  training: sgd, sgd_clip, adam {baseline / 60:.1f} min (taken at SGD's step cost) + "
          f"ng1, ng2, ng4 {natural / 60:.1f} min (at ng{cfg.rank}'s) = "
          f"{(baseline + natural) / 60:.1f} min")
    for method, cost in eval_cost.items():
        print(f"  evaluation, {method}: {evals} + {ng_evals} evaluations = "
              f"{(evals + ng_evals) * cost / 60:.1f} min")
    print("  (goal of issue 19: the whole --full run < 10 min on 2 cores)")


if __name__ == "__main__":
    main()
