"""C6's step timing two ways, side by side in one process: *blocked* (all SGD steps, then all
natural-gradient steps: `time_steps` before session 6) against *interleaved* (the current
`_run.time_steps`: the two alternate step by step, so both see the same machine load).

Prints, per repetition, the C6 ratio (mean NG step / mean SGD step, refresh steps included) and
the median ratio of each method; a method whose ratio moves with the load spreads more.

    python benchmarks/c6_timing.py [--hidden 10] [--repeats 4]
"""

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from diffrax_sntk.experiments import StudentTeacherConfig  # noqa: E402
from diffrax_sntk.experiments._run import (  # noqa: E402
    _timed_step,
    canonical,
    make_optimizer,
    make_problem,
    ng_name,
    param_spec,
    setups,
    time_steps,
)


def blocked(cfg, batch):
    """The earlier timing: every SGD step, then every NG step (no divergence stop: C6's runs
    here do not diverge)."""
    one = jax.tree_util.tree_map(lambda x: x[0], batch)
    problem = make_problem(cfg, one.y0)
    params, static = eqx.partition(one.student, param_spec(cfg, one.student))
    lr = jnp.asarray(cfg.learning_rate, dtype=jnp.result_type(float))
    out = {}
    for label, name in (("sgd", "sgd"), ("ng", ng_name(cfg))):
        opt = make_optimizer(name, lr, cfg, one.target.size)
        p, s = params, opt.init(params)
        times = []
        for _ in range(cfg.steps + 1):
            t = time.perf_counter()
            p, s, loss = _timed_step(canonical(cfg), name, lr, p, s, static, problem, one.target)
            jax.block_until_ready(loss)
            times.append(time.perf_counter() - t)
        out[label] = times[1:]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    cfg = StudentTeacherConfig(hidden=args.hidden, student="independent", learning_rate=0.1,
                               learning_rates=(0.1,))
    batch = setups(cfg, [0])
    ratios = {"blocked": [], "interleaved": []}
    for rep in range(args.repeats):
        for label, fn in (("blocked", blocked), ("interleaved", time_steps)):
            t = fn(cfg, batch)
            ratios[label].append(np.mean(t["ng"]) / np.mean(t["sgd"]))
            print(f"rep {rep} {label:11s}: mean ratio {ratios[label][-1]:.3f}, median ratio "
                  f"{np.median(t['ng']) / np.median(t['sgd']):.3f}, SGD mean step "
                  f"{1e3 * np.mean(t['sgd']):.1f} ms", flush=True)
    for label, r in ratios.items():
        print(f"{label}: C6 ratio {min(r):.3f}–{max(r):.3f} (spread {max(r) - min(r):.3f})")


if __name__ == "__main__":
    main()
