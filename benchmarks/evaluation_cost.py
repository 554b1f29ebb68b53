"""Cost of one exact sNTK evaluation along training, per task and N (why the N = 32 task tables
of issue 17 take hours per group on a 2-core CPU).

The sweep evaluates the participation ratio of Θ = J Jᵀ at every evaluation step of every run;
below N = 64 it takes the exact path (`_run._evaluate_one`: a dense J, one tangent solve per
trained parameter, then the eigenvalues of JᵀJ). This times that call on seed 0's initial
student for each task at N = 10 and N = 32 (default sizes otherwise: 8 trials × 20 times),
compiled, best of `--repeats`.

    python benchmarks/evaluation_cost.py [--hidden 10,32] [--repeats 2]
"""

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.random as jr  # noqa: E402

from diffrax_sntk.experiments import StudentTeacherConfig  # noqa: E402
from diffrax_sntk.experiments._run import (  # noqa: E402
    _evaluate_one,
    canonical,
    param_spec,
    setups,
)

TASKS = (
    ("hopf (fixed)", dict(task="hopf", hopf_frequency="fixed")),
    ("fold", dict(task="fold")),
    ("pitchfork, independent", dict(task="pitchfork", student="independent")),
)


def time_one(cfg: StudentTeacherConfig, repeats: int) -> tuple[int, float, float]:
    """(trained parameters, first call, best later call) of one exact evaluation."""
    batch = setups(cfg, [0])
    student = jax.tree_util.tree_map(lambda x: x[0], batch.student)
    params = eqx.filter(student, param_spec(cfg, student))
    count = sum(x.size for x in jax.tree_util.tree_leaves(params))
    fn = jax.jit(lambda p, s, y0, k: _evaluate_one(canonical(cfg), p, s, y0, cfg.top_k, k))
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        jax.block_until_ready(fn(params, student, batch.y0[0], jr.PRNGKey(0)))
        times.append(time.perf_counter() - t)
    return count, times[0], min(times[1:])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", default="10,32")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print("| task | N | trained parameters | first call (s) | one evaluation (s) |")
    print("|---|---|---|---|---|")
    for label, fields in TASKS:
        for n in (int(x) for x in args.hidden.split(",")):
            cfg = StudentTeacherConfig(hidden=n, learning_rates=(0.1, 0.3), **fields)
            count, first, best = time_one(cfg, args.repeats)
            print(f"| {label} | {n} | {count} | {first:.1f} | {best:.2f} |", flush=True)

if __name__ == "__main__":
    main()
