"""Bias of the matrix-free `ds.effective_rank` against the exact participation ratio at N = 32.

The issue: "For N ≥ 64 along training use the matrix-free `ds.effective_rank`; measure its bias
against the exact value at N = 32 at PR 1–3 and state it." The set-up is the experiment's
shared student (`_run.setup`, seed 0) at hidden = 32, other fields default (8 trials × 20
times, so Θ is 5,120 × 5,120); its gain along q is set to values that place the participation
ratio PR = (tr Θ)² / tr Θ² of the state-space sNTK as low as it goes and a little beyond (the
gains are only a way to place PR). Θ is taken over the trained parameters (W only,
`trainable="W"`). At this set-up's initialisation PR does not reach 1–3 by the gain alone: an
exact scan over student_gain ∈ [0.9, 2.0] gives PR 9.3 (0.9), 5.0 (0.95), 3.92 (0.99), 3.82
(1.0), a minimum of 3.78 at 1.01, 3.87 (1.03), 5.5 (1.1), 10.7 (1.2), 20.9 (1.4). The lowest
point therefore also shrinks `initial_spread` (the spread of the initial states, which keeps Θ
high-rank): at gain 1.01, spread 0.4 / 0.2 / 0.1 / 0.05 give PR 2.87 / 2.76 / 2.74 / 2.75, the
floor of the two knobs. A point is `gain:spread`.

- exact: the eigenvalues of JᵀJ from `ds.jacobian_operator(model, problem,
  filter_spec=spec).as_matrix()`, as `_run._evaluate_one` does on its exact path;
- estimate: `ds.effective_rank(ds.sntk_operator(model, problem, filter_spec=spec), key=k)` at
  the default budget (the experiment's), over `--keys` keys.

Reported per gain: exact PR, mean estimate, mean relative bias (est − exact)/exact with its
standard error over keys, the standard deviation of the estimates over keys against the mean
of the estimator's own `standard_error`, and the matvecs spent.

`--unfiltered` also measures Θ over all inexact parameters (`ds.sntk_operator(model,
problem)` without `filter_spec`, the call `_run._evaluate_one` makes on its matrix-free
path: W, b, U, and C, d, which do not reach the state) against its own exact PR, and the
exact PR of that kernel against the W-only one.

Operators are built outside `jit`, so they are the replay operators; `_run` builds them inside
`jit` (solve per matvec), the same discrete map to rounding.

    python benchmarks/effective_rank_bias.py [--keys 20] [--points 0.9:1,1.01:0.1] [--unfiltered]

`--trained` reaches PR 1–3 the way the sweeps do instead: the *independent* student at N = 32
(trained W, b, U), trained by SGD with the experiment's own `_run.train` (seeds `--seeds`, rate
`--rate`, 120 steps); the exact PR every `--stride` steps; at up to `--per-seed` checkpoints
per seed whose exact PR lies in [1, 3] (spread evenly over their sorted PR values, fixed
before any estimate is seen), the estimator over `--keys` keys.

    python benchmarks/effective_rank_bias.py --trained [--seeds 0,1] [--rate 0.3] [--stride 6]
"""

import argparse
import dataclasses
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import diffrax_sntk as ds  # noqa: E402
from diffrax_sntk.experiments import StudentTeacherConfig, _run  # noqa: E402

POINTS = ((0.9, 1.0), (0.95, 1.0), (1.01, 1.0), (1.01, 0.1))  # (student_gain, initial_spread)


def exact_pr(model, problem, filter_spec):
    jm = ds.jacobian_operator(model, problem, filter_spec=filter_spec).as_matrix()
    # The nonzero spectrum of Θ = J Jᵀ is that of the small Gram matrix JᵀJ.
    s = jnp.clip(jnp.linalg.eigvalsh(jm.T @ jm), 0.0, None)
    return float(s.sum() ** 2 / jnp.sum(s**2)), jm.shape


def estimates(model, problem, filter_spec, keys):
    theta = ds.sntk_operator(model, problem, filter_spec=filter_spec)
    out = [ds.effective_rank(theta, key=k) for k in keys]
    est = np.array([float(e.estimate) for e in out])
    se = np.array([float(e.standard_error) for e in out])
    return est, se, int(out[0].num_matvecs)


def row(gain, spread, exact, est, se, matvecs, seconds):
    rel = (est - exact) / exact
    k = len(est)
    return (
        f"{gain:6.3f} {spread:6.2f} {exact:8.3f} {est.mean():8.3f} {100 * rel.mean():+8.2f} "
        f"{100 * rel.std(ddof=1) / np.sqrt(k):7.2f} {est.std(ddof=1):9.3f} {se.mean():10.3f} "
        f"{matvecs:8d} {seconds:7.1f}"
    )


def trained(args, keys):
    """PR 1–3 along SGD training of the independent student (see the module docstring)."""
    cfg = StudentTeacherConfig(hidden=args.hidden, student="independent",
                               learning_rates=(args.rate,), learning_rate=args.rate)
    seeds = [int(s) for s in args.seeds.split(",")]
    batch = _run.setups(cfg, seeds)
    t = time.perf_counter()
    losses, history = _run.train(cfg, "sgd", (args.rate,), batch)
    print(f"independent student, N={cfg.hidden}, trained {cfg.trained}, SGD at {args.rate}, "
          f"seeds {seeds}: trained in {time.perf_counter() - t:.1f} s", flush=True)
    rows = []
    for i, seed in enumerate(seeds):
        student = jax.tree_util.tree_map(lambda x, i=i: x[i], batch.student)
        problem = _run.make_problem(cfg, batch.y0[i])
        spec = _run.param_spec(cfg, student)
        _, static = eqx.partition(student, spec)
        finite = np.isfinite(np.asarray(losses)[i, 0])
        at = lambda k, i=i, static=static: eqx.combine(
            jax.tree_util.tree_map(lambda h: h[i, 0, k], history), static)
        scan = []
        for k in range(0, cfg.steps + 1, args.stride):
            if finite[k]:
                scan.append((k, exact_pr(at(k), problem, spec)[0]))
        print(f"  seed {seed}: exact PR along training "
              + ", ".join(f"{k}: {v:.2f}" for k, v in scan), flush=True)
        low = sorted((v, k) for k, v in scan if 1.0 <= v <= 3.0)
        if not low:
            print(f"  seed {seed}: no checkpoint with PR in [1, 3]", flush=True)
            continue
        pick = sorted({low[int(j)] for j in np.linspace(0, len(low) - 1, args.per_seed).round()})
        for exact, k in pick:
            t = time.perf_counter()
            est, se, matvecs = estimates(at(k), problem, spec, keys)
            rows.append(row(float(seed), float(k), exact, est, se, matvecs,
                            time.perf_counter() - t))
            print(f"  seed {seed} step {k}: {rows[-1]}", flush=True)
    print("\nΘ over W, b, U (the trained parameters); bias = (estimate − exact) / exact over keys")
    print(f"{'seed':>6s} {'step':>6s}" + (
        f" {'exact':>8s} {'mean est':>8s} {'bias %':>8s} {'± SE %':>7s} "
        f"{'sd(est)':>9s} {'mean .se':>10s} {'matvecs':>8s} {'time s':>7s}"))
    print("\n".join(rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument(
        "--points",
        type=str,
        default=",".join(f"{g}:{s}" for g, s in POINTS),
        help="gain:spread,...",
    )
    parser.add_argument("--unfiltered", action="store_true")
    parser.add_argument("--trained", action="store_true")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--rate", type=float, default=0.3)
    parser.add_argument("--stride", type=int, default=6)
    parser.add_argument("--per-seed", type=int, default=3)
    args = parser.parse_args()
    if args.trained:
        trained(args, jr.split(jr.PRNGKey(2024), args.keys))
        return

    base = StudentTeacherConfig(hidden=args.hidden, student="shared", trainable="W")
    points = [tuple(float(v) for v in p.split(":")) for p in args.points.split(",")]
    keys = jr.split(jr.PRNGKey(2024), args.keys)
    header = (
        f"{'gain':>6s} {'spread':>6s} {'exact':>8s} {'mean est':>8s} {'bias %':>8s} {'± SE %':>7s} "
        f"{'sd(est)':>9s} {'mean .se':>10s} {'matvecs':>8s} {'time s':>7s}"
    )
    print(
        f"shared student, N={base.hidden}, {base.trials} trials × {base.times} times "
        f"(Θ: {base.trials * base.times * base.hidden} × {base.trials * base.times * base.hidden})"
        f", trained W, seed 0, {args.keys} keys, default budget, float64, "
        f"{jax.devices()[0].platform}",
        flush=True,
    )
    rows, extra = [], []
    for gain, spread in points:
        cfg = dataclasses.replace(base, student_gain=gain, initial_spread=spread)
        batch = _run.setups(cfg, [0])
        student = jax.tree_util.tree_map(lambda x: x[0], batch.student)
        problem = _run.make_problem(cfg, batch.y0[0])
        spec = _run.param_spec(cfg, student)

        t = time.perf_counter()
        exact, shape = exact_pr(student, problem, spec)
        t_exact = time.perf_counter() - t
        t = time.perf_counter()
        est, se, matvecs = estimates(student, problem, spec, keys)
        t_est = time.perf_counter() - t
        rows.append(row(gain, spread, exact, est, se, matvecs, t_est))
        print(
            f"  gain {gain}, spread {spread}: J {shape[0]} × {shape[1]}, "
            f"exact {t_exact:.1f} s; {rows[-1]}",
            flush=True,
        )

        if args.unfiltered:
            exact_all, shape_all = exact_pr(student, problem, eqx.is_inexact_array)
            t = time.perf_counter()
            est_all, se_all, mv_all = estimates(student, problem, eqx.is_inexact_array, keys)
            extra.append(
                (
                    row(gain, spread, exact_all, est_all, se_all, mv_all, time.perf_counter() - t),
                    exact_all / exact,
                    shape_all,
                )
            )
            print(
                f"    all parameters: J {shape_all[0]} × {shape_all[1]}; {extra[-1][0]}", flush=True
            )

    print("\nΘ over W (the trained parameters); bias = (estimate − exact) / exact over keys")
    print(header)
    print("\n".join(rows))
    if extra:
        print(
            "\nΘ over all inexact parameters (sntk_operator without filter_spec, as in "
            "_run._evaluate_one's matrix-free path)"
        )
        print(header + f" {'PR_all/PR_W':>12s}")
        print("\n".join(f"{r} {ratio:12.3f}" for r, ratio, _ in extra))


if __name__ == "__main__":
    main()
