"""Wall time of one student–teacher configuration for 1 seed against 20 seeds, vmapped (issue).

The issue's target: "seeds of one configuration run as one vmapped, compiled program. 20 seeds
≤ 3× the wall time of 1 seed, compile included, at N = 10." For each optimizer (SGD at lr 0.1,
and the rank-2 natural gradient `ng2` at lr 0.1), in one process, side by side: the
experiment's own pipeline (`_run.setups` + `_run.train` + `_run.evaluate` at the steps
`0, eval_every, ..., steps`), once for 1 seed and once for `--seeds` seeds. Every measurement
starts from `jax.clear_caches()`, so each one pays its own tracing and compilation, as a fresh
process would (the 1-seed and 20-seed programs have different shapes and compile separately
anyway). Wall times use `time.perf_counter` around `jax.block_until_ready`; JAX's own
trace/lower/compile events split each total (benchmarks/_timing.py).

    python benchmarks/sweep.py [--seeds 20] [--steps 120] [--quick]

Default configuration (N = hidden = 10, 8 trials × 20 times, 120 steps), float64. `--quick`:
hidden 4 and 10 steps, a smoke run.
"""

import argparse
import dataclasses
import time

import jax

jax.config.update("jax_enable_x64", True)

from _timing import CompileClock  # noqa: E402  (benchmarks/_timing.py)

from diffrax_sntk.experiments import StudentTeacherConfig, _run  # noqa: E402

CLOCK = CompileClock()
LEARNING_RATE = 0.1


def pipeline(cfg, name, seeds):
    """Seconds of each stage of set-up, training and evaluation for `seeds`, compile included."""
    import numpy as np

    seeds = list(seeds)
    eval_steps = np.arange(0, cfg.steps + 1, cfg.eval_every)
    jax.clear_caches()
    stages = {}
    snap, start = CLOCK.snapshot(), time.perf_counter()

    t = time.perf_counter()
    batch = jax.block_until_ready(_run.setups(cfg, seeds))
    stages["setup"] = time.perf_counter() - t

    t = time.perf_counter()
    losses, history = jax.block_until_ready(_run.train(cfg, name, (LEARNING_RATE,), batch))
    stages["train"] = time.perf_counter() - t

    t = time.perf_counter()
    pr, _ = jax.block_until_ready(_run.evaluate(cfg, history, batch, eval_steps, seeds, losses))
    stages["evaluate"] = time.perf_counter() - t

    total = time.perf_counter() - start
    final = np.asarray(losses[:, 0, -1])
    print(
        f"  {name:4s} {len(seeds):3d} seed(s): total {total:7.2f} s  (setup {stages['setup']:.2f}, "
        f"train {stages['train']:.2f}, evaluate {stages['evaluate']:.2f});  "
        f"final loss median {np.median(final):.3g}, PR[0] median {np.median(pr[:, 0, 0]):.3g}",
        flush=True,
    )
    print(f"       {CLOCK.since(snap, total)}", flush=True)
    return total, stages


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None, help="default: the config's (120)")
    parser.add_argument("--quick", action="store_true", help="hidden 4, steps 10: a smoke run")
    args = parser.parse_args()

    cfg = StudentTeacherConfig()
    if args.quick:
        cfg = dataclasses.replace(cfg, hidden=4, steps=10)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    evals = len(range(0, cfg.steps + 1, cfg.eval_every))
    print(
        f"student–teacher N={cfg.hidden}, {cfg.trials} trials × {cfg.times} times, "
        f"{cfg.steps} steps, {evals} evaluations (PR "
        f"{'exact' if _run.use_exact(cfg, cfg.hidden**2) else 'matrix-free'}, W trained), "
        f"lr {LEARNING_RATE}, {jax.devices()[0].platform}, float64, "
        f"{jax.device_count()} device(s)",
        flush=True,
    )

    results = {}
    for name in ("sgd", "ng2"):
        print(f"{name}:", flush=True)
        one, _ = pipeline(cfg, name, [0])
        many, _ = pipeline(cfg, name, range(args.seeds))
        results[name] = (one, many)

    n = args.seeds
    print(
        f"\n{'optimizer':10s} {'1 seed s':>9s} {f'{n} seeds s':>11s} {'ratio':>7s} "
        f"{'per seed s':>11s} {'per seed / 1 seed':>18s}"
    )
    for name, (one, many) in results.items():
        print(
            f"{name:10s} {one:9.2f} {many:11.2f} {many / one:7.2f} {many / n:11.3f} "
            f"{many / n / one:18.3f}"
        )
    print(f"(target: {n} seeds ≤ 3× 1 seed, compile included, at N = 10)")


if __name__ == "__main__":
    main()
